"""Getting the real data for users who are online: one registry of download sources.

Every source ends in a folder of the Kaggle layout, so the rest of CXR Lab needs no special
case. Offline, or without its optional package, each fails with one line that names the
manual alternative. The CLI's ``download`` verb and the Data page offer every registered
source; adding one is a function here plus its test::

    @register_source("mine", description="...", package="its_pip_package")
    def download_mine(out: Path, size: int) -> Path:
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.settings import CLASSES

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
MEDMNIST_SIZES = (28, 64, 128, 224)
DEFAULT_SIZE = 224
"""The image side a source is asked for unless told otherwise (where it has sizes)."""


@dataclass(frozen=True)
class DownloadSource:
    name: str
    description: str
    """What a user gets, as the Data page's button says it."""
    package: str
    """The optional package it needs (its pip and import name)."""
    download: Callable[[Path, int], Path]
    """``download(out, size)``: the folder of the Kaggle layout it wrote or found."""


SOURCES: dict[str, DownloadSource] = {}


def register_source(
    name: str, *, description: str, package: str
) -> Callable[[Callable[[Path, int], Path]], Callable[[Path, int], Path]]:
    if name in SOURCES:
        raise ValueError(f"download source {name!r} is registered twice")

    def decorator(download: Callable[[Path, int], Path]) -> Callable[[Path, int], Path]:
        SOURCES[name] = DownloadSource(name, description, package, download)
        return download

    return decorator


@register_source(
    "kaggle", description="Kaggle: chest-xray-pneumonia (about 1.2 GB)", package="kagglehub"
)
def download_kaggle(out: Path, size: int = DEFAULT_SIZE) -> Path:
    """Download (or reuse kagglehub's cached copy of) the Kaggle data; returns its folder.
    kagglehub keeps its own copy, at the original sizes: ``out`` and ``size`` do not apply."""
    try:
        import kagglehub
    except ImportError:
        raise UserError(
            f"pip install kagglehub to download, or get the zip from {KAGGLE_URL} "
            "and pass its folder with --data"
        ) from None
    try:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as exc:  # network, auth and quota errors all end the same way for a user
        raise UserError(
            f"could not download from Kaggle ({type(exc).__name__}: {exc}); offline? "
            f"get the zip from {KAGGLE_URL}, unzip it and pass the folder with --data"
        ) from None


@register_source(
    "pneumoniamnist", description="PneumoniaMNIST 224 px (MedMNIST)", package="medmnist"
)
def download_pneumoniamnist(out: Path, size: int = DEFAULT_SIZE) -> Path:
    """Fetch PneumoniaMNIST (MedMNIST v2) at ``size`` px and write it in the Kaggle layout.

    Its file names carry no patient id, so each image counts as its own patient.
    """
    if size not in MEDMNIST_SIZES:
        raise UserError(f"PneumoniaMNIST comes in sizes {', '.join(map(str, MEDMNIST_SIZES))}")
    try:
        import medmnist
    except ImportError:
        raise UserError("pip install medmnist to download PneumoniaMNIST") from None
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        try:
            data = medmnist.PneumoniaMNIST(split=split, download=True, size=size, root=str(out))
        except Exception as exc:
            raise UserError(
                f"could not download PneumoniaMNIST ({type(exc).__name__}); offline? "
                "see https://medmnist.com for the .npz files and put them in "
                f"{out}"
            ) from None
        for i, (image, label) in enumerate(zip(data.imgs, np.asarray(data.labels).ravel())):
            import io

            buffer = io.BytesIO()
            Image.fromarray(image).convert("L").save(buffer, format="PNG")
            atomic_write_bytes(
                out / split / CLASSES[int(label)] / f"mnist-{i:05d}.png", buffer.getvalue()
            )
    return out
