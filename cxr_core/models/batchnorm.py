"""BatchNorm statistics: which layers hold them, and estimating them again on other films.

Weight averaging (SWA, WiSE-FT) leaves running statistics that belong to none of the
averaged networks, and a new site's films are normalised with another site's statistics
(AdaBN re-estimates them there). Both are one pass of the films through the network with
its BatchNorm layers averaging what they see, here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> dict[str, BatchNorm]:
    """The BatchNorm layers that keep running statistics, by module name."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, BatchNorm) and m.track_running_stats
    }


def keep_statistics(model: nn.Module, every: bool = True) -> None:
    """BatchNorm layers in eval mode, normalising with their stored statistics and not
    updating them (call after ``model.train()``): every one, or (``every=False``) those
    whose weights are frozen, so a frozen stage keeps its pretrained statistics."""
    for layer in batchnorm_layers(model).values():
        if every or not any(p.requires_grad for p in layer.parameters()):
            layer.eval()


@torch.no_grad()
def reestimate_statistics(
    model: nn.Module, batches: Iterable[torch.Tensor], layers: Iterable[str] | None = None
) -> int:
    """Replace the running mean and variance of the BatchNorm ``layers`` (by name; default
    every one) by their average over ``batches`` (model inputs); weights and every other
    layer stay, dropout off. Returns the number of images seen."""
    named = batchnorm_layers(model)
    chosen = [named[name] for name in layers] if layers is not None else list(named.values())
    momenta = [layer.momentum for layer in chosen]
    was_training = model.training
    model.eval()
    for layer in chosen:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch, not a decaying one
        layer.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for layer, momentum in zip(chosen, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return seen
