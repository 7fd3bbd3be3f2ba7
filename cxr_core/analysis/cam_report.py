"""A run's CAM checks on an evaluation set, computed once and kept beside the run, as the
``cam-check`` verb (:mod:`cxr_core.cli.evaluate`) prints them.

:func:`cxr_core.predict.cam_checks.check_run` costs about 4 s per image at 224 px with ROAD, so a
run is checked on a small deterministic sample of the set (the same images for every run
scored on it, half of each class where the set allows), and the result is saved under the
set's fingerprint, the method and the sample size: the Compare page and the CLI read it
back instead of computing it again. On synthetic sets, whose opacity masks are known, the
overlap of the CAMs with the true opacities is kept too.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr_core.data.allowed_roots import check_data_root
from cxr_core.data.synthetic import is_synthetic
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_json, read_json
from cxr_core.predict.cam_catalogue import CAM_METHODS, SAMPLE
from cxr_core.predict.cam_checks import (
    ImageCheck,
    OpacityCheck,
    RoadScores,
    RunCheck,
    ShortcutShares,
    check_opacities,
    check_run,
    shortcut_shares,
)
from cxr_core.predict.ensembles import Ensemble, load_any
from cxr_core.predict.evalsets import EvalSet
from cxr_core.predict.inference import LoadedModel
from cxr_core.settings import CLASSES
from cxr_core.store.runs import Run

SECONDS_PER_IMAGE = {True: 4.0, False: 0.2}
"""Cost of one image at 224 px on 2 idle cores, with and without ROAD (check_run's figure;
the CAM alone is a forward and a short backward, ROAD imputes and predicts 16 times). A
lower bound: on a CPU shared with a training job, single-image forwards with two torch
threads ran 5-15x slower than with one (threads waiting on each other)."""


@dataclass
class CamReport:
    """One run's CAM checks on a sample of one evaluation set."""

    set_key: str
    """The evaluation set's fingerprint."""
    set_name: str
    method: str
    n: int
    """The sample size asked for (the set may hold fewer images)."""
    img_size: int
    """The model's input size: the maps' size."""
    paths: list[str]
    """The sample: relative paths in the set, sorted."""
    labels: list[int]
    check: RunCheck
    opacity: OpacityCheck | None
    """Overlap with the known opacities (synthetic sets only)."""
    seconds: float
    created: float

    @property
    def with_road(self) -> bool:
        return self.check.road is not None

    @property
    def faithful(self) -> bool | None:
        """Whether the CAM's ROAD beats the random map's (None without ROAD)."""
        if self.check.road is None or self.check.road_random is None:
            return None
        return self.check.road.combined > self.check.road_random.combined

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CamReport:
        check = data["check"]
        return cls(
            data["set_key"],
            data["set_name"],
            data["method"],
            int(data["n"]),
            int(data["img_size"]),
            list(data["paths"]),
            [int(v) for v in data["labels"]],
            RunCheck(
                check["method"],
                int(check["images"]),
                _shares(check["shares"]),
                _road(check["road"]),
                _road(check["road_random"]),
                list(check["flags"]),
                [_image_check(c) for c in check["per_image"]],
                int(check.get("flat_maps", 0)),
            ),
            _opacity(data.get("opacity")),
            float(data["seconds"]),
            float(data["created"]),
        )


def _road(data: dict | None) -> RoadScores | None:
    return RoadScores(**data) if data else None


def _defined(value: float | None) -> float | None:
    """A share as records now keep it: None where it is not defined (records written
    before flat maps were told apart hold NaN there)."""
    return None if value is None or math.isnan(value) else float(value)


def _shares(data: dict) -> ShortcutShares:
    return ShortcutShares(**{k: _defined(v) for k, v in data.items()})


def _opacity(data: dict | None) -> OpacityCheck | None:
    return (
        OpacityCheck(**{**data, "opacity_share": _defined(data["opacity_share"])}) if data else None
    )


def _image_check(data: dict) -> ImageCheck:
    shares = _shares(data["shares"])
    return ImageCheck(
        data["method"],
        int(data["target"]),
        shares,
        _road(data["road"]),
        _road(data["road_random"]),
        _defined(data["opacity_share"]),
        data["hit"],
        data.get("flat", shares.border is None),
    )


