"""Compare: two or more evaluated runs side by side, on the same split when possible."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cxr_core import plots
from cxr_core.compare import compare_table, evaluation_set
from cxr_core.runs import Run
from pages import ensure_app_shell, kept, run_picker, store, user_errors
from pages.common import runview, texts

ensure_app_shell()

SPLITS = {
    "test": "each run's test split",
    "val": "validation split",
    "official_val": "official val/ folder (16 images)",
}


def _split_of(run: Run, choice: str) -> str | None:
    return (run.evaluation() or {}).get("test_split") if choice == "test" else choice


def _report(run: Run, choice: str) -> dict | None:
    split = _split_of(run, choice)
    return (run.evaluation() or {}).get("splits", {}).get(split) if split else None


def _class_report(report: dict) -> pd.DataFrame:
    rows = {k: v for k, v in report["classification_report"].items() if isinstance(v, dict)}
    table = pd.DataFrame(rows).T.rename(columns={"f1-score": "f1"})
    return table.round(3).astype({"support": int})


def _roc_and_pr(reports: dict[str, dict]) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown("**ROC**", help=texts.help_text("AUC"))
        st.plotly_chart(plots.roc_curves(reports), key="roc")
        ref = plots.KERMANY_2018
        st.caption(
            f"★ Published reference: {ref['label']}; accuracy {ref['accuracy']:.1%}, "
            f"sensitivity {ref['sensitivity']:.1%}, specificity {ref['specificity']:.1%}, "
            f"AUC {ref['auc']}. A different model, split and protocol: for orientation, "
            "not a like-for-like comparison. Circles mark each run's threshold."
        )
    with right:
        st.markdown("**Precision-recall**")
        st.plotly_chart(plots.pr_curves(reports), key="pr")
        st.caption("Dotted lines: the share of pneumonia images (a random model's AP).")


def _confusion_matrices(reports: dict[str, dict]) -> None:
    for start in range(0, len(reports), 3):
        cols = st.columns(3)
        for col, (run_id, report) in zip(cols, list(reports.items())[start : start + 3]):
            with col:
                st.markdown(f"**{run_id}** (threshold {report['threshold']:.3f})")
                cm = report["confusion_matrix"]
                st.plotly_chart(plots.confusion_matrix(cm, False, "counts"), key=f"cm_{run_id}")
                st.plotly_chart(
                    plots.confusion_matrix(cm, True, "normalised per true class"),
                    key=f"cmn_{run_id}",
                )


def _class_reports(reports: dict[str, dict]) -> None:
    cols = st.columns(min(len(reports), 3))
    for i, (run_id, report) in enumerate(reports.items()):
        with cols[i % len(cols)]:
            st.markdown(f"**{run_id}** · accuracy {report['accuracy']:.3f}")
            st.dataframe(_class_report(report), width="stretch")


def _learning_curves(runs: list[Run]) -> None:
    smoothing = st.slider("Smoothing", 0.0, 0.95, step=0.05, key=kept("compare_smooth", 0.0))
    histories = {r.id: r.history() for r in runs}
    st.plotly_chart(plots.learning_curves(histories, smoothing), key="compare_curves")


def _cost(table: pd.DataFrame, choice: str) -> None:
    cost = table[["run", "arch", "params_M", "size_mb", "train_min", "best_epoch", "latency_ms"]]
    st.dataframe(cost, hide_index=True, width="stretch")
    score = {"test": "test_roc_auc", "val": "val_roc_auc"}.get(choice)
    if score:
        st.plotly_chart(plots.tradeoff(table, score), key="tradeoff")
        st.caption("Marker size grows with the weights file size.")


st.title("Compare")
st.caption(
    "Side-by-side results of finished runs. Numbers are only comparable when the runs were "
    "evaluated on the same images."
)

with user_errors():
    runs = runview.evaluated_runs(store())
    if len(runs) < 2:
        st.info(
            "Comparing needs at least two evaluated runs; train some on the Train page "
            f"({len(runs)} so far).",
            icon=":material/info:",
        )
        st.stop()
    left, right = st.columns([3, 2])
    with left:
        chosen = run_picker("Runs", runs, default=runs[:2], key="compare_runs")
    choice = right.selectbox(
        "Evaluated on",
        list(SPLITS),
        format_func=SPLITS.get,
        key=kept("compare_split", "test"),
        help="test: the official test/ folder when the data have one, else an internal test "
        "split carved from train by patient. val picked each run's epoch and threshold.",
    )
    if len(chosen) < 2:
        st.info("Pick two or more runs.", icon=":material/info:")
        st.stop()

    reports = {r.id: rep for r in chosen if (rep := _report(r, choice))}
    missing = [r.id for r in chosen if r.id not in reports]
    if missing:
        st.warning(f"No `{choice}` results for: {', '.join(missing)}", icon=":material/warning:")
    if not reports:
        st.stop()
    sets = {r.id: evaluation_set(r, _split_of(r, choice) or "") for r in chosen}
    if len(set(sets.values())) > 1:
        detail = ", ".join(f"{i}: {s or 'unknown'}" for i, s in sets.items())
        st.warning(
            "These runs were evaluated on **different image sets**, so their numbers are not "
            f"directly comparable (set fingerprints: {detail}).",
            icon=":material/warning:",
        )
    synthetic = [r.id for r in chosen if runview.is_synthetic_run(r)]
    if synthetic:
        st.warning(
            f"Evaluated on **synthetic** images: {', '.join(synthetic)}. "
            "Their scores say nothing about real radiographs.",
            icon=":material/science:",
        )

    st.subheader("Summary")
    table = compare_table(chosen)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "test_sensitivity": st.column_config.NumberColumn(help=texts.help_text("sensitivity")),
            "test_specificity": st.column_config.NumberColumn(help=texts.help_text("specificity")),
            "test_roc_auc": st.column_config.NumberColumn(help=texts.help_text("AUC")),
        },
    )
    st.caption("Click a column header to sort.")
    st.download_button(
        "Download the table as CSV",
        table.to_csv(index=False).encode(),
        file_name="cxr-lab-comparison.csv",
        mime="text/csv",
        icon=":material/download:",
    )

    # Only the open tab runs: with 20 runs the others would build 40 more charts and 20
    # tables on every rerun, and the browser would draw them all.
    views = {
        "ROC & PR": lambda: _roc_and_pr(reports),
        "Confusion matrices": lambda: _confusion_matrices(reports),
        "Per-class reports": lambda: _class_reports(reports),
        "Learning curves": lambda: _learning_curves(chosen),
        "Cost": lambda: _cost(table, choice),
    }
    labels = list(views)
    tabs = st.tabs(labels, key=kept("compare_tab", labels[0]), on_change="rerun")
    for tab, draw in zip(tabs, views.values()):
        if tab.open:
            with tab:
                draw()
