"""A prediction as every page shows it: the probability against the run's threshold on one
bar, and a CAM overlay with its colour scale; CAMs of image files, cached per model (an
ensemble's: one per member)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from cxr_core.errors import UserError
from cxr_core.predict import ensembles
from cxr_core.predict.inference import explain, prepare
from cxr_core.scoring.metrics import decided_class
from cxr_core.store.runs import Run
from pages import loaded_model

DECISION_COLOURS = {"PNEUMONIA": "#d62728", "NORMAL": "#2ca02c"}

_JET = cv2.applyColorMap(np.linspace(0, 255, 9).round().astype(np.uint8)[:, None], cv2.COLORMAP_JET)
JET_STOPS = [f"rgb({r},{g},{b})" for b, g, r in _JET[:, 0].tolist()]
"""OpenCV's JET, the colour map the overlays are drawn with (show_cam_on_image), low to high."""


def percents(probability: float, threshold: float) -> tuple[str, str]:
    """Both as percentages, with as many decimals as it takes to tell them apart (up to
    four): "50.3% is at or above 50.3%" would read as a contradiction."""
    for digits in range(1, 5):
        p, t = f"{probability:.{digits}%}", f"{threshold:.{digits}%}"
        if p != t:
            break
    return p, t


def bar_html(probability: float, threshold: float, label: bool = True) -> str:
    """The probability as a bar coloured by the decision, with the threshold as a tick:
    a 9% bar crossing a 7.8% tick shows why a film is called PNEUMONIA. ``label`` writes
    the probability and the decision above it."""
    decision = decided_class(probability, threshold)
    colour = DECISION_COLOURS[decision]
    p, t = 100 * min(max(probability, 0.0), 1.0), 100 * threshold
    p_text, t_text = percents(probability, threshold)
    anchor = "0" if t < 15 else "-100%" if t > 85 else "-50%"
    heading = (
        f'<div>P(pneumonia) <b>{p_text}</b>: <b style="color:{colour}">{decision}</b></div>'
        if label
        else ""
    )
    return (
        f'<div style="font-size:0.8rem;line-height:1.2">{heading}'
        '<div style="position:relative;height:12px;margin-top:6px;border-radius:6px;'
        'background:rgba(128,128,128,0.25)">'
        f'<div style="width:{p:.2f}%;height:100%;border-radius:6px;background:{colour}"></div>'
        f'<div title="threshold" style="position:absolute;left:{t:.2f}%;top:-4px;height:20px;'
        'border-left:2px solid currentColor"></div></div>'
        '<div style="position:relative;height:1.3em">'
        f'<span style="position:absolute;left:{t:.2f}%;transform:translateX({anchor});'
        f'white-space:nowrap">threshold {t_text}</span></div></div>'
    )


def probability_bar(probability: float, threshold: float, label: bool = True) -> None:
    st.html(bar_html(probability, threshold, label))


def colour_scale() -> None:
    """The overlay's colour scale. Every map is scaled to 0-1 on its own image, so red is
    this image's most relevant region, not a level comparable across images."""
    gradient = ", ".join(JET_STOPS)
    st.html(
        '<div style="font-size:0.75rem;line-height:1.2">'
        f'<div style="height:10px;border-radius:3px;background:linear-gradient(to right, '
        f'{gradient})"></div><div style="display:flex;justify-content:space-between">'
        "<span>0 least</span><span>relevance, scaled per image</span><span>1 most</span>"
        "</div></div>"
    )


def _version(path: Path) -> float:
    return path.stat().st_mtime


@st.cache_data(max_entries=512, show_spinner=False)
def model_view(weights: str, mtime: float, file: str, file_mtime: float) -> np.ndarray:
    """The preprocessed image the model sees (its size, CLAHE) of an image file."""
    return prepare(loaded_model(weights, mtime), Path(file))


@st.cache_data(max_entries=256, show_spinner=False)
def file_heat(
    weights: str, mtime: float, file: str, file_mtime: float, method: str, target: int
) -> np.ndarray:
    """The CAM of an image file for ``target`` (1 pneumonia, 0 normal)."""
    pixels = model_view(weights, mtime, file, file_mtime).copy()  # torch wants a writable copy
    return explain(loaded_model(weights, mtime), pixels, method, target)


def file_pixels_and_heat(
    weights: Path, file: Path, method: str | None, target: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's view of ``file`` and, when ``method`` is given, its CAM for ``target``."""
    key = (str(weights), _version(weights), str(file), _version(file))
    pixels = model_view(*key)
    return pixels, file_heat(*key, method, target) if method else None


def file_views(
    run: Run, file: Path, method: str | None, target: int
) -> dict[str | None, tuple[np.ndarray, np.ndarray | None]]:
    """:func:`file_pixels_and_heat` for each weights file that explains ``run``: its own
    (key None), or each member's of an ensemble (by member id), since an ensemble has no
    layer of its own to take a CAM of."""
    views = {}
    for member, weights in ensembles.weights_by_member(run).items():
        if not weights.is_file():
            raise UserError(f"{member or run.id}: its weights are not here ({weights})")
        views[member] = file_pixels_and_heat(weights, file, method, target)
    return views
