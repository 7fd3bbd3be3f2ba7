"""Compare: runs side by side on the same images, every metric with its 95% interval,
paired tests, an operating point and calibration per run, and the shift from the internal
split to an outside set. The chosen runs, set and tab live in the URL."""

from __future__ import annotations

import contextlib
import hashlib
import uuid

import pandas as pd
import streamlit as st

from cxr_core.analysis import comparison, html_report, plots, run_calibration
from cxr_core.errors import UserError
from cxr_core.execution import scoring_jobs
from cxr_core.predict import adaptation_catalogue, ensembles, evalsets
from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring.metrics import CATALOGUE
from cxr_core.scoring.selection import Selection
from cxr_core.scoring.stats import PairedResult
from cxr_core.store.runs import Run
from pages import (
    data_spec,
    ensure_app_shell,
    keep_in_url,
    kept,
    restore_from_url,
    run_picker,
    session_owner,
    store,
    user_errors,
)
from pages.common import comparison as page_words
from pages.common import runview, texts
from pages.views import cam_report as cam_views
from pages.views import mistakes as mistake_views

ensure_app_shell()

POLL_S = 2  # seconds between two looks at a background scoring job


@st.cache_data(ttl=60, show_spinner=False)
def _default_target(spec: str) -> scoring_jobs.Target | None:
    return page_words.default_target(spec)


@st.cache_data(ttl=60, show_spinner="Listing the folder ...")
def _target(folder: str, split: str) -> scoring_jobs.Target:
    return scoring_jobs.target(folder, split)


@st.cache_data(max_entries=64, show_spinner=False)
def _paired(ident: tuple, _sets: dict[str, EvalSet]) -> list[PairedResult]:
    return comparison.paired(_sets)


@st.cache_data(max_entries=256, show_spinner=False)
def _curves(ident: tuple, _evalset: EvalSet) -> dict:
    return comparison.curve_report(_evalset)


def _ident(sets: dict[str, EvalSet]) -> tuple:
    """What the cached tests and curves of ``sets`` depend on: each run's scores."""
    return tuple(
        (i, s.key, s.threshold, hashlib.sha1(s.probs.tobytes()).hexdigest())
        for i, s in sets.items()
    )


# --------------------------------------------------------------------------- choosing

# Query parameter -> the widget key it restores: the choice lives in the URL, so a refresh
# or a shared link shows the same comparison. Run ids and the set's fingerprint go in the
# URL, not the labels the widgets show (long, and they change with a run's tags). (Comments,
# not docstrings: Streamlit would print a bare string of a page's script.)
URL = {"runs": "compare_runs", "set": "compare_set", "tab": "compare_tab", "focus": "compare_focus"}


def _select_all(key: str, ids: list[str]) -> None:
    st.session_state[key] = ids


def _select_comparable(key: str, runs: list[Run]) -> None:
    st.session_state[key] = [r.id for r in comparison.comparable_runs(runs)]


def _pick_runs(runs: list[Run]) -> list[Run]:
    """The runs to compare (all / none in one click), kept in the URL."""
    # One row that wraps: fixed column shares left All and None slivers on a narrow screen.
    row = st.container(horizontal=True, vertical_alignment="bottom")
    with row:
        chosen = run_picker("Runs", runs, runs[:2], "compare_runs", wrap=True)
    row.button(
        "All",
        on_click=_select_comparable,
        args=("compare_runs", runs),
        help="Choose every run scored on the same images as the most others (real films "
        "before synthetic ones): runs that share no images cannot be compared",
    )
    row.button("None", on_click=_select_all, args=("compare_runs", []), help="Clear")
    return chosen


def _just_scored() -> str | None:
    """The set this session's background job scored, once the job has ended (then the
    job is forgotten, so the choice is made once)."""
    job = scoring_jobs.current(store().root)
    if job is None or job.id != st.session_state.get("compare_job"):
        return None
    progress = scoring_jobs.progress(job)
    if not progress.finished:
        return None
    del st.session_state["compare_job"]
    keys = set(progress.done.values())
    return keys.pop() if len(keys) == 1 else None


