"""Reading whatever image a user hands over: one uint8 gray array, or one line saying why not."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr_core.data.imaging import load_and_preprocess, load_gray, preprocess
from cxr_core.errors import UserError


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _ramp(height: int = 40, width: int = 50) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def test_gray_jpeg_from_a_path_bytes_or_a_file_object(tmp_path):
    data = _encode(Image.fromarray(_ramp()), "JPEG")
    (tmp_path / "x.jpeg").write_bytes(data)
    from_path = load_gray(tmp_path / "x.jpeg")
    assert from_path.dtype == np.uint8 and from_path.shape == (40, 50)
    assert np.array_equal(load_gray(data), from_path)
    assert np.array_equal(load_gray(io.BytesIO(data)), from_path)


def test_16_bit_png_is_stretched_not_clipped():
    pixels = np.tile(np.linspace(1000, 3000, 50).astype(np.uint16), (40, 1))
    gray = load_gray(_encode(Image.fromarray(pixels)))
    assert gray.min() == 0 and gray.max() == 255
    assert np.all(np.diff(gray[0].astype(int)) >= 0)


def test_rgb_and_transparent_pngs_become_gray_with_black_background():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 1] = 200
    assert load_gray(_encode(Image.fromarray(rgb))).max() > 0
    rgba = np.full((40, 40, 4), 255, np.uint8)
    rgba[:20, :, 3] = 0  # top half fully transparent
    gray = load_gray(_encode(Image.fromarray(rgba, "RGBA")))
    assert (gray[:20] == 0).all() and (gray[20:] == 255).all()


def _dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_12_bit_dicom_and_monochrome1_inversion():
    pixels = np.tile(np.linspace(0, 4095, 48), (40, 1))
    normal = load_gray(_dicom(pixels))
    assert normal.shape == (40, 48) and normal[0, 0] == 0 and normal[0, -1] == 255
    inverted = load_gray(_dicom(pixels, "MONOCHROME1"))
    assert np.array_equal(inverted, 255 - normal)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height``: refusing it must not decode pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"just some text, not a picture", "not an image"),
        (_encode(Image.fromarray(_ramp(20, 20))), "too small"),
        (_png_header_only(30_000, 30_000), "implausibly large"),
        (_encode(Image.fromarray(_ramp()), "JPEG")[:120], "truncated or corrupt"),
        (_encode(Image.fromarray(_ramp()), "GIF"), "not an image"),
    ],
    ids=["empty", "text", "tiny", "huge-header", "truncated", "gif"],
)
def test_unusable_inputs_are_one_line_user_errors(data, message):
    with pytest.raises(UserError) as info:
        load_gray(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_gray(tmp_path / "missing.png")
    with pytest.raises(UserError, match="is a folder"):
        load_gray(tmp_path)


def test_preprocess_resizes_and_clahe_changes_contrast():
    gray = _ramp(60, 90) // 4 + 100  # low contrast
    plain = preprocess(gray, 32)
    assert plain.shape == (32, 32) and plain.dtype == np.uint8
    equalised = preprocess(gray, 32, clahe=True)
    assert equalised.shape == (32, 32)
    assert int(equalised.max()) - int(equalised.min()) > int(plain.max()) - int(plain.min())


def test_load_and_preprocess_is_the_same_from_bytes_and_path(tmp_path):
    data = _encode(Image.fromarray(_ramp(300, 280)), "JPEG")
    (tmp_path / "a.jpg").write_bytes(data)
    assert np.array_equal(
        load_and_preprocess(data, 64), load_and_preprocess(tmp_path / "a.jpg", 64)
    )
