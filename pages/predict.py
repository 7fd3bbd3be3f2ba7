"""Predict & explain: upload radiographs, get each chosen model's probability, label and
class activation map, side by side. Preprocessing is exactly the run's own."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from cxr_core.data.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES, load_gray
from cxr_core.errors import UserError
from cxr_core.predict import cam_checks, ensembles, input_guard
from cxr_core.predict.ensembles import Ensemble, EnsemblePrediction
from cxr_core.predict.inference import (
    CAM_METHODS,
    Prediction,
    explain,
    overlay,
    predict,
    resolve_checkpoint,
)
from cxr_core.settings import CLASSES
from cxr_core.store import records
from cxr_core.store.runs import Run
from pages import (
    ensure_app_shell,
    keep_in_url,
    kept,
    loaded_model,
    medical_notice,
    restore_from_url,
    run_picker,
    store,
    synthetic_badge,
)
from pages.common import runview, texts, uploads
from pages.views import cam

ensure_app_shell()

TARGETS = {"predicted class": None, "PNEUMONIA": 1, "NORMAL": 0}


@st.cache_data(max_entries=64, show_spinner=False)
def _decode(digest: str, name: str, _data: bytes) -> np.ndarray:
    """Validate an upload once: a bad file is one message, not one per model."""
    return uploads.thumbnail(load_gray(uploads.upload_source(name, _data)))


def _weights_version(weights: Path) -> tuple[str, float]:
    """A weights file as the caches key it: its path and version (mtime)."""
    weights = resolve_checkpoint(weights)  # a one-line error if it went away
    return str(weights), weights.stat().st_mtime


@st.cache_data(max_entries=256, show_spinner=False)
def _predict(weights: str, mtime: float, digest: str, name: str, _data: bytes) -> Prediction:
    model = loaded_model(weights, mtime)
    return predict(model, [uploads.upload_source(name, _data)])[0]


@st.cache_data(max_entries=256, show_spinner=False)
def _heat(
    weights: str, mtime: float, digest: str, method: str, target: int, _pixels: np.ndarray
) -> np.ndarray:
    return explain(loaded_model(weights, mtime), _pixels, method, target)


@st.cache_data(max_entries=256, show_spinner=False)
def _road(
    weights: str, mtime: float, digest: str, method: str, target: int, _pixels: np.ndarray
) -> tuple[cam_checks.RoadScores, cam_checks.RoadScores]:
    """ROAD of the CAM and of a random map of the same coarseness (the baseline)."""
    model = loaded_model(weights, mtime)
    heat = _heat(weights, mtime, digest, method, target, _pixels)
    baseline = cam_checks.random_map(heat.shape[0], seed=0)
    return (
        cam_checks.road(model, _pixels, heat, target),
        cam_checks.road(model, _pixels, baseline, target),
    )


def _cam_checks(run: Run, digest: str, heat: np.ndarray, pixels: np.ndarray, controls: dict):
    """Where the map's energy sits, and (on request) whether it is faithful."""
    shares = cam_checks.shortcut_shares(heat)
    flat = cam_checks.shortcut_shares(np.ones_like(heat))
    flagged = (
        shares.border > cam_checks.BORDER_LIMIT
        or shares.below_diaphragm > cam_checks.DIAPHRAGM_LIMIT
    )
    st.caption(
        f"CAM energy: {shares.border:.0%} in the border (outer 10%), {shares.outside_lungs:.0%} "
        f"outside the usual lung fields, {shares.below_diaphragm:.0%} below the diaphragm "
        f"(a flat map: {flat.border:.0%}, {flat.outside_lungs:.0%}, "
        f"{flat.below_diaphragm:.0%}; the lung fields are a fixed prior, not a segmentation).",
        help=texts.LUNG_FIELDS_HELP,
    )
    if flagged:
        st.warning(
            "This map sits on the border or below the diaphragm: the model may be reading "
            "markers, edges or the abdomen here, not the lungs.",
            icon=":material/warning:",
        )
    if not controls["road"]:
        return
    weights, mtime = _weights_version(run.weights)
    with st.spinner("ROAD: removing pixels and predicting again ..."):
        scores, baseline = _road(
            weights, mtime, digest, controls["method"], controls["cam_target"], pixels
        )
    verdict = "better than" if scores.combined > baseline.combined else "no better than"
    st.caption(
        f"ROAD faithfulness {scores.combined:+.3f} against {baseline.combined:+.3f} for a "
        f"random map: {verdict} chance. (Most relevant removed first "
        f"{scores.most_relevant_first:+.3f}, least relevant first "
        f"{scores.least_relevant_first:+.3f}: the change in the explained class's log-odds.)"
    )