def _pick_set(chosen: list[Run]) -> EvalSet | None:
    """The image set to compare on, among those every chosen run was scored on (an
    outside test set first, or the one this session just had scored); kept in the URL.
    None when they share none."""
    shared = evalsets.shared_sets(chosen)
    if not shared:
        return None
    by_key = {s.key: s for s in shared}
    key = kept("compare_set", shared[0].key)
    finished = _just_scored()
    if finished in by_key:  # a scoring job just ended: show what it scored
        st.session_state[key] = finished
    if st.session_state[key] not in by_key:
        st.session_state[key] = shared[0].key
    choice = st.selectbox(
        "Evaluated on",
        list(by_key),
        format_func=lambda k: page_words.set_label(by_key[k]),
        key=key,
        help="The image sets every chosen run was scored on: numbers are comparable only "
        "on the same images. Outside test sets come first; internal splits were carved "
        "from the training folder and are easier.",
    )
    return by_key[choice]


# --------------------------------------------------------------------------- ensembles


def _make_ensemble(ids: list[str]) -> None:
    """Make an ensemble of the runs ``ids``, owned by this session as a run launched on
    the Train page is, and add it to the chosen runs. A callback, so it runs before the
    picker is drawn; what happened is kept for the page to say."""
    st.session_state["compare_ensemble_nonce"] = uuid.uuid4().hex
    try:
        run = ensembles.create(store(), ids, owner=session_owner())
    except UserError as exc:
        st.session_state["compare_ensemble_said"] = ("error", str(exc))
        return
    st.session_state["compare_runs"] = [*ids, run.id]
    st.session_state["compare_ensemble_said"] = (
        "success",
        f"Made the ensemble **{run.id}** (the mean probability of {', '.join(ids)}, its "
        "threshold chosen on their shared validation split) and added it to the runs. "
        + Selection.from_dict(run.evaluation()["selection"]).sentence(),
    )


def _ensemble_offer(chosen: list[Run]) -> None:
    """One click makes an ensemble of the chosen runs; they must share one validation
    split, else the refusal is one line and nothing is made."""
    said = st.session_state.pop("compare_ensemble_said", None)
    if said:
        kind, text = said
        show = st.success if kind == "success" else st.error
        show(text, icon=":material/stacks:" if kind == "success" else ":material/error:")
    if len(chosen) < 2:
        return
    # A new key after every click: a double click's second press matches no button.
    nonce = st.session_state.setdefault("compare_ensemble_nonce", uuid.uuid4().hex)
    st.button(
        "Make an ensemble of these runs",
        key=f"compare_ensemble_{nonce}",
        on_click=_make_ensemble,
        args=([r.id for r in chosen],),
        icon=":material/stacks:",
        help="A new run that predicts the mean probability of the chosen runs, with its own "
        "threshold chosen on the validation split they share; it refers to them, no weights "
        "are copied.",
    )


# --------------------------------------------------------------------------- scoring


def _score_offer(chosen: list[Run], evalset: EvalSet | None) -> None:
    """Score the chosen runs that lack a folder's set, in the background."""
    job = scoring_jobs.current(store().root)
    busy = job is not None and not scoring_jobs.progress(job).finished
    suggested = _default_target(data_spec())
    outside = evalset is not None and not evalset.internal
    title = "Score runs on a folder" + (" (scoring now)" if busy else "")
    with st.expander(title, expanded=busy or not outside, icon=":material/playlist_add:"):
        st.caption(
            "Runs are comparable only on the same images. Score runs on a labelled folder "
            "(a Kaggle-layout root with test/, a root holding only test/, or NORMAL/ and "
            "PNEUMONIA/ directly). Each run is scored by its own background process, one "
            "at a time, and keeps the result (a bundled run's goes to the runs folder)."
        )
        left, right = st.columns([3, 1])
        folder = left.text_input(
            "Folder",
            key=kept("compare_score_folder", suggested.data if suggested else ""),
            placeholder="/data/chest_xray",
        )
        split = right.radio(
            "Images",
            list(scoring_jobs.FOLDER_SPLITS),
            format_func={"test": "test/", "official_val": "val/ (official)"}.get,
            key=kept("compare_score_split", "test"),
            horizontal=True,
        )
        if folder.strip():
            with user_errors():
                found = _target(folder.strip(), split)
                todo = [r for r in chosen if found.key not in comparison.scored_sets(r)]
                if not todo:
                    st.success(f"Every chosen run is scored on {found.name}.")
                else:
                    names = ", ".join(r.id for r in todo)
                    st.markdown(f"**{found.name}**: not yet scored for {names}.")
                    if st.button(
                        f"Score {len(todo)} run(s) in the background",
                        disabled=busy,
                        icon=":material/play_arrow:",
                        key="compare_score",
                    ):
                        job = scoring_jobs.launch(
                            [r.id for r in todo], found.data, split, store().root
                        )
                        st.session_state["compare_job"] = job.id
                        st.rerun()
        if job is not None:
            st.fragment(run_every=POLL_S if busy else None)(_job_progress)(
                job, busy, [r.id for r in chosen]
            )


