"""Data: pick a source, see what is in it, check its files, preview the augmentation."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxr_core.analysis import plots
from cxr_core.data.imaging import load_and_preprocess
from cxr_core.errors import UserError
from cxr_core.settings import CLASSES
from pages import (
    augmentation_controls,
    data_root,
    data_source_picker,
    ensure_app_shell,
    synthetic_badge,
    user_errors,
)
from pages.common import dataview

ensure_app_shell()

PREVIEW_SIZE = 192


@st.cache_data(show_spinner="Scanning the folder ...", ttl=300)
def _overview(root: str) -> dataview.DataOverview:
    return dataview.overview(Path(root))


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(path: str):
    return load_and_preprocess(path, PREVIEW_SIZE)


def _readable(root: Path, paths: list[str]) -> tuple[list, list[str]]:
    """Thumbnails of the files that decode; an unreadable one is named, not fatal."""
    images, names = [], []
    for path in paths:
        try:
            images.append(_thumbnail(str(root / path)))
            names.append(Path(path).name)
        except UserError as exc:
            st.caption(str(exc))
    return images, names


st.title("Data")
st.caption(
    "Where the images come from, how many there are per class and per patient, and what "
    "training will see after augmentation."
)
spec = data_source_picker()

with user_errors():
    root = data_root(spec)
    info = _overview(str(root))
    st.markdown(f"**Using** `{info.root}`")
    synthetic_badge(info.synthetic)
    if info.synthetic:
        st.info(
            "These are synthetic, procedurally drawn images (not real patients): good for "
            "trying every page offline, meaningless for medicine.",
            icon=":material/science:",
        )

    st.subheader("Class counts")
    left, right = st.columns(2)
    with left:
        st.markdown("**Folders as found on disk**")
        st.dataframe(info.folders, hide_index=True, width="stretch")
        st.plotly_chart(plots.class_counts(info.folders), key="counts_folders")
    with right:
        st.markdown(
            "**The split a run makes** (patient-grouped, seed 0)",
            help="Validation (and an internal test split when there is no test/ folder) is "
            "carved from train by patient, so no patient appears on both sides.",
        )
        if len(info.planned):
            st.dataframe(info.planned, hide_index=True, width="stretch")
            st.plotly_chart(plots.class_counts(info.planned), key="counts_planned")
        for name, how in info.derived.items():
            st.caption(f"**{name}**: {how}")
    for note in info.notes:
        st.warning(note, icon=":material/info:")

    st.subheader("Sample images per class")
    draw = st.session_state.setdefault("sample_draw", 0)
    if st.button("Draw other samples", icon=":material/shuffle:"):
        draw = st.session_state["sample_draw"] = draw + 1
    for cls in CLASSES:
        st.markdown(f"**{cls}** ({len(info.samples[cls])} training images)")
        images, names = _readable(info.root, dataview.pick_samples(info.samples[cls], 6, draw))
        if images:
            st.image(images, caption=names, width=150)

    st.subheader("Unreadable files")
    st.caption(
        "A run skips files it cannot decode and lists them in its split.json; check the "
        "whole folder now (decoded once into the cache)."
    )
    checked = st.session_state.setdefault("file_checks", {})
    if st.button("Check every file", icon=":material/fact_check:"):
        bar = st.progress(0.0, text="Decoding ...")
        checked[str(info.root)] = dataview.check_files(
            info.root,
            progress=lambda done, total: bar.progress(done / total, text=f"{done}/{total} files"),
        )
        bar.empty()
    if str(info.root) in checked:
        skipped = checked[str(info.root)]
        if len(skipped):
            st.error(f"{len(skipped)} file(s) cannot be read and will be skipped:")
            st.dataframe(skipped, hide_index=True, width="stretch")
        else:
            st.success("Every image file can be read.", icon=":material/check_circle:")

    st.subheader("Augmentation preview")
    st.caption("The same settings are used by the Train page.")
    aug = augmentation_controls()
    seed = st.session_state.setdefault("aug_draw", 0)
    if st.button("New random draw", icon=":material/casino:"):
        seed = st.session_state["aug_draw"] = seed + 1
    chosen = [p for cls in CLASSES for p in dataview.pick_samples(info.samples[cls], 3, seed)]
    real, names = _readable(info.root, chosen)
    augmented = dataview.augmentation_preview(real, aug, seed)
    st.markdown("**Real**")
    st.image(real, width=150, caption=names)
    st.markdown("**Augmented**" if aug.enabled else "**Augmented** (augmentation is off)")
    st.image(augmented, width=150)
