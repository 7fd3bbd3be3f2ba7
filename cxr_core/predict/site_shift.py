"""How another site's films differ from those a run was trained on, seen without their
labels: the share it calls pneumonia against the training prevalence (and the prevalence
EM estimates), its scores against those of its validation films, and a shift score from
the network's own BatchNorm statistics.

The BatchNorm score compares, layer by layer and channel by channel, the mean and variance
of what each BatchNorm layer receives on the site's films with the running statistics it
learned, as the mean symmetric KL divergence between the two Gaussians. Even the run's own
validation films score above zero (they were not trained on), so their score, when they are
on this machine, is the yardstick the site's is read against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

from cxr_core.data.decode_cache import decode_images
from cxr_core.data.folders import Sample, site_images
from cxr_core.data.sources import resolve_data
from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.batchnorm import batchnorm_layers
from cxr_core.predict.evalsets import fingerprint
from cxr_core.predict.inference import LoadedModel, torch_probabilities
from cxr_core.predict.input_guard import validation_pixels
from cxr_core.scoring.metrics import decide
from cxr_core.scoring.prior_shift import EDGE, em_prevalence
from cxr_core.store import records
from cxr_core.store.runs import run_of_weights

ALIKE, APART = 1.5, 4.0
"""Site BatchNorm shift over the validation films': below ALIKE the network sees the
films as it saw its validation films; above APART, as very different inputs."""
MIX = 0.15
"""An EM prevalence this far from the training split's says the mix of cases differs, which
AdaBN would take for a change in the films."""


@dataclass
class SiteFilms:
    """A site's films as one model sees them (its size and preprocessing); no labels."""

    root: Path
    name: str
    paths: list[str]
    pixels: torch.Tensor
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The films' fingerprint, as a labelled evaluation of the same films has it."""
        return fingerprint(self.paths)

    @property
    def n(self) -> int:
        return len(self.paths)


def site_films(model: LoadedModel, data: str, split: str = "test") -> SiteFilms:
    """The films of ``data`` (a labelled folder whose labels are not used, or any folder
    of images; ``split`` picks a Kaggle root's sub-folder), decoded for ``model``."""
    root, samples, name = site_images(resolve_data(data), split)
    return _decoded(model, root, samples, name)


def _decoded(model: LoadedModel, root: Path, samples: list[Sample], name: str) -> SiteFilms:
    images = decode_images(root, samples, model.config.img_size, model.config.clahe)
    kept = [s for s in samples if s.path not in images.skipped]
    if len(kept) < 2:
        raise UserError(f"{name}: fewer than 2 readable films; a site needs more")
    pixels = torch.from_numpy(images.pixels[images.rows(kept)])
    return SiteFilms(root, name, [s.path for s in kept], pixels, images.skipped)


# --------------------------------------------------------------------------- priors


def _train_split(run_folder: Path) -> dict[str, int]:
    counts = (records.read(run_folder, records.SPLIT) or {}).get("counts", {}).get("train")
    if not counts:
        raise UserError(f"{run_folder.name}: no {records.SPLIT} with training counts beside it")
    return counts


def training_prevalence(run_folder: Path) -> float:
    """The share of pneumonia films in the run's training split (its split.json)."""
    counts = _train_split(run_folder)
    return counts["PNEUMONIA"] / (counts["PNEUMONIA"] + counts["NORMAL"])


def learned_prior(run_folder: Path, imbalance: str) -> float:
    """The prevalence the run's probabilities assume: 0.5 when training balanced the
    classes (a weighted loss or a balanced sampler), else the training split's."""
    return 0.5 if imbalance in ("weighted", "sampler") else training_prevalence(run_folder)


def trained_config(model: LoadedModel) -> dict:
    """The run's training config as recorded in its weights (``load_model`` drops the
    pretrained flag, which says whose BatchNorm statistics the frozen layers hold)."""
    return weights_file.load_weights(model.source)[1].get("config", {})


# --------------------------------------------------------------------------- BatchNorm


def batchnorm_inputs(model: LoadedModel, pixels: torch.Tensor) -> dict[str, tuple]:
    """Each BatchNorm layer's per-channel input mean and variance over ``pixels`` (every
    image and position), the network in eval mode."""
    layers = batchnorm_layers(model.network.model)
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in layers}

    def recorder(name: str):
        def record(module, args, out) -> None:
            x = args[0].detach().double()
            dims = [0, *range(2, x.dim())]
            sums[name][0] += x.numel() // x.shape[1]
            sums[name][1] = sums[name][1] + x.sum(dims)
            sums[name][2] = sums[name][2] + (x * x).sum(dims)

        return record

    handles = [m.register_forward_hook(recorder(n)) for n, m in layers.items()]
    try:
        torch_probabilities(model, pixels)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name, (n, s1, s2) in sums.items():
        mean = (s1 / n).cpu()
        out[name] = (mean, (s2 / n).cpu() - mean * mean)
    return out


