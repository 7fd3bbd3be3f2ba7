"""The one training configuration, threaded through the engine and saved with the run.

Everything that changes a trained model lives here, so a run folder's ``config.json``
is enough to rebuild, evaluate, resume or reproduce it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from cxr_core.errors import UserError
from cxr_core.models import get_architecture

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd")
SCHEDULERS = ("none", "cosine", "step", "plateau", "onecycle")
IMBALANCE = ("none", "weighted", "sampler")
MONITORS = ("val_auc", "val_loss", "val_f1")
THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")


@dataclass
class Augmentation:
    """Random transforms applied to training batches (on the training device).

    Horizontal flip is off by default: the heart sits on the left, so a flipped film is
    an anatomically different (dextrocardia) image, and laterality markers flip too.
    """

    enabled: bool = True
    rotation: float = 10.0
    """Degrees, +/-."""
    translate: float = 0.06
    """Fraction of the image side, +/-."""
    scale: float = 0.10
    """Zoom range 1 +/- scale."""
    crop: float = 0.85
    """Random resized crop keeps at least this fraction of the side (1 = off)."""
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: float = 0.0
    """Random gamma: intensities raised to exp(U(-gamma, +gamma)); 0 = off. Films from
    another scanner or era differ most in their tone curve."""
    hflip: bool = False


@dataclass
class TrainConfig:
    arch: str
    data: str
    img_size: int | None = None
    pretrained: bool = False
    unfreeze_last: int = -1
    """-1 trains every layer; 0 trains the head only; N also the last N backbone stages."""
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    imbalance: str = "weighted"
    augment: Augmentation = field(default_factory=Augmentation)
    clahe: bool = False
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_images: int | None = None
    patience: int = 5
    monitor: str = "val_auc"
    threshold_method: str = "youden"
    target_sensitivity: float = 0.95
    label_smoothing: float = 0.0
    device: str = "auto"
    log_every: int = 10
    norm_mean: float = 0.449
    norm_std: float = 0.226
    """Gray-level normalisation: the mean of ImageNet's channel statistics, which is what
    pretrained kernels summed over RGB expect; harmless for models trained from scratch."""

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = Augmentation(**self.augment)
        spec = get_architecture(self.arch)
        if self.img_size is None:
            self.img_size = spec.fixed_img_size or spec.default_img_size
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}"),
            (self.imbalance in IMBALANCE, f"imbalance must be one of {', '.join(IMBALANCE)}"),
            (self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}"),
            (
                self.threshold_method in THRESHOLD_METHODS,
                f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}",
            ),
            (32 <= self.img_size <= 512, "image size must be between 32 and 512"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (1 <= self.batch_size <= 1024, "batch size must be between 1 and 1024"),
            (0 < self.lr < 10, "learning rate must be in (0, 10)"),
            (self.max_images is None or self.max_images >= 20, "max images must be at least 20"),
            (0 < self.target_sensitivity < 1, "target sensitivity must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from JSON, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
