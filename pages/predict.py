"""Predict & explain: upload radiographs, get each chosen model's probability, label and
class activation map, side by side. Preprocessing is exactly the run's own."""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from cxr_core.errors import UserError
from cxr_core.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES, load_gray
from cxr_core.inference import CAM_METHODS, Prediction, explain, overlay, predict
from cxr_core.runs import Run
from pages import (
    ensure_app_shell,
    kept,
    loaded_model,
    medical_notice,
    run_picker,
    store,
    synthetic_badge,
)
from pages.common import runview, texts, uploads

ensure_app_shell()

TARGETS = {"predicted class": None, "PNEUMONIA": 1, "NORMAL": 0}


@st.cache_data(max_entries=64, show_spinner=False)
def _decode(digest: str, name: str, _data: bytes) -> np.ndarray:
    """Validate an upload once: a bad file is one message, not one per model."""
    return uploads.thumbnail(load_gray(uploads.upload_source(name, _data)))


@st.cache_data(max_entries=256, show_spinner=False)
def _predict(weights: str, mtime: float, digest: str, name: str, _data: bytes) -> Prediction:
    model = loaded_model(weights, mtime)
    return predict(model, [uploads.upload_source(name, _data)])[0]


@st.cache_data(max_entries=256, show_spinner=False)
def _heat(
    weights: str, mtime: float, digest: str, method: str, target: int, _pixels: np.ndarray
) -> np.ndarray:
    return explain(loaded_model(weights, mtime), _pixels, method, target)


def _model_column(run: Run, index: int, name: str, data: bytes, digest: str, controls: dict):
    weights, mtime = str(run.weights), run.weights.stat().st_mtime
    st.markdown(f"**{run.id}**")
    if runview.is_synthetic_run(run):
        synthetic_badge(True)
        st.caption("Trained on synthetic images: its output on a real radiograph means nothing.")
    with st.spinner("Loading the model and predicting ..."):
        pred = _predict(weights, mtime, digest, name, data)
    st.metric(
        "P(pneumonia)",
        f"{pred.probability:.1%}",
        help="The model's probability of PNEUMONIA for this image.",
    )
    st.progress(pred.probability)
    tint = "red" if pred.label == "PNEUMONIA" else "green"
    st.markdown(
        f":{tint}-background[**{pred.label}**] at the run's threshold {pred.threshold:.3f}",
        help=texts.help_text("threshold"),
    )
    with st.spinner(f"Computing {controls['method']} ..."):
        # A writable copy: the cached pixels are read-only, torch wants to own its input.
        pixels = pred.pixels.copy()
        target = pred.predicted if controls["target"] is None else controls["target"]
        heat = _heat(weights, mtime, digest, controls["method"], target, pixels)
    image = overlay(pred.pixels, heat, controls["opacity"])
    st.image(
        image,
        caption=f"{controls['method']} for {controls['target_name']}, "
        f"{pred.pixels.shape[0]} px input",
        width="stretch",
    )
    st.download_button(
        "PNG",
        uploads.png_bytes(image),
        file_name=f"{run.id}-{controls['method']}-image{index + 1}.png",
        mime="image/png",
        key=f"png_{run.id}_{index}",
        icon=":material/download:",
    )


st.title("Predict & explain")
medical_notice()

try:
    models = runview.model_runs(store())
except UserError as exc:  # a damaged run folder
    st.error(str(exc), icon=":material/error:")
    st.stop()
if not models:
    st.info(
        "No trained model yet: train one on the Train page (the tiny synthetic demo takes "
        "under a minute), or ship runs in checkpoints/.",
        icon=":material/info:",
    )
    st.stop()

chosen = run_picker(
    "Models",
    models,
    default=models[:1],
    key="predict_models",
    help="Pick several to compare them side by side on the same images.",
)
files = st.file_uploader(
    "Radiographs (JPEG or PNG, 8 or 16 bit, or DICOM)",
    type=[s.lstrip(".") for s in IMAGE_SUFFIXES + DICOM_SUFFIXES],
    accept_multiple_files=True,
    help="Images stay in memory for this session; nothing is written to disk.",
)
demos = uploads.demo_images()
samples = st.multiselect(
    "Or try a synthetic sample",
    list(demos),
    key=kept("predict_samples", []),
    help=texts.help_text("synthetic"),
)

c1, c2, c3 = st.columns(3)
method = c1.selectbox(
    "Explanation method",
    list(CAM_METHODS),
    key=kept("predict_method", "gradcam"),
    help=texts.help_text("Grad-CAM") + " scorecam is much slower (many forward passes).",
)
target_name = c2.selectbox(
    "Explain the evidence for", list(TARGETS), key=kept("predict_target", "predicted class")
)
opacity = c3.slider("Heat-map opacity", 0.0, 1.0, key=kept("predict_opacity", 0.45), step=0.05)
controls = {
    "method": method,
    "target": TARGETS[target_name],
    "target_name": target_name,
    "opacity": opacity,
}

images = [(u.name, u.getvalue()) for u in files or []]
images += [(name, demos[name]) for name in samples]
if not chosen:
    st.info("Pick at least one model.", icon=":material/info:")
elif not images:
    st.caption("Upload one or more images, or pick a synthetic sample.")

for index, (raw_name, data) in enumerate(images if chosen else []):
    name = uploads.display_name(raw_name)
    digest = hashlib.sha1(data).hexdigest()
    st.divider()
    st.subheader(name)
    try:
        shown = _decode(digest, name, data)
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")
        continue
    cols = st.columns(max(len(chosen) + 1, 3))  # one model does not fill the whole width
    cols[0].image(shown, caption="as uploaded", width="stretch")
    for col, run in zip(cols[1:], chosen):
        with col:
            try:
                _model_column(run, index, name, data, digest, controls)
            except UserError as exc:
                st.error(str(exc), icon=":material/error:")
