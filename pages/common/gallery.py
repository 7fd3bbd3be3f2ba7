"""Image by image: a run's per-image results on an evaluation set as a table, the images
of one confusion-matrix cell, and the image file behind a row. No Streamlit here, so the
views stay thin and these stay testable; the images two runs disagree on are
``cxr_core.analysis.mistakes.discordant``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.analysis import mistakes
from cxr_core.data.allowed_roots import check_data_root
from cxr_core.errors import UserError
from cxr_core.predict.evalsets import EvalSet
from cxr_core.settings import CLASSES

CELLS = {
    "FP": ("NORMAL", "PNEUMONIA", "false alarms"),
    "FN": ("PNEUMONIA", "NORMAL", "missed pneumonias"),
    "TN": ("NORMAL", "NORMAL", "normals called normal"),
    "TP": ("PNEUMONIA", "PNEUMONIA", "pneumonias found"),
}
"""Confusion-matrix cells: (true class, decision, plain name); the mistakes first."""

ORDERS = {
    "confident": "most confident first",
    "borderline": "closest to the threshold first",
}


SINGULAR = {
    "false alarms": "false alarm",
    "missed pneumonias": "missed pneumonia",
    "normals called normal": "normal called normal",
    "pneumonias found": "pneumonia found",
}
"""Each plain name for one image ("1 missed pneumonia", not "1 missed pneumonias")."""


def counted(n: int, plain: str) -> str:
    """``n`` images of a cell in words: "1 missed pneumonia", "3 missed pneumonias"."""
    return f"{n} {SINGULAR[plain] if n == 1 else plain}"


def cell_of(truth: str, decision: str) -> str:
    """The cell's short name ("FP") for a true class and a decision."""
    return next(k for k, (t, d, _) in CELLS.items() if (t, d) == (truth, decision))


def image_table(evalset: EvalSet) -> pd.DataFrame:
    """One row per image, in the set's order: file, patient, true label, probability,
    decision at the run's threshold, right or wrong, confusion cell and confidence (the
    decision's distance from the threshold in log-odds)."""
    called = mistakes.decisions(evalset)
    truth = [CLASSES[int(v)] for v in evalset.labels]
    decision = [CLASSES[int(v)] for v in called]
    return pd.DataFrame(
        {
            "file": evalset.paths,
            "patient": evalset.patients,
            "truth": truth,
            "probability": evalset.probs.astype(float),
            "decision": decision,
            "correct": called == evalset.labels,
            "cell": [cell_of(t, d) for t, d in zip(truth, decision)],
            "confidence": mistakes.margin(evalset.probs, evalset.threshold),
        }
    )


def cell_images(evalset: EvalSet, cell: str, order: str = "confident") -> pd.DataFrame:
    """The rows of one confusion cell (``CELLS``), most confident decision first, or the
    closest calls first (``order="borderline"``); the index is the image's position."""
    if cell not in CELLS:
        raise UserError(f"unknown confusion cell {cell!r}; choose from {', '.join(CELLS)}")
    table = image_table(evalset)
    chosen = np.flatnonzero(table["cell"].to_numpy() == cell)
    ranked = mistakes.by_confidence(evalset, chosen)
    return table.loc[ranked[::-1] if order == "borderline" else ranked]


def image_file(evalset: EvalSet, path: str) -> Path:
    """The image file behind one of the set's relative paths: inside the set's folder
    (a record naming ``../`` cannot reach out of it) and in a folder data may be read from."""
    if not evalset.root:
        raise UserError(f"{evalset.name}: the set does not say which folder its images are in")
    root = check_data_root(evalset.root)
    file = (root / path).resolve()
    if not file.is_relative_to(root):
        raise UserError(f"{path}: outside the set's folder {root}")
    if not file.is_file():
        raise UserError(f"{file}: not found (the data folder moved, or is on another machine)")
    return file
