"""Images from strangers: each one is read correctly, or refused in one line, quickly,
without decoding what it should not and without using its name for anything but messages.

The everyday cases (empty, text, tiny, 16-bit PNG, transparency) are in test_imaging.py;
these are the hostile and unusual ones, through the library and through the CLI.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image, ImageFile

from cxr_core.data import imaging
from cxr_core.data.imaging import load_gray
from cxr_core.errors import UserError


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height``, and almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    syntax: str | None = None,
    **attributes,
) -> bytes:
    """A DICOM file built with pydicom's Dataset API (16 bits allocated)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    syntax = UID(syntax or ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for name, value in attributes.items():
        setattr(ds, name, value)
    if syntax.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8 not really compressed data \xff\xd9"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def one_line_error(source) -> str:
    with pytest.raises(UserError) as info:
        load_gray(source)
    message = str(info.value)
    assert "\n" not in message and message
    return message


# ----------------------------------------------------------------- odd but valid images


def test_cmyk_jpeg_is_read_as_gray_with_the_right_tones():
    cmyk = np.zeros((64, 64, 4), np.uint8)
    cmyk[32:, :, 3] = 255  # bottom half: full black ink
    gray = load_gray(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95))
    assert gray.shape == (64, 64)
    assert gray[:28].mean() > 240 and gray[36:].mean() < 15


def test_16_bit_png_keeps_its_full_range_and_order():
    # Values far above 255: clipping would turn all but the first column white.
    pixels = np.tile(np.linspace(0, 60_000, 64).astype(np.uint16), (48, 1))
    gray = load_gray(encode(Image.fromarray(pixels)))
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert 110 <= gray[0, 32] <= 145
    assert np.all(np.diff(gray[0].astype(int)) >= 0)
    assert (gray == 255).mean() < 0.05


RAMP_12 = np.tile(np.linspace(0, 4095, 64), (48, 1)).astype(np.uint16)


