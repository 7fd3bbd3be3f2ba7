"""What the Streamlit pages compute, without Streamlit: settings, texts, tables, configs.

The pages stay thin views over these functions, and tests and benchmarks can call
them directly. Nothing here imports streamlit.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from PIL import Image

from cxr_core.cache import decode_images
from cxr_core.config import Augmentation, TrainConfig
from cxr_core.datasets import CLASSES, DatasetIndex, make_splits, scan
from cxr_core.errors import UserError
from cxr_core.models import get_architecture
from cxr_core.runs import ACTIVE, Run, RunStore
from cxr_core.security import check_data_root
from cxr_core.synthetic import is_synthetic, radiograph

SETTINGS = (
    "CXR_RUNS_DIR",
    "CXR_BUNDLED_DIR",
    "CXR_CACHE_DIR",
    "CXR_DATA_DIR",
    "CXR_QUEUE",
    "CXR_ALLOWED_DATA_ROOTS",
)
"""Deployment settings, read from the environment (the app copies st.secrets into it)."""

DEFAULT_DATA = "synthetic:60"

NOT_A_MEDICAL_DEVICE = (
    "**Not a medical device.** CXR Lab is for learning and research on public data. "
    "Its outputs are not a diagnosis and must not be used to make clinical decisions."
)

GLOSSARY = {
    "sensitivity": "Share of pneumonia images the model calls pneumonia (recall, true "
    "positive rate). Low sensitivity means missed cases.",
    "specificity": "Share of normal images the model calls normal (true negative rate). "
    "Low specificity means false alarms.",
    "AUC": "Area under the ROC curve: the chance that a random pneumonia image scores "
    "higher than a random normal one. 0.5 is guessing, 1.0 is perfect ranking; it does not "
    "depend on the decision threshold.",
    "overfitting": "The model learns its training images rather than the task: training "
    "metrics keep improving while validation metrics stall or get worse.",
    "transfer learning": "Starting from weights learned on another task (ImageNet photos) "
    "instead of random ones, then training only the head (frozen backbone) or fine-tuning "
    "some or all layers on the radiographs.",
    "threshold": "The probability above which an image is labelled PNEUMONIA. Each run "
    "chooses it on its validation split (Youden's J by default), never on the test split.",
    "Grad-CAM": "A heat map of the image regions that raised the score of the explained "
    "class most, from the gradients at the model's last convolutional (or attention) layer.",
    "synthetic": "Procedurally drawn radiograph-like images made by CXR Lab for offline "
    "demos. Models trained on them say nothing about real patients.",
}


def help_text(term: str) -> str:
    """The glossary entry for ``term``, for ``help=`` tooltips."""
    return f"{term}: {GLOSSARY[term]}"


def queue_limit() -> int:
    """How many runs may train at once: ``$CXR_QUEUE``, else 1 (on a CPU two would only
    share the cores)."""
    value = os.environ.get("CXR_QUEUE", "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"CXR_QUEUE must be a whole number >= 1, not {value!r}")
    return int(value)


def default_data() -> str:
    """The data a new session starts with: ``$CXR_DATA_DIR``, else the synthetic demo."""
    return os.environ.get("CXR_DATA_DIR") or DEFAULT_DATA


# --------------------------------------------------------------------------- data


def resolve_data_folder(text: str) -> Path:
    """The single entry point for a folder typed by a user; every check on what a user
    may open belongs here."""
    text = text.strip()
    if not text:
        raise UserError("enter the path of a folder in the Kaggle layout (train/NORMAL, ...)")
    if "\x00" in text:
        raise UserError("the folder path contains a NUL character")
    path = check_data_root(text)  # first: a refused path does not reveal if it exists
    if not path.is_dir():
        raise UserError(f"{path}: no such folder")
    return path


def data_root(spec: str) -> Path:
    """The folder behind a data spec (``synthetic:N`` makes the synthetic set on first use)."""
    from cxr_core.engine import resolve_data

    return resolve_data(spec) if spec.startswith("synthetic") else resolve_data_folder(spec)


@dataclass
class DataOverview:
    root: Path
    synthetic: bool
    folders: pd.DataFrame
    """Images and patients per folder split and class, as found on disk."""
    planned: pd.DataFrame
    """The patient-grouped split a run with default fractions and ``seed`` would use."""
    derived: dict[str, str]
    notes: list[str]
    samples: dict[str, list[str]]
    """Relative paths of the train images, by class."""


SPLIT_ORDER = ("train", "val", "test", "internal_test", "official_val")


def _count_rows(groups: dict[str, list]) -> pd.DataFrame:
    rows = []
    order = sorted(groups, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99)
    for split in order:
        samples = groups[split]
        labels = Counter(s.label for s in samples)
        rows.append(
            {
                "split": split,
                "NORMAL": labels[0],
                "PNEUMONIA": labels[1],
                "images": len(samples),
                "patients": len({s.patient for s in samples}),
                "% pneumonia": round(100 * labels[1] / max(len(samples), 1), 1),
            }
        )
    return pd.DataFrame(rows)


def overview(root: Path, seed: int = 0) -> DataOverview:
    """Counts per split, the split CXR Lab would make, notes, and the sample lists."""
    index: DatasetIndex = scan(root)
    notes = list(index.notes)
    try:
        manifest = make_splits(index, seed)
        planned, derived = _count_rows(manifest.splits), manifest.derived
    except UserError as exc:
        planned, derived = pd.DataFrame(), {}
        notes.append(str(exc))
    train = index.samples.get("train", [])
    samples = {cls: [s.path for s in train if s.label == i] for i, cls in enumerate(CLASSES)}
    return DataOverview(
        index.root,
        is_synthetic(index.root),
        _count_rows(index.samples),
        planned,
        derived,
        notes,
        samples,
    )


def pick_samples(paths: list[str], k: int, seed: int) -> list[str]:
    """``k`` paths drawn reproducibly (a new seed, a new draw)."""
    if len(paths) <= k:
        return list(paths)
    chosen = np.random.default_rng(seed).choice(len(paths), k, replace=False)
    return [paths[i] for i in sorted(chosen)]


def check_files(root: Path, progress=None) -> pd.DataFrame:
    """Decode every image of a data folder once (through the cache); the unreadable ones
    with the reason, as a training run would skip and report them."""
    index = scan(root)
    decoded = decode_images(index.root, index.all_samples(), 64, progress=progress)
    return pd.DataFrame(
        [{"file": path, "reason": reason} for path, reason in sorted(decoded.skipped.items())],
        columns=["file", "reason"],
    )


def augmentation_preview(
    images: list[np.ndarray], aug: Augmentation, seed: int
) -> list[np.ndarray]:
    """The images as one training batch would see them after ``aug`` (uint8)."""
    import torch

    from cxr_core.augment import augment_batch

    if not images:
        return []
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1)
    out = augment_batch(x, aug, torch.Generator().manual_seed(seed))
    return [(img[0].numpy() * 255).round().astype(np.uint8) for img in out]


# --------------------------------------------------------------------------- training


def build_configs(archs: list[str], options: dict) -> list[TrainConfig]:
    """One :class:`TrainConfig` per architecture with the same options, checked before
    anything is launched, so a bad combination is one message and no half-started batch."""
    if not archs:
        raise UserError("pick at least one architecture")
    if not str(options.get("data", "")).startswith("synthetic"):
        check_data_root(options["data"])  # a preset or CXR_DATA_DIR must obey it too
    configs = []
    for arch in archs:
        spec = get_architecture(arch)
        if options.get("pretrained") and spec.pretrained_source is None:
            raise UserError(f"{arch} has no pretrained weights: untick 'pretrained' or drop it")
        size = options.get("img_size")
        fixed = spec.fixed_img_size
        if fixed and options.get("pretrained") and size not in (None, 0, fixed):
            raise UserError(
                f"pretrained {arch} needs image size {spec.fixed_img_size} "
                "(or 'architecture default')"
            )
        configs.append(TrainConfig(**{**options, "arch": arch, "img_size": size or None}))
    return configs


def needs_download(arch: str, pretrained: bool) -> bool:
    """Whether starting ``arch`` needs ImageNet weights from the internet."""
    return pretrained and get_architecture(arch).pretrained_source == "torchvision"


# --------------------------------------------------------------------------- runs


def format_duration(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_progress(status: dict, epochs: int | None) -> tuple[float, str]:
    """Fraction done (0..1) and a one-line description, from a run's status.json."""
    state = status.get("status", "queued")
    if state not in ACTIVE:
        return (1.0 if state == "completed" else 0.0), state
    epoch, step, steps = status.get("epoch"), status.get("step"), status.get("steps")
    phase = status.get("phase") or state
    if not (epoch and steps and epochs):
        return 0.0, phase
    fraction = min(((epoch - 1) * steps + (step or 0)) / (epochs * steps), 1.0)
    parts = [phase, f"epoch {epoch}/{epochs}", f"step {step}/{steps}"]
    if status.get("images_per_s"):
        parts.append(f"{status['images_per_s']:.0f} img/s")
    if status.get("eta_s") is not None and phase == "training":
        parts.append(f"ETA {format_duration(status['eta_s'])}")
    return fraction, " · ".join(parts)


