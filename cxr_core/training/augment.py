"""Batched augmentation on the training device.

One affine warp per image (rotation, translation, zoom and random resized crop folded
into a single matrix) plus brightness, contrast and gamma jitter, done with ``affine_grid`` and
``grid_sample`` on the whole batch: no per-image Python, and it runs on the GPU when
there is one. Random numbers come from a seeded CPU generator, so a resumed epoch
sees exactly the same augmentations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr_core.training.config import Augmentation


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def augment_batch(x: torch.Tensor, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """Augment ``x`` (``[B, 1, H, W]`` floats in 0..1); identity when disabled."""
    if not aug.enabled:
        return x
    n = x.shape[0]
    angle = _uniform(n, -aug.rotation, aug.rotation, gen) * math.pi / 180
    zoom = _uniform(n, 1 - aug.scale, 1 + aug.scale, gen)
    crop_x = _uniform(n, aug.crop, 1.0, gen)
    crop_y = (crop_x * _uniform(n, 0.93, 1.07, gen)).clamp(max=1.0)  # mild aspect jitter
    shift_x = _uniform(n, -1, 1, gen) * (1 - crop_x) + _uniform(n, -1, 1, gen) * 2 * aug.translate
    shift_y = _uniform(n, -1, 1, gen) * (1 - crop_y) + _uniform(n, -1, 1, gen) * 2 * aug.translate
    flip = (
        torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(n)
    )
    sx, sy = flip * crop_x / zoom, crop_y / zoom
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, shift_x], dim=1),
            torch.stack([sin * sx, cos * sy, shift_y], dim=1),
        ],
        dim=1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = _uniform(n, 1 - aug.contrast, 1 + aug.contrast, gen).to(x.device, x.dtype)
    brightness = _uniform(n, -aug.brightness, aug.brightness, gen).to(x.device, x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.view(-1, 1, 1, 1) + mean + brightness.view(-1, 1, 1, 1)
    x = x.clamp(0, 1)
    if aug.gamma > 0:
        gamma = torch.exp(_uniform(n, -aug.gamma, aug.gamma, gen)).to(x.device, x.dtype)
        x = x.clamp_min(1e-6).pow(gamma.view(-1, 1, 1, 1))
    return x
