"""What the Data page computes without drawing: counts per split, the split a run would
make, sample draws, a check of every file, and the augmentation preview."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data.decode_cache import decode_images
from cxr_core.data.folders import DatasetIndex, make_splits, scan
from cxr_core.data.synthetic import is_synthetic
from cxr_core.errors import UserError
from cxr_core.settings import CLASSES
from cxr_core.training.config import Augmentation


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
    """Per split: images per class, patients and the pneumonia share (no total column: it
    is the two counts' sum, and the table shares its row with another)."""
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

    from cxr_core.training.augment import augment_batch

    if not images:
        return []
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1)
    out = augment_batch(x, aug, torch.Generator().manual_seed(seed))
    return [(img[0].numpy() * 255).round().astype(np.uint8) for img in out]
