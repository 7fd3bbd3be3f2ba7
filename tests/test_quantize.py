"""Weights stored at lower precision: int8 round-trips within half a quantization step,
and `quantize` re-scores what it stores (or leaves the run as it was)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import run_cli

from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.zoo import create_network
from cxr_core.predict.inference import load_model, predict
from cxr_core.store.runs import Run


def test_int8_round_trip_per_channel(tmp_path):
    torch.manual_seed(0)
    network = create_network("small_cnn", False, 64)
    path = tmp_path / "model.safetensors"
    weights_file.save_weights(path, network.model, {"config": {}}, "int8")
    state, meta = weights_file.load_weights(path)
    assert meta["precision"] == "int8"
    original = network.model.state_dict()
    assert set(state) == set(original)  # the scales are folded back in, not listed
    tensors, _ = weights_file.read_safetensors(path)
    quantized = 0
    for name, want in original.items():
        if want.is_floating_point() and want.dim() >= 2:
            quantized += 1
            assert tensors[name].dtype == torch.int8
            step = want.reshape(want.shape[0], -1).abs().amax(dim=1) / 127
            error = (state[name] - want).reshape(want.shape[0], -1).abs().amax(dim=1)
            assert (error <= step / 2 + 1e-7).all()
        elif want.is_floating_point():
            assert tensors[name].dtype == torch.float16
        else:
            assert torch.equal(state[name], want)
    assert quantized >= 4
    with pytest.raises(UserError, match="precision"):
        weights_file.save_weights(path, network.model, {}, "int4")


def test_quantize_rescores_what_it_stores(tiny_run_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, runs / "tiny")
    fp32 = Run(runs / "tiny").evaluation()
    size = (runs / "tiny" / "model.safetensors").stat().st_size

    derived = runs / "tiny" / "cam_checks" / "set-gradcam-16.json"  # of the old weights
    derived.parent.mkdir()
    derived.write_text("{}")
    result = run_cli("--runs-dir", str(runs), "quantize", "tiny", "--precision", "int8")
    assert result.returncode == 0, result.stderr
    assert "int8 weights" in result.stdout and "val AUC" in result.stdout
    run = Run(runs / "tiny")
    evaluation = run.evaluation()
    assert evaluation["weights_precision"] == "int8"
    assert not derived.parent.exists()
    assert run.weights.stat().st_size < size / 3
    # Re-scored: the stored probabilities are the int8 model's, and close to fp32's.
    model = load_model(run.path)
    assert model.threshold == pytest.approx(evaluation["threshold"])
    val = evaluation["splits"]["val"]
    paths = [run.split()["root"] + "/" + p for p in val["paths"]]
    probs = [p.probability for p in predict(model, paths)]
    assert probs == pytest.approx(val["probs"], abs=1e-4)
    assert probs != pytest.approx(fp32["splits"]["val"]["probs"], abs=1e-7)
    assert val["probs"] == pytest.approx(fp32["splits"]["val"]["probs"], abs=0.05)
    assert run.config()["command"].endswith("quantize tiny --precision int8")


def test_quantize_refuses_an_unfinished_run_and_changes_nothing(tiny_run_dir, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, runs / "tiny")
    status = json.loads((runs / "tiny" / "status.json").read_text())
    (runs / "tiny" / "status.json").write_text(json.dumps({**status, "status": "failed"}))
    before = (runs / "tiny" / "model.safetensors").read_bytes()
    result = run_cli("--runs-dir", str(runs), "quantize", "tiny")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not completed" in result.stderr
    assert (runs / "tiny" / "model.safetensors").read_bytes() == before