def is_synthetic_run(run: Run) -> bool:
    """Trained or evaluated on the synthetic demo data (split.json / evaluation.json)."""
    evaluation = run.evaluation() or {}
    if "synthetic" in evaluation:
        return bool(evaluation["synthetic"])
    split = run.split() or {}
    return bool(split.get("synthetic")) or str(run.config().get("data", "")).startswith("synthetic")


def run_label(run: Run) -> str:
    """How a run is named in pickers: id, architecture, and its origin."""
    tags = [run.config().get("arch") or "?"]
    if run.bundled:
        tags.append("bundled")
    if is_synthetic_run(run):
        tags.append("synthetic")
    return f"{run.id} ({', '.join(tags)})"


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """The Runs page's table: one row per run with progress and headline scores."""
    rows = []
    for run in runs:
        row = run.summary()
        status = run.status()
        fraction, detail = run_progress(status, run.config().get("epochs"))
        created = row.get("created")
        rows.append(
            {
                "run": run.id,
                "arch": row["arch"],
                "status": row["status"],
                "progress": fraction,
                "detail": detail if row["status"] in ACTIVE else "",
                "ETA": format_duration(status.get("eta_s")) if row["status"] in ACTIVE else "",
                "data": "synthetic" if is_synthetic_run(run) else (row["data"] or ""),
                "val AUC": row["val_auc"],
                "test AUC": row["test_auc"],
                "test split": row["test_split"],
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(created))
                if created
                else "",
                "bundled": row["bundled"],
                "message": row["message"] or "",
            }
        )
    return pd.DataFrame(rows)


