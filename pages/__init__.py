"""Streamlit pieces shared by the pages: error display, remembered widgets, the data
source picker, the augmentation controls, cached model loading.

They live in ``pages/__init__.py`` because Streamlit never lists that file as a page."""

from __future__ import annotations

import gc
import runpy
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from cxr_core import settings
from cxr_core.data.folders import labelled_images, scan
from cxr_core.data.sources import DataSpec
from cxr_core.errors import UserError
from cxr_core.predict.inference import LoadedModel, load_model
from cxr_core.store.runs import Run, RunStore
from cxr_core.training.config import Augmentation, Option, options
from pages.common import runview, texts

APP_SHELL = "_cxr_app_shell"
"""Session key app.py sets before it navigates."""

APP_SCRIPT = Path(__file__).resolve().parent.parent / "app.py"


def ensure_app_shell() -> None:
    """Make sure app.py, the router, runs around this page.

    Streamlit honours a pages/ folder beside the entry point until the first
    ``st.navigation`` call of the server process (its documented legacy mode). So on a
    fresh server, a deep link such as /runs runs this page's file alone, without app.py's
    settings, layout and navigation. Then run app.py itself, in this same script run: its
    ``st.navigation`` ends the legacy mode for good and runs the linked page as usual.
    """
    if st.session_state.get(APP_SHELL):
        return
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


_frozen_at = 0
"""How many modules were loaded at the last :func:`freeze_loaded_modules`."""


def freeze_loaded_modules() -> None:
    """Take what loaded modules hold out of the cyclic garbage collector's way.

    Streamlit collects every generation after each script run (``runner.postScriptGC``,
    kept: without it the load test's server grew 45 MB in 200 requests). Once torch and
    pytorch-grad-cam are loaded that traversal took 0.4 s of every click on 2 cores,
    nearly all of it over objects the modules hold for the life of the process. So after
    new imports, collect once and freeze the survivors (:func:`gc.freeze`): later
    collections skip them and still free each script run's own garbage.
    """
    global _frozen_at
    if len(sys.modules) != _frozen_at:
        gc.collect()
        gc.freeze()
        _frozen_at = len(sys.modules)


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a user's mistake as one line; anything else is a bug and keeps its traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")


def kept(key: str, default):
    """Key for a widget whose value must survive leaving the page.

    Streamlit drops a widget's state when its page is not shown; this keeps a copy and
    restores it, so choices made on one page are still there after a visit to another.
    The copy is written back on every run, not only when the key is gone: a widget of
    another page that shares the key (the augmentation toggle is on the Data and the
    Train page) would otherwise leave a value the new widget does not take as its own,
    and the two pages would disagree."""
    store = st.session_state.setdefault("_kept", {})
    if key in st.session_state:
        store[key] = st.session_state[key]
    st.session_state[key] = store.get(key, default)
    return key


def restore_from_url(
    page: str, params: dict[str, str], lists: tuple[str, ...] = (), choices: dict | None = None
) -> None:
    """Once per page and session (a refresh, a shared link), start the widgets from the
    URL's choice: ``params`` maps a query parameter to the widget key it restores (a list
    for the parameters in ``lists``); a value outside its ``choices`` (a hand-edited link)
    is ignored, and the widgets drop runs that no longer exist."""
    flag = f"_{page}_from_url"
    if st.session_state.get(flag):
        return
    st.session_state[flag] = True
    for param, key in params.items():
        values = st.query_params.get_all(param)
        allowed = (choices or {}).get(param)
        if values and (allowed is None or all(v in allowed for v in values)):
            st.session_state[key] = values if param in lists else values[0]
            st.session_state.setdefault("_kept", {})[key] = st.session_state[key]


def keep_in_url(**choice: str | list[str]) -> None:
    """Write the current choice into the URL (only what changed), so that a refresh or a
    copied link shows the same view."""
    for param, value in choice.items():
        if st.query_params.get_all(param) != (value if isinstance(value, list) else [value]):
            st.query_params[param] = value


