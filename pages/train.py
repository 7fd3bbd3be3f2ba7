"""Train: choose architectures and options (or a preset) and launch runs.

Every run is its own OS process (cxr_core.jobs), queued so that one trains at a time by
default; what is shown about it comes from the run store, so a refresh, a closed tab or a
second browser session neither stops nor duplicates it.
"""

from __future__ import annotations

import uuid

import streamlit as st

from cxr_core import estimates, settings
from cxr_core.config import TrainConfig, options
from cxr_core.datasets import make_splits, scan
from cxr_core.datasources import is_synthetic_spec
from cxr_core.errors import UserError
from cxr_core.executors import launch_runs
from cxr_core.jobs import Job
from cxr_core.models import REGISTRY
from cxr_core.presets import PRESETS, apply_preset
from cxr_core.runs import ACTIVE, normalise_tags
from pages import (
    augmentation_controls,
    data_root,
    data_spec,
    ensure_app_shell,
    kept,
    option_input,
    session_owner,
    set_data_spec,
    store,
    user_errors,
)
from pages.common import forms, runview

ensure_app_shell()

CUSTOM = "custom"
OPTIONS = {o.name: o for o in options() if o.group != "augmentation"}
PAGE_SET = {"arch", "data"}
"""Options set elsewhere on the page: the architecture picker, the Data page."""


def _apply_preset() -> None:
    """Fill the form from the chosen preset (the user can still change anything)."""
    name = st.session_state["opt_preset"]
    if name == CUSTOM:
        return
    for key, value in apply_preset(name, {}).items():
        if key == "arch":
            st.session_state["opt_archs"] = [value]
        elif key == "data":
            set_data_spec(value)
        elif key.startswith("augment."):
            st.session_state[f"aug_{key.split('.', 1)[1]}"] = value
        else:
            st.session_state[f"opt_{key}"] = value


def _inputs(group: str, columns: int, **disabled: bool) -> dict:
    """The widgets of one group of TrainConfig options, laid out in ``columns``."""
    chosen = [o for o in OPTIONS.values() if o.group == group and o.name not in PAGE_SET]
    cols = st.columns(columns)
    return {
        o.name: option_input(
            o, f"opt_{o.name}", cols[i % columns], disabled=disabled.get(o.name, False)
        )
        for i, o in enumerate(chosen)
    }


@st.cache_data(show_spinner="Timing a few training steps on this machine ...", max_entries=64)
def _probe(config: dict) -> float:
    return estimates.probe_rate(TrainConfig.from_dict(config))


@st.cache_data(ttl=600, show_spinner=False)
def _split_sizes(spec: str, seed: int, val: float, test: float, most: int | None) -> tuple:
    index = scan(data_root(spec))
    manifest = make_splits(index, seed, val, test, most)
    return len(manifest.splits["train"]), sum(len(v) for v in manifest.splits.values())


def _expected_duration(archs: list[str], options: dict) -> None:
    """What each run will cost here, from earlier runs of its kind on this machine or,
    on request, from timing a few real steps: before the click, not after."""
    if not archs:
        return
    if st.session_state.get("measure_costs"):  # clicked: time steps from now on
        st.session_state["cost_probe"] = True
    configs = forms.build_configs(archs, options)
    first = configs[0]
    n_train, n_all = _split_sizes(
        options["data"], first.seed, first.val_fraction, first.test_fraction, first.max_images
    )
    lines, unknown = [], []
    for cfg in configs:
        rate = estimates.measured_rate(store(), cfg)
        if rate is None and st.session_state.get("cost_probe"):
            rate = _probe(estimates.probe_key(cfg))
        if rate is None:
            unknown.append(cfg.arch)
            continue
        seconds = estimates.expected_seconds(cfg, n_train, n_all, rate)
        lines.append(
            f"{cfg.arch} at {cfg.img_size} px: at most {runview.format_duration(seconds)} "
            f"({rate:.0f} img/s measured here)"
        )
    if lines:
        st.caption("Expected on this machine: " + "; ".join(lines) + ".")
    if unknown:
        st.caption(
            f"No earlier run of {', '.join(unknown)} like this one on this machine to go by."
        )
        st.button(
            "Estimate the duration (times a few steps)",
            key="measure_costs",
            icon=":material/timer:",
        )


