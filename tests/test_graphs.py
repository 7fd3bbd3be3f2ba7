"""ONNX Runtime on a run's exported graph gives PyTorch's probabilities, for single runs
and ensembles; a graph is remade when its weights change or it is damaged, and
CXR_ENGINE=torch (or an unknown engine, refused in one line) is honoured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import imported_by, write_kaggle_tree

from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.catalogue import REGISTRY
from cxr_core.predict import graphs
from cxr_core.predict.ensembles import load
from cxr_core.predict.inference import load_model, probabilities
from cxr_core.settings import bundled_runs_dir
from cxr_core.store import records
from cxr_core.store.runs import Run

ATOL = 1e-4


def _films(size: int, n: int = 6) -> np.ndarray:
    """Smooth gradients and noise: films whose probabilities spread over 0..1."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    smooth = [np.add.outer(ramp * a, ramp * (1 - a)) / 2 for a in (0.2, 0.5, 0.8)]
    noise = rng.integers(0, 256, (n - len(smooth), size, size))
    return np.concatenate([np.stack(smooth), noise]).astype(np.uint8)


def _both(monkeypatch, model, films) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setenv("CXR_ENGINE", "torch")
    by_torch = probabilities(model, films)
    monkeypatch.setenv("CXR_ENGINE", "onnx")
    return by_torch, probabilities(model, films)


def _graph(model) -> Path:
    return graphs.graph_file(model.source, model.config)


@pytest.fixture
def tiny(tmp_path, tiny_run_dir) -> Run:
    """A copy of the session's tiny run without the graph other tests may have made."""
    shutil.copytree(tiny_run_dir, tmp_path / "tiny", ignore=shutil.ignore_patterns(records.GRAPHS))
    return Run(tmp_path / "tiny")


@pytest.mark.parametrize(
    "run", ["tiny", "small_cnn-scratch-128", "efficientnet_lite0-pretrained-224"]
)
def test_both_engines_give_the_same_probabilities(monkeypatch, request, run):
    path = request.getfixturevalue("tiny").path if run == "tiny" else bundled_runs_dir() / run
    model = load_model(path)
    by_torch, by_onnx = _both(monkeypatch, model, _films(model.config.img_size))
    assert _graph(model).is_file()  # made, and kept (a bundled run's in its overlay)
    # films a bundled model tells apart, not one constant (the two-epoch tiny run says ~0.5)
    assert run == "tiny" or by_torch.std() > 1e-3
    np.testing.assert_allclose(by_onnx, by_torch, atol=ATOL, rtol=0)


def test_an_ensemble_scores_the_same_on_both_engines(monkeypatch):
    ensemble = load(bundled_runs_dir() / "ensemble-lite0-resnet18-strongaug")
    for model in ensemble.members.values():
        by_torch, by_onnx = _both(monkeypatch, model, _films(model.config.img_size, 4))
        np.testing.assert_allclose(by_onnx, by_torch, atol=ATOL, rtol=0)
        assert _graph(model).is_file()


def test_a_stale_graph_is_remade_for_the_new_weights(monkeypatch, tiny):
    model = load_model(tiny.path)
    films = _films(model.config.img_size)
    monkeypatch.setenv("CXR_ENGINE", "onnx")
    before = probabilities(model, films)
    old = _graph(model)
    state, meta = weights_file.load_weights(tiny.weights)
    changed = {k: v * 1.5 if k.startswith("fc.") else v for k, v in state.items()}
    model.network.model.load_state_dict(changed)
    weights_file.save_weights(tiny.weights, model.network.model, meta)
    reloaded = load_model(tiny.path)
    by_torch, by_onnx = _both(monkeypatch, reloaded, films)
    assert _graph(reloaded) != old and _graph(reloaded).is_file() and not old.exists()
    assert np.abs(by_onnx - before).max() > 1e-3  # the new weights' graph, not the old one
    np.testing.assert_allclose(by_onnx, by_torch, atol=ATOL, rtol=0)


def test_a_damaged_graph_is_made_again(monkeypatch, tiny):
    model = load_model(tiny.path)
    films = _films(model.config.img_size)
    by_torch, _ = _both(monkeypatch, model, films)
    file = _graph(model)
    file.write_bytes(b"not a graph")
    graphs._SESSIONS.clear()  # a new process: only the file is left
    np.testing.assert_allclose(probabilities(model, films), by_torch, atol=ATOL, rtol=0)
    assert file.stat().st_size > 1000


def test_torch_engine_makes_no_graph_and_an_unknown_engine_is_one_line(monkeypatch, tiny):
    model = load_model(tiny.path)
    monkeypatch.setenv("CXR_ENGINE", "torch")
    probabilities(model, _films(model.config.img_size))
    assert not (tiny.path / records.GRAPHS).exists()
    monkeypatch.setenv("CXR_ENGINE", "tensorrt")
    with pytest.raises(UserError, match="CXR_ENGINE must be one of onnx, torch"):
        graphs.available()


