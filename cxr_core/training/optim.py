"""The optimizer and learning-rate schedule a :class:`TrainConfig` names."""

from __future__ import annotations

import torch

from cxr_core.training.config import TrainConfig


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel a step instead of a pass over the weights per operation (CUDA and
    # CPU have it; NAdam not). On 2-core CPUs it measured 1.02-1.2x on a Xeon and 0.91-0.96x
    # on an AMD EPYC, near the noise: the optimizer is 1% of a step there (benchmarks/).
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if cfg.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[object | None, str]:
    """The scheduler and when it steps: ``"step"`` (each batch) or ``"epoch"``."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "step"
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total), "step"
    if cfg.scheduler == "step":
        size = max(1, cfg.epochs // 3)
        return torch.optim.lr_scheduler.StepLR(optimizer, size, gamma=0.1), "epoch"
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.monitor == "val_loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode, patience=2), "epoch"
    return None, "never"
