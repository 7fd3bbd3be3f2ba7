"""Checkpoints that are damaged, mismatched or malicious: refused in one line, nothing run."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import save as save_bytes

from cxr_core import cli
from cxr_core.errors import UserError
from cxr_core.models.weights_file import read_safetensors
from cxr_core.predict.inference import load_model


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_files(marker: Path) -> dict[str, bytes]:
    """The payload as every pickle protocol and as a ``torch.save`` zip."""
    files = {f"protocol-{p}": pickle.dumps(Payload(marker), protocol=p) for p in range(6)}
    buffer = io.BytesIO()
    torch.save({"model": Payload(marker)}, buffer)
    files["torch-save-zip"] = buffer.getvalue()
    return files


def test_the_payload_is_live(tmp_path):
    """Guard for the tests below: these bytes do run code when unpickled."""
    probe = tmp_path / "probe"
    for name, data in malicious_files(probe).items():
        if name == "torch-save-zip":
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert probe.exists(), name
        probe.unlink()


@pytest.fixture
def checkpoint(tiny_run_dir, tmp_path) -> Path:
    """A private copy of a good run folder."""
    return Path(shutil.copytree(tiny_run_dir, tmp_path / "run"))


def refused(source, match: str) -> str:
    with pytest.raises(UserError, match=match) as info:
        load_model(source)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_pickles_are_refused_and_never_unpickled(checkpoint, tmp_path, capsys):
    marker = tmp_path / "pwned"
    for name, data in malicious_files(marker).items():
        for target in (checkpoint / "model.safetensors", tmp_path / f"{name}.pt"):
            target.write_bytes(data)
            expected = "is a pickle" if name not in ("protocol-0", "protocol-1") else "not a valid"
            refused(target, expected)
            assert cli.main(["predict", "--checkpoint", str(target), "x.png"]) == 2
            assert capsys.readouterr().err.count("\n") == 1
            assert not marker.exists(), name


def test_a_pickled_resume_state_is_never_unpickled(checkpoint, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    runs = checkpoint.parent
    monkeypatch.setenv("CXR_RUNS_DIR", str(runs))
    (checkpoint / "last.safetensors").write_bytes(malicious_files(marker)["protocol-4"])
    status = json.loads((checkpoint / "status.json").read_text())
    (checkpoint / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    assert cli.main(["resume", "run"]) == 2
    assert "is a pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_a_fresh_process_loading_a_malicious_run_runs_nothing(checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    (checkpoint / "model.safetensors").write_bytes(malicious_files(marker)["torch-save-zip"])
    image = tmp_path / "x.png"
    shutil.copyfile(next((Path(__file__).parent).glob("*.py")), image)  # content irrelevant
    result = run_cli("predict", "--checkpoint", str(checkpoint), str(image))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is a pickle" in result.stderr
    assert not marker.exists()


def test_random_bytes_and_truncation_are_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(os.urandom(4096))
    refused(weights, "not a valid safetensors checkpoint")
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        weights.write_bytes(data[:cut])
        refused(weights, "corrupt or truncated")
    weights.write_bytes(b"")
    refused(weights, "corrupt or truncated")


def test_flipped_bits_in_the_weights_fail_the_checksum(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x40  # inside the last tensor's bytes: still parses
    weights.write_bytes(bytes(data))
    read_safetensors(weights)
    refused(weights, "do not match their checksum")


def rewrite_header(weights: Path, **changes) -> None:
    """Change metadata entries (JSON-encoded values, None deletes), keeping the tensors."""
    tensors, header = read_safetensors(weights)
    for key, value in changes.items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value if key in ("format", "sha256") else json.dumps(value)
    weights.write_bytes(save_bytes(tensors, metadata=header))


def test_weights_of_another_architecture_are_refused(checkpoint):
    weights = checkpoint / "model.safetensors"
    config = json.loads(read_safetensors(weights)[1]["config"])
    for arch in ("complex_cnn", "mlp", "densenet121"):  # densenet: no key in common
        rewrite_header(weights, config={**config, "arch": arch})
        refused(weights, f"do not fit architecture {arch}")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"threshold": "0.5; rm -rf /"}, "threshold .* is not a number"),
        ({"threshold": float("nan")}, "not a probability"),
        ({"threshold": 7}, "not a probability"),
        ({"config": ["small_cnn"]}, "config is not a JSON object"),
        ({"config": None}, "no training config"),
        ({"format": "other/1"}, "not a CXR Lab checkpoint"),
    ],
    ids=["threshold-text", "threshold-nan", "threshold-7", "config-list", "no-config", "format"],
)
def test_tampered_metadata_is_refused(checkpoint, changes, match):
    rewrite_header(checkpoint / "model.safetensors", **changes)
    refused(checkpoint, match)


@pytest.mark.parametrize(
    ("config_change", "match"),
    [
        ({"arch": "no_such_net"}, "no_such_net"),
        ({"img_size": 100_000}, r"Image size \(px\) must be between"),
        ({"img_size": "64"}, "config is invalid"),
        ({"augment": {"shear": 45}}, "config is invalid"),
    ],
    ids=["arch", "img-size-huge", "img-size-text", "augment"],
)
def test_tampered_config_is_refused_before_a_model_is_built(checkpoint, config_change, match):
    weights = checkpoint / "model.safetensors"
    config = json.loads(read_safetensors(weights)[1]["config"])
    rewrite_header(weights, config={**config, **config_change})
    refused(weights, match)


def test_a_header_length_that_starts_like_a_pickle_still_loads(checkpoint):
    """The 8-byte header length of a real file can begin with 0x80 (pickle's first byte)."""
    weights = checkpoint / "model.safetensors"
    tensors, header = read_safetensors(weights)
    for pad in range(0, 600):
        blob = save_bytes(tensors, metadata={**header, "note": json.dumps("x" * pad)})
        if blob[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    weights.write_bytes(blob)
    assert load_model(weights).config.arch == "small_cnn"
