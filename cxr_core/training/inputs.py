"""Decoded images of a run's splits, ready to slice into batches.

Scanning, splitting (unless a saved manifest is given) and decoding through the cache,
in one call; the engine, cached features and evaluation all take a :class:`Data`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr_core.data.decode_cache import decode_images, describe_skipped
from cxr_core.data.folders import SplitManifest, make_splits, scan
from cxr_core.data.sources import resolve_data
from cxr_core.data.synthetic import is_synthetic
from cxr_core.errors import UserError
from cxr_core.training.config import TrainConfig


@dataclass
class Data:
    """Decoded images of a run's splits, ready to slice into batches."""

    root: Path
    manifest: SplitManifest
    pixels: torch.Tensor
    rows: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    skipped: dict[str, str]
    notes: list[str]
    synthetic: bool

    def paths(self, split: str) -> list[str]:
        return [s.path for s in self.manifest.splits[split]]


def load_data(
    cfg: TrainConfig,
    manifest: SplitManifest | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Data:
    """Scan, split (unless a saved ``manifest`` is given) and decode through the cache."""
    root = resolve_data(cfg.data)
    index = scan(root)
    if manifest is None:
        manifest = make_splits(
            index, cfg.split_key, cfg.val_fraction, cfg.test_fraction, cfg.max_images
        )
    samples = [s for split in manifest.splits.values() for s in split]
    images = decode_images(index.root, samples, cfg.img_size, cfg.clahe, progress)
    manifest = manifest.without(set(images.skipped))
    for name in ("train", "val"):
        if {s.label for s in manifest.splits[name]} != {0, 1}:
            raise UserError(f"the {name} split lacks a class once unreadable files are skipped")
    rows = {k: torch.from_numpy(images.rows(v)) for k, v in manifest.splits.items() if v}
    labels = {
        k: torch.tensor([s.label for s in v], dtype=torch.float32)
        for k, v in manifest.splits.items()
        if v
    }
    notes = list(index.notes)
    if images.skipped:
        notes.append(describe_skipped(images.skipped))
    return Data(
        index.root,
        manifest,
        torch.from_numpy(images.pixels),
        rows,
        labels,
        images.skipped,
        notes,
        is_synthetic(index.root),
    )
