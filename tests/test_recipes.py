"""Training recipes for other sites' films (LP-FT, SWA, WiSE-FT, kept BatchNorm statistics):
what each trains, what it ships, that a resumed run continues it, and the launch checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.batchnorm import batchnorm_layers, reestimate_statistics
from cxr_core.models.zoo import create_network
from cxr_core.store import records
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import fit
from cxr_core.training.recipes import averaged_from, start_epoch

ROOT = Path(__file__).resolve().parents[1]
LITE = {"arch": "efficientnet_lite0", "data": "synthetic:40", "img_size": 64, "pretrained": True}


def _cfg(**changes) -> TrainConfig:
    cfg = TrainConfig(
        **{**LITE, "epochs": 4, "batch_size": 16, "augment": {"enabled": False}, **changes}
    )
    cfg.check_launch()
    return cfg


def test_the_probe_trains_the_head_alone_then_every_layer():
    cfg = _cfg(probe_epochs=2)
    network = create_network(cfg.arch, True, cfg.img_size)
    start_epoch(network, cfg, 2)
    trainable = {n for n, p in network.model.named_parameters() if p.requires_grad}
    head = {f"{n}" for n, _ in network.head.named_parameters()}
    assert trainable and all(any(n.endswith(h) for h in head) for n in trainable)
    # While probing, the frozen backbone's BatchNorm layers keep ImageNet's statistics.
    start_epoch(network, cfg, 3)
    assert all(p.requires_grad for p in network.model.parameters())
    assert all(layer.training for layer in batchnorm_layers(network.model).values())


def test_kept_statistics_leave_batchnorm_in_eval_mode():
    cfg = _cfg(freeze_bn_stats=True)
    network = create_network(cfg.arch, True, cfg.img_size)
    start_epoch(network, cfg, 1)
    assert network.model.training
    assert not any(layer.training for layer in batchnorm_layers(network.model).values())


def test_reestimated_statistics_are_the_films_own():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    films = [torch.randn(8, 1, 5, 5) * 3 + 2 for _ in range(4)]
    assert reestimate_statistics(model, films) == 32
    inner = torch.cat([model[0](x) for x in films]).detach()
    layer = model[1]
    assert torch.allclose(layer.running_mean, inner.mean((0, 2, 3)), atol=1e-5)
    # The average of the batches' variances: the pooled variance less the spread of batch means.
    assert torch.allclose(layer.running_var, inner.var((0, 2, 3)), rtol=0.01)
    assert layer.momentum == 0.1 and model.training  # left as it was


def _stem(tensors: dict) -> torch.Tensor:
    return tensors["_conv_stem.weight"].float()


def test_lp_ft_then_wise_ft_ships_the_average_of_probe_and_fine_tuned_weights():
    cfg = _cfg(epochs=3, probe_epochs=1, weight_averaging="wise", lr=3e-3)
    run = RunStore().create(cfg.to_dict(), "wise")
    evaluation = fit(run, cfg)
    imagenet = create_network(cfg.arch, True, cfg.img_size).model.state_dict()
    probed, _ = weights_file.load_weights(run.path / records.PROBE_WEIGHTS)
    shipped, meta = weights_file.load_weights(run.weights)
    # The probe moved the head only; the backbone is ImageNet's.
    assert torch.equal(_stem(probed), _stem(imagenet))
    assert not torch.equal(probed["_fc.weight"], imagenet["_fc.weight"])
    # What ships sits halfway: its backbone moved from ImageNet's, by half the fine-tuning.
    assert not torch.allclose(_stem(shipped), _stem(imagenet))
    assert (
        evaluation["averaged"].startswith("WiSE-FT") and meta["averaged"] == evaluation["averaged"]
    )
    assert evaluation["splits"]["val"]["n"] > 0


def test_swa_averages_the_second_half_once_even_when_an_epoch_is_replayed(tmp_path, monkeypatch):
    cfg = _cfg(epochs=4, weight_averaging="swa")
    assert averaged_from(cfg) == 3
    run = RunStore().create(cfg.to_dict(), "swa")
    evaluation = fit(run, cfg)
    assert evaluation["averaged"] == "SWA: the average of epochs 3, 4"
    average, header = weights_file.read_safetensors(run.path / records.AVERAGE_WEIGHTS)
    shipped, _ = weights_file.load_weights(run.weights)
    assert header["epochs"] == "3,4"
    assert torch.allclose(_stem(shipped), average["_conv_stem.weight"])
    # BatchNorm statistics were estimated again for the averaged weights.
    assert not torch.allclose(
        shipped["_bn0.running_mean"],
        average["_bn0.running_mean"].to(shipped["_bn0.running_mean"].dtype),
    )


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"pretrained": False, "probe_epochs": 1}, "need a pretrained backbone"),
        ({"pretrained": False, "freeze_bn_stats": True}, "need a pretrained backbone"),
        ({"probe_epochs": 1, "unfreeze_last": 0}, "it is frozen"),
        ({"probe_epochs": 4}, "leave none of 4"),
        ({"weight_averaging": "wise"}, "set probe epochs"),
        ({"weight_averaging": "swa", "unfreeze_last": 0}, "needs a fine-tuned backbone"),
    ],
)
def test_recipes_that_cannot_apply_are_refused_in_one_line(changes, words):
    with pytest.raises(UserError, match=words) as refused:
        _cfg(**changes)
    assert "\n" not in str(refused.value)
