"""BatchNorm statistics: which layers hold them, and estimating them again on other films.

Weight averaging (SWA, WiSE-FT) leaves running statistics that belong to none of the
averaged networks, and a new site's films are normalised with another site's statistics
(AdaBN re-estimates them there). Both are one pass of the films through the network in
training mode with a cumulative average, here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that keeps running statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def keep_statistics(model: nn.Module) -> None:
    """Every BatchNorm layer in eval mode: it normalises with its stored statistics and
    does not update them (call after ``model.train()``)."""
    for layer in batchnorm_layers(model):
        layer.eval()


@torch.no_grad()
def reestimate_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm layer's running mean and variance by their average over
    ``batches`` (model inputs); the weights stay. Returns the number of images seen."""
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch, not a decaying one
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += len(x)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return seen
