"""Ensembles as runs: the weighted mean probability of finished runs, recorded as a run.

An ensemble is a normal run folder whose ``config.json`` says ``"arch": "ensemble"`` and
lists its members by run id with their weights. It holds no weights of its own (bundled
members are referenced, never copied), so making one takes a second: its threshold is
chosen (by TrainConfig's threshold rules) on the members' stored
validation probabilities, and its evaluation covers every image set all members were
scored on.

Members must share one validation split (the same images, by fingerprint): with two
splits, each member trained on images the other validates on, and no split would be
unseen by the whole ensemble to choose its threshold on.

Scoring new images runs each member with its own preprocessing (their sizes differ) and
averages the probabilities, so ``evaluate``, ``compare``, ``errors`` and ``predict`` (one
CAM per member) treat an ensemble like any run: :func:`load_any` loads either kind.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_core.data.folders import Sample
from cxr_core.data.imaging import ImageSource
from cxr_core.errors import UserError
from cxr_core.predict import evalsets
from cxr_core.predict.evalsets import EvalSet, fingerprint, run_sets
from cxr_core.predict.inference import (
    LoadedModel,
    Prediction,
    explain,
    load_model,
    overlay,
    predict,
)
from cxr_core.scoring.metrics import decided_class, full_report, roc_auc, threshold_choice
from cxr_core.scoring.selection import Selection, select
from cxr_core.settings import CLASSES
from cxr_core.store import records
from cxr_core.store.runs import Run, RunStore
from cxr_core.training.config import THRESHOLD_OPTIONS, TrainConfig

ARCH = "ensemble"
SUMMED = ("params", "trainable_params", "size_mb", "file_mb", "train_time_s", "latency_ms")
"""Costs that add up over the members: every member is stored and runs on each image."""


def is_ensemble(run: Run) -> bool:
    return run.config().get("arch") == ARCH


@dataclass
class EnsemblePrediction:
    """The ensemble's probability and decision for one image, and each member's own."""

    probability: float
    label: str
    threshold: float
    members: dict[str, Prediction]
    """By run id: what the member saw (its own preprocessing) and said (at its threshold)."""

    @property
    def predicted(self) -> int:
        return CLASSES.index(self.label)


@dataclass
class Ensemble:
    """A loaded ensemble: its members' models, their weights and its own threshold."""

    run_id: str
    source: Path
    """Its ``config.json``: what it is loaded from, as a weights file is for a model."""
    members: dict[str, LoadedModel]
    weights: list[float]
    threshold: float

    def score(self, root: Path, samples: list[Sample], name: str, split: str) -> EvalSet:
        """Each member scored with its own preprocessing, then combined."""
        sets = [evalsets.score(m, root, samples, name, split) for m in self.members.values()]
        return combine(sets, self.weights, self.threshold)

    def predict(self, sources: list[ImageSource]) -> list[EnsemblePrediction]:
        # Every member reads each stream (an upload) from where it started, not from
        # where the previous member left it: at its end.
        starts = [s.tell() if hasattr(s, "seek") else None for s in sources]
        per_member = {}
        for member_id, model in self.members.items():
            for source, start in zip(sources, starts):
                if start is not None:
                    source.seek(start)
            per_member[member_id] = predict(model, sources)
        out = []
        for k in range(len(sources)):
            members = {i: predictions[k] for i, predictions in per_member.items()}
            p = sum(w * m.probability for w, m in zip(self.weights, members.values()))
            label = decided_class(p, self.threshold)
            out.append(EnsemblePrediction(float(p), label, self.threshold, members))
        return out