def test_evaluate_from_a_kept_graph_imports_no_torch_or_scipy(monkeypatch, tiny, tmp_path):
    """A run whose graph is kept is scored, with its metrics and intervals, by numpy and
    ONNX Runtime alone: issue 20's evaluate pays neither torch's nor scipy's imports."""
    folder = write_kaggle_tree(tmp_path / "films", 6, 6, split="test")
    monkeypatch.setenv("CXR_ENGINE", "onnx")
    model = load_model(tiny.path)
    probabilities(model, _films(model.config.img_size))  # the graph is made and kept
    out = tmp_path / "evaluate.json"
    code = (
        "import contextlib, pathlib; from cxr_core import cli\n"
        f"with pathlib.Path({str(out)!r}).open('w') as out, contextlib.redirect_stdout(out):\n"
        f"    assert cli.main(['evaluate', '--checkpoint', {str(tiny.path)!r}, '--data', "
        f"{str(folder)!r}, '--json']) == 0"
    )
    env = {"CXR_ENGINE": "onnx", "CXR_RUNS_DIR": str(tmp_path / "runs")}
    assert imported_by(code, ("scipy", "sklearn", "statsmodels", "torch"), env) == []
    assert json.loads(out.read_text())["n"] == len(list(folder.rglob("*.jpeg")))


def test_a_header_with_another_config_does_not_use_the_kept_graph(monkeypatch, tiny):
    """The graph is named by the weights and the config it was built from: a header whose
    config changed (here the normalisation) is exported and checked again."""
    monkeypatch.setenv("CXR_ENGINE", "onnx")
    model = load_model(tiny.path)
    films = _films(model.config.img_size)
    before = probabilities(model, films)
    config = {**model.config.to_dict(), "norm_std": model.config.norm_std * 2}
    tiny.weights.write_bytes(weights_file.with_metadata(tiny.weights, {"config": config}))
    changed = load_model(tiny.path)
    assert changed.built is not None  # no graph for this config: built, so checked, now
    by_torch, by_onnx = _both(monkeypatch, changed, films)
    np.testing.assert_allclose(by_onnx, by_torch, atol=ATOL, rtol=0)
    assert np.abs(by_onnx - before).max() > 1e-4


HEAVY = {"vgg16", "vit_b_16", "resnet50", "densenet121"}


@pytest.mark.numeric
@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in REGISTRY],
)
def test_every_architecture_exports_its_logit_and_features(arch):
    """The graph gives each architecture's logit (scores, Score-CAM's masked inputs) and
    its head's input (the input guard's features) as PyTorch computes them."""
    import onnxruntime
    import torch

    from cxr_core.training.config import TrainConfig
    from cxr_core.training.runtime import build_network

    size = 224 if arch in HEAVY else 64  # VGG's adaptive pool exports from 224 px only
    cfg = TrainConfig(arch=arch, data="synthetic", img_size=size)
    network = build_network(cfg, torch.device("cpu"))
    network.model.eval().requires_grad_(False)
    session = onnxruntime.InferenceSession(graphs.export(network, cfg))
    inputs = graphs.network_input(_films(size, 4), cfg)
    seen = []
    hook = network.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.inference_mode():
        logit = network.model(torch.from_numpy(inputs)).squeeze(1).numpy()
    hook.remove()
    features = seen[0].flatten(1).numpy()
    scale = np.abs(features).max()
    np.testing.assert_allclose(graphs.outputs(session, inputs, "logit"), logit, atol=1e-4)
    np.testing.assert_allclose(
        graphs.outputs(session, inputs, "features"), features, atol=1e-4 * max(scale, 1)
    )


def test_the_input_guard_features_are_the_same_on_both_engines(monkeypatch):
    from cxr_core.predict.input_guard import penultimate_features

    model = load_model(bundled_runs_dir() / "efficientnet_lite0-pretrained-224")
    films = _films(model.config.img_size, 4)
    monkeypatch.setenv("CXR_ENGINE", "torch")
    by_torch = penultimate_features(model, films)
    monkeypatch.setenv("CXR_ENGINE", "onnx")
    np.testing.assert_allclose(penultimate_features(model, films), by_torch, atol=1e-5)


def test_a_network_the_exporter_refuses_is_scored_by_pytorch(tmp_path, monkeypatch):
    """VGG-16 at 64 px: its adaptive pool cannot be written to ONNX below 224 px. The run
    is scored by PyTorch, with a warning once, instead of failing."""
    import torch

    from cxr_core.training.config import TrainConfig
    from cxr_core.training.runtime import build_network

    monkeypatch.setenv("CXR_ENGINE", "onnx")
    cfg = TrainConfig(arch="vgg16", data="synthetic", img_size=64)
    network = build_network(cfg, torch.device("cpu"))
    folder = tmp_path / "vgg"
    folder.mkdir()
    (folder / records.CONFIG).write_text(json.dumps(cfg.to_dict()))
    weights_file.save_weights(folder / records.WEIGHTS, network.model, {"config": cfg.to_dict()})
    model = load_model(folder)
    films = _films(64, 4)
    with pytest.warns(UserWarning, match="no ONNX graph"):
        first = probabilities(model, films)
    monkeypatch.setenv("CXR_ENGINE", "torch")
    np.testing.assert_allclose(first, probabilities(model, films), atol=1e-6)
    assert not _graph(model).exists()
