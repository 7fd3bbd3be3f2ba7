"""Can a CAM be trusted? Faithfulness, shortcut measures, and overlap with known lesions.

- **Faithfulness (ROAD)**: remove the pixels a CAM calls most (or least) relevant, fill
  them in by noisy linear imputation, and see how the model's log-odds for the
  explained class change (pytorch-grad-cam's ROAD, Rong et al. 2022). The same is done
  for a random map as the baseline: a CAM that does no better than it says little about
  the model.
- **Shortcut measures**: the share of a CAM's energy in the image border, outside the
  lung fields and below the diaphragm. Energy in those places is evidence the model may
  read text markers, collimation edges or the abdomen rather than the lungs.
- **Known lesions**: on the synthetic data, whose opacity masks are saved, the share of
  energy inside the true opacity and the pointing game (does the peak fall on it).

The lung fields on real films are a *heuristic*: a fixed anatomical prior, not a
segmentation (see :func:`lung_fields`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cxr_core.data.imaging import ImageSource, load_and_preprocess
from cxr_core.data.synthetic import is_synthetic
from cxr_core.errors import UserError
from cxr_core.predict.inference import LoadedModel, explain, predicted_class, prepare

BORDER = 0.10
"""The border is the outer 10% of the side on each edge: 36% of the image's area."""

LUNG_PRIOR = ((0.30, 0.46, 0.17, 0.33), (0.70, 0.46, 0.17, 0.33))
"""Right and left lung fields as ellipses ``(cx, cy, rx, ry)`` in fractions of the side."""

DIAPHRAGM = 0.80
"""Rows below this fraction of the height lie below the prior's lowest lung point."""

ROAD_PERCENTILES = (20, 40, 60, 80)
"""Shares of the pixels removed (MoRF) or kept (LeRF) that ROAD averages over."""

BORDER_LIMIT = 0.45
DIAPHRAGM_LIMIT = 0.30
"""A run is flagged when its mean share in the border or below the diaphragm passes these
(a flat map gives 0.36 and 0.20)."""


# --------------------------------------------------------------------------- regions


def border_region(size: int, width: float = BORDER) -> np.ndarray:
    """``[size, size]`` bool: the outer ``width`` of the side on every edge."""
    edge = max(1, round(size * width))
    inner = np.zeros((size, size), bool)
    inner[edge:-edge, edge:-edge] = True
    return ~inner


def lung_fields(size: int) -> np.ndarray:
    """``[size, size]`` bool: where the lungs usually are on a centred frontal film.

    A heuristic: two fixed ellipses, fitted by eye to the mean of 609 Kermany training
    films (every sixth, resized to 128 px), with a margin. It is not a segmentation of the
    film in hand, so it is wrong where a film is framed differently: rotated or off-centre
    patients, films that show much of the abdomen or only part of the chest, lateral
    views, and adults when the set is paediatric. Intensity thresholds were tried first
    and failed on these films: consolidated lungs are as bright as the mediastinum and the
    dark air beside the body joins the lungs. The prior also counts the heart shadow and
    the hila as lung, so "outside the lungs" measures gross misplacement (border, neck,
    abdomen), not fine anatomy. The synthetic films' lungs lie inside it.
    """
    ax = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(ax, ax)
    region = np.zeros((size, size), bool)
    for cx, cy, rx, ry in LUNG_PRIOR:
        region |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    return region


def below_diaphragm(size: int) -> np.ndarray:
    """``[size, size]`` bool: the rows below :data:`DIAPHRAGM` (a heuristic like
    :func:`lung_fields`, with the same limits)."""
    region = np.zeros((size, size), bool)
    region[math.ceil(size * DIAPHRAGM) :] = True
    return region


def is_flat(heat: np.ndarray) -> bool:
    """Whether a map is constant: the method found no evidence for the explained class on
    this image (a CAM's ReLU zeroes negative evidence), so it shows nothing, and its shares
    and peak are not defined."""
    return heat.size == 0 or float(heat.max()) - float(heat.min()) <= 0


def energy_share(heat: np.ndarray, region: np.ndarray) -> float | None:
    """The share of the map's total in ``region``; None (not defined) for a flat map."""
    total = float(heat.sum())
    if is_flat(heat) and total <= 0:
        return None
    return float(heat[region].sum()) / total


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> bool | None:
    """The pointing game: the map's peak lies on the mask (None for a flat map: no peak)."""
    return None if is_flat(heat) else bool(mask.flat[int(np.argmax(heat))])


@dataclass
class ShortcutShares:
    """Shares of a map's energy; None where the map is all zero (not defined)."""

    border: float | None
    outside_lungs: float | None
    below_diaphragm: float | None