def _job_progress(job: scoring_jobs.EvalJob, was_busy: bool, chosen: list[str]) -> None:
    """The background job's progress, polled while it works; when it ends, the whole page
    runs again once, to list (and choose) the new set. Failures of the chosen runs are
    shown with their log."""
    progress = scoring_jobs.progress(job)
    where = f"{job.split} of {job.data}"
    if progress.finished:
        st.caption(f"Last scoring job ({where}): {len(progress.done)} of {len(job.runs)} done.")
    else:
        doing = f"scoring **{progress.running}**" if progress.running else "starting"
        done = f"{len(progress.done)} of {len(job.runs)} done"
        st.progress(progress.fraction, text=f"{doing} on {where} · {done}")
    for run_id, error in progress.failed.items():
        if run_id in chosen:
            st.error(f"{run_id}: {error} (log: {job.log(run_id)})", icon=":material/error:")
    if progress.finished and was_busy:
        st.rerun(scope="app")


# --------------------------------------------------------------------------- the tabs


def _roc_and_pr(sets: dict[str, EvalSet]) -> None:
    reports = {i: _curves(_ident({i: s}), s) for i, s in sets.items()}
    corner = st.toggle(
        "Zoom into the corner",
        key=kept("compare_zoom", False),
        help="Show the best 30% of each axis, where good runs' curves part.",
    )
    reference = comparison.shows_reference(next(iter(sets.values())))
    st.plotly_chart(
        plots.roc_pr(reports, reference=reference, corner=0.3 if corner else None), key="roc_pr"
    )
    ref = plots.KERMANY_2018
    st.caption(
        "Circles mark each run's threshold; dotted lines on the right, the share of "
        "pneumonia images (a random model's AP). A click on a run in the legend hides it. "
        + (
            f"★ Published reference: {ref['label']}; accuracy {ref['accuracy']:.1%}, "
            f"sensitivity {ref['sensitivity']:.1%}, specificity {ref['specificity']:.1%}, "
            f"AUC {ref['auc']}. A different model, split and protocol: for orientation, not "
            "a like-for-like comparison."
            if reference
            else "No published reference point: these images are not real chest films."
        ),
        help=texts.help_text("AUC"),
    )


def _metrics_and_tests(table: pd.DataFrame, sets: dict[str, EvalSet]) -> None:
    st.markdown("**Every metric**")
    st.dataframe(
        comparison.metrics_by_run(table),
        hide_index=True,
        width="stretch",
        column_config={"metric": st.column_config.TextColumn(pinned=True)},
    )
    keys = st.multiselect(
        "Metrics",
        list(CATALOGUE),
        format_func=lambda k: CATALOGUE[k].label,
        key=kept("compare_forest", list(comparison.HEADLINE)),
    )
    if keys:
        st.plotly_chart(plots.forest(table, keys), key="forest")
        st.caption(
            "Each run's value with its 95% interval (bootstrap over patients, 1000 "
            "resamples); each axis spans the intervals, not 0 to 1."
        )
    if len(sets) < 2:
        return
    pairs = _paired(_ident(sets), sets)
    st.markdown("**Paired tests**")
    st.caption(
        "Same images, so each pair is tested on its disagreements: McNemar's exact test on "
        "the decisions at each run's threshold, DeLong's test on the AUCs"
        + (f"; p-values adjusted by Holm over the {len(pairs)} pairs." if len(pairs) > 1 else ".")
    )
    st.dataframe(comparison.pairs_table(pairs), hide_index=True, width="stretch")
    st.markdown("\n".join(f"- **{p.a} vs {p.b}**: {p.verdict}" for p in pairs))