@st.cache_resource(max_entries=8, show_spinner=False)
def _loaded_ensemble(folder: str, version: tuple) -> Ensemble:
    """One loaded ensemble per run folder and version (its members' weights) for the
    whole server process; its members come from the shared cache of loaded models."""
    return ensembles.load(folder, loader=lambda w: loaded_model(*_weights_version(w)))


@st.cache_data(max_entries=256, show_spinner=False)
def _predict_ensemble(
    folder: str, version: tuple, digest: str, name: str, _data: bytes
) -> EnsemblePrediction:
    model = _loaded_ensemble(folder, version)
    return model.predict([uploads.upload_source(name, _data)])[0]


def _ensemble_version(run: Run) -> tuple:
    """What an ensemble's caches key on: its config's and its members' weights' versions."""
    members = ensembles.members(run)
    return (
        (run.path / records.CONFIG).stat().st_mtime,
        *(_weights_version(m.weights) for m in members),
    )


@st.cache_data(max_entries=256, show_spinner=False)
def _guard(run_version: tuple, digest: str, _model, _data: bytes) -> input_guard.GuardVerdict:
    """Does the upload look like the films the run was validated on (cached per run
    version and file)?"""
    return input_guard.guard(_model, _data)


def _input_guard(run: Run, digest: str, data: bytes) -> input_guard.GuardVerdict:
    if ensembles.is_ensemble(run):
        version = _ensemble_version(run)
        model = _loaded_ensemble(str(run.path), version)
    else:
        version = _weights_version(run.weights)
        model = loaded_model(*version)
    return _guard((str(run.path), version), digest, model, data)


def _prediction(
    run: Run, digest: str, name: str, data: bytes
) -> tuple[Prediction | EnsemblePrediction, dict[str | None, tuple[Run, Prediction]]]:
    """The run's prediction, and what each CAM explains: the run itself (key None), or
    every member of an ensemble (by id) with the member's own prediction."""
    if not ensembles.is_ensemble(run):
        pred = _predict(*_weights_version(run.weights), digest, name, data)
        return pred, {None: (run, pred)}
    members = ensembles.members(run)
    pred = _predict_ensemble(str(run.path), _ensemble_version(run), digest, name, data)
    return pred, {m.id: (m, pred.members[m.id]) for m in members}


def _decision(probability: float, threshold: float, label: str, whose: str) -> None:
    """The decision in words, beside the bar: which side of ``whose`` threshold."""
    tint = "red" if label == "PNEUMONIA" else "green"
    side = "at or above" if label == "PNEUMONIA" else "below"
    p_text, t_text = cam.percents(probability, threshold)
    st.markdown(
        f":{tint}-background[**{label}**]: {p_text} is {side} {whose} threshold {t_text}",
        help=texts.help_text("threshold"),
    )


