"""Runs: every run with its status, live progress and curves, and its final results.

Everything is read from the run store every two seconds (a fragment), so it shows runs
started from any session or from the CLI, and survives refreshes.
"""

from __future__ import annotations

import streamlit as st

from cxr_core import plots
from cxr_core.jobs import log_tail
from cxr_core.runs import ACTIVE, Run
from pages import ensure_app_shell, kept, store, synthetic_badge, user_errors
from pages.common import runview, texts

ensure_app_shell()

REFRESH_S = 2


def _selection(runs: list[Run], active: list[str]) -> str:
    """Widget key of the runs to plot: the user's choice, plus any run that started since
    the last look (so a run launched on the Train page shows up by itself)."""
    ids = [r.id for r in runs]
    seen = st.session_state.get("runs_seen")
    default = active or ids[:1]
    key = kept("runs_selected", default)
    chosen = [i for i in st.session_state[key] if i in ids]
    if seen is not None:
        chosen += [i for i in active if i not in seen and i not in chosen]
    st.session_state[key] = chosen
    st.session_state["runs_seen"] = ids
    return key


def _active_run(run: Run, status: dict) -> None:
    fraction, detail = runview.run_progress(status, run.config().get("epochs"))
    left, right = st.columns([5, 1])
    left.progress(fraction, text=f"**{run.id}** · {detail}")
    cancel = right.empty()
    if not run.cancel_requested() and cancel.button(
        "Cancel", key=f"cancel_{run.id}", icon=":material/stop_circle:"
    ):
        run.request_cancel()
        st.toast(f"Cancelling {run.id}: it stops after the current step.")
    if run.cancel_requested():
        cancel.caption("cancelling ...")
    tail = log_tail(run.id, store().root, lines=8)
    if tail:
        with st.expander(f"{run.id}: latest output"):
            st.code(tail, language=None)


def _final_results(run: Run) -> None:
    evaluation = run.evaluation()
    if not evaluation:
        return
    split = evaluation.get("test_split")
    report = evaluation.get("splits", {}).get(split, {})
    st.markdown(
        f"**{run.id}**: {run.status().get('status')}, best epoch {evaluation.get('best_epoch')}"
        f", threshold {evaluation.get('threshold', 0.5):.3f}, on the `{split}` split "
        f"({report.get('n', 0)} images)"
    )
    synthetic_badge(bool(evaluation.get("synthetic")))
    cols = st.columns(5)
    for col, (name, key, help_term) in zip(
        cols,
        [
            ("accuracy", "accuracy", None),
            ("sensitivity", "sensitivity", "sensitivity"),
            ("specificity", "specificity", "specificity"),
            ("F1", "f1", None),
            ("AUC", "roc_auc", "AUC"),
        ],
    ):
        value = report.get(key)
        col.metric(
            name,
            "-" if value is None else f"{value:.3f}",
            help=texts.help_text(help_term) if help_term else None,
        )


@st.fragment(run_every=f"{REFRESH_S}s")
def live() -> None:
    with user_errors():  # a damaged run folder is one message, not a traceback
        _live()


def _live() -> None:
    runs = store().list()
    if not runs:
        st.info("No runs yet: launch one on the Train page.", icon=":material/info:")
        st.page_link("pages/train.py", label="Train", icon=":material/model_training:")
        return
    statuses = {r.id: r.status() for r in runs}
    active = [r for r in runs if statuses[r.id].get("status") in ACTIVE]

    st.dataframe(
        runview.runs_table(runs),
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1),
            "val AUC": st.column_config.NumberColumn(format="%.3f", help=texts.help_text("AUC")),
            "test AUC": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    if active:
        st.subheader("Training now")
        for run in active:
            _active_run(run, statuses[run.id])

    st.subheader("Learning curves")
    by_id = {r.id: r for r in runs}
    left, right = st.columns([4, 1])
    key = _selection(runs, [r.id for r in active])
    chosen = left.multiselect(
        "Runs",
        list(by_id),
        key=key,
        format_func=lambda i: runview.run_label(by_id[i]),
        help="Several runs are overlaid, one colour each (dashed: train, solid: validation).",
    )
    smoothing = right.slider(
        "Smoothing",
        0.0,
        0.95,
        step=0.05,
        key=kept("runs_smoothing", 0.0),
        help="Exponential moving average over the points, as in TensorBoard.",
    )
    # Runs training now are always drawn; the picker adds others. (Under load the live
    # fragment can rerun before the browser has the picker's new value, and its stale
    # value would drop a run that had joined the picker.)
    shown = chosen + [r.id for r in active if r.id not in chosen]
    histories = {i: by_id[i].history() for i in shown}
    if any(histories.values()):
        st.plotly_chart(plots.learning_curves(histories, smoothing), key="learning_curves")
        st.caption(
            "Train accuracy, F1 and AUC are running values over each epoch's augmented "
            "batches; a widening gap to validation is a sign of "
            f"overfitting. ({texts.GLOSSARY['overfitting']})"
        )
    elif shown:
        st.caption("No training step logged yet; the curves appear as soon as one is.")

    ended = [by_id[i] for i in chosen if statuses[i].get("status") not in ACTIVE]
    if ended:
        st.subheader("Final results")
        for run in ended:
            if statuses[run.id].get("message"):
                st.caption(f"{run.id}: {statuses[run.id]['message']}")
            _final_results(run)
        st.page_link("pages/compare.py", label="Compare runs in detail", icon=":material/compare:")


st.title("Runs")
st.caption(f"Updated every {REFRESH_S} s from the run store `{store().root}`.")
live()
