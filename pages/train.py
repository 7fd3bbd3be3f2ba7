"""Train: choose architectures and options (or a preset) and launch runs.

Every run is its own OS process (cxr_core.execution.jobs), queued so that one trains at a time by
default; what is shown about it comes from the run store, so a refresh, a closed tab or a
second browser session neither stops nor duplicates it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import uuid

import streamlit as st

from cxr_core import settings
from cxr_core.data.folders import make_splits, scan
from cxr_core.data.sources import is_synthetic_spec
from cxr_core.errors import UserError
from cxr_core.execution.executors import EXECUTORS, RAY_INSTALL, RayExecutor, launch_runs
from cxr_core.execution.jobs import Job
from cxr_core.execution.sweeps import NOT_GRIDDED, parse_grid, parse_seeds, sweep_jobs
from cxr_core.models.catalogue import REGISTRY
from cxr_core.store.runs import ACTIVE, normalise_tags
from cxr_core.training import estimates
from cxr_core.training.config import TrainConfig, options
from cxr_core.training.presets import PRESETS, preset_changes
from pages import (
    augmentation_controls,
    data_root,
    data_spec,
    ensure_app_shell,
    is_operator,
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
# Comments, not docstrings: a bare string in a page script is shown on the page.
PAGE_SET = {"arch", "data"}  # set elsewhere: the architecture picker, the Data page
# What a sweep may vary: architectures come from the picker, seeds from their own list.
GRIDDABLE = {o.name: o for o in options() if o.name not in {*NOT_GRIDDED, *PAGE_SET, "device"}}


def _widget_key(name: str) -> str:
    """The session key of an option's widget (augmentation's are shared with the Data page)."""
    if name.startswith("augment."):
        return f"aug_{name.split('.', 1)[1]}"
    return f"opt_{name}"


def _apply_preset() -> None:
    """Set the whole form from the chosen preset: what it names, and every other option
    back to its default, so nothing carries over from the last preset; remember what
    changed to say so (the user can still change anything)."""
    name = st.session_state["opt_preset"]
    st.session_state.pop("launched", None)  # a launch message belongs to the old form
    st.session_state.pop("launched_sweep", None)
    if name == CUSTOM:
        st.session_state.pop("preset_changes", None)
        return
    archs = st.session_state.get("opt_archs") or []
    current = {o.name: st.session_state.get(_widget_key(o.name), o.default) for o in options()}
    current |= {"arch": archs[0] if len(archs) == 1 else archs, "data": data_spec()}
    changes = preset_changes(name, current)
    for key, (_, value) in changes.items():
        if key == "arch":
            st.session_state["opt_archs"] = [value]
        elif key == "data":
            set_data_spec(value)
        else:
            st.session_state[_widget_key(key)] = value
    st.session_state["preset_changes"] = (name, changes)


def _show_preset_changes() -> None:
    """What the last preset changed, in words, with a way back to the data it replaced."""
    if "preset_changes" not in st.session_state:
        return
    name, changes = st.session_state["preset_changes"]
    if not changes:
        st.caption(f"Preset *{name}*: the form already held it.")
        return
    labels = {o.name: o.label for o in options()} | {"arch": "Architecture", "data": "Data"}
    shown = ", ".join(
        f"{labels[k]} {_plain(new)} (was {_plain(old)})" for k, (old, new) in changes.items()
    )
    st.info(f"Preset *{name}* set: {shown}.", icon=":material/tune:")
    if "data" in changes and changes["data"][0]:
        before = changes["data"][0]
        if st.button(f"Keep my data ({before})", key="preset_keep_data"):
            set_data_spec(before)
            changes.pop("data")
            st.rerun()


def _plain(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "default" if value is None else f"`{value}`"


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
        options["data"], first.split_key, first.val_fraction, first.test_fraction, first.max_images
    )
    lines, unknown = [], []
    share = estimates.cpu_share()
    for cfg in configs:
        rate = estimates.measured_rate(store(), cfg)
        if rate is None and st.session_state.get("cost_probe"):
            rate = _probe(estimates.probe_key(cfg))
        if rate is None:
            unknown.append(cfg.arch)
            continue
        seconds = estimates.expected_seconds(cfg, n_train, n_all, rate)
        busy = f", about {runview.format_duration(seconds / share)} now" if share < 0.9 else ""
        lines.append(
            f"{cfg.arch} at {cfg.img_size} px: about {runview.format_duration(seconds)} on a "
            f"quiet CPU{busy} ({rate:.0f} img/s measured here)"
        )
    if lines:
        busy = (
            f" The CPU is busy now (a new run gets about {share:.0%} of it), so it takes longer."
            if share < 0.9
            else ""
        )
        st.caption(
            "Expected on this machine: " + "; ".join(lines) + ", plus decoding the images "
            "once on their first use." + busy
        )
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


def _grid_default(name: str, chosen: dict) -> str:
    """The option's value on the form, as the first value of its grid."""
    if name.startswith("augment."):
        value = getattr(chosen["augment"], name.removeprefix("augment."))
    else:
        value = chosen.get(name)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _executor() -> tuple[str, str | None]:
    """Where a sweep trains: this machine, or a Ray cluster where Ray is installed (by
    default as CXR_EXECUTOR says). Only an operator may name the cluster's address: on a
    shared deployment a visitor must not make the server connect to any host."""
    if importlib.util.find_spec("ray") is None:
        st.caption(f"Trains on this machine (for a Ray cluster: `{RAY_INSTALL}`).")
        return "local", None
    default = settings.executor_setting()
    executor = st.radio(
        "Where",
        list(EXECUTORS),
        key=kept("sweep_executor", default if default in EXECUTORS else "local"),
        format_func=lambda name: EXECUTORS[name].label,
        horizontal=True,
    )
    if executor == "local":
        return "local", None
    address = settings.ray_address()
    if is_operator():
        address = st.text_input(
            "Ray cluster address",
            key=kept("sweep_ray_address", address),
            placeholder="HOST:PORT",
            help="What `ray start --head` printed (default: $RAY_ADDRESS).",
        )
    else:
        st.caption(f"Ray cluster: `{address or 'RAY_ADDRESS is not set'}` (set by the operator)")
    return "ray", address.strip() or None