def store() -> RunStore:
    return RunStore()


def session_owner() -> str:
    """This browser session's token: the runs it launches carry it as their owner, and it
    may change only those (unless it is an operator's)."""
    return st.session_state.setdefault("_owner", uuid.uuid4().hex)


def is_operator() -> bool:
    """Whether this visitor may change any run.

    Where the deployment configures sign-in (``[auth]`` in its secrets), a signed-in
    user listed in ``CXR_OPERATORS`` (comma-separated e-mails; unset: any signed-in user)
    is an operator. Without sign-in, the person at the machine is: ``CXR_SHARED=0``
    says the app runs for its one user; ``CXR_SHARED=1`` says it is served to others (set
    it on Streamlit Community Cloud, or behind any proxy on the same host); unset, a
    browser connecting from this very host counts as the person at the machine.
    """
    if st.secrets.load_if_toml_exists() and "auth" in st.secrets:
        if not st.user.is_logged_in:
            return False
        allowed = settings.operators()
        return not allowed or st.user.get("email") in allowed
    shared = settings.shared_setting()
    if shared is not None:
        return not shared
    return st.context.ip_address is None


def synthetic_badge(synthetic: bool) -> None:
    if synthetic:
        st.badge("synthetic data", icon=":material/science:", color="orange")


def medical_notice() -> None:
    st.warning(texts.NOT_A_MEDICAL_DEVICE, icon=":material/health_and_safety:")


def data_spec() -> str:
    """The data source chosen on the Data page (or by a preset) for this session; a new
    session (a refresh, a shared link) starts from the URL's ``data`` parameter."""
    if "data_spec" not in st.session_state:
        st.session_state["data_spec"] = st.query_params.get("data") or settings.default_data()
    return st.session_state["data_spec"]


def set_data_spec(spec: str) -> None:
    st.session_state["data_spec"] = spec
    if st.query_params.get("data") != spec:
        st.query_params["data"] = spec


@st.cache_data(show_spinner="Preparing the data ...", ttl=600)
def data_root(spec: str) -> Path:
    return DataSpec.parse(spec).resolve()


def option_input(opt: Option, key: str, where=st, **kwargs):
    """The widget for one training option, from its metadata in TrainConfig (label, help,
    choices, bounds); its value survives leaving the page. ``key`` names its state."""
    default = opt.default
    common = {"key": kept(key, default), "help": opt.help or None, **kwargs}
    if opt.type is bool:
        return where.toggle(opt.label, **common)
    if opt.choices:
        return where.selectbox(opt.label, opt.choices, **common)
    if opt.type is str:
        return where.text_input(opt.label, **common)
    if opt.type is float and opt.group == "augmentation":
        return where.slider(opt.label, float(opt.low), float(opt.high), step=opt.step, **common)
    number = {"min_value": opt.type(opt.low), "max_value": opt.type(opt.high)}
    if opt.type is float:
        small = default is not None and 0 < abs(default) < 1e-2
        number.update(step=opt.step or (1e-4 if small else 0.01), format="%.1e" if small else None)
    if opt.optional:
        common["placeholder"] = "default"
    return where.number_input(opt.label, **number, **common)


def augmentation_controls(key: str = "aug") -> Augmentation:
    """The augmentation settings, shared by the Data page (preview) and the Train page:
    one set of widget keys, so both pages show the same choice."""
    opts = {o.name.split(".", 1)[1]: o for o in options() if o.group == "augmentation"}
    enabled = option_input(opts.pop("enabled"), f"{key}_enabled")
    values: dict = {"enabled": enabled}
    with st.expander("Augmentation settings", expanded=False):
        cols = st.columns(3)
        for i, (name, opt) in enumerate(opts.items()):
            values[name] = option_input(opt, f"{key}_{name}", cols[i % 3], disabled=not enabled)
    return Augmentation(**values)