def _focus(sets: dict[str, EvalSet]) -> str:
    """The run the per-run tabs show."""
    key = kept("compare_focus", next(iter(sets)))
    if st.session_state[key] not in sets:
        st.session_state[key] = next(iter(sets))
    chosen = st.selectbox("Run", list(sets), key=key)
    keep_in_url(focus=chosen)
    return chosen


def _images(by_id: dict[str, Run], sets: dict[str, EvalSet]) -> None:
    """Image by image: one run's mistakes by confusion cell and all its scores; for two
    runs, the films where they disagree."""
    run_id = _focus(sets)
    mistake_views.confusion_gallery(by_id[run_id], sets[run_id])
    with st.expander("Every image with its score"):
        mistake_views.per_image_table(by_id[run_id], sets[run_id])
    if len(sets) == 2:
        (a, set_a), (b, set_b) = sets.items()
        st.subheader("Where the two runs disagree")
        mistake_views.disagreements(by_id[a], set_a, by_id[b], set_b)
    st.subheader("Can these CAMs be trusted?")
    cam_views.run_cam_checks(by_id, sets)


def _set_threshold(key: str, value: float) -> None:
    st.session_state[key] = round(value, 3)


def _operating_point(by_id: dict[str, Run], sets: dict[str, EvalSet]) -> None:
    run_id = _focus(sets)
    run, evalset = by_id[run_id], sets[run_id]
    key = f"compare_thr_{run_id}_{evalset.key}"
    if not st.session_state.get("_compare_thr_from_url"):  # a refresh keeps the slider
        st.session_state["_compare_thr_from_url"] = True
        with contextlib.suppress(TypeError, ValueError):
            st.session_state[key] = min(
                max(round(float(st.query_params.get("threshold")), 3), 0), 1
            )
    st.session_state.setdefault(key, round(evalset.threshold, 3))
    chosen = comparison.val_thresholds(run)
    buttons = st.container(horizontal=True)  # wraps: fixed columns cut the labels at 800 px
    buttons.button(
        f"Run's threshold ({evalset.threshold:.3f})",
        on_click=_set_threshold,
        args=(key, evalset.threshold),
    )
    for name, value in chosen.items():
        buttons.button(
            f"{name} on val ({value:.3f})",
            on_click=_set_threshold,
            args=(key, value),
            help="Chosen on this run's validation split, never on the set compared here.",
        )
    threshold = st.slider(
        "Threshold",
        0.0,
        1.0,
        step=0.001,
        format="%.3f",
        key=key,
        help="Explore only: the saved run keeps its own threshold.",
    )
    keep_in_url(threshold=f"{threshold:.3f}")
    point = comparison.operating_point(evalset, threshold)
    # A row that wraps: five fixed columns cut the numbers ("99.…") on a narrow screen.
    figures = st.container(horizontal=True)
    for name in ("sensitivity", "specificity", "PPV", "NPV", "accuracy"):
        figures.metric(name, comparison.percent(point[name]), width="content")
    st.markdown(page_words.per_1000(point))
    left, right = st.columns([2, 3])
    with left:
        title = f"{run_id} at {threshold:.3f}"
        st.plotly_chart(plots.confusion_matrix(point["confusion"], False, title), key="op_cm")
    with right:
        marks = {f"slider {threshold:.3f}": threshold} | {
            f"{name} (val)": value for name, value in chosen.items()
        }
        figure = plots.score_distributions(evalset.labels, evalset.probs, marks)
        st.plotly_chart(figure, key="op_scores")
    st.markdown("**Where each threshold lands on this set**")
    st.dataframe(comparison.operating_points(run, evalset), hide_index=True, width="stretch")
    st.caption("The slider never changes the saved run; its threshold stays as trained.")