def _launch_sweep(jobs: list[Job], executor: str, address: str | None, queue: int) -> list[str]:
    if address:
        return RayExecutor(address).launch(jobs, store().root).run_ids
    return launch_runs(jobs, store().root, executor, queue)


def sweep_section(
    archs: list[str], chosen: dict, queue: int, tags: str, note: str, nonce: str
) -> None:
    """A grid over any options x seeds for the chosen architectures, launched as one
    sweep: every point is a normal run tagged with it, owned by this session."""
    with st.expander("Sweep: a grid of settings × seeds", icon=":material/grid_on:"):
        st.caption(
            "Every combination of the values below, for each architecture chosen above and "
            "each seed, is one run; the options above apply to every run. The Sweeps page "
            "ranks the points on validation only."
        )
        names = st.multiselect(
            "Settings to vary",
            list(GRIDDABLE),
            key=kept("sweep_vary", ["lr"]),
            format_func=lambda n: GRIDDABLE[n].label,
        )
        cols = st.columns(2)
        specs = [
            name
            + "="
            + cols[i % 2].text_input(
                f"{GRIDDABLE[name].label}: values",
                key=kept(f"sweep_grid_{name}", _grid_default(name, chosen)),
                help="comma-separated, e.g. 1e-3,3e-4 (none: the default)",
            )
            for i, name in enumerate(names)
        ]
        seeds_text = st.text_input(
            "Seeds",
            key=kept("sweep_seeds", "0,1,2"),
            help="comma-separated; every point trains once per seed, for a mean ± sd",
        )
        executor, address = _executor()
        try:
            grid, seeds = parse_grid(specs), parse_seeds(seeds_text)
        except UserError as exc:
            st.warning(str(exc), icon=":material/warning:")
            return
        count = len(archs) * math.prod(len(v) for v in grid.values()) * len(seeds)
        label = f"Launch sweep ({count} runs)"
        if st.button(label, icon=":material/grid_on:", key=f"sweep_{nonce}", disabled=not archs):
            st.session_state["launch_nonce"] = uuid.uuid4().hex
            with user_errors():
                configs = forms.build_configs(archs, chosen)
                normalise_tags(tags)
                meta = {"tags": tags, "note": note, "owner": session_owner()}
                bases = {cfg.arch: cfg.to_dict() for cfg in configs}
                sweep_id, jobs = sweep_jobs(bases, grid, seeds, {"meta": meta})
                st.session_state["launched"] = _launch_sweep(jobs, executor, address, queue)
                st.session_state["launched_sweep"] = sweep_id


st.title("Train")
st.caption(
    "Each run trains in its own background process and keeps going if you close the tab. "
    "Several selected architectures are trained with the same options, one after another."
)

with st.container(border=True):
    spec = data_spec()
    row = st.container(horizontal=True, vertical_alignment="center")  # wraps when narrow
    row.markdown(f"**Training data:** `{spec}`", width="content")
    if is_synthetic_spec(spec):
        row.badge("synthetic data", icon=":material/science:", color="orange")
    row.page_link("pages/data.py", label="Change on the Data page", icon=":material/edit:")

st.selectbox(
    "Preset",
    [CUSTOM, *PRESETS],
    key=kept("opt_preset", CUSTOM),
    on_change=_apply_preset,
    help="A whole starting point: the options it names, every other one at its default. "
    "Anything you change afterwards wins.",
)
_show_preset_changes()

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

with contextlib.suppress(UserError):  # a bad combination is said once, at the launch
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
        st.session_state.pop("launched_sweep", None)
sweep_section(archs, chosen, int(queue), tags, note, nonce)
if st.session_state.get("launched"):
    launched, sweep = st.session_state["launched"], st.session_state.get("launched_sweep")
    st.success(
        f"Launched sweep `{sweep}`: {len(launched)} runs"
        if sweep
        else "Launched: " + ", ".join(f"`{r}`" for r in launched),
        icon=":material/check_circle:",
    )
    st.page_link(
        "pages/runs.py", label="Follow them on the Runs page", icon=":material/monitoring:"
    )
    if st.session_state.get("launched_sweep"):
        st.page_link(
            "pages/sweeps.py",
            label="See the sweep's points on the Sweeps page",
            icon=":material/grid_on:",
            query_params={"sweep": st.session_state["launched_sweep"]},
        )

st.subheader("Queue")
queue_status()
