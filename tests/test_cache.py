"""The decode cache: decode once, then read one .npy; any change to the inputs re-decodes."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core import settings
from cxr_core.data import decode_cache
from cxr_core.data.folders import scan
from cxr_core.data.imaging import load_and_preprocess
from cxr_core.errors import UserError


@pytest.fixture
def data(tmp_path, monkeypatch, kaggle_tree):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    return scan(kaggle_tree(tmp_path / "data", 6, 6))


@pytest.fixture
def decoder(monkeypatch):
    """Counts real decodes; ``decoder.forbid()`` makes any further decode fail the test."""

    class Decoder:
        calls = 0
        allowed = True

        def __call__(self, source, size, clahe=False):
            assert self.allowed, f"decoded {source} again instead of reading the cache"
            self.calls += 1
            return load_and_preprocess(source, size, clahe)

        def forbid(self):
            self.allowed = False

    spy = Decoder()
    monkeypatch.setattr(decode_cache, "load_and_preprocess", spy)
    return spy


def _decode(index, samples=None, size=32, clahe=False):
    return decode_cache.decode_images(index.root, samples or index.samples["train"], size, clahe)


def test_second_call_reads_the_npy_without_decoding(data, decoder):
    first = _decode(data)
    assert decoder.calls == len(data.samples["train"])
    assert len(list(settings.cache_dir().glob("*.npy"))) == 1
    decoder.forbid()
    again = _decode(data)
    assert again.paths == first.paths
    assert np.array_equal(again.pixels, first.pixels)
    assert again.pixels.dtype == np.uint8 and again.pixels.shape[1:] == (32, 32)
    # The same files in another order are the same cache entry.
    assert np.array_equal(_decode(data, data.samples["train"][::-1]).pixels, first.pixels)


@pytest.mark.parametrize("change", ["size", "clahe", "file list", "file content"])
def test_cache_key_changes_with_size_preprocessing_and_files(data, decoder, change):
    samples = data.samples["train"]
    _decode(data)
    before = decoder.calls
    if change == "size":
        result = _decode(data, size=48)
        assert result.pixels.shape[1:] == (48, 48)
    elif change == "clahe":
        result = _decode(data, clahe=True)
        plain = decode_cache.decode_images(data.root, samples, 32, False)
        assert not np.array_equal(result.pixels, plain.pixels)
    elif change == "file list":
        result = _decode(data, samples[:-1])
        assert len(result.paths) == len(samples) - 1
    else:  # a file replaced by one of another size
        path = data.root / samples[0].path
        path.write_bytes(path.read_bytes() + b"\0")
        result = _decode(data)
    assert decoder.calls > before
    assert len(list(settings.cache_dir().glob("*.npy"))) == 2


def test_rows_follow_the_sample_order(data):
    samples = data.samples["train"]
    decoded = _decode(data)
    order = samples[::-1]
    rows = decoded.rows(order)
    for sample, row in zip(order, rows):
        assert decoded.paths[row] == sample.path
        expected = load_and_preprocess(data.root / sample.path, 32)
        assert np.array_equal(decoded.pixels[row], expected)


def test_unreadable_files_are_skipped_listed_and_remembered(data, decoder):
    bad = data.root / data.samples["train"][0].path
    bad.write_bytes(b"GIF89a not really")
    decoded = _decode(data)
    assert list(decoded.skipped) == [data.samples["train"][0].path]
    assert decoded.paths == sorted(s.path for s in data.samples["train"][1:])
    assert len(decoded.pixels) == len(decoded.paths)
    assert "skipped 1 unreadable file(s)" in decode_cache.describe_skipped(decoded.skipped)
    decoder.forbid()
    assert _decode(data).skipped == decoded.skipped


def test_nothing_readable_is_a_user_error(data):
    for sample in data.samples["train"]:
        (data.root / sample.path).write_text("text")
    with pytest.raises(UserError, match="none of the"):
        _decode(data)


def test_use_cache_false_writes_nothing(data):
    decode_cache.decode_images(data.root, data.samples["train"], 32, use_cache=False)
    assert not settings.cache_dir().exists() or not any(settings.cache_dir().iterdir())