def _calibration(by_id: dict[str, Run], sets: dict[str, EvalSet]) -> None:
    summaries = run_calibration.calibration_summaries([by_id[i] for i in sets], sets)
    table = run_calibration.calibration_table(summaries).round(4)
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(
        "ECE: the mean gap between predicted probability and observed share of pneumonia "
        "over 10 bins; Brier: the mean squared error of the probabilities (lower is better)."
    )
    run_id = _focus(sets)
    run = by_id[run_id]
    saved = run.calibration()
    if st.button(
        "Fit a temperature on validation" if saved is None else "Fit the temperature again",
        help="Temperature scaling, fitted on this run's validation split only (never on "
        "test) and kept beside the run; the weights and the threshold are unchanged.",
    ):
        with user_errors():
            run_calibration.fit_temperature(run)
            st.rerun()
    summary = summaries[run_id]
    curves = {"as trained": summary["before"]["bins"]}
    if "after" in summary:
        curves[f"temperature {summary['temperature']:.2f} (fitted on val)"] = summary["after"][
            "bins"
        ]
        st.caption(
            f"ECE {summary['before']['ece']:.4f} → {summary['after']['ece']:.4f}, Brier "
            f"{summary['before']['brier']:.4f} → {summary['after']['brier']:.4f}. Scaling keeps "
            "the order of the images: the ROC curve and AUC are unchanged."
        )
    st.plotly_chart(plots.reliability(curves, title=run_id), key="reliability")


def _shift(chosen: list[Run], evalset: EvalSet) -> None:
    frames = comparison.shifts(chosen, evalset)
    if not frames:
        st.info(
            "No run here has both an internal test split and an outside set: score them "
            "on a folder with a test/ (above) to see the shift.",
            icon=":material/info:",
        )
        return
    st.plotly_chart(plots.shift(frames), key="shift")
    outside = next(iter(frames.values())).query("where == 'outside'")["name"].iloc[0]
    st.caption(
        "The internal test split comes from the training folder (the same hospital, the "
        f"same years); the outside set, **{outside}** for every run shown, is what a run "
        "does on new films."
    )
    if missing := [r.id for r in chosen if r.id not in frames]:
        st.caption(
            f"Not shown: {', '.join(missing)} (no internal test split, or not scored on "
            f"{outside} yet)."
        )
    with st.expander("Each run's numbers, with intervals", expanded=len(frames) <= 3):
        for run_id, frame in frames.items():
            st.markdown(f"**{run_id}**")
            st.caption(comparison.shift_names(frame))
            st.dataframe(comparison.shift_table(frame), hide_index=True, width="stretch")


def _confusion_matrices(sets: dict[str, EvalSet]) -> None:
    items = list(sets.items())
    for start in range(0, len(items), 3):
        cols = st.columns(3)
        for col, (run_id, evalset) in zip(cols, items[start : start + 3]):
            with col:
                st.markdown(f"**{run_id}** (threshold {evalset.threshold:.3f})")
                cm = comparison.operating_point(evalset, evalset.threshold)["confusion"]
                st.plotly_chart(plots.confusion_matrix(cm, False, "counts"), key=f"cm_{run_id}")
                st.plotly_chart(
                    plots.confusion_matrix(cm, True, "normalised per true class"),
                    key=f"cmn_{run_id}",
                )


def _learning_curves(chosen: list[Run]) -> None:
    smoothing = st.slider("Smoothing", 0.0, 0.95, step=0.05, key=kept("compare_smooth", 0.0))
    histories = {r.id: r.history() for r in chosen}
    st.plotly_chart(plots.learning_curves(histories, smoothing), key="compare_curves")
    st.caption("By epoch, so runs with different batch sizes line up.")


def _cost(table: pd.DataFrame) -> None:
    facts = table[list(comparison.FACT_LABELS)].rename(columns=comparison.FACT_LABELS)
    st.dataframe(facts, hide_index=True, width="stretch")
    st.plotly_chart(plots.tradeoff(table, "roc_auc", "AUC on this set (95% CI)"), key="tradeoff")
    st.caption("Marker size grows with the weights file size.")


# --------------------------------------------------------------------------- the page

st.title("Compare")
st.caption("Runs side by side on the same images, every number with its 95% confidence interval.")

