"""Reading radiographs from any file a user may hand us, and the one preprocessing path.

Every image, whether it is decoded into the training cache or uploaded for a
prediction, goes through :func:`load_gray` and :func:`preprocess`, so a model
always sees pixels prepared exactly as in training.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_core.errors import UserError

MAX_PIXELS = 100_000_000
"""Largest image accepted (10k x 10k). Checked from the header, before any pixel is decoded."""
MIN_SIDE = 32
"""Smaller images carry no usable anatomy; refuse rather than predict on noise."""
MAX_FILE_BYTES = 256 * 2**20
"""Largest file read at all (a 10k x 10k 16-bit DICOM is 200 MB), so memory stays bounded."""
RASTER_FORMATS = ("JPEG", "PNG")
"""The only PIL decoders ever run (JPEG includes the MPO variant phones write); other
formats, some with decoders that call out to other programs, are refused."""
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom")

ImageSource = str | Path | bytes | BinaryIO


def _open_bytes(source: ImageSource) -> tuple[bytes, str]:
    """Return the file's bytes and a display name (never used to build a path)."""
    if isinstance(source, bytes):
        data, name = source, "upload"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = path.name
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"{path}: is a folder, not an image") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    else:
        data, name = source.read(MAX_FILE_BYTES + 1), str(getattr(source, "name", "upload"))
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{name}: larger than the {MAX_FILE_BYTES // 2**20} MB file limit")
    return data, name


def _is_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES)


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise UserError(
            f"{name}: {width}x{height} pixels is larger than the {MAX_PIXELS // 1_000_000} "
            "megapixel limit (refused before decoding)"
        )
    if min(width, height) < MIN_SIDE:
        raise UserError(
            f"{name}: {width}x{height} pixels is too small for a radiograph "
            f"(need at least {MIN_SIDE} px per side)"
        )


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Stretch any numeric range (12/16-bit, float) to 0..255 instead of clipping it."""
    pixels = pixels.astype(np.float32)
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    return np.round((pixels - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _has_decoder(syntax: object) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(str(syntax)).is_available
    except (NotImplementedError, ValueError):  # a transfer syntax pydicom does not know
        return False


def _decode_dicom(data: bytes, name: str) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for malformed files
        raise UserError(f"{name}: not a readable DICOM file ({exc})") from None
    _check_size(cols, rows, name)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    label = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
    if syntax is not None and not _has_decoder(syntax):
        raise UserError(
            f"{name}: no decoder installed for DICOM transfer syntax {label}; install one "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or export as PNG"
        )
    try:
        # Only the first frame is decoded: a multi-frame file cannot multiply memory use.
        pixels = pixel_array(ds, index=0 if frames > 1 else None)
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
        if pixels.ndim == 3:  # colour DICOM (RGB / YBR): luminance only
            return np.asarray(Image.fromarray(_to_uint8(pixels)).convert("L"))
        pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    except Exception as exc:
        raise UserError(
            f"{name}: DICOM pixel data ({label}) is corrupt or does not match its header "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    gray = _to_uint8(pixels)
    if photometric == "MONOCHROME1":  # high values are dark: invert to the usual look
        gray = 255 - gray
    return gray


def _open_raster(data: bytes, name: str, draft_size: int | None, mode: str = "L") -> Image.Image:
    """The decoded JPEG/PNG, upright; a JPEG decoded at a reduced scale into ``mode``."""
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP; MAX_PIXELS is the limit here, checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
            _check_size(*image.size, name)
            if draft_size and image.format in ("JPEG", "MPO"):
                # Decode at a reduced DCT scale: several times faster for large originals.
                image.draft(mode, (draft_size, draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own refusal, from 179 MP, at open
        raise UserError(
            f"{name}: implausibly large image, over the {MAX_PIXELS // 1_000_000} megapixel "
            "limit (refused before decoding)"
        ) from None
    except UnidentifiedImageError:
        raise UserError(f"{name}: not an image PIL can read (JPEG, PNG) or a DICOM file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{name}: truncated or corrupt image ({exc})") from None
    return image


def _decode_raster(data: bytes, name: str, draft_size: int | None) -> np.ndarray:
    image = _open_raster(data, name, draft_size)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become black, the background of a radiograph.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"))


def load_gray(source: ImageSource, draft_size: int | None = None) -> np.ndarray:
    """Decode a JPEG/PNG (8- or 16-bit, any mode) or DICOM into a 2-D uint8 array.

    ``draft_size`` lets JPEG decoding skip detail finer than the target size. Raises
    :class:`UserError` with a one-line reason for anything that is not a usable image.
    """
    data, name = _open_bytes(source)
    if not data:
        raise UserError(f"{name}: empty file")
    if _is_dicom(data, name):
        return _decode_dicom(data, name)
    return _decode_raster(data, name, draft_size)


def colour_saturation(source: ImageSource, size: int = 256) -> float:
    """Mean chroma (max - min of R, G, B, as a share of 255) of the image before it is
    made grey, at about ``size`` px: near 0 for any radiograph, whatever its file mode,
    0.1-0.5 for a colour photo, which :func:`load_gray` would silently turn grey.

    DICOM and high-bit-depth files have no colour to judge here: 0.
    """
    data, name = _open_bytes(source)
    if not data:
        raise UserError(f"{name}: empty file")
    if _is_dicom(data, name):
        return 0.0
    image = _open_raster(data, name, size, mode="RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
        return 0.0
    image = image.convert("RGB")
    image.thumbnail((size, size))
    rgb = np.asarray(image, dtype=np.int16)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255)


def preprocess(gray: np.ndarray, size: int, clahe: bool = False) -> np.ndarray:
    """Resize (aspect not kept, as in the Kaggle release) and optionally apply CLAHE."""
    resized = np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR))
    if clahe:
        import cv2

        resized = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(resized)
    return resized


def load_and_preprocess(source: ImageSource, size: int, clahe: bool = False) -> np.ndarray:
    """The exact path from a file to the uint8 ``size x size`` array a model sees."""
    return preprocess(load_gray(source, draft_size=size), size, clahe)
