"""Where and how a network runs: the device, mixed precision, the network's input and
batched prediction. Shared by training, cached features and inference, so a model sees
exactly the same input when it is trained, evaluated and explained.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from cxr_core.errors import UserError
from cxr_core.models.zoo import Network, create_network, set_trainable
from cxr_core.settings import cpu_bf16_setting
from cxr_core.training.augment import augment_batch
from cxr_core.training.config import TrainConfig


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but Apple MPS is not available")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def to_input(
    pixels: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> normalised float ``[B, 1, H, W]`` (augmented if ``gen``).

    Float rows are cached backbone features (:mod:`cxr_core.training.features`): used as they are.
    """
    if pixels.is_floating_point():
        return pixels.to(device, non_blocking=True)
    x = pixels.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    if gen is not None:
        x = augment_batch(x, cfg.augment, gen)
    x = (x - cfg.norm_mean) / cfg.norm_std
    return x.contiguous(memory_format=torch.channels_last) if device.type != "mps" else x


def build_network(cfg: TrainConfig, device: torch.device) -> Network:
    torch.manual_seed(cfg.seed)
    network = create_network(cfg.arch, cfg.pretrained, cfg.img_size)
    set_trainable(network, cfg.unfreeze_last)
    memory_format = torch.channels_last if device.type != "mps" else torch.preserve_format
    network.model.to(device, memory_format=memory_format)
    return network


@functools.cache
def _cpu_has_bf16() -> bool:
    """Native bf16 units (AMX or AVX-512 BF16); ``CXR_CPU_BF16=0`` keeps CPUs in fp32.

    Without them bf16 is emulated and slower than fp32.
    """
    if cpu_bf16_setting() is False:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def autocast(device: torch.device, model: torch.nn.Module, training: bool):
    """Mixed precision where it is faster: bf16/fp16 on CUDA; on a CPU with native bf16
    units, bf16 for training convolutional networks without depthwise convolutions (on a
    2-core Xeon with AMX, resnet18 and small_cnn trained 2.4-2.8x faster; efficientnet's
    depthwise convolutions ran 0.8x and a lone linear head gains nothing: those stay fp32).
    Without those units bf16 is emulated: several times slower (benchmarks/, AMD EPYC).
    CPU inference stays fp32, so a run's recorded scores reproduce on any CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    plain = convs and all(c.groups == 1 for c in convs)
    if device.type == "cpu" and training and plain and _cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def predict_pixels(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Pneumonia probabilities for uint8 ``[N, H, W]`` images (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        x = to_input(pixels[start : start + batch_size], cfg, device)
        with autocast(device, model, training=False):
            out.append(torch.sigmoid(model(x).float().squeeze(1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