def sample(evalset: EvalSet, n: int = SAMPLE, seed: int = 0) -> list[int]:
    """Indices of ``n`` images of the set, half of each class where it holds enough (the
    other class fills in), drawn with ``seed`` from the set's sorted paths: the same
    images for every run scored on the same set. Sorted by path."""
    if n < 1:
        raise UserError(f"the sample needs at least 1 image, not {n}")
    order = np.argsort(np.asarray(evalset.paths, dtype=object), kind="stable")
    rng = np.random.default_rng(seed)
    normal, pneumonia = (rng.permutation(order[evalset.labels[order] == c]) for c in (0, 1))
    k_normal = min(len(normal), n // 2)
    k_pneumonia = min(len(pneumonia), n - k_normal)
    k_normal = min(len(normal), n - k_pneumonia)
    chosen = [*normal[:k_normal], *pneumonia[:k_pneumonia]]
    return sorted((int(i) for i in chosen), key=lambda i: evalset.paths[i])


def image_files(evalset: EvalSet, paths: list[str]) -> list[Path]:
    """The files behind some of the set's relative paths: inside the set's folder, which
    must be one data may be read from here; a one-line error if any is missing."""
    if not evalset.root:
        raise UserError(f"{evalset.name}: the set does not say which folder its images are in")
    root = check_data_root(evalset.root)
    files = [(root / p).resolve() for p in paths]
    outside = [p for p, f in zip(paths, files) if not f.is_relative_to(root)]
    if outside:
        raise UserError(f"{outside[0]}: outside the set's folder {root}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of the {len(files)} sampled images are not in {root} (the data "
            f"folder moved, or is on another machine), e.g. {missing[0]}"
        )
    return files


def check_set(
    model: LoadedModel | Ensemble,
    evalset: EvalSet,
    method: str = "gradcam",
    n: int = SAMPLE,
    with_road: bool = True,
    seed: int = 0,
) -> CamReport:
    """:func:`check_run` on :func:`sample` of the set; on a synthetic set also
    :func:`check_opacities` on the sample's pneumonia films."""
    if method not in CAM_METHODS:
        raise UserError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    if not isinstance(model, LoadedModel):
        raise UserError("an ensemble has no CAM of its own: check each of its member runs")
    started = time.perf_counter()
    rows = sample(evalset, n, seed)
    paths = [evalset.paths[i] for i in rows]
    labels = [int(evalset.labels[i]) for i in rows]
    files = image_files(evalset, paths)
    check = check_run(model, files, method, with_road=with_road, seed=seed)
    opacity = None
    if is_synthetic(Path(evalset.root)):
        pneumonia = [f for f, label in zip(files, labels) if label == 1]
        try:
            opacity = check_opacities(model, pneumonia, method)
        except UserError:  # no sampled film with a known opacity: nothing to measure
            opacity = None
    return CamReport(
        evalset.key,
        evalset.name,
        method,
        n,
        model.config.img_size,
        paths,
        labels,
        check,
        opacity,
        time.perf_counter() - started,
        time.time(),
    )


def report_file(run: Run, set_key: str, method: str, n: int) -> Path:
    """Beside the run's added evaluation sets (a bundled run's in the writable store, so
    checkpoints/ is never written), one file per set, method and sample size."""
    return run.cam_check_file(set_key, method, n)


def saved(
    run: Run, set_key: str, method: str = "gradcam", n: int = SAMPLE, with_road: bool = False
) -> CamReport | None:
    """The report kept for this set, method and sample size; None if there is none, or if
    ``with_road`` asks for ROAD and it was computed without."""
    file = report_file(run, set_key, method, n)
    if not file.is_file():
        return None
    report = CamReport.from_json(read_json(file))
    return None if with_road and not report.with_road else report


def checked(
    run: Run,
    evalset: EvalSet,
    method: str = "gradcam",
    n: int = SAMPLE,
    with_road: bool = True,
    model: LoadedModel | Ensemble | None = None,
) -> tuple[CamReport, bool]:
    """The run's report on the set, read back if kept, else computed and kept; and whether
    it was computed now. ``model``: the run's, when the caller holds it loaded already."""
    report = saved(run, evalset.key, method, n, with_road)
    if report is not None:
        return report, False
    report = check_set(model or load_any(run.path), evalset, method, n, with_road)
    atomic_write_json(report_file(run, evalset.key, method, n), report.to_json())
    return report, True


def flat_shares(size: int) -> ShortcutShares:
    """A flat map's shares at ``size`` px: what no preference looks like, to read a run's
    means against."""
    return shortcut_shares(np.ones((size, size), np.float32))


def expected_seconds(n: int, img_size: int, with_road: bool = True) -> float:
    """What :func:`check_set` should take on 2 cores: ROAD's cost grows with the pixels."""
    return n * SECONDS_PER_IMAGE[with_road] * (img_size / 224) ** 2


# --------------------------------------------------------------------------- CLI


def _percent(value: float | None) -> str:
    return "not defined" if value is None or not math.isfinite(value) else f"{value:.0%}"


def summary_lines(report: CamReport) -> list[str]:
    """The report as ``cam-check`` prints it."""
    check, flat = report.check, flat_shares(report.img_size)
    counts = [report.labels.count(c) for c in (0, 1)]
    lines = [
        f"{report.method} at {report.img_size} px on {check.images} images "
        f"({counts[0]} {CLASSES[0]}, {counts[1]} {CLASSES[1]}) sampled from {report.set_name}; "
        "the predicted class explained",
        f"  {'mean share of CAM energy':28s} {'run':>11s} {'flat map':>9s}",
    ]
    for label, field in (
        ("border (outer 10%)", "border"),
        ("outside the lung fields", "outside_lungs"),
        ("below the diaphragm", "below_diaphragm"),
    ):
        lines.append(
            f"  {label:28s} {_percent(getattr(check.shares, field)):>11s} "
            f"{_percent(getattr(flat, field)):>9s}"
        )
    if check.road is not None and check.road_random is not None:
        verdict = "better than" if report.faithful else "no better than"
        lines.append(
            f"  ROAD combined {check.road.combined:+.3f} for the CAM, "
            f"{check.road_random.combined:+.3f} for a random map: {verdict} chance"
        )
    else:
        lines.append("  ROAD not computed (--no-road)")
    if report.opacity is not None:
        o = report.opacity
        lines.append(
            f"  synthetic opacities: {_percent(o.opacity_share)} of the CAM energy inside the "
            f"true opacity (it covers {_percent(o.opacity_area)}), the peak on it in "
            f"{round(o.hit_rate * o.images)} of {o.images} pneumonia films"
        )
    if check.flat_maps:
        lines.append(
            f"  {check.flat_maps} of {check.images} maps were empty: {report.method} found no "
            "evidence for the explained class there (left out of the means; try another method)"
        )
    lines += [f"  flag: {flag}" for flag in check.flags] or ["  no shortcut flag"]
    lines.append(
        "  (the lung fields are a fixed prior for a centred frontal film, not a segmentation)"
    )
    return lines
