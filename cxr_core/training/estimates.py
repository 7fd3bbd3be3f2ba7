"""How long a training run will take on this machine, said before it starts.

The cost of an image depends on the architecture, the input size, what is frozen and the
CPU, and it differs several-fold between the machines CXR Lab runs on. So it is measured
here: from the finished epochs of earlier runs of the same kind on this host when there
are some, else by timing a few real training steps on random images.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from cxr_core.store.runs import RunStore
from cxr_core.training import features
from cxr_core.training.config import TrainConfig
from cxr_core.training.optim import make_optimizer
from cxr_core.training.runtime import autocast, build_network, select_device, to_input


def _same_kind(config: dict, cfg: TrainConfig) -> bool:
    keys = ("arch", "img_size", "pretrained", "unfreeze_last", "batch_size")
    return all(config.get(k) == getattr(cfg, k) for k in keys) and (
        config.get("augment", {}).get("enabled", True) == cfg.augment.enabled
    )


def measured_rate(store: RunStore, cfg: TrainConfig) -> float | None:
    """Median training images/s of earlier runs of the same kind on this host."""
    rates = []
    for run in store.list(status="completed"):
        if run.bundled or not _same_kind(run.config(), cfg):
            continue
        if run.environment().get("platform") != platform.platform():
            continue
        rates += [r["images_per_s"] for r in run.history() if r.get("type") == "epoch"]
    return statistics.median(rates) if rates else None


def probe_key(cfg: TrainConfig) -> dict:
    """What a step's cost depends on, as a config to probe (random ImageNet-free weights:
    timing needs no download)."""
    keep = ("arch", "img_size", "unfreeze_last", "batch_size", "optimizer", "device")
    values = {k: getattr(cfg, k) for k in keep}
    return {**values, "data": "synthetic", "augment": {"enabled": cfg.augment.enabled}}


def probe_rate(cfg: TrainConfig, steps: int = 3) -> float:
    """Training images/s of ``cfg`` here, timed over a few real steps on random images
    (after one warm-up step); a frozen backbone without augmentation is timed as the
    forward pass that computes its cached features."""
    device = select_device(cfg.device)
    network = build_network(cfg, device)
    batch = max(2, min(cfg.batch_size, 16))
    pixels = torch.randint(0, 256, (batch, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    x = to_input(pixels, cfg, device)
    model = network.model
    if features.applies(cfg):
        model.eval()
        with torch.inference_mode():
            model(x)
            started = time.perf_counter()
            for _ in range(steps):
                model(x)
        return steps * batch / (time.perf_counter() - started)
    model.train()
    optimizer = make_optimizer(cfg, model)
    target = torch.ones(batch, device=device)
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        with autocast(device, model, training=True):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x).float().squeeze(1), target
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def expected_seconds(cfg: TrainConfig, n_train: int, n_all: int, rate: float) -> float:
    """The whole run: every epoch over the training images at ``rate``, or, on cached
    features, one forward pass over every image (the head's epochs cost next to nothing);
    plus scoring every image once at the end (about a third of a training step each)."""
    if features.applies(cfg):
        return n_all / rate
    return cfg.epochs * n_train / rate + n_all / (3 * rate)


def cpu_share() -> float:
    """The share of this machine's CPUs a new run can expect now (at most 1): the
    one-minute load average against the core count. A rate measured on a quiet machine
    overpromises on a busy one (an estimate of 11 minutes took 18.7 beside other work)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume a quiet machine
        return 1.0
    cores = os.cpu_count() or 1
    return min(1.0, cores / max(load, 1e-9))
