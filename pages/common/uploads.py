"""Uploads on the Predict page: harmless names, in-memory sources, demo images and
display-sized copies."""

from __future__ import annotations

import functools
import io
import re
from pathlib import PurePath

import numpy as np
from PIL import Image

from cxr_core.data.synthetic import radiograph


def display_name(name: str) -> str:
    """A harmless label for an uploaded file: its last path part, printable, short.
    It is only ever shown, never used to build a path."""
    base = PurePath(name.replace("\\", "/")).name
    return re.sub(r"[^\w .()+-]", "_", base)[:80] or "upload"


def upload_source(name: str, data: bytes) -> io.BytesIO:
    """An uploaded file as an in-memory source for :func:`cxr_core.predict.inference.prepare`;
    the (sanitised) name only lets DICOM files without a preamble be recognised."""
    buffer = io.BytesIO(data)
    buffer.name = display_name(name)
    return buffer


@functools.cache
def demo_images() -> dict[str, bytes]:
    """Two synthetic radiographs (PNG) to try the Predict page without any data: made once
    per process (50 ms a script run otherwise). Read them, never change them."""
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