def shortcut_shares(heat: np.ndarray) -> ShortcutShares:
    """Where a ``[H, H]`` map's energy sits. A flat map gives 0.36, 0.65 and 0.20."""
    size = heat.shape[0]
    return ShortcutShares(
        border=energy_share(heat, border_region(size)),
        outside_lungs=energy_share(heat, ~lung_fields(size)),
        below_diaphragm=energy_share(heat, below_diaphragm(size)),
    )


# --------------------------------------------------------------------------- ROAD


@dataclass
class RoadScores:
    """ROAD in log-odds of the explained class (its signed logit).

    Log-odds, not probabilities: the bundled models call most films 99.9% one way, and a
    probability that saturated does not move when 80% of the film is imputed away, so
    every map, random or not, scored ~0 on them. Compare a CAM with the random map on
    the same images rather than across runs of very different confidence.
    """

    most_relevant_first: float
    """Change in log-odds with the most relevant pixels removed, averaged over
    :data:`ROAD_PERCENTILES`: the more negative, the more faithful."""
    least_relevant_first: float
    """The same with the least relevant pixels removed: near 0 (or above) is faithful."""
    combined: float
    """``(LeRF - MoRF) / 2``: higher is more faithful; above the random map's is the test."""


def random_map(size: int, seed: int, grid: int = 8) -> np.ndarray:
    """A random ``[size, size]`` map in 0..1 made of ``grid x grid`` smooth blobs.

    As coarse as a CAM, so ROAD removes connected regions for both: pixel noise would be
    filled in almost perfectly from its neighbours and make any CAM look good.
    """
    coarse = np.random.default_rng(seed).random((grid, grid), dtype=np.float32)
    heat = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    return (heat - heat.min()) / (heat.max() - heat.min())


