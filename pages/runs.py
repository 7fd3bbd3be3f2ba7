"""Runs: every run with its status, live progress and curves, and its final results.

Everything is read from the run store every two seconds (a fragment), so it shows runs
started from any session or from the CLI, and survives refreshes.
"""

from __future__ import annotations

import streamlit as st

from cxr_core.analysis import plots
from cxr_core.execution.jobs import log_tail
from cxr_core.predict import adaptation_catalogue, ensembles, evalsets
from cxr_core.scoring.metrics import CATALOGUE, ThresholdChoice
from cxr_core.scoring.selection import Selection
from cxr_core.scoring.stats import format_ci
from cxr_core.store.runs import ACTIVE, Run, may_change
from pages import (
    ensure_app_shell,
    is_operator,
    kept,
    session_owner,
    store,
    synthetic_badge,
    user_errors,
)
from pages.common import runview, texts

ensure_app_shell()

REFRESH_S = 2
WATCHED = "runs_watched"  # session key: the runs and statuses the page was drawn from
HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")
STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")


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
    allowed = may_change(run, session_owner(), is_operator())
    if (
        allowed
        and not run.cancel_requested()
        and cancel.button("Cancel", key=f"cancel_{run.id}", icon=":material/stop_circle:")
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
    """The run's scores on every set it was evaluated on, each with its 95% CI, so an
    internal split and an outside test set stand side by side (the shift, made visible)."""
    evaluation = run.evaluation()
    if not evaluation:
        return
    if evaluation.get("averaged"):
        trained = f"weights {evaluation['averaged']}"
    elif evaluation.get("best_epoch") is not None:
        trained = f"best epoch {evaluation['best_epoch']}"
    else:
        trained = "an ensemble of its members, no training of its own"
    st.markdown(
        f"**{run.label}**: {run.status().get('status')}, {trained}, threshold "
        f"{evaluation.get('threshold', 0.5):.3f}"
    )
    plateau = ThresholdChoice.from_record(evaluation)
    if plateau is not None:
        st.caption(f"Threshold: {plateau.sentence()}.")
    chosen = Selection.from_dict(evaluation.get("epoch_choice") or evaluation.get("selection"))
    if chosen is not None:
        st.caption(
            f"{'Best epoch' if evaluation.get('epoch_choice') else 'Ensemble'}: {chosen.sentence()}"
        )
    synthetic_badge(bool(evaluation.get("synthetic")))
    if adaptation_catalogue.is_adapted(run):
        st.info(f"**Not inductive**: {adaptation_catalogue.describe(run)}.", icon=":material/tune:")
    sets = evalsets.run_sets(run).values()
    rows = []
    for evalset in sorted(sets, key=lambda e: (e.split == "val", e.internal, -e.n)):
        values, ci = evalset.metrics(), evalset.ci95()
        rows.append(
            {
                "evaluated on": evalset.name,
                "figures": adaptation_catalogue.figures_label(run, evalset.key),
                **{
                    CATALOGUE[k].label: format_ci(values[k], ci[k], CATALOGUE[k].percent)
                    for k in HEADLINE
                },
            }
        )
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(
        "95% intervals by patient bootstrap. Internal splits are carved from train/ and "
        "look like it; an outside test set (the official test/) is the honest figure."
    )


def _manage(runs: list[Run]) -> None:
    """Name, tag, annotate or delete one run; a visitor may change only the runs this
    browser session launched, an operator any (bundled runs are never deleted)."""
    by_id = {r.id: r for r in runs}
    run_id = st.selectbox(
        "Run", list(by_id), format_func=lambda i: runview.run_label(by_id[i]), key="manage_run"
    )
    run = by_id[run_id]
    allowed = may_change(run, session_owner(), is_operator())
    if not allowed:
        st.caption("Only the session that launched this run (or an operator) may change it.")
    meta = run.meta()
    with st.form(f"meta_{run.id}", border=False):
        name = st.text_input("Name", meta.get("name", ""), disabled=not allowed)
        tags = st.text_input(
            "Tags", ", ".join(meta.get("tags", [])), disabled=not allowed, help="comma-separated"
        )
        note = st.text_area("Note", meta.get("note", ""), disabled=not allowed)
        if st.form_submit_button("Save", disabled=not allowed):
            with user_errors():
                run.set_meta(name=name, tags=tags, note=note)
                st.toast(f"Saved {run.id}")
    deletable = allowed and not run.bundled and run.status().get("status") not in ACTIVE
    if st.button("Delete this run ...", disabled=not deletable, icon=":material/delete:"):
        st.session_state["delete_asked"] = run.id
    if st.session_state.get("delete_asked") == run.id and deletable:
        st.warning(f"Delete **{run.label}** (`{run.id}`) and everything recorded for it?")
        yes, no = st.columns(2)
        if yes.button("Delete for good", type="primary"):
            st.session_state.pop("delete_asked")
            store().delete(run)
            st.rerun()
        if no.button("Keep it"):
            st.session_state.pop("delete_asked")
            st.rerun()


def _state() -> list:
    """What the page draws changes with: the runs and their statuses (progress included)."""
    return [(run.id, run.status()) for run in store().list()]


@st.fragment(run_every=f"{REFRESH_S}s")
def _watch() -> None:
    """Rerun the page when a run was added, removed or has moved on (here or from the
    CLI): a status read per run while nothing changes, not the tables, the intervals and
    the charts again."""
    with user_errors():
        if _state() != st.session_state.get(WATCHED):
            st.rerun()


def _filters(runs: list[Run]) -> dict:
    tags = sorted({t for r in runs for t in r.meta().get("tags", [])})
    archs = sorted({a for r in runs if (a := r.config().get("arch"))})
    cols = st.columns(3)
    return {
        "status": cols[0].selectbox("Status", [None, *STATES], key=kept("runs_status", None)),
        "arch": cols[1].selectbox("Architecture", [None, *archs], key=kept("runs_arch", None)),
        "tag": cols[2].selectbox("Tag", [None, *tags], key=kept("runs_tag", None)),
    }


def _live() -> None:
    everything = store().list()
    chosen_filters = _filters(everything) if everything else {}
    runs = store().list(**chosen_filters) if any(chosen_filters.values()) else everything
    if not runs:
        st.info("No runs yet: launch one on the Train page.", icon=":material/info:")
        st.page_link("pages/train.py", label="Train", icon=":material/model_training:")
        return
    statuses = {r.id: r.status() for r in runs}
    active = [r for r in runs if statuses[r.id].get("status") in ACTIVE]

    st.dataframe(
        runview.runs_table(runs, statuses),
        hide_index=True,
        width="stretch",
        placeholder="—",
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0, max_value=1, width="small"
            ),
            "val AUC": st.column_config.NumberColumn(format="%.3f", help=texts.help_text("AUC")),
            "test AUC": st.column_config.NumberColumn(format="%.3f"),
            "outside AUC": st.column_config.NumberColumn(format="%.3f"),
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
    elif any(not ensembles.is_ensemble(by_id[i]) for i in shown):
        st.caption("No training step logged yet; the curves appear as soon as one is.")
    elif shown:
        st.caption("An ensemble has no training curves of its own: choose its members.")

    ended = [by_id[i] for i in chosen if statuses[i].get("status") not in ACTIVE]
    if ended:
        st.subheader("Final results")
        for run in ended:
            if statuses[run.id].get("message"):
                st.caption(f"{run.id}: {statuses[run.id]['message']}")
            _final_results(run)
        st.page_link("pages/compare.py", label="Compare runs in detail", icon=":material/compare:")


st.title("Runs")
st.caption(f"Checked every {REFRESH_S} s for changes in the run store `{store().root}`.")
with user_errors():  # a damaged run folder is one message, not a traceback
    st.session_state[WATCHED] = _state()
    _live()
_watch()
with st.expander("Name, tag or delete a run"), user_errors():
    if everything := store().list():
        _manage(everything)