@st.fragment(run_every="3s")
def queue_status() -> None:
    with user_errors():
        runs = store().list()
        known = {r.id for r in runs}
        starting = [i for i in st.session_state.get("launched", []) if i not in known]
        _show_queue([r for r in runs if r.status().get("status") in ACTIVE], starting)


def _show_queue(active: list, starting: list[str]) -> None:
    for run_id in starting:  # launched, its process is still importing
        st.progress(0.0, text=f"{run_id}: starting ...")
    if not active and not starting:
        st.caption("No run is training or queued.")
    for run in active:
        fraction, detail = runview.run_progress(run.status(), run.config().get("epochs"))
        st.progress(fraction, text=f"{run.id}: {detail}")


st.title("Train")
st.caption(
    "Each run trains in its own background process and keeps going if you close the tab. "
    "Several selected architectures are trained with the same options, one after another."
)

with st.container(border=True):
    spec = data_spec()
    left, right = st.columns([3, 1])
    left.markdown(f"**Training data:** `{spec}`")
    if is_synthetic_spec(spec):
        left.badge("synthetic data", icon=":material/science:", color="orange")
    right.page_link("pages/data.py", label="Change on the Data page", icon=":material/edit:")

st.selectbox(
    "Preset",
    [CUSTOM, *PRESETS],
    key=kept("opt_preset", CUSTOM),
    on_change=_apply_preset,
    help="A starting point that fills the options below; anything you change afterwards wins.",
)

archs = st.multiselect(
    "Architectures",
    list(REGISTRY),
    key=kept("opt_archs", ["small_cnn"]),
    format_func=lambda a: f"{a}: {REGISTRY[a].description}",
    help="One run per architecture, same data, split, seed and budget: a fair comparison.",
)
values = _inputs("model", 3)
for arch in archs:
    if forms.needs_download(arch, values["pretrained"]):
        st.info(
            f"{arch}: ImageNet weights are downloaded from the internet on first use. "
            "Offline, use efficientnet_lite0/1/2 (their weights ship with pip).",
            icon=":material/cloud_download:",
        )
values |= _inputs("budget", 4)
values |= _inputs("optimisation", 3)
aug = augmentation_controls()

with st.expander("Advanced"):
    method = st.session_state.get("opt_threshold_method", "youden")
    values |= _inputs(
        "advanced",
        3,
        target_sensitivity=method != "sensitivity",
        target_specificity=method != "specificity",
    )
    try:
        default_queue = settings.queue_limit()
    except UserError as exc:
        st.error(str(exc))
        default_queue = 1
    queue = st.number_input(
        "Runs training at once",
        min_value=1,
        max_value=8,
        key=kept("opt_queue", default_queue),
        help="Further runs wait in the queue. Keep 1 on a CPU: parallel runs only share the cores.",
    )

chosen = {**values, "data": spec, "augment": aug}

with user_errors():
    _expected_duration(archs, {**values, "data": spec, "augment": aug})

c1, c2, c3 = st.columns([2, 2, 3])
name = c1.text_input("Name (optional)", key=kept("opt_run_name", ""), max_chars=80)
tags = c2.text_input("Tags", key=kept("opt_run_tags", ""), help="comma-separated, e.g. baseline")
note = c3.text_input("Note", key=kept("opt_run_note", ""), max_chars=2000)

# The button's key changes after every launch: a second click that arrives from the old
# button (a double click, a slow connection) matches no widget and launches nothing.
nonce = st.session_state.setdefault("launch_nonce", uuid.uuid4().hex)
label = f"Launch {len(archs)} run(s)" if len(archs) > 1 else "Launch run"
if st.button(label, type="primary", icon=":material/rocket_launch:", key=f"launch_{nonce}"):
    st.session_state["launch_nonce"] = uuid.uuid4().hex
    with user_errors():
        configs = forms.build_configs(archs, chosen)
        meta = {"name": name or None, "tags": tags, "note": note, "owner": session_owner()}
        normalise_tags(tags)  # a bad tag is one message before anything starts
        jobs = [Job(cfg, extra={"meta": meta}) for cfg in configs]
        st.session_state["launched"] = launch_runs(jobs, store().root, queue=int(queue))
if st.session_state.get("launched"):
    st.success(
        "Launched: " + ", ".join(f"`{r}`" for r in st.session_state["launched"]),
        icon=":material/check_circle:",
    )
    st.page_link(
        "pages/runs.py", label="Follow them on the Runs page", icon=":material/monitoring:"
    )

st.subheader("Queue")
queue_status()