def data_source_picker() -> str | None:
    """Choose the data: synthetic demo, a local folder in the Kaggle layout, or a
    download. Returns the chosen spec (also remembered for the Train page)."""
    current = data_spec()
    kinds = ["Synthetic demo", "Local folder", "Download (online)"]
    kind = st.radio(
        "Source",
        kinds,
        index=0 if current.startswith("synthetic") else 1,
        horizontal=True,
        key="data_kind",
        help=texts.help_text("synthetic"),
    )
    if kind == "Synthetic demo":
        per_class = int(current.partition(":")[2] or 60) if current.startswith("synthetic") else 60
        n = st.slider(
            "Synthetic images per class",
            20,
            400,
            value=per_class,
            step=10,
            key="data_synthetic_n",
            help="Drawn procedurally on this machine; labelled synthetic everywhere.",
        )
        set_data_spec(f"synthetic:{n}")
    elif kind == "Local folder":
        folder_picker(current)
    else:
        download_picker()
    return data_spec()


def folder_picker(current: str) -> None:
    """The one text input through which a user names a folder on the server."""
    with st.form("data_folder_form", border=False):
        text = st.text_input(
            "Folder in the Kaggle layout (train/NORMAL, train/PNEUMONIA, optional val/, test/)",
            value="" if current.startswith("synthetic") else current,
            placeholder="/data/chest_xray",
        )
        if st.form_submit_button("Use this folder"):
            with user_errors():
                folder = DataSpec.parse(text).resolve()
                trainable(folder)
                set_data_spec(str(folder))


def trainable(folder: Path) -> None:
    """Refuse, in one line and before anything is made, a folder no run can train on; a
    folder of labelled films without train/ is pointed to scoring instead."""
    try:
        scan(folder)
    except UserError as refused:
        try:
            name = labelled_images(folder)[2]
        except UserError:
            raise refused from None
        raise UserError(
            f"{name} has no train/ to train on, but its films can score runs: pick it under "
            f"'Evaluated on' on the Compare page, or run: python -m cxr_core evaluate --run "
            f"RUN --data {folder} --save"
        ) from None


def download_picker() -> None:
    from cxr_core.data.downloads import DEFAULT_SIZE, SOURCES
    from cxr_core.settings import cache_dir

    packages = " / ".join(source.package for source in SOURCES.values())
    st.caption(
        f"Needs a network connection and the optional packages ({packages}). "
        "Offline, download the Kaggle zip elsewhere and use 'Local folder'."
    )
    with user_errors():
        for column, source in zip(st.columns(len(SOURCES)), SOURCES.values()):
            if column.button(source.description):
                with st.spinner(f"Downloading {source.description} ..."):
                    out = cache_dir() / f"{source.name}-{DEFAULT_SIZE}"
                    set_data_spec(str(source.download(out, DEFAULT_SIZE)))


@st.cache_resource(max_entries=8, show_spinner=False)
def loaded_model(path: str, mtime: float) -> LoadedModel:
    """One loaded model per checkpoint file and version (its mtime) for the whole server
    process, shared by all sessions (CAMs take the model's lock)."""
    return load_model(path)


def run_picker(label: str, runs: list[Run], default: list[Run], key: str, **kwargs) -> list[Run]:
    """A multiselect of runs whose choice survives navigation; runs that vanished drop out."""
    by_id = {r.id: r for r in runs}
    kept(key, [r.id for r in default])
    st.session_state[key] = [i for i in st.session_state[key] if i in by_id]
    # Labelled once a run: Streamlit formats every option several times a rerun, and a
    # label reads three of the run's records.
    labels = {i: runview.run_label(r) for i, r in by_id.items()}
    chosen = st.multiselect(label, list(by_id), key=key, format_func=labels.__getitem__, **kwargs)
    return [by_id[i] for i in chosen]
