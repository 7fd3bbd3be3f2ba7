"""Getting the real data for users who are online: Kaggle and PneumoniaMNIST.

Both end in a folder of the Kaggle layout, so the rest of CXR Lab needs no special case.
Offline, or without the optional package, each fails with one line that names the
manual alternative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.settings import CLASSES

KAGGLE_DATASET = "paultimothymooney/chest-xray-pneumonia"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
MEDMNIST_SIZES = (28, 64, 128, 224)


def download_kaggle() -> Path:
    """Download (or reuse kagglehub's cached copy of) the Kaggle data; returns its folder."""
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


def download_pneumoniamnist(out: Path, size: int = 224) -> Path:
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
