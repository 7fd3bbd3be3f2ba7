"""Decode every image once into a uint8 array cached on disk.

Decoding JPEGs dominates a naive CPU training loop. The cache is keyed by the file list
(paths and sizes), the image size and the preprocessing, so later epochs and later runs
on the same data read one ``.npy`` instead of thousands of JPEGs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.data.folders import Sample
from cxr_core.data.imaging import load_and_preprocess
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_files, read_json
from cxr_core.settings import cache_dir

PREPROCESS_VERSION = 1
"""Bump when :func:`cxr_core.data.imaging.preprocess` changes, to invalidate old caches."""

Progress = Callable[[int, int], None]


@dataclass
class DecodedImages:
    """Pixels of a list of files, row ``i`` for ``paths[i]``; unreadable files listed apart."""

    paths: list[str]
    pixels: np.ndarray
    skipped: dict[str, str]

    def rows(self, samples: Sequence[Sample]) -> np.ndarray:
        where = {p: i for i, p in enumerate(self.paths)}
        return np.array([where[s.path] for s in samples], dtype=np.int64)


def _key(root: Path, paths: list[str], size: int, clahe: bool) -> str:
    digest = hashlib.sha1(f"v{PREPROCESS_VERSION}|{size}|{clahe}\n".encode())
    for p in paths:
        digest.update(f"{p}\0{(root / p).stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def decode_images(
    root: Path,
    samples: Sequence[Sample],
    size: int,
    clahe: bool = False,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> DecodedImages:
    """Decode ``samples`` (paths relative to ``root``) to ``[N, size, size]`` uint8.

    Corrupt or unreadable files are skipped and listed in ``skipped`` with the reason;
    if nothing at all can be read that is a :class:`UserError`.
    """
    paths = sorted({s.path for s in samples})
    key = _key(root, paths, size, clahe)
    npy, meta = cache_dir() / f"{key}.npy", cache_dir() / f"{key}.json"
    if use_cache and npy.exists() and meta.exists():
        try:
            info = read_json(meta)
            pixels = np.load(npy, allow_pickle=False)
        except (OSError, ValueError):  # a damaged cache entry is rebuilt below
            info = None
        if info is not None and len(info["paths"]) == len(pixels):
            if progress:
                progress(len(paths), len(paths))
            return DecodedImages(info["paths"], pixels, info["skipped"])

    pixels = np.zeros((len(paths), size, size), np.uint8)
    ok = np.zeros(len(paths), bool)
    skipped: dict[str, str] = {}

    def work(i: int) -> None:
        try:
            pixels[i] = load_and_preprocess(root / paths[i], size, clahe)
            ok[i] = True
        except UserError as exc:
            skipped[paths[i]] = str(exc).split(": ", 1)[-1]

    # PIL releases the GIL while decoding, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.map(work, range(len(paths))), start=1):
            if progress and (done % 64 == 0 or done == len(paths)):
                progress(done, len(paths))
    if not ok.any():
        raise UserError(f"{root}: none of the {len(paths)} images could be read")
    decoded = DecodedImages([p for p, good in zip(paths, ok) if good], pixels[ok], skipped)
    if use_cache:
        buffer = io.BytesIO()
        np.save(buffer, decoded.pixels, allow_pickle=False)
        info = {"paths": decoded.paths, "skipped": skipped, "size": size}
        try:
            atomic_write_files({npy: buffer.getvalue(), meta: json.dumps(info).encode()})
        except UserError as exc:  # a full disk costs the cache, never the run
            warnings.warn(f"decode cache not saved: {exc}", stacklevel=2)
    return decoded


def describe_skipped(skipped: dict[str, str], limit: int = 5) -> str:
    """One line for logs: how many files were skipped and the first few names."""
    names = ", ".join(list(skipped)[:limit]) + (" ..." if len(skipped) > limit else "")
    return f"skipped {len(skipped)} unreadable file(s): {names}"