def voi_expected(stored: np.ndarray, slope: float, intercept: float, center, width) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear VOI window on modality values, to 0..255."""
    values = stored * slope + intercept
    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5).clip(0, 1)
    return scaled * 255


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_12_bit_applies_modality_then_voi_lut(photometric):
    attrs = {
        "RescaleSlope": 2,
        "RescaleIntercept": -1024,
        "WindowCenter": 1000,
        "WindowWidth": 2000,
    }
    gray = load_gray(dicom(RAMP_12, photometric, **attrs)).astype(float)
    expected = voi_expected(RAMP_12.astype(float), 2, -1024, 1000, 2000)
    if photometric == "MONOCHROME1":  # high values display dark
        expected = 255 - expected
    assert np.abs(gray - expected).max() <= 2
    # Without the LUTs the ramp would span 0..255 evenly; with them, stored values above
    # 1512 (modality value 2000, the window's top) are all at full brightness.
    bright = 255 if photometric == "MONOCHROME2" else 0
    assert 0.6 < (gray == bright).mean() < 0.66


def test_dicom_16_bit_with_a_narrow_window_and_no_window_stretches_full_range():
    pixels = np.tile(np.linspace(0, 65_535, 64), (48, 1)).astype(np.uint16)
    plain = load_gray(dicom(pixels, bits_stored=16))
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and 110 <= plain[0, 32] <= 145
    windowed = load_gray(dicom(pixels, bits_stored=16, WindowCenter=32_768, WindowWidth=8_192))
    expected = voi_expected(pixels.astype(float), 1, 0, 32_768, 8_192)
    assert np.abs(windowed.astype(float) - expected).max() <= 2


def test_multi_frame_dicom_decodes_only_the_first_frame(monkeypatch):
    import pydicom.pixels

    frames = np.stack([RAMP_12, 4095 - RAMP_12, RAMP_12 // 2])
    calls = []
    real = pydicom.pixels.pixel_array

    def spy(src, **kwargs):
        calls.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    gray = load_gray(dicom(frames, NumberOfFrames=3))
    assert calls == [0]
    assert gray.shape == (48, 64) and gray[0, 0] == 0 and gray[0, -1] == 255


def test_compressed_dicom_without_its_decoder_says_which_and_how_to_fix():
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    message = one_line_error(dicom(RAMP_12, syntax=JPEGLSLossless))
    assert "no decoder installed" in message and "JPEG-LS" in message
    assert "pip install" in message


def test_corrupt_pixel_data_in_a_decodable_syntax_is_called_corrupt_not_missing_decoder():
    from pydicom.uid import RLELossless

    message = one_line_error(dicom(RAMP_12, syntax=RLELossless))
    assert "corrupt or does not match its header" in message and "RLE" in message
    short = dicom(RAMP_12)[:-1000]  # uncompressed, pixel data cut
    assert "corrupt" in one_line_error(short)


def test_a_7000_by_9000_image_is_read_and_predicted(tiny_run_dir, tmp_path):
    from cxr_core.predict.inference import load_model, predict

    big = np.full((9000, 7000), 90, np.uint8)
    big[2000:7000, 1500:5500] = 200
    model = load_model(tiny_run_dir)
    for fmt in ("JPEG", "PNG"):
        (prediction,) = predict(model, [encode(Image.fromarray(big), fmt)])
        assert 0 <= prediction.probability <= 1
        assert prediction.pixels.shape == (64, 64)
        # The bright box is still where it was, scaled down.
        assert prediction.pixels[32, 32] > 180 and prediction.pixels[5, 5] < 110


# ----------------------------------------------------------------- refused, in one line


def test_non_image_with_an_image_extension_is_refused(tmp_path):
    for name, content in [("scan.jpg", b"%PDF-1.7 not a jpeg"), ("x.png", b"\x00" * 4096)]:
        (tmp_path / name).write_bytes(content)
        assert "not an image" in one_line_error(tmp_path / name)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "WEBP", "PPM"])
def test_only_png_and_jpeg_decoders_ever_run(fmt, monkeypatch):
    """Other PIL formats (some hand the file to external programs) are refused outright."""
    data = encode(Image.fromarray(noise()), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # PIL itself would read it
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert "not an image" in one_line_error(data)


def test_truncated_jpeg_mid_scan_is_refused():
    data = encode(Image.fromarray(noise(400, 400)), "JPEG", quality=90)
    assert "truncated or corrupt" in one_line_error(data[: len(data) * 2 // 3])


def test_oversized_file_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr(imaging, "MAX_FILE_BYTES", 10_000)
    data = encode(Image.fromarray(noise(400, 400)))
    assert len(data) > 10_000
    (tmp_path / "big.png").write_bytes(data)
    for source in (tmp_path / "big.png", data, io.BytesIO(data)):
        assert "file limit" in one_line_error(source)


@pytest.mark.parametrize(
    ("width", "height"), [(60_000, 60_000), (11_000, 9_500)], ids=["60000^2", "104MP"]
)
def test_decompression_bomb_is_refused_before_any_pixel_is_decoded(width, height, monkeypatch):
    data = png_header(width, height)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoder ran"))
    tracemalloc.start()
    started = time.process_time()  # CPU time: a busy machine does not make it flaky
    try:
        message = one_line_error(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - started < 1.0
    assert peak < 20 * 2**20  # decoding 60000^2 would need 3.6 GB
    assert "large" in message


def test_dicom_bomb_is_refused_before_its_pixels_are_decoded(monkeypatch):
    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("decoded"))
    data = dicom(RAMP_12, Rows=60_000, Columns=60_000)
    assert "megapixel limit (refused before decoding)" in one_line_error(data)


def test_one_pixel_image_is_refused():
    assert "too small" in one_line_error(encode(Image.new("L", (1, 1))))


# ----------------------------------------------------------------- the upload's name


def test_an_uploads_name_is_never_opened_or_used_as_a_path(tmp_path):
    """A file object is read for its bytes only; its name appears in messages alone."""
    real_image = tmp_path / "real.png"
    real_image.write_bytes(encode(Image.fromarray(noise())))
    upload = io.BytesIO(b"these bytes are not an image")
    upload.name = str(real_image)  # if the name were opened, this would "work"
    assert "not an image" in one_line_error(upload)

    upload = io.BytesIO(encode(Image.fromarray(noise())))
    upload.name = "../../../../etc/cron.d/evil.png"
    before = {p for p in tmp_path.rglob("*")}
    assert load_gray(upload).shape == (96, 80)
    assert {p for p in tmp_path.rglob("*")} == before


# ----------------------------------------------------------------- the CLI


def test_cli_predict_reports_each_bad_image_on_one_line_and_exits_2(tiny_run_dir, tmp_path):
    files = {
        "good.png": encode(Image.fromarray(noise(128, 128))),
        "cut.jpg": encode(Image.fromarray(noise(300, 300)), "JPEG")[:3000],
        "fake.jpeg": b"GIF89a but really a text file",
        "empty.png": b"",
        "bomb.png": png_header(60_000, 60_000),
        "tiny.png": encode(Image.new("L", (1, 1))),
        "scan.dcm": dicom(RAMP_12, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=0),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    result = run_cli(
        "predict", "--checkpoint", str(tiny_run_dir), *(str(tmp_path / n) for n in files)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 5, result.stderr
    for name in ("cut.jpg", "fake.jpeg", "empty.png", "bomb.png", "tiny.png"):
        assert sum(name in line for line in errors) == 1, result.stderr
    lines = result.stdout.splitlines()
    predicted = [Path(line.split(":")[0]).name for line in lines if not line.startswith(" ")]
    assert predicted == ["good.png", "scan.dcm"], result.stdout
    assert "warning: this does not look like a chest radiograph" in result.stdout  # noise


# ----------------------------------------------------------------- the app's Predict page


def test_predict_page_reads_or_refuses_each_upload_and_stays_up(
    tiny_run_dir, isolated_store, tmp_path, monkeypatch
):
    import shutil
    import uuid

    from conftest import ROOT
    from pydicom.uid import JPEGLSLossless
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "none"))
    shutil.copytree(tiny_run_dir, isolated_store / "tiny")
    cmyk = np.zeros((64, 64, 4), np.uint8)
    cmyk[32:, :, 3] = 255
    rgba = np.dstack([noise(), noise(seed=1), noise(seed=2), noise(seed=3)])
    evil = f"evil-{uuid.uuid4().hex}.png"
    window = dict(RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=1000, WindowWidth=2000)
    good = {
        "rgba.png": encode(Image.fromarray(rgba, "RGBA")),
        "cmyk.jpg": encode(Image.fromarray(cmyk, "CMYK"), "JPEG"),
        "sixteen.png": encode(Image.fromarray(RAMP_12.astype(np.uint16) * 16)),
        "mono1.dcm": dicom(RAMP_12, "MONOCHROME1", **window),
        "mono2-16.dcm": dicom(RAMP_12 * 16, bits_stored=16),
        "huge.jpg": encode(Image.fromarray(np.full((9000, 7000), 120, np.uint8)), "JPEG"),
        f"../../../../../tmp/{evil}": encode(Image.fromarray(noise())),
    }
    bad = {
        "cut.jpg": (encode(Image.fromarray(noise(300, 300)), "JPEG")[:3000], "truncated"),
        "report.jpg": (b"%PDF-1.7 a document, not a radiograph", "not an image"),
        "empty.png": (b"", "empty file"),
        "jpegls.dcm": (dicom(RAMP_12, syntax=JPEGLSLossless), "no decoder installed"),
        "dot.png": (encode(Image.new("L", (1, 1))), "too small"),
        "bomb.png": (png_header(60_000, 60_000), "megapixel limit"),
    }
    uploads = [(n, d, "image/png") for n, d in good.items()]
    uploads += [(n, d, "image/png") for n, (d, _) in bad.items()]

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.switch_page("pages/predict.py").run()
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad), errors
    for (name, (_, reason)), error in zip(bad.items(), errors):
        assert error.startswith(f"{name}: ") and reason in error and "\n" not in error
    probabilities = [m.value for m in at.metric if m.label == "P(pneumonia)"]
    assert len(probabilities) == len(good)
    assert evil in [s.value for s in at.subheader]  # the name is shown, never a path
    assert not (Path("/tmp") / evil).exists()
    assert not (Path.cwd() / evil).exists() and not list(isolated_store.rglob(evil))