def batchnorm_shift(model: LoadedModel, pixels: torch.Tensor) -> float | None:
    """Mean over BatchNorm layers of the mean over channels of the symmetric KL divergence
    (the mean of both directions) between N(site mean, site variance) and N(running mean,
    running variance); None for a network without BatchNorm."""
    layers = batchnorm_layers(model.network.model)
    if not layers:
        return None
    per_layer = []
    for name, (mean, var) in batchnorm_inputs(model, pixels).items():
        layer = layers[name]
        v1 = var.clamp(min=0) + layer.eps
        m2, v2 = layer.running_mean.double().cpu(), layer.running_var.double().cpu() + layer.eps
        kl = 0.25 * (v1 / v2 + v2 / v1 - 2 + (mean - m2) ** 2 * (1 / v1 + 1 / v2))
        per_layer.append(float(kl.mean()))
    return float(np.mean(per_layer))


# --------------------------------------------------------------------------- report


@dataclass
class ShiftReport:
    """What :func:`diagnose` found, and its reading in plain words."""

    site: str
    fingerprint: str
    n: int
    skipped: int
    threshold: float
    share_called: float
    training_prevalence: float
    learned_prior: float
    estimated_prevalence: float
    ks_statistic: float | None
    ks_p: float | None
    batchnorm_shift: float | None
    batchnorm_shift_val: float | None
    reading: list[str]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _validation(model: LoadedModel) -> tuple[np.ndarray | None, float | None, str]:
    """The run's recorded validation probabilities, and its validation films' BatchNorm
    shift when they are on this machine (else None and why)."""
    folder = model.source.parent
    report = records.split_report(records.read(folder, records.EVALUATION), "val")
    probs = np.asarray(report["probs"], dtype=float) if "probs" in report else None
    if not batchnorm_layers(model.network.model):
        return probs, None, "the network has no BatchNorm layer"
    pixels, why = validation_pixels(run_of_weights(model.source), model)
    if pixels is None:
        return probs, None, why
    return probs, batchnorm_shift(model, torch.from_numpy(pixels)), ""


def diagnose(model: LoadedModel, films: SiteFilms) -> ShiftReport:
    """How ``films`` differ, for ``model``, from the films it was trained on."""
    if not isinstance(model, LoadedModel):
        raise UserError("an ensemble has no network of its own: diagnose each member")
    folder = model.source.parent
    probs = torch_probabilities(model, films.pixels)
    prior = learned_prior(folder, model.config.imbalance)
    val_probs, val_shift, why = _validation(model)
    ks = ks_2samp(probs, val_probs) if val_probs is not None and len(val_probs) else None
    report = ShiftReport(
        films.name,
        films.key,
        films.n,
        len(films.skipped),
        model.threshold,
        float(decide(probs, model.threshold).mean()),
        training_prevalence(folder),
        prior,
        em_prevalence(probs, prior),
        None if ks is None else float(ks.statistic),
        None if ks is None else float(ks.pvalue),
        batchnorm_shift(model, films.pixels),
        val_shift,
        [],
    )
    report.reading = reading(report, why)
    return report


def reading(r: ShiftReport, why_no_reference: str = "") -> list[str]:
    """The report in plain words, one sentence per measure."""
    lines = [
        f"The run calls {r.share_called:.0%} of these {r.n} films pneumonia; "
        f"{r.training_prevalence:.0%} of its training films were. EM on its probabilities "
        f"puts the share of pneumonia here at {r.estimated_prevalence:.0%} (if only the mix "
        "of cases changed, --method prior moves the threshold by it)."
    ]
    mixed = abs(r.estimated_prevalence - r.training_prevalence) > MIX
    if mixed:
        lines.append(
            "The mix of cases seems to differ: re-estimating BatchNorm statistics on these "
            "films (--method bn) would fold that mix into them and move every score."
        )
    if not EDGE < r.estimated_prevalence < 1 - EDGE:
        lines.append(
            "EM ran to the edge: the run's probabilities are not calibrated on these films, "
            "so that estimate is not to be trusted."
        )
    if r.ks_statistic is not None:
        d = r.ks_statistic
        how = "like" if d < 0.1 else "unlike" if d > 0.3 else "somewhat unlike"
        lines.append(
            f"Its scores are distributed {how} those of its validation films "
            f"(Kolmogorov-Smirnov D = {r.ks_statistic:.2f}, p = {r.ks_p:.2g})."
        )
    if r.batchnorm_shift is None:
        lines.append("No BatchNorm layer: the network's own statistics cannot be read.")
    elif r.batchnorm_shift_val:
        ratio = r.batchnorm_shift / r.batchnorm_shift_val
        how = (
            "much as it saw its validation films"
            if ratio < ALIKE
            else "as very different inputs"
            if ratio > APART
            else "as somewhat different inputs"
        )
        lines.append(
            f"Its BatchNorm layers see these films {how}: shift {r.batchnorm_shift:.3f} "
            f"against {r.batchnorm_shift_val:.3f} on its validation films ({ratio:.1f}x)"
            + (
                ": nothing for re-estimating them to correct, and doing so can cost accuracy."
                if ratio < ALIKE
                else "; with the mix of cases changed too, this is no case for --method bn."
                if mixed
                else "; re-estimating their statistics (--method bn) is the lever, to be "
                "checked on labelled films of the site before it is trusted."
            )
        )
    else:
        lines.append(
            f"BatchNorm shift {r.batchnorm_shift:.3f} (mean symmetric KL per channel); no "
            f"yardstick: {why_no_reference or 'the validation films scored 0'}."
        )
    return lines