def road(
    model: LoadedModel,
    pixels: np.ndarray,
    heat: np.ndarray,
    target: int,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
) -> RoadScores:
    """ROAD scores of one map for one preprocessed image and the explained ``target``.

    Costs ``2 * len(percentiles)`` sparse solves and forward passes (about 2 s at 224 px
    on 2 cores). torch and pytorch-grad-cam are imported here, not with the module: the
    pages that read stored checks need neither.
    """
    import torch
    from pytorch_grad_cam.metrics.road import (
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    x = model.input_for(pixels)
    cams = heat[None].astype(np.float32)
    targets = [BinaryClassifierOutputTarget(target)]
    percentiles = list(percentiles)
    torch.manual_seed(0)  # the imputer's noise
    with model.lock, torch.inference_mode():
        morf = ROADMostRelevantFirstAverage(percentiles)(x, cams, targets, model.network.model)
        lerf = ROADLeastRelevantFirstAverage(percentiles)(x, cams, targets, model.network.model)
    morf, lerf = float(morf.mean()), float(lerf.mean())
    return RoadScores(morf, lerf, (lerf - morf) / 2)


# --------------------------------------------------------------------------- per image, per run


@dataclass
class ImageCheck:
    """Every check of one image's CAM."""

    method: str
    target: int
    shares: ShortcutShares
    road: RoadScores | None = None
    road_random: RoadScores | None = None
    """ROAD for :func:`random_map`: the baseline the CAM must beat."""
    opacity_share: float | None = None
    """Share of energy inside the known opacity (synthetic films only; None for a flat map)."""
    hit: bool | None = None
    """Pointing game on the known opacity (synthetic films only; None for a flat map)."""
    flat: bool = False
    """The map is constant: no evidence for the class on this image (see :func:`is_flat`)."""

    def to_dict(self) -> dict:
        return asdict(self)


def check_image(
    model: LoadedModel,
    pixels: np.ndarray,
    method: str = "gradcam",
    target: int | None = None,
    opacity: np.ndarray | None = None,
    with_road: bool = True,
    seed: int = 0,
) -> ImageCheck:
    """Checks of ``method``'s CAM on one preprocessed image.

    ``target`` as in :func:`explain` (default: the predicted class; 1 when an ``opacity``
    mask is given, since the opacity is the evidence for pneumonia). ``opacity`` is a
    bool mask of the image's size. ``seed`` picks the random baseline map.
    """
    if target is None and opacity is not None:
        target = 1
    if target is None:
        target = predicted_class(model, pixels)
    heat = explain(model, pixels, method, target)
    check = ImageCheck(method, target, shortcut_shares(heat), flat=is_flat(heat))
    if with_road:
        check.road = road(model, pixels, heat, target)
        check.road_random = road(model, pixels, random_map(heat.shape[0], seed), target)
    if opacity is not None:
        check.opacity_share = energy_share(heat, opacity)
        check.hit = pointing_hit(heat, opacity)
    return check


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of the defined values; None when none is (every map flat)."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def _mean_road(scores: Sequence[RoadScores]) -> RoadScores:
    return RoadScores(*(_mean([getattr(s, f) for s in scores]) for f in RoadScores.__annotations__))


@dataclass
class RunCheck:
    """A run's CAMs over a set of images: mean shares, mean ROAD, and the flags raised."""

    method: str
    images: int
    shares: ShortcutShares
    road: RoadScores | None
    road_random: RoadScores | None
    flags: list[str]
    per_image: list[ImageCheck]
    flat_maps: int = 0
    """Images whose map was flat (no evidence for the class): left out of the mean shares."""

    def to_dict(self) -> dict:
        return asdict(self)


def check_run(
    model: LoadedModel,
    sources: Sequence[ImageSource],
    method: str = "gradcam",
    with_road: bool = True,
    seed: int = 0,
) -> RunCheck:
    """:func:`check_image` on every source (the predicted class explained), averaged.

    ROAD dominates the cost (about 4 s per image at 224 px on 2 cores, 2 maps): pass a
    sample of an evaluation set, or ``with_road=False`` for the shares alone.
    """
    checks = [
        check_image(model, prepare(model, s), method, with_road=with_road, seed=seed + i)
        for i, s in enumerate(sources)
    ]
    shares = ShortcutShares(
        *(_mean([getattr(c.shares, f) for c in checks]) for f in ShortcutShares.__annotations__)
    )
    run_road = _mean_road([c.road for c in checks]) if with_road else None
    random_road = _mean_road([c.road_random for c in checks]) if with_road else None
    flat = sum(c.flat for c in checks)
    flags = shortcut_flags(shares)
    return RunCheck(method, len(checks), shares, run_road, random_road, flags, checks, flat)


def shortcut_flags(shares: ShortcutShares) -> list[str]:
    """Warnings for a run whose mean CAM energy sits in the border or below the diaphragm."""
    flags = []
    if shares.border is not None and shares.border > BORDER_LIMIT:
        flags.append(
            f"{shares.border:.0%} of the CAM energy is in the outer 10% border (a flat map: "
            "36%): the model may read markers, text or collimation edges"
        )
    if shares.below_diaphragm is not None and shares.below_diaphragm > DIAPHRAGM_LIMIT:
        flags.append(
            f"{shares.below_diaphragm:.0%} of the CAM energy is below the diaphragm (a flat "
            "map: 20%): the model may look at the abdomen, not the lungs"
        )
    return flags


# --------------------------------------------------------------------------- synthetic lesions


def opacity_mask(image: Path, size: int) -> np.ndarray | None:
    """The known opacity of a synthetic film, resized as the film is for a model of
    ``size`` px; None for a normal film or a file outside a synthetic set."""
    image = Path(image).resolve()
    root = next((p for p in image.parents if is_synthetic(p)), None)
    if root is None:
        return None
    mask_file = root / "masks" / image.relative_to(root)
    if not mask_file.exists():
        return None
    return load_and_preprocess(mask_file, size) > 127


@dataclass
class OpacityCheck:
    """How well a run's CAMs point at the known opacities of synthetic pneumonia films."""

    method: str
    images: int
    opacity_share: float | None
    """Mean share of the CAM's energy inside the opacity, over the films whose map is not
    flat; None when every map was flat (not defined)."""
    hit_rate: float
    """Share of films whose CAM peak lies on the opacity (the pointing game; a flat map has
    no peak and counts as a miss)."""
    opacity_area: float
    """Mean share of the film the opacity covers: what a flat map's energy share would be,
    and a random peak's chance of a hit."""
    flat_maps: int = 0
    """Films whose map was flat: no evidence for pneumonia found."""


def check_opacities(
    model: LoadedModel, images: Sequence[Path], method: str = "gradcam"
) -> OpacityCheck:
    """The CAM for pneumonia on every synthetic film of ``images`` with a known opacity
    (the others are skipped); a :class:`~cxr_core.errors.UserError` when there is none."""
    size = model.config.img_size
    shares, hits, areas, flat = [], [], [], 0
    for image in images:
        mask = opacity_mask(image, size)
        if mask is None or not mask.any():
            continue
        check = check_image(model, prepare(model, image), method, opacity=mask, with_road=False)
        shares.append(check.opacity_share)
        hits.append(bool(check.hit))
        areas.append(float(mask.mean()))
        flat += check.flat
    if not shares:
        raise UserError("no synthetic pneumonia film with a known opacity among these images")
    hit_rate = float(np.mean(hits))
    return OpacityCheck(method, len(shares), _mean(shares), hit_rate, _mean(areas), flat)