def _model_column(run: Run, index: int, name: str, data: bytes, digest: str, controls: dict):
    st.markdown(f"**{run.id}**")
    if runview.is_synthetic_run(run):
        synthetic_badge(True)
        st.caption("Trained on synthetic images: its output on a real radiograph means nothing.")
    with st.spinner("Loading the model and predicting ..."):
        pred, explained = _prediction(run, digest, name, data)
        verdict = _input_guard(run, digest, data)
    ensemble = isinstance(pred, EnsemblePrediction)
    st.metric(
        "P(pneumonia)",
        f"{pred.probability:.1%}",
        help="The ensemble's probability of PNEUMONIA for this image: the weighted mean of "
        "its members'."
        if ensemble
        else "The model's probability of PNEUMONIA for this image.",
    )
    cam.probability_bar(pred.probability, pred.threshold, label=False)
    _decision(
        pred.probability, pred.threshold, pred.label, "the ensemble's" if ensemble else "the run's"
    )
    if not verdict.in_distribution:  # beside the probability, before any CAM
        st.warning(verdict.message[0].upper() + verdict.message[1:], icon=":material/block:")
    elif verdict.notes:
        st.caption("Input guard: " + "; ".join(verdict.notes))
    target = pred.predicted if controls["target"] is None else controls["target"]
    if ensemble:
        st.caption(
            f"An ensemble has no layer of its own: each member's {controls['method']} for "
            f"{controls['target_name']} ({CLASSES[target]}, the ensemble's decision), on the "
            "image as that member saw it."
        )
    for member, (source, seen) in explained.items():
        if member is not None:
            st.markdown(f"**member {member}**")
            cam.probability_bar(seen.probability, seen.threshold, label=False)
            _decision(seen.probability, seen.threshold, seen.label, "its")
        png = f"{run.id}{f'-{member}' if member else ''}-{controls['method']}-image{index + 1}"
        _cam(source, seen, png, digest, controls, target)


def _cam(run: Run, pred: Prediction, name: str, digest: str, controls: dict, target: int) -> None:
    """``run``'s CAM of what it saw (``pred``): the overlay, its colour scale, the checks
    and a PNG of it named ``name``."""
    weights, mtime = _weights_version(run.weights)
    with st.spinner(f"Computing {controls['method']} ..."):
        # A writable copy: the cached pixels are read-only, torch wants to own its input.
        pixels = pred.pixels.copy()
        heat = _heat(weights, mtime, digest, controls["method"], target, pixels)
    if cam_checks.is_flat(heat):  # no map to draw: say so rather than paint it blue
        others = ", ".join(m for m in CAM_METHODS if m != controls["method"])
        st.info(
            f"{controls['method']} found no evidence for {controls['target_name']} on this "
            f"image: its map is empty, so there is nothing to overlay. Try another method "
            f"({others}) or explain the other class.",
            icon=":material/visibility_off:",
        )
        return
    image = overlay(pred.pixels, heat, controls["opacity"])
    st.image(
        image,
        caption=f"{controls['method']} for {controls['target_name']}, "
        f"{pred.pixels.shape[0]} px input",
        width="stretch",
    )
    cam.colour_scale()
    _cam_checks(run, digest, heat, pixels, {**controls, "cam_target": target})
    st.download_button(
        "PNG",
        functools.partial(uploads.png_bytes, image),  # encoded when clicked, not every run
        file_name=f"{name}.png",
        mime="image/png",
        key=f"png_{name}",
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

# Query parameter -> widget key: the models, method and target live in the URL, so a refresh
# or a copied link shows the same choice (the uploads, kept in memory only, do not).
URL = {"models": "predict_models", "method": "predict_method", "target": "predict_target"}
restore_from_url(
    "predict", URL, lists=("models",), choices={"method": CAM_METHODS, "target": TARGETS}
)
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
road = st.toggle(
    "Check faithfulness (ROAD)",
    key=kept("predict_road", False),
    help="Remove the pixels the CAM calls most (then least) relevant and predict again: "
    "a faithful map moves the prediction (its log-odds) more than a random map does. About 4 s per "
    "image and model at 224 px.",
)
keep_in_url(models=[r.id for r in chosen], method=method, target=target_name)
controls = {
    "method": method,
    "target": TARGETS[target_name],
    "target_name": target_name,
    "opacity": opacity,
    "road": road,
}

images = [(u.name, u.getvalue()) for u in files or []]
images += [(name, demos[name]) for name in samples]
if not chosen:
    st.info("Pick at least one model.", icon=":material/info:")
elif not images:
    st.caption("Upload one or more images, or pick a synthetic sample.")

first_names: dict[str, str] = {}  # digest -> the name the file is shown under
for index, (raw_name, data) in enumerate(images if chosen else []):
    name = uploads.display_name(raw_name)
    digest = hashlib.sha1(data).hexdigest()
    if digest in first_names:
        st.caption(f"{name}: the same file as {first_names[digest]}, shown once.")
        continue
    first_names[digest] = name
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
