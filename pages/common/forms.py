"""Turning the Train page's form into checked training configs."""

from __future__ import annotations

from cxr_core.data.sources import DataSpec
from cxr_core.errors import UserError
from cxr_core.models.catalogue import get_architecture
from cxr_core.training.config import TrainConfig


def build_configs(archs: list[str], options: dict) -> list[TrainConfig]:
    """One :class:`TrainConfig` per architecture with the same options, checked before
    anything is launched, so a bad combination is one message and no half-started batch."""
    if not archs:
        raise UserError("pick at least one architecture")
    data = DataSpec.parse(options.get("data", ""))
    if not data.synthetic:
        data.resolve()  # a preset or CXR_DATA_DIR must obey the allowed roots too
    configs = []
    for arch in archs:
        size = options.get("img_size") or None  # 0: the architecture's default
        config = TrainConfig(**{**options, "arch": arch, "img_size": size})
        config.check_launch()
        configs.append(config)
    return configs


def needs_download(arch: str, pretrained: bool) -> bool:
    """Whether starting ``arch`` needs ImageNet weights from the internet."""
    return pretrained and get_architecture(arch).pretrained_source == "torchvision"
