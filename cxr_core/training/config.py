"""The one training configuration, threaded through the engine and saved with the run.

Everything that changes a trained model lives here, so a run folder's ``config.json``
is enough to rebuild, evaluate, resume or reproduce it. Each field also says how a user
sets it (help, label, choices, bounds, group): the CLI's ``train`` flags and the Train
page's widgets are generated from :func:`options`, and :meth:`TrainConfig.validate`
checks the same bounds. Adding a training option is adding a field here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from cxr_core.errors import UserError
from cxr_core.models.catalogue import REGISTRY, check_build, get_architecture

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd")
SCHEDULERS = ("none", "cosine", "step", "plateau", "onecycle")
IMBALANCE = ("none", "weighted", "sampler")
MONITORS = ("val_auc", "val_loss", "val_f1")
THRESHOLD_METHODS = ("plateau", "youden", "sensitivity", "specificity", "fixed")
WEIGHT_AVERAGING = ("none", "swa", "wise")
THRESHOLD_OPTIONS = ("threshold_method", "target_sensitivity", "target_specificity")
"""The options that say how a threshold is chosen on validation (an ensemble's too)."""
DEVICES = ("auto", "cpu", "cuda", "mps")

GROUPS = ("model", "budget", "optimisation", "augmentation", "advanced")
"""Where an option sits on the Train page, in this order."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    label: str | None = None,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    step: float | None = None,
    group: str = "advanced",
    flag: str | None = None,
    user: bool = True,
) -> Any:
    """A dataclass field that also says how a user sets it (``user=False``: internal)."""
    meta = {
        "help": help,
        "label": label,
        "choices": choices,
        "low": low,
        "high": high,
        "step": step,
        "group": group,
        "flag": flag,
        "user": user,
    }
    return field(default=default, metadata=meta)


@dataclass
class Augmentation:
    """Random transforms applied to training batches (on the training device).

    Horizontal flip is off by default: the heart sits on the left, so a flipped film is
    an anatomically different (dextrocardia) image, and laterality markers flip too.
    """

    enabled: bool = option(
        True,
        "Random geometric and intensity changes to each training batch; a regulariser "
        "against overfitting.",
        label="Augment training images",
        flag="augment",
        group="augmentation",
    )
    rotation: float = option(
        10.0, "Random rotation, degrees (+/-).", low=0, high=45, group="augmentation"
    )
    translate: float = option(
        0.06, "Random shift, fraction of the side (+/-).", low=0, high=0.5, group="augmentation"
    )
    scale: float = option(
        0.10, "Random zoom range 1 +/- this.", low=0, high=0.5, group="augmentation"
    )
    crop: float = option(
        0.85,
        "Random resized crop keeps at least this fraction of the side (1 = off).",
        low=0.3,
        high=1,
        group="augmentation",
    )
    brightness: float = option(
        0.15, "Random brightness shift (+/-).", low=0, high=1, group="augmentation"
    )
    contrast: float = option(
        0.15, "Random contrast factor 1 +/- this.", low=0, high=1, group="augmentation"
    )
    gamma: float = option(
        0.0,
        "Random gamma: intensities raised to exp(U(-g, +g)); 0 = off. Films from another "
        "scanner or era differ most in their tone curve.",
        low=0,
        high=1,
        group="augmentation",
    )
    hflip: bool = option(
        False,
        "Random horizontal flips. Off by default: the heart is on the left, a flipped film "
        "is another anatomy.",
        label="horizontal flips",
        group="augmentation",
    )


@dataclass
class TrainConfig:
    arch: str = option(help="architecture (python -m cxr_core archs)", choices=tuple(REGISTRY))
    data: str = option(help="Kaggle-layout folder, or synthetic[:N]")
    img_size: int | None = option(
        None,
        "Input size in px; images are resized to a square of this side, exactly as at "
        "prediction time (default: the architecture's).",
        label="Image size (px)",
        low=32,
        high=512,
        group="model",
    )
    pretrained: bool = option(
        False,
        "Start from ImageNet weights (transfer learning).",
        label="Start from ImageNet weights (pretrained)",
        group="model",
    )
    unfreeze_last: int = option(
        -1,
        "-1: train every layer (fine-tune). 0: freeze the backbone, train the head only. "
        "N: the head plus the last N stages.",
        label="Trainable backbone stages",
        low=-1,
        high=50,
        group="model",
    )
    epochs: int = option(10, "Passes over the training split.", low=1, high=500, group="budget")
    batch_size: int = option(32, "Images per step.", low=1, high=1024, group="budget")
    lr: float = option(
        1e-3, "Learning rate.", label="Learning rate", low=1e-7, high=1.0, group="budget"
    )
    seed: int = option(
        0,
        "Fixes the initial weights and the augmentation draws, and the split unless a "
        "split seed is given.",
        low=0,
        high=2**31 - 1,
        group="budget",
    )
    split_seed: int | None = option(
        None,
        "Fixes the patient-grouped split alone (empty = the seed): runs of different seeds "
        "on one split share their validation films, so they can be paired and ensembled.",
        label="Split seed (empty = the seed)",
        low=0,
        high=2**31 - 1,
        group="budget",
    )
    weight_decay: float = option(1e-4, "Weight decay.", low=0, high=1, group="optimisation")
    optimizer: str = option("adamw", "Optimizer.", choices=OPTIMIZERS, group="optimisation")
    scheduler: str = option(
        "cosine",
        "Learning-rate schedule: cosine/onecycle step every batch; step/plateau every epoch.",
        label="Learning-rate schedule",
        choices=SCHEDULERS,
        group="optimisation",
    )
    imbalance: str = option(
        "weighted",
        "The data hold about 3 pneumonia images per normal one. weighted: the loss weighs "
        "normal images up; sampler: batches are drawn balanced; none: as is.",
        label="Class imbalance",
        choices=IMBALANCE,
        group="optimisation",
    )
    label_smoothing: float = option(
        0.0, "Label smoothing.", low=0, high=0.4, step=0.05, group="optimisation"
    )
    probe_epochs: int = option(
        0,
        "LP-FT (Kumar et al. 2022): the first N epochs train the head alone on the pretrained "
        "backbone (a linear probe), then every trainable layer. Fine-tuning from a fitted head "
        "distorts the pretrained features less, which holds up better on other sites' films.",
        label="Linear-probe epochs first (LP-FT)",
        low=0,
        high=100,
        group="optimisation",
    )
    weight_averaging: str = option(
        "none",
        "The weights that ship: none, the best epoch's; swa, the average of every epoch's from "
        "the second half of fine-tuning (Izmailov et al. 2018); wise, the average of the "
        "probed and the fine-tuned weights (WiSE-FT, Wortsman et al. 2022; needs probe "
        "epochs). Averages land in flatter minima that move less under a site's shift; "
        "BatchNorm statistics are re-estimated on the training films after averaging.",
        label="Weight averaging",
        choices=WEIGHT_AVERAGING,
        group="optimisation",
    )
    freeze_bn_stats: bool = option(
        False,
        "Keep the pretrained BatchNorm statistics while fine-tuning (every BatchNorm layer "
        "in eval mode): the backbone's normalisation stays ImageNet's, as it was learned.",
        label="Keep pretrained BatchNorm statistics",
        group="optimisation",
    )
    augment: Augmentation = field(default_factory=Augmentation, metadata={"user": False})
    clahe: bool = option(
        False,
        "Contrast-limited histogram equalisation, in preprocessing (so also at prediction).",
        label="CLAHE contrast equalisation",
    )
    val_fraction: float = option(
        0.15,
        "Share of training patients held out to pick the best epoch and the threshold.",
        label="Validation fraction",
        low=0.05,
        high=0.45,
        step=0.05,
    )
    test_fraction: float = option(
        0.15,
        "Internal test carved from train/ when the data have no test/ folder.",
        label="Internal test fraction",
        low=0,
        high=0.45,
        step=0.05,
    )
    max_images: int | None = option(
        None,
        "Train on a patient-grouped subset of at most this many images.",
        label="Use at most N images (empty = all)",
        low=20,
        high=10**7,
    )
    patience: int = option(
        5, "Early stopping: epochs without a gain.", label="Patience", low=1, high=100
    )
    monitor: str = option(
        "val_auc",
        "Best epoch by. A later, better-scoring epoch replaces the kept one only when its "
        "validation AUC is higher by a paired test (DeLong, p < 0.05); else the earlier, "
        "shorter-trained epoch stays.",
        label="Best epoch by",
        choices=MONITORS,
    )
    threshold_method: str = option(
        "plateau",
        "How the decision threshold is chosen on validation: plateau (the centre, in "
        "log-odds, of the thresholds whose Youden's J is within one standard error of the "
        "best), youden (the best J's own edge), a target sensitivity, a target "
        "specificity, or a fixed 0.5.",
        label="Threshold",
        choices=THRESHOLD_METHODS,
    )
    target_sensitivity: float = option(
        0.95, "For the sensitivity threshold.", low=0.5, high=0.999, step=0.01
    )
    target_specificity: float = option(
        0.90, "For the specificity threshold.", low=0.5, high=0.999, step=0.01
    )
    device: str = option(
        "auto", "auto picks CUDA, then Apple MPS, then the CPU; cuda:N for one GPU."
    )
    log_every: int = option(10, "Log the training loss every N steps.", low=1, high=10**6)
    norm_mean: float = option(0.449, user=False)
    norm_std: float = option(0.226, user=False)
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
        """Every option against its choices and bounds: one line for the first that fails."""
        for opt in options():
            if opt.name in ("arch", "data", "device"):
                continue  # checked where they are resolved, with their own messages
            value = opt.get(self)
            if value is None:
                continue
            if opt.choices and value not in opt.choices:
                raise UserError(f"{opt.label} must be one of {', '.join(map(str, opt.choices))}")
            if opt.low is not None and not opt.low <= value <= opt.high:
                raise UserError(f"{opt.label} must be between {opt.low:g} and {opt.high:g}")

    def check_launch(self) -> None:
        """Refuse, in one line, a combination no run should start with: pretrained weights an
        architecture lacks, a size a pretrained network cannot take, or frozen backbone
        stages on a network trained from scratch (random features, never learned). The CLI,
        the Train page and sweeps call it before anything starts; a saved config is not
        checked again when it is loaded (runs made before this check still load)."""
        check_build(self.arch, self.pretrained, self.img_size)
        if not self.pretrained and self.unfreeze_last != -1:
            raise UserError(
                f"{self.arch} from scratch has no learned backbone to freeze: set trainable "
                "backbone stages to -1 (all), or start from ImageNet weights (pretrained)"
            )
        self._check_recipe()

    def _check_recipe(self) -> None:
        """LP-FT, WiSE-FT and frozen statistics presuppose a pretrained backbone to keep."""
        if (self.probe_epochs or self.freeze_bn_stats) and not self.pretrained:
            raise UserError(
                "linear-probe epochs and pretrained BatchNorm statistics need a pretrained "
                "backbone: start from ImageNet weights, or set probe epochs 0 and keep "
                "BatchNorm statistics off"
            )
        if self.probe_epochs and self.unfreeze_last == 0:
            raise UserError(
                "linear-probe epochs fine-tune the backbone afterwards, but it is frozen: set "
                "trainable backbone stages to -1 (all) or N"
            )
        if self.probe_epochs >= self.epochs:
            raise UserError(
                f"{self.probe_epochs} linear-probe epochs leave none of {self.epochs} to "
                "fine-tune: give more epochs or fewer probe epochs"
            )
        if self.weight_averaging != "none" and self.unfreeze_last == 0:
            raise UserError(
                "weight averaging needs a fine-tuned backbone; a frozen one trains a linear "
                "head, which averaging does not change: set trainable backbone stages"
            )
        if self.weight_averaging == "wise" and not self.probe_epochs:
            raise UserError("WiSE-FT averages the probed and fine-tuned weights: set probe epochs")

    @property
    def split_key(self) -> int:
        """The seed the patient-grouped split is drawn with."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Rebuild from JSON, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> TrainConfig:
        """From option names as :func:`options` gives them (``augment.crop`` ...)."""
        top = {k: v for k, v in values.items() if "." not in k}
        augment = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("augment.")}
        return cls(**top, augment=Augmentation(**augment))


