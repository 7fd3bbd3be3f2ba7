"""A procedural, offline stand-in for the chest X-ray data set.

Images show a thorax silhouette, two lung fields, ribs, a spine and a heart shadow;
"pneumonia" images add soft opacities inside the lungs whose masks are saved, so a
Grad-CAM can be checked against where the finding really is. It is written in the
Kaggle layout, so every loader, the CLI and the app treat it like the real thing, and
a ``SYNTHETIC.txt`` marker makes sure it is labelled synthetic wherever it appears.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from cxr_core.fileio import atomic_write_bytes
from cxr_core.settings import cache_dir

MARKER = "SYNTHETIC.txt"
PREFIX = "synth-"
"""Every synthetic film's file name starts so (``synth-<patient>-<k>.png``)."""


def is_synthetic(root: Path) -> bool:
    return (Path(root) / MARKER).exists()


def synthetic_names(paths: list[str]) -> bool:
    """Whether image paths name synthetic films (for a set whose folder is not here)."""
    return any(Path(p).name.startswith(PREFIX) for p in paths)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.linspace(-1, 1, size, dtype=np.float32)
    return np.meshgrid(ax, ax)


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1).astype(np.float32)


def radiograph(
    rng: np.random.Generator, size: int = 224, pneumonia: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8) and its opacity mask (bool, empty for a normal image)."""
    x, y = _grid(size)

    def j(s):
        return rng.uniform(-s, s)  # small jitter: per-patient anatomy

    body = _ellipse(x, y, j(0.03), 0.1, 0.85 + j(0.05), 1.1)
    lungs = [
        _ellipse(x, y, side * (0.38 + j(0.03)), -0.05 + j(0.04), 0.26 + j(0.03), 0.55 + j(0.05))
        for side in (-1, 1)
    ]
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    img = 0.08 + 0.42 * body - 0.25 * lung
    ribs = 0.5 + 0.5 * np.sin((y + 0.25 * x**2) * (20 + j(2)) + j(3))
    img += 0.07 * ribs * lung
    img += 0.25 * _ellipse(x, y, 0, 0.1, 0.07, 1.2)  # spine
    img += 0.2 * _ellipse(x, y, 0.15 + j(0.05), 0.25 + j(0.05), 0.22 + j(0.03), 0.2 + j(0.03))
    mask = np.zeros((size, size), bool)
    if pneumonia:
        for _ in range(rng.integers(1, 4)):
            side = rng.choice([-1, 1])
            cx, cy = side * (0.38 + j(0.12)), j(0.35)
            r = rng.uniform(0.08, 0.2)
            blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2))) * lung
            img += rng.uniform(0.15, 0.3) * blob
            mask |= blob > 0.35
    img += rng.normal(0, 0.02, img.shape)
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(size / 160))), mask


def _png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_synthetic_dataset(out: Path, per_class: int = 150, size: int = 224, seed: int = 0) -> Path:
    """Write ``per_class`` images per class to ``out/train`` (plus a small ``out/val``),
    1-3 images per patient, and the pneumonia masks under ``out/masks``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    patient = 0
    for split, count in (("train", per_class), ("val", 8)):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            written = 0
            while written < count:
                patient += 1
                for k in range(min(int(rng.integers(1, 4)), count - written)):
                    image, mask = radiograph(rng, size, pneumonia=bool(label))
                    name = f"{PREFIX}{patient:05d}-{k}.png"
                    atomic_write_bytes(out / split / cls / name, _png(image))
                    if label:
                        atomic_write_bytes(
                            out / "masks" / split / cls / name, _png(mask.astype(np.uint8) * 255)
                        )
                    written += 1
    (out / MARKER).write_text(
        "Synthetic radiograph-like images made by cxr_core.data.synthetic; not real patients.\n"
    )
    return out


def synthetic_dataset(per_class: int = 150, size: int = 224, seed: int = 0) -> Path:
    """The synthetic set in the cache folder, made on first use."""
    out = cache_dir() / f"synthetic-{per_class}-{size}-{seed}"
    if not is_synthetic(out):
        make_synthetic_dataset(out, per_class, size, seed)
    return out