with user_errors():
    runs = runview.evaluated_runs(store())
    if not runs:
        st.info(
            "Comparing needs evaluated runs; train some on the Train page.",
            icon=":material/info:",
        )
        st.stop()
    restore_from_url("compare", URL, lists=("runs",))
    chosen = _pick_runs(runs)
    keep_in_url(runs=[r.id for r in chosen])
    if not chosen:
        st.info("Pick one or more runs.", icon=":material/info:")
        st.stop()
    _ensemble_offer(chosen)
    by_id = {r.id: r for r in chosen}
    evalset = _pick_set(chosen)
    if evalset is not None:
        keep_in_url(set=evalset.key)
    _score_offer(chosen, evalset)
    if evalset is None:
        st.warning(
            "These runs were never scored on the same images, so their numbers cannot be "
            "compared: score them on one folder above.",
            icon=":material/warning:",
        )
        st.stop()
    if evalset.internal:
        st.warning(
            f"**{evalset.split}** was carved from the training folder: the training "
            "distribution, easier than new films. Score the runs on an outside test set "
            "for numbers that carry over.",
            icon=":material/warning:",
        )
    synthetic = [r.id for r in chosen if runview.is_synthetic_run(r)]
    if synthetic:
        st.warning(
            f"Evaluated on **synthetic** images: {', '.join(synthetic)}. "
            "Their scores say nothing about real radiographs.",
            icon=":material/science:",
        )
    adapted = [r.id for r in chosen if adaptation_catalogue.is_adapted(r)]
    if adapted:
        st.warning(
            f"Adapted without labels: {', '.join(adapted)}. Their figures on the films they "
            f"were adapted on are marked *{adaptation_catalogue.ON_THESE_FILMS}* (see the figures "
            "column): transductive, not to be read as the inductive runs' are.",
            icon=":material/tune:",
        )
    sets = comparison.sets_on(chosen, evalset.key)
    table = comparison.compare_table(chosen, sets)

    st.subheader("Summary")
    st.dataframe(
        comparison.readable_table(table, comparison.HEADLINE),
        hide_index=True,
        width="stretch",
        column_config={
            info.label: st.column_config.TextColumn(help=info.glossary)
            for info in CATALOGUE.values()
        },
    )
    st.caption(
        f"On {evalset.name}; 95% intervals from 1000 bootstrap resamples of patients, at "
        "each run's own threshold (chosen on its validation split). "
        f"*{comparison.PLATEAU_COLUMN}*: the thresholds its validation split cannot tell "
        "from the chosen one. Every metric: the Metrics & tests tab."
    )
    for note in comparison.plateau_notes(chosen):
        st.caption(note)
    if len(sets) == 2:
        (pair,) = _paired(_ident(sets), sets)
        st.info(f"**Paired test.** {pair.verdict}", icon=":material/balance:")
    buttons = st.container(horizontal=True)
    buttons.download_button(
        "Table as CSV",
        table.to_csv(index=False).encode(),
        file_name="cxr-lab-comparison.csv",
        mime="text/csv",
        icon=":material/download:",
    )
    buttons.download_button(
        "Download report",
        lambda: html_report.html_report(chosen, sets).encode(),
        file_name="cxr-lab-report.html",
        mime="text/html",
        icon=":material/description:",
        help="One HTML file that opens offline: runs, configs, data, versions, metrics with "
        "intervals, paired tests, ROC/PR, confusion matrices, operating points, calibration.",
    )

    # Only the open tab runs: with 20 runs the others would build dozens of charts and
    # tables on every rerun, and the browser would draw them all.
    views = {
        "ROC & PR": lambda: _roc_and_pr(sets),
        "Metrics & tests": lambda: _metrics_and_tests(table, sets),
        "Operating point": lambda: _operating_point(by_id, sets),
        "Calibration": lambda: _calibration(by_id, sets),
        "Shift": lambda: _shift(chosen, evalset),
        "Confusion matrices": lambda: _confusion_matrices(sets),
        "Images": lambda: _images(by_id, sets),
        "Learning curves": lambda: _learning_curves(chosen),
        "Cost": lambda: _cost(table),
    }
    labels = list(views)
    tab_key = kept("compare_tab", labels[0])
    if st.session_state[tab_key] not in labels:
        st.session_state[tab_key] = labels[0]
    tabs = st.tabs(labels, key=tab_key, on_change="rerun")
    keep_in_url(tab=st.session_state[tab_key])
    for tab, draw in zip(tabs, views.values()):
        if tab.open:
            with tab:
                draw()