@dataclass(frozen=True)
class Option:
    """One user-settable training option: a field of TrainConfig or of its Augmentation."""

    name: str
    """The field's path: ``epochs``, ``augment.crop``."""
    type: type
    default: Any
    help: str
    label: str
    choices: tuple | None
    low: float | None
    high: float | None
    step: float | None
    group: str
    flag: str
    """The CLI flag without dashes: ``epochs``, ``crop``, ``augment``."""
    optional: bool
    """None is a value (``img_size``: the architecture's; ``max_images``: all)."""

    def get(self, cfg: TrainConfig) -> Any:
        owner = cfg.augment if self.name.startswith("augment.") else cfg
        return getattr(owner, self.name.rsplit(".", 1)[-1])

    def add_flag(self, parser: argparse.ArgumentParser) -> None:
        """Its CLI flag, ``--{flag}``, stored under its name with None when not given
        (so a preset or the default applies)."""
        kwargs: dict = {"dest": self.name, "default": None, "help": self.help}
        if self.type is not bool and not self.choices:
            kwargs["metavar"] = self.flag.upper().replace("-", "_")
        if self.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif self.choices:
            kwargs["choices"] = self.choices
        else:
            kwargs["type"] = self.type
        if self.default is not None and self.type is not bool:
            kwargs["help"] += f" (default: {self.default})"
        parser.add_argument(f"--{self.flag}", **kwargs)


def _options_of(cls: type, prefix: str = "") -> list[Option]:
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("user", True):
            continue
        hint = hints[f.name]
        optional = type(None) in getattr(hint, "__args__", ())
        kind = next(t for t in getattr(hint, "__args__", (hint,)) if t is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else None
        name = f.name.replace("_", " ")
        out.append(
            Option(
                name=prefix + f.name,
                type=kind,
                default=default,
                help=meta.get("help", ""),
                label=meta.get("label") or name[0].upper() + name[1:],
                choices=meta.get("choices"),
                low=meta.get("low"),
                high=meta.get("high"),
                step=meta.get("step"),
                group=meta.get("group", "advanced"),
                flag=meta.get("flag") or f.name.replace("_", "-"),
                optional=optional,
            )
        )
    return out


def options() -> list[Option]:
    """Every training option a user sets, TrainConfig's then Augmentation's."""
    return _options_of(TrainConfig) + _options_of(Augmentation, "augment.")
