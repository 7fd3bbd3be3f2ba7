"""Errors, image by image, for one run on one evaluation set (or two runs on the same
set): the per-image table, the images of a confusion-matrix cell, and the images the two
runs disagree on, each with its probability against the threshold and its CAM.

Every widget key starts with the run and the set (or ``key``), so a page can show these
views for several runs at once."""

from __future__ import annotations

import functools

import streamlit as st

from cxr_core.analysis import mistakes, plots
from cxr_core.errors import UserError
from cxr_core.predict.evalsets import EvalSet
from cxr_core.predict.inference import CAM_METHODS, overlay
from cxr_core.scoring import stats
from cxr_core.scoring.metrics import confusion
from cxr_core.settings import CLASSES
from cxr_core.store.runs import Run
from pages.common import gallery
from pages.common.gallery import CELLS, ORDERS
from pages.views import cam

PER_PAGE = 8
COLUMNS = 4
PAIRS_PER_PAGE = 4


def _key(*parts: object) -> str:
    return "err_" + "_".join(str(p) for p in parts)


def per_image_table(run: Run, evalset: EvalSet, key: str | None = None) -> None:
    """Every image of the set with its true label, probability, decision at the run's
    threshold and whether it is right; filter by outcome, cell or name; sort by any column."""
    key = key or _key(run.id, evalset.key)
    table = gallery.image_table(evalset)
    c1, c2, c3 = st.columns([2, 3, 3])
    show = c1.radio(
        "Show", ["all", "mistakes", "correct"], horizontal=True, key=f"{key}_table_show"
    )
    cells = c2.multiselect(
        "Cells",
        list(CELLS),
        default=list(CELLS),
        format_func=lambda c: f"{c}: {CELLS[c][2]}",
        key=f"{key}_table_cells",
    )
    text = c3.text_input("File or patient contains", key=f"{key}_table_text")
    keep = table["cell"].isin(cells)
    if show != "all":
        keep &= table["correct"] == (show == "correct")
    if text:
        keep &= table["file"].str.contains(text, case=False, regex=False) | table[
            "patient"
        ].str.contains(text, case=False, regex=False)
    shown = table[keep].sort_values(["correct", "confidence"], ascending=[True, False])
    st.caption(
        f"{len(shown)} of {len(table)} images · threshold {evalset.threshold:.4f} · "
        "mistakes first; confidence: how far past the threshold the decision lies, in "
        "log-odds; click a column to sort"
    )
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        key=f"{key}_table",
        column_config={
            "probability": st.column_config.ProgressColumn(
                "P(pneumonia)", format="%.3f", min_value=0.0, max_value=1.0
            ),
            "correct": st.column_config.CheckboxColumn("right"),
            "confidence": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    st.download_button(
        "CSV",
        shown.to_csv(index=False).encode(),
        file_name=f"{run.id}-{evalset.split}-images.csv",
        mime="text/csv",
        key=f"{key}_table_csv",
        icon=":material/download:",
    )


def _pick_clicked(chart_key: str, pick_key: str) -> None:
    """A click on the matrix picks its cell in the cell picker."""
    points = st.session_state[chart_key]["selection"]["points"]
    if points:
        truth = str(points[0]["y"]).removeprefix("true ")
        decision = str(points[0]["x"]).removeprefix("pred ")
        st.session_state[pick_key] = gallery.cell_of(truth, decision)


def _images_reachable(evalset: EvalSet, rows) -> bool:
    """Whether the set's image files can be opened here; if not, say why and list the rows
    instead (the folder moved, or lies outside the deployment's allowed roots)."""
    try:
        gallery.image_file(evalset, rows["file"].iloc[0])
    except UserError as exc:
        st.warning(f"The images cannot be shown: {exc}", icon=":material/image_not_supported:")
        st.dataframe(rows, hide_index=True, width="stretch")
        return False
    return True


def confusion_gallery(run: Run, evalset: EvalSet, key: str | None = None) -> None:
    """The run's confusion matrix on the set; the images of the cell clicked (or picked),
    most confident mistakes first, each with its CAM on demand."""
    key = key or _key(run.id, evalset.key)
    cm = confusion(evalset.labels, evalset.probs, evalset.threshold)
    counts = {c: cm[CLASSES.index(t)][CLASSES.index(d)] for c, (t, d, _) in CELLS.items()}
    chart_key, pick_key = f"{key}_matrix", f"{key}_cell"
    if pick_key not in st.session_state:
        st.session_state[pick_key] = next((c for c, n in counts.items() if n), "FP")
    left, right = st.columns([2, 3])
    with left:
        st.plotly_chart(
            plots.clickable_confusion_matrix(cm, {(t, d): plain for t, d, plain in CELLS.values()}),
            key=chart_key,
            on_select=functools.partial(_pick_clicked, chart_key, pick_key),
            selection_mode="points",
            config={"displayModeBar": False},
        )
    with right:
        cell = st.radio(
            "Images of",
            list(CELLS),
            format_func=lambda c: f"{CELLS[c][2]} ({c}): {counts[c]}",
            key=pick_key,
            horizontal=True,
        )
        order = st.radio(
            "Order", list(ORDERS), format_func=ORDERS.get, key=f"{key}_order", horizontal=True
        )
        method = st.selectbox(
            "CAM method",
            list(CAM_METHODS),
            key=f"{key}_method",
            help="The map for the class the run decided on, when you ask for an image's CAM.",
        )
        st.caption(
            f"Threshold {evalset.threshold:.4f}: at or above it the run says PNEUMONIA. "
            "Most confident: furthest past the threshold, in log-odds."
        )
    _cell_gallery(run, evalset, cell, order, method, key)


def _cell_gallery(
    run: Run,
    evalset: EvalSet,
    cell: str,
    order: str = "confident",
    method: str = "gradcam",
    key: str | None = None,
) -> None:
    """The images of one confusion cell (``gallery.CELLS``), a page at a time, each with
    its probability against the threshold and a CAM toggle."""
    key = key or _key(run.id, evalset.key)
    rows = gallery.cell_images(evalset, cell, order)
    truth, decision, plain = CELLS[cell]
    st.markdown(
        f"**{gallery.counted(len(rows), plain)}**: true {truth}, called {decision} by {run.id}"
    )
    if rows.empty:
        return
    more_key = f"{key}_{cell}_{order}_shown"
    shown = st.session_state.get(more_key, PER_PAGE)
    if not _images_reachable(evalset, rows):
        return
    page = rows.head(shown)
    for start in range(0, len(page), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, (index, row) in zip(cols, page.iloc[start : start + COLUMNS].iterrows()):
            with col:
                _image_card(run, evalset, row, method, f"{key}_{cell}_{index}")
    if len(rows) > shown:
        st.button(
            f"Show {min(PER_PAGE, len(rows) - shown)} more ({len(rows) - shown} left)",
            key=f"{more_key}_button",
            on_click=lambda: st.session_state.update({more_key: shown + PER_PAGE}),
        )


def _image_card(run: Run, evalset: EvalSet, row, method: str, key: str) -> None:
    """One image: what the model saw (or its CAM), the probability against the threshold."""
    slot = st.empty()
    try:
        file = gallery.image_file(evalset, row["file"])
        show_cam = st.toggle("CAM", key=f"{key}_cam")
        target = CLASSES.index(row["decision"])
        with st.spinner(f"{method} ..." if show_cam else "Loading ..."):
            views = cam.file_views(run, file, method if show_cam else None, target)
    except UserError as exc:
        slot.caption(str(exc))
        return
    if show_cam:
        with slot.container():
            _cam_images(views, file.name)
        cam.colour_scale()
    else:  # what the model (an ensemble's first member) saw
        slot.image(next(iter(views.values()))[0], caption=file.name, width="stretch")
    cam.probability_bar(float(row["probability"]), evalset.threshold)


def _cam_images(views: dict, caption: str | None = None) -> None:
    """The overlays of :func:`cam.file_views`: the run's own, or one per ensemble member
    captioned with its id (each member's CAM, for the class the ensemble decided on)."""
    for member, (pixels, heat) in views.items():
        name = " · ".join(part for part in (member and f"member {member}", caption) if part)
        st.image(overlay(pixels, heat), caption=name or None, width="stretch")


def disagreements(
    run_a: Run, set_a: EvalSet, run_b: Run, set_b: EvalSet, key: str | None = None
) -> None:
    """The images one run gets right and the other wrong (McNemar's discordant pairs),
    side by side with both runs' CAMs for the class each decided on."""
    key = key or _key(run_a.id, run_b.id, set_a.key)
    try:
        pairs = mistakes.discordant(set_a, set_b)
    except UserError as exc:
        st.warning(str(exc), icon=":material/warning:")
        return
    test = stats.mcnemar_exact(*mistakes.paired_correct(set_a, set_b))
    st.markdown(
        f"On {set_a.name}: **{test['n10']}** images {run_a.id} gets right and {run_b.id} "
        f"wrong, **{test['n01']}** the other way round; McNemar's exact test "
        f"{stats.format_p(test['p'])}. The images both get right, or both wrong, say "
        "nothing about which run is better."
    )
    if pairs.empty:
        return
    c1, c2 = st.columns([3, 2])
    sides = {"A": f"{run_a.id} right", "B": f"{run_b.id} right"}
    side = c1.radio(
        "Images", list(sides), format_func=sides.get, key=f"{key}_side", horizontal=True
    )
    method = c2.selectbox("CAM method", list(CAM_METHODS), key=f"{key}_method")
    rows = pairs[pairs["right"] == side]
    if rows.empty:
        st.caption("None.")
        return
    more_key = f"{key}_{side}_shown"
    shown = st.session_state.get(more_key, PAIRS_PER_PAGE)
    if not _images_reachable(set_a, rows):
        return
    st.caption(
        "The wrong run's most confident mistakes first; each CAM explains the class its "
        "run decided on."
    )
    for _, row in rows.head(shown).iterrows():
        _pair(row, ((run_a, set_a, "a"), (run_b, set_b, "b")), method)
    if len(rows) > shown:
        st.button(
            f"Show {min(PAIRS_PER_PAGE, len(rows) - shown)} more ({len(rows) - shown} left)",
            key=f"{more_key}_button",
            on_click=lambda: st.session_state.update({more_key: shown + PAIRS_PER_PAGE}),
        )


def _pair(row, runs: tuple, method: str) -> None:
    """One discordant image: its name and truth, then each run's CAM and probability."""
    st.divider()
    info, *cols = st.columns([1, 2, 2])
    info.markdown(f"**{row['file'].rsplit('/', 1)[-1]}**  \ntrue **{row['truth']}**")
    for col, (run, evalset, side) in zip(cols, runs):
        decision = row[f"decision_{side}"]
        right = decision == row["truth"]
        with col:
            st.markdown(
                f"**{run.id}**: :{'green' if right else 'red'}[{'right' if right else 'wrong'}]"
            )
            try:
                file = gallery.image_file(evalset, row["file"])
                with st.spinner(f"{method} ..."):
                    views = cam.file_views(run, file, method, CLASSES.index(decision))
            except UserError as exc:
                st.caption(str(exc))
                continue
            _cam_images(views)
            cam.colour_scale()
            cam.probability_bar(float(row[f"probability_{side}"]), evalset.threshold)