def model_runs(store: RunStore) -> list[Run]:
    """Runs whose weights can be used for predictions (finished, weights on disk)."""
    return [r for r in store.list() if r.weights.exists() and r.status()["status"] not in ACTIVE]


def evaluated_runs(store: RunStore) -> list[Run]:
    return [r for r in store.list() if r.evaluation()]


# --------------------------------------------------------------------------- predict


def display_name(name: str) -> str:
    """A harmless label for an uploaded file: its last path part, printable, short.
    It is only ever shown, never used to build a path."""
    base = PurePath(name.replace("\\", "/")).name
    return re.sub(r"[^\w .()+-]", "_", base)[:80] or "upload"


def upload_source(name: str, data: bytes) -> io.BytesIO:
    """An uploaded file as an in-memory source for :func:`cxr_core.inference.prepare`;
    the (sanitised) name only lets DICOM files without a preamble be recognised."""
    buffer = io.BytesIO(data)
    buffer.name = display_name(name)
    return buffer


def demo_images() -> dict[str, bytes]:
    """Two synthetic radiographs (PNG) to try the Predict page without any data."""
    out = {}
    for label, pneumonia, seed in (("normal", False, 1), ("pneumonia", True, 2)):
        pixels, _ = radiograph(np.random.default_rng(seed), 256, pneumonia)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out[f"synthetic-{label}.png"] = buffer.getvalue()
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail(gray: np.ndarray, side: int = 320) -> np.ndarray:
    """A display-sized copy (aspect kept) of a decoded image, so a 4k upload is not sent
    back to the browser at full size."""
    image = Image.fromarray(gray)
    image.thumbnail((side, side))
    return np.asarray(image)
