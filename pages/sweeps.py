"""Sweeps: each grid point's validation metric as mean +- sd over its seeds, a heat map
for a two-dimensional grid, the best point chosen on validation only, and its runs (with
the runners-up) one click away on the Compare page.

A sweep is the runs that share its id (cxr_core.execution.sweeps), so this page only reads the run
store; it follows a sweep still training by redrawing its results every few seconds.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import streamlit as st

from cxr_core.analysis import plots
from cxr_core.execution.sweeps import (
    SWEEP_KEY,
    VAL_METRICS,
    choose_point,
    describe,
    run_rows,
    summarize,
    sweep_runs,
    sweeps_in,
    varying,
)
from cxr_core.scoring.metrics import CATALOGUE
from cxr_core.store.runs import ACTIVE, Run
from pages import ensure_app_shell, kept, store, user_errors

ensure_app_shell()

REFRESH_S = 5
COMPARE_RUNS = "compare_runs"  # the Compare page's run picker (its URL parameter: runs)


def _name(key: str) -> str:
    return key.removeprefix("augment.")


def _label(sweep_id: str, tag: dict) -> str:
    dims = " × ".join(_name(k) for k in varying(tag["grid"])) or "one point"
    return f"{sweep_id} · {dims} · {len(tag['seeds'])} seed(s) · {tag['n']} runs"


def points_table(summary: list[dict], grid: dict, runs: list[Run], metric: str) -> pd.DataFrame:
    """One row per grid point: its values, the metric's mean +- sd over the completed
    seeds, how many seeds completed, and which point is best on validation."""
    info = CATALOGUE[metric]
    status = {r.id: r.status().get("status") for r in runs}
    rows = []
    for point in summary:
        states = Counter(status[i] for i in point["runs"])
        rows.append(
            {
                **{_name(k): plots.grid_value(point["point"][k]) for k in grid},
                f"val {info.label} (mean ± sd)": plots.mean_sd(point, info.percent),
                "seeds done": f"{point['n']}/{len(point['runs'])}",
                "runs": ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
                "best on validation": point["best"],
                "chosen": point["chosen"],
                "no better than chance": point["chance"],
            }
        )
    return pd.DataFrame(rows)


def _results(sweep_id: str, metric: str) -> None:
    """Points, heat map, best point and runs of one sweep (redrawn while it trains)."""
    runs = sweep_runs(store(), sweep_id)
    tag = runs[0].config()[SWEEP_KEY]
    grid, dims = tag["grid"], varying(tag["grid"])
    states = Counter(r.status().get("status") for r in runs)
    st.caption(
        f"{len(runs)} runs: "
        + ", ".join(f"{n} {s}" for s, n in states.most_common())
        + f" · seeds {', '.join(map(str, tag['seeds']))}"
    )
    summary = summarize(runs, metric)
    info = CATALOGUE[metric]
    best = next((p for p in summary if p["best"]), None)
    if best is None:
        st.info("No run of this sweep has completed yet.", icon=":material/hourglass_top:")
    elif best["chance"]:
        st.warning(
            f"**No better than chance.** The best point on validation, "
            f"{describe(best['point'])} ({info.label} {plots.mean_sd(best, info.percent)} over "
            f"{best['n']} seed(s)), has a validation AUC interval that includes 0.5 for every "
            "seed: none of these runs learned what the validation split can see. Train "
            "longer, on more images, or check the data before choosing among them.",
            icon=":material/casino:",
        )
    else:
        st.success(
            f"**Best on validation: {describe(best['point'])}**, validation {info.label} "
            f"{plots.mean_sd(best, info.percent)} over {best['n']} seed(s).",
            icon=":material/star:",
        )
    choice = choose_point(runs, summary) if best is not None else None
    if choice is not None:
        (st.warning if choice.cannot_choose else st.info)(
            choice.sentence(), icon=":material/balance:"
        )
    st.caption(
        "Chosen on the validation split alone: the test split takes no part in the choice, "
        "so the best point's test score (on Compare) stays an honest estimate."
    )
    st.dataframe(points_table(summary, grid, runs, metric), hide_index=True, width="stretch")
    if len(dims) == 2 and best is not None:
        st.plotly_chart(plots.sweep_heatmap(summary, grid, dims, metric), key="sweep_heatmap")
    with st.expander("Every run of the sweep"):
        table = pd.DataFrame(
            {
                "run": r["id"],
                "status": r["status"],
                "seed": r["seed"],
                "point": describe(r["point"]),
                f"val {info.label}": r["val"].get(metric),
                "message": r["message"] or "",
            }
            for r in run_rows(runs)
        )
        st.dataframe(table, hide_index=True, width="stretch")


def _compare_best(runs: list[Run], metric: str) -> None:
    """Send the completed runs of the best points to the Compare page: through its URL
    parameter (a new session reads it) and its picker's state (a session that has
    visited Compare already keeps that instead)."""
    ranked = sorted(
        (p for p in summarize(runs, metric) if p["n"]), key=lambda p: p["mean"], reverse=True
    )
    if not ranked:
        return
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    count = left.number_input(
        "Best points", 1, len(ranked), min(3, len(ranked)), key="sweep_compare_n"
    )
    done = {r.id for r in runs if r.status().get("status") == "completed"}
    ids = [i for p in ranked[: int(count)] for i in p["runs"] if i in done]
    if right.button(
        f"Compare the best {int(count)} point(s) ({len(ids)} runs)",
        icon=":material/compare:",
        help="Every completed seed of each point, side by side on the same images.",
    ):
        st.session_state[COMPARE_RUNS] = ids
        st.session_state.setdefault("_kept", {})[COMPARE_RUNS] = ids  # pages.kept's copy
        st.switch_page("pages/compare.py", query_params={"runs": ids})


st.title("Sweeps")
st.caption(
    "A sweep trains every point of a grid of settings with every seed, one normal run each. "
    "Launch one on the Train page (the Sweep section) or with `python -m cxr_core sweep`."
)

with user_errors():
    sweeps = sweeps_in(store().list())
    if not sweeps:
        st.info("No sweep yet: launch one on the Train page.", icon=":material/info:")
        st.stop()
    linked = st.query_params.get("sweep")
    key = kept("sweep_id", linked if linked in sweeps else next(iter(sweeps)))
    if st.session_state[key] not in sweeps:
        st.session_state[key] = next(iter(sweeps))
    left, right = st.columns([3, 1])
    sweep_id = left.selectbox(
        "Sweep", list(sweeps), key=key, format_func=lambda i: _label(i, sweeps[i])
    )
    metric = right.selectbox(
        "Validation metric",
        VAL_METRICS,
        key=kept("sweep_metric", "roc_auc"),
        format_func=lambda k: CATALOGUE[k].label,
        help="What the points are ranked by, on the validation split of each run.",
    )
    runs = sweep_runs(store(), sweep_id)
    training = any(r.status().get("status") in ACTIVE for r in runs)
    st.fragment(_results, run_every=REFRESH_S if training else None)(sweep_id, metric)
    _compare_best(runs, metric)
