"""The cached-features fast path: same run outputs and the same model as the per-batch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_core.data.folders import SplitManifest
from cxr_core.predict.inference import load_model
from cxr_core.store.runs import RunStore
from cxr_core.training import features, runtime
from cxr_core.training.config import Augmentation, TrainConfig
from cxr_core.training.engine import fit
from cxr_core.training.inputs import load_data
from cxr_core.training.runtime import predict_pixels


def _config(**overrides) -> TrainConfig:
    # resnet18 has no dropout before its head, so with a frozen backbone (BatchNorm in eval)
    # the per-batch path computes exactly what the cached features hold.
    base = {
        "arch": "resnet18",
        "data": "synthetic:12",
        "img_size": 64,
        "unfreeze_last": 0,
        "augment": Augmentation(enabled=False),
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-2,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def fp32(monkeypatch):
    """Compare the two paths at one precision: no CPU bf16 autocast, whatever the CPU."""
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: False)


def _train(cfg: TrainConfig, run_id: str):
    run = RunStore().create(cfg.to_dict(), run_id)
    return run, fit(run, cfg)


def test_applies_only_to_frozen_backbone_without_augmentation():
    assert features.applies(_config())
    assert not features.applies(_config(unfreeze_last=-1))
    assert not features.applies(_config(unfreeze_last=1))
    assert not features.applies(_config(augment=Augmentation(enabled=True)))


def test_extract_returns_the_heads_input_per_image(fp32):
    from cxr_core.training.runtime import build_network

    cfg = _config()
    network = build_network(cfg, torch.device("cpu"))
    pixels = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8)
    feats = features.extract(network, pixels, cfg, torch.device("cpu"), batch_size=2)
    assert feats.shape == (5, network.head.in_features) and feats.dtype == torch.float32
    with torch.inference_mode():
        from_features = torch.sigmoid(network.head(feats).squeeze(1))
    from_images = torch.from_numpy(predict_pixels(network.model, pixels, cfg, torch.device("cpu")))
    assert torch.allclose(from_features, from_images, atol=1e-5)


def test_fast_path_matches_the_per_batch_path(monkeypatch, fp32):
    cfg = _config()
    fast_run, fast = _train(cfg, "fast")
    monkeypatch.setattr(features, "applies", lambda cfg: False)
    slow_run, slow = _train(cfg, "slow")

    for split in ("val", "internal_test", "official_val"):
        np.testing.assert_allclose(
            fast["splits"][split]["probs"], slow["splits"][split]["probs"], atol=1e-4
        )
    fast_epochs = [r for r in fast_run.history() if r["type"] == "epoch"]
    slow_epochs = [r for r in slow_run.history() if r["type"] == "epoch"]
    assert len(fast_epochs) == len(slow_epochs) == cfg.epochs
    for a, b in zip(fast_epochs, slow_epochs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    assert fast_run.status()["status"] == "completed"


def test_fast_path_saves_the_whole_model_that_reproduces_its_evaluation(fp32):
    cfg = _config(epochs=1)
    run, evaluation = _train(cfg, "whole")
    loaded = load_model(run.path)
    # The checkpoint holds the backbone too, and on the images it gives what was reported.
    assert any(k.startswith("layer4.") for k in loaded.network.model.state_dict())
    data = load_data(cfg, SplitManifest.from_dict(run.split()))
    for split in ("val", "internal_test"):
        probs = predict_pixels(
            loaded.network.model, data.pixels[data.rows[split]], cfg, torch.device("cpu")
        )
        np.testing.assert_allclose(probs, evaluation["splits"][split]["probs"], atol=1e-4)
    assert loaded.threshold == pytest.approx(evaluation["threshold"])


def test_quick_preset_trains_on_cached_features():
    from cxr_core.training.presets import apply_preset

    cfg = TrainConfig.from_options(apply_preset("quick on CPU", {"data": "synthetic:12"}))
    assert features.applies(cfg)
    assert cfg.pretrained and cfg.arch == "efficientnet_lite0"


def test_resumed_optimizer_moments_keep_the_parameters_memory_format():
    """The fused optimizers pair a parameter and its moments by memory position: moments
    restored contiguous next to channels_last weights would update the wrong elements."""
    from cxr_core.training import engine, optim, resume_state

    cfg = _config(arch="small_cnn", unfreeze_last=-1, epochs=2)
    data = load_data(cfg)
    device = torch.device("cpu")

    def setup():
        network = runtime.build_network(cfg, device)
        optimizer = optim.make_optimizer(cfg, network.model)
        scheduler, unit = optim.make_scheduler(cfg, optimizer, len(data.rows["train"]) // 8)
        return network, optimizer, scheduler, unit, torch.amp.GradScaler("cpu", enabled=False)

    straight = setup()
    for epoch in (1, 2):
        engine.train_one_epoch(*straight, data, cfg, device, epoch)
    first = setup()
    engine.train_one_epoch(*first, data, cfg, device, 1)
    run = RunStore().create(cfg.to_dict(), "resume-layout")
    network, optimizer, scheduler, _, scaler = first
    resume_state.save_resume_state(run, network, optimizer, scheduler, scaler, {"epoch": 1})
    resumed = setup()
    network, optimizer, scheduler, _, scaler = resumed
    resume_state.load_resume_state(run, network, optimizer, scheduler, scaler)
    for param in network.model.parameters():
        for moment in optimizer.state[param].values():
            if moment.shape == param.shape:
                assert moment.stride() == param.stride()
    engine.train_one_epoch(*resumed, data, cfg, device, 2)
    for a, b in zip(straight[0].model.parameters(), network.model.parameters()):
        assert torch.equal(a, b)


def test_cpu_bf16_autocast_only_for_plain_convolutional_networks(monkeypatch):
    from cxr_core.models.zoo import create_network

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    resnet = create_network("resnet18", False, 64)
    efficientnet = create_network("efficientnet_lite0", False, 64)  # depthwise convolutions
    assert runtime.autocast(cpu, resnet.model, training=True).fast_dtype == torch.bfloat16
    assert runtime.autocast(cpu, resnet.model, training=True)._enabled
    assert not runtime.autocast(cpu, resnet.model, training=False)._enabled  # scores: fp32
    assert not runtime.autocast(cpu, efficientnet.model, training=True)._enabled
    assert not runtime.autocast(cpu, resnet.head, training=True)._enabled  # cached features
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: False)
    assert not runtime.autocast(cpu, resnet.model, training=True)._enabled


def test_cxr_cpu_bf16_0_keeps_fp32(monkeypatch):
    monkeypatch.setenv("CXR_CPU_BF16", "0")
    runtime._cpu_has_bf16.cache_clear()
    try:
        assert not runtime._cpu_has_bf16()
    finally:
        runtime._cpu_has_bf16.cache_clear()