def combine(sets: Sequence[EvalSet], weights: Sequence[float], threshold: float) -> EvalSet:
    """The members' weighted mean probability per image, on the images every member
    scored (one that a member could not read counts for none)."""
    first = sets[0]
    common = set(first.paths).intersection(*(s.paths for s in sets[1:]))
    paths = [p for p in first.paths if p in common]
    if not paths:
        raise UserError("the members share no scored image")
    labels, probs, skipped = None, np.zeros(len(paths)), {}
    for evalset, weight in zip(sets, weights):
        row = {p: i for i, p in enumerate(evalset.paths)}
        rows = [row[p] for p in paths]
        if labels is None:
            labels = evalset.labels[rows]
        elif np.any(evalset.labels[rows] != labels):
            raise UserError(f"the members disagree on the labels of {first.name}")
        probs += weight * evalset.probs[rows]
        skipped |= evalset.skipped
    key = fingerprint(paths)
    return EvalSet(
        key, first.name, first.split, labels, probs, threshold, paths, first.root, skipped
    )


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Normalised to sum to 1 (equal by default)."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise UserError(f"--weights: give one weight per run ({n}), not {len(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("--weights: finite, non-negative numbers, not all zero")
    return [w / sum(weights) for w in weights]


def _members(store: RunStore, member_ids: Sequence[str]) -> list[Run]:
    if len(member_ids) < 2:
        raise UserError("an ensemble needs at least two runs")
    if len(set(member_ids)) != len(member_ids):
        raise UserError("name each member once")
    members = [store.get(i) for i in member_ids]
    for run in members:
        if is_ensemble(run):
            raise UserError(f"{run.id} is an ensemble itself: list its members instead")
        status = run.status().get("status")
        if status != "completed":
            raise UserError(f"{run.id} is {status}: only completed runs can be members")
        val = records.split_report(run.evaluation(), "val")
        if "paths" not in val or "probs" not in val:
            raise UserError(f"{run.id} has no stored validation probabilities")
    keys = {
        r.id: fingerprint(records.split_report(r.evaluation(), "val")["paths"]) for r in members
    }
    if len(set(keys.values())) > 1:
        shown = ", ".join(f"{i} {k}" for i, k in keys.items())
        raise UserError(
            f"the members were validated on different images (val fingerprints: {shown}); "
            "an ensemble needs one shared validation split"
        )
    return members


def _shared_split(members: list[Run]) -> dict | None:
    """The first member's split manifest, with only the splits every member has on the
    same images (so ``evaluate --split val`` works on the ensemble)."""
    manifests = [m.split() for m in members]
    if any(m is None for m in manifests):
        return None

    def paths(manifest: dict, name: str) -> list[str] | None:
        items = manifest.get("splits", {}).get(name)
        return None if items is None else [s["path"] for s in items]

    first = manifests[0]
    names = [n for n in first["splits"] if all(paths(m, n) == paths(first, n) for m in manifests)]
    return {
        **first,
        "splits": {n: first["splits"][n] for n in names},
        "counts": {n: c for n, c in first.get("counts", {}).items() if n in names},
    }


def threshold_rule(**given: float | str | None) -> dict:
    """The threshold options (:data:`THRESHOLD_OPTIONS`), TrainConfig's defaults for those
    not given, checked as TrainConfig checks them."""
    given = {k: v for k, v in given.items() if v is not None}
    cfg = TrainConfig(arch="small_cnn", data="synthetic", **given)  # any model: only checked
    return {k: getattr(cfg, k) for k in THRESHOLD_OPTIONS}


def _evaluation(members: list[Run], weights: list[float], rule: dict) -> tuple[dict, list[EvalSet]]:
    """The ensemble's evaluation.json (the splits of the first member's evaluation that
    every member has on the same images), and the other sets its members all share."""
    per_run = [run_sets(m) for m in members]
    shared = set(per_run[0]).intersection(*per_run[1:])
    recorded = members[0].evaluation()
    by_key = {fingerprint(r["paths"]): s for s, r in recorded["splits"].items() if "paths" in r}
    val = fingerprint(records.split_report(recorded, "val")["paths"])
    val_set = combine([sets[val] for sets in per_run], weights, 0.5)
    choice = threshold_choice(
        val_set.labels,
        val_set.probs,
        rule["threshold_method"],
        rule["target_sensitivity"],
        rule["target_specificity"],
    )
    threshold = choice.threshold
    combined = {k: combine([sets[k] for sets in per_run], weights, threshold) for k in shared}
    splits = {
        split: full_report(combined[k].labels, combined[k].probs, threshold, combined[k].paths)
        for k, split in by_key.items()
        if k in combined
    }
    evaluations = [m.evaluation() for m in members]
    member_val = {m.id: sets[val] for m, sets in zip(members, per_run)}
    evaluation = {
        "threshold": threshold,
        **rule,
        **choice.record(),
        "members": [m.id for m in members],
        "weights": weights,
        "test_split": recorded.get("test_split") if recorded.get("test_split") in splits else None,
        "synthetic": any(bool(e.get("synthetic")) for e in evaluations),
        **{
            k: round(sum(e[k] for e in evaluations), 4)
            for k in SUMMED
            if all(isinstance(e.get(k), int | float) for e in evaluations)
        },
        "splits": splits,
    }
    params = {m.id: e.get("params", math.inf) for m, e in zip(members, evaluations)}
    evaluation["selection"] = against_best_member(val_set, member_val, params).to_dict()
    return evaluation, [s for k, s in combined.items() if k not in by_key]


ENSEMBLE = "the ensemble"


def against_best_member(
    val_set: EvalSet, member_val: dict[str, EvalSet], member_params: dict[str, float]
) -> Selection:
    """The ensemble against its best member (by validation AUC) on their shared
    validation split: whether validation can tell them apart and, when it cannot, the
    simpler one by the declared rule (the member: fewer parameters)."""
    row = {path: i for i, path in enumerate(val_set.paths)}
    scores = {ENSEMBLE: val_set.probs}
    for run_id, evalset in member_val.items():
        aligned = np.empty(len(val_set.paths))
        aligned[[row[path] for path in evalset.paths if path in row]] = [
            prob for path, prob in zip(evalset.paths, evalset.probs) if path in row
        ]
        scores[run_id] = aligned
    auc = {name: roc_auc(val_set.labels, probs) for name, probs in scores.items()}
    best_member = max(member_val, key=auc.__getitem__)
    ranked = sorted((ENSEMBLE, best_member), key=lambda name: -auc[name])
    cost = {ENSEMBLE: (sum(member_params.values()),), best_member: (member_params[best_member],)}
    pairs = [(val_set.labels, scores[ranked[0]], scores[ranked[1]])]
    return select(ranked[0], ranked[1], pairs, cost)


def create(
    store: RunStore,
    member_ids: Sequence[str],
    weights: Sequence[float] | None = None,
    name: str | None = None,
    run_id: str | None = None,
    command: str | None = None,
    owner: str | None = None,
    threshold: dict | None = None,
) -> Run:
    """A completed ensemble run of ``member_ids`` (by id; bundled ones too) in ``store``.

    Everything is checked and computed before the folder is made, and a failure while
    writing removes it: a refused ensemble leaves nothing behind. ``threshold``: how its
    threshold is chosen on validation (:func:`threshold_rule`; TrainConfig's default)."""
    rule = threshold_rule(**(threshold or {}))
    members = _members(store, member_ids)
    weights = _weights(weights, len(members))
    evaluation, extra_sets = _evaluation(members, weights, rule)
    config = {
        "arch": ARCH,
        "members": [m.id for m in members],
        "weights": weights,
        **rule,
        "data": members[0].config().get("data"),
        "command": command,
        "meta": {k: v for k, v in {"name": name, "owner": owner}.items() if v} or None,
    }
    split = _shared_split(members)
    run = store.create(config, run_id)
    try:
        if split is not None:
            run.save_split(split)
        run.save_evaluation(evaluation)
        for evalset in extra_sets:
            evalsets.save(run, evalset)
        run.set_status("completed", phase="done", started=time.time(), message=None)
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run


def members(run: Run) -> list[Run]:
    """An ensemble's member runs, found by id beside it or among the bundled runs."""
    store = RunStore(run.path.parent)
    try:
        return [store.get(member_id) for member_id in records.members(run.config())]
    except UserError as exc:
        raise UserError(f"ensemble {run.id}: a member is gone ({exc})") from None


def weights_by_member(run: Run) -> dict[str | None, Path]:
    """The weights files whose CAMs explain ``run``, keyed as :func:`overlays` keys its
    overlays: the run's own (None), or each member's by id for an ensemble."""
    if is_ensemble(run):
        return {member.id: member.weights for member in members(run)}
    return {None: run.weights}


def load(
    path: str | Path,
    device: str = "cpu",
    loader: Callable[[Path], LoadedModel] | None = None,
) -> Ensemble:
    """The ensemble whose run folder is ``path``, its members' models loaded by
    ``loader`` from their weights files (default: :func:`load_model`; the app passes its
    cache of loaded models, so a member shown alone and in an ensemble is loaded once)."""
    loader = loader or functools.partial(load_model, device=device)
    folder = Path(path).expanduser()
    run = Run(folder)
    config, evaluation = run.config(), run.evaluation()
    if not evaluation or "threshold" not in evaluation:
        raise UserError(f"ensemble {run.id} has no evaluation (no threshold)")
    models = {}
    for member in members(run):
        try:
            models[member.id] = loader(member.weights)
        except UserError as exc:
            raise UserError(f"ensemble {run.id}: member {member.id}: {exc}") from None
    threshold = float(evaluation["threshold"])
    weights = records.member_weights(config)
    return Ensemble(run.id, folder / records.CONFIG, models, weights, threshold)


def load_any(path: str | Path, device: str = "cpu") -> LoadedModel | Ensemble:
    """An ensemble from its run folder, or any model as :func:`load_model` loads it."""
    folder = Path(path).expanduser()
    if folder.is_dir() and is_ensemble(Run(folder)):
        return load(folder, device)
    return load_model(folder, device)


def load_chosen(
    runs_dir: str | Path | None, run_id: str | None, checkpoint: str | None, device: str
) -> tuple[Run | None, LoadedModel | Ensemble]:
    """What a verb's ``--run ID | --checkpoint PATH`` names (exactly one): the run, if
    given by id, and its model or ensemble, loaded."""
    if bool(run_id) == bool(checkpoint):
        raise UserError("give exactly one of --run ID or --checkpoint PATH")
    run = RunStore(runs_dir).get(run_id) if run_id else None
    return run, load_any(run.path if run else checkpoint, device)


def predict_any(
    model: LoadedModel | Ensemble, sources: list[ImageSource]
) -> list[Prediction] | list[EnsemblePrediction]:
    if isinstance(model, Ensemble):
        return model.predict(sources)
    return predict(model, sources)


def overlays(
    model: LoadedModel | Ensemble,
    prediction: Prediction | EnsemblePrediction,
    method: str,
    opacity: float = 0.45,
) -> dict[str | None, np.ndarray]:
    """CAM overlays (RGB) for the class ``prediction`` decided: the model's own (key
    None), or one per member of an ensemble, each on the image as that member saw it."""
    if isinstance(model, Ensemble):
        parts = [(i, model.members[i], p) for i, p in prediction.members.items()]
    else:
        parts = [(None, model, prediction)]
    return {
        key: overlay(
            seen.pixels, explain(member, seen.pixels, method, prediction.predicted), opacity
        )
        for key, member, seen in parts
    }
