"""Evaluation sets: a run scored on a named set of labelled images.

Numbers are comparable only on the same images. Every set a run has been scored on is
kept with its per-image probabilities, labels, paths and patient ids, the threshold the
run used and a fingerprint of the images (their sorted relative paths), so runs scored on
the same images are found by fingerprint, whoever trained them and wherever the folder
sits. The splits scored when a run finished (val, internal_test or test/, official_val)
are sets too; ``evaluate --save`` adds more (bundled runs' go to the writable store).
Metrics and their confidence intervals are computed when read, from the probabilities.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_core.data.decode_cache import decode_images
from cxr_core.data.folders import Sample, labelled_images, patient_id
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_json, read_json
from cxr_core.predict.inference import LoadedModel, probabilities
from cxr_core.scoring import metrics, stats
from cxr_core.store import records
from cxr_core.store.runs import Run

INTERNAL = ("val", "internal_test")
"""Carved from train/ by patient: the training distribution, easier than an outside set."""

N_RESAMPLES = 1000
_CI_CACHE: dict[tuple, dict[str, tuple[float, float]]] = {}


def fingerprint(paths: list[str]) -> str:
    """The identity of an image set: its sorted relative paths, hashed."""
    return hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()[:12]


@dataclass
class EvalSet:
    """One run's scores on one set of images."""

    key: str
    """The image set's fingerprint: equal keys, the same images."""
    name: str
    split: str
    labels: np.ndarray
    probs: np.ndarray
    threshold: float
    paths: list[str]
    root: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def internal(self) -> bool:
        return self.split in INTERNAL

    @property
    def patients(self) -> list[str]:
        return [patient_id(Path(p).name) for p in self.paths]

    def metrics(self, threshold: float | None = None) -> dict[str, float]:
        """Every catalogue metric at the run's threshold (or another)."""
        return metrics.summary(
            self.labels, self.probs, self.threshold if threshold is None else threshold
        )

    def ci95(self, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, float]]:
        """95% intervals for every catalogue metric at the run's threshold, resampling
        patients; kept per set and scores, since the pages ask again on every rerun."""
        scores = hashlib.sha1(self.probs.tobytes()).hexdigest()
        ident = (self.key, scores, self.threshold, n_resamples, seed, tuple(metrics.CATALOGUE))
        if ident not in _CI_CACHE:
            if len(_CI_CACHE) > 1024:
                _CI_CACHE.clear()
            catalogue = metrics.CATALOGUE.values()
            drawn = {info.key: info.drawn for info in catalogue if info.drawn}
            others = {info.key: info.compute for info in catalogue if not info.drawn}
            intervals = stats.patient_bootstrap(
                self.labels,
                self.probs,
                self.patients,
                self.threshold,
                others,
                n_resamples,
                seed,
                drawn=drawn,
            )
            _CI_CACHE[ident] = {key: intervals[key] for key in metrics.CATALOGUE}
        return _CI_CACHE[ident]

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "split": self.split,
            "threshold": self.threshold,
            "root": self.root,
            "n": self.n,
            "labels": self.labels.astype(int).tolist(),
            "probs": [float(p) for p in self.probs],  # exact, as in the record
            "paths": self.paths,
            "patients": self.patients,
            "skipped": self.skipped,
            "created": time.time(),
        }

    @classmethod
    def from_json(cls, data: dict) -> EvalSet:
        return cls(
            data["key"],
            data["name"],
            data["split"],
            np.asarray(data["labels"], dtype=int),
            np.asarray(data["probs"], dtype=float),
            float(data["threshold"]),
            list(data["paths"]),
            data.get("root"),
            data.get("skipped", {}),
        )


def run_sets(run: Run) -> dict[str, EvalSet]:
    """Every set ``run`` has been scored on, by fingerprint: the splits of its final
    evaluation first, then the sets added since (newest wins for the same images)."""
    out: dict[str, EvalSet] = {}
    evaluation = run.evaluation() or {}
    root = (run.split() or {}).get("root")
    for split, report in evaluation.get("splits", {}).items():
        if "probs" not in report or "paths" not in report:
            continue
        name = f"{split} ({report['n']} images)"
        if split in INTERNAL:
            name = f"{split} of the run's split ({report['n']} images)"
        key = fingerprint(report["paths"])
        out[key] = EvalSet(
            key,
            name,
            split,
            np.asarray(report["labels"], dtype=int),
            np.asarray(report["probs"], dtype=float),
            float(report["threshold"]),
            list(report["paths"]),
            root,
        )
    for file in run.evaluation_set_files():
        evalset = EvalSet.from_json(read_json(file))
        out[evalset.key] = evalset
    return out


def val_beats_chance(run: Run) -> bool | None:
    """Whether ``run``'s validation AUC interval lies above 0.5 (None before it has
    validation scores): what "best on validation" means nothing without."""
    report = records.split_report(run.evaluation(), "val")
    if "probs" not in report:
        return None
    return stats.beats_chance(report["labels"], report["probs"])


def shared_sets(runs: list[Run]) -> list[EvalSet]:
    """The sets every one of ``runs`` has been scored on (as the first run holds them):
    outside test sets first (a test/ folder), then the internal test split, validation,
    and the 16-film official val/ last; the biggest first."""
    if not runs:
        return []
    per_run = [run_sets(r) for r in runs]
    common = set(per_run[0]).intersection(*per_run[1:])
    chosen = [per_run[0][k] for k in common]
    order = {"official_val": 3, "val": 2, "internal_test": 1}
    return sorted(chosen, key=lambda s: (order.get(s.split, 0), -s.n, s.name))


def score(model: LoadedModel, root: Path, samples: list[Sample], name: str, split: str) -> EvalSet:
    """Score ``model`` on labelled images with the run's preprocessing and threshold."""
    if not isinstance(model, LoadedModel):  # an ensemble: each member with its own size
        return model.score(root, samples, name, split)
    cfg = model.config
    images = decode_images(root, samples, cfg.img_size, cfg.clahe)
    kept = [s for s in samples if s.path not in images.skipped]
    if not kept:
        raise UserError("no readable images to evaluate")
    probs = probabilities(model, images.pixels[images.rows(kept)])
    paths = [s.path for s in kept]
    return EvalSet(
        fingerprint(paths),
        name,
        split,
        np.asarray([s.label for s in kept], dtype=int),
        np.asarray(probs, dtype=float),
        model.threshold,
        paths,
        str(root),
        images.skipped,
    )


def score_folder(model: LoadedModel, data: str | Path, split: str = "test") -> EvalSet:
    """Score ``model`` on a labelled folder in any layout :func:`labelled_images` takes."""
    root, samples, name = labelled_images(data, split)
    return score(model, root, samples, name, split if name.startswith(f"{split}/") else "folder")


def save(run: Run, evalset: EvalSet) -> Path:
    """Keep ``evalset`` in ``run``'s record (a bundled run's in the writable store)."""
    file = run.evaluation_set_file(evalset.key)
    atomic_write_json(file, evalset.to_json())
    return file
