"""Sweeps: a grid over any training settings times a list of seeds, one normal run each.

A sweep is nothing but the runs that share its id: each run's ``config.json`` records
``"sweep": {"id", "grid", "seeds", "point", "seed"}`` beside its config, so sweep runs are
listed, compared, resumed and exported like any run, and the sweep needs no store of its
own. The summary gives each grid point's validation metric as mean +- sd over its seeds
and picks the best point on validation alone: the test split never takes part in a choice
(seed 002 picked its grid point on the test set, and reported an optimistic score).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import uuid
from collections.abc import Sequence
from datetime import datetime

from cxr_core.errors import UserError
from cxr_core.execution.jobs import Job
from cxr_core.scoring.selection import Pair, Selection, select
from cxr_core.store import records
from cxr_core.store.runs import Run, RunStore
from cxr_core.training.config import Option, TrainConfig, options

SWEEP_KEY = "sweep"
VAL_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "sensitivity", "specificity")
"""Validation metrics a sweep reports; ``roc_auc`` (threshold-free) is the default choice.
The others are measured at a threshold chosen on the same validation images."""
NOT_GRIDDED = {
    "arch": "give each architecture with --arch",
    "seed": "give seeds with --seeds",
}


def _options() -> dict[str, Option]:
    return {o.name: o for o in options() if o.name not in NOT_GRIDDED}


def _option(name: str) -> Option:
    """The option a grid key names: its field (``batch_size``, ``augment.crop``) or its
    CLI flag (``batch-size``, ``crop``)."""
    key = name.strip()
    if key.replace("-", "_") in NOT_GRIDDED:
        raise UserError(f"--grid {key}: cannot be gridded; {NOT_GRIDDED[key.replace('-', '_')]}")
    found = _options()
    for opt in found.values():
        if key in (opt.name, opt.flag) or key.replace("-", "_") == opt.name:
            return opt
    raise UserError(f"--grid {key}: no such training option; one of {', '.join(found)}")


def _parse_value(opt: Option, text: str) -> object:
    text = text.strip()
    if opt.optional and text.lower() in ("none", "null"):
        return None
    try:
        if opt.type is bool:
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[
                text.lower()
            ]
        if not text:
            raise ValueError
        return opt.type(text)
    except (ValueError, KeyError):
        raise UserError(f"--grid {opt.name}: {text!r} is not a {opt.type.__name__}") from None


def parse_grid(specs: Sequence[str]) -> dict[str, list]:
    """``["lr=1e-3,3e-4", "batch-size=16,32"]`` -> ``{"lr": [0.001, 0.0003], ...}``."""
    grid: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not values.strip():
            raise UserError(f"--grid {spec!r}: write OPTION=V1,V2,... (e.g. lr=1e-3,3e-4)")
        opt = _option(name)
        if opt.name in grid:
            raise UserError(f"--grid {opt.name} is given twice")
        parsed = [_parse_value(opt, v) for v in values.split(",")]
        if len(set(map(repr, parsed))) < len(parsed):
            raise UserError(f"--grid {opt.name}: a value is repeated")
        grid[opt.name] = parsed
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give whole numbers, e.g. 0,1,2") from None
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def _with(base: dict, point: dict, seed: int) -> dict:
    config = {**base, "augment": dict(base["augment"]), "seed": seed}
    for name, value in point.items():
        if name.startswith("augment."):
            config["augment"][name.removeprefix("augment.")] = value
        else:
            config[name] = value
    return config


def expand(
    bases: dict[str, dict], grid: dict[str, list], seeds: Sequence[int]
) -> list[tuple[dict, int]]:
    """Every point of the architectures x ``grid``, with every seed, as ``(point, seed)``;
    each point is checked by building its TrainConfig, so a bad value stops the sweep
    before any run is made. Seeds vary slowest: each point has a first result early.

    ``bases`` maps each architecture to the config dict its runs start from (the train
    options as given, at that architecture's default image size unless one was given).
    """
    full = {"arch": list(bases), **grid}
    points = [dict(zip(full, values)) for values in itertools.product(*full.values())]
    for point in points:
        try:
            TrainConfig.from_dict(_with(bases[point["arch"]], point, seeds[0])).check_launch()
        except (UserError, TypeError, ValueError) as exc:
            shown = ", ".join(f"{k}={v}" for k, v in point.items())
            raise UserError(f"grid point {shown}: {exc}") from None
    return [(point, seed) for seed in seeds for point in points]


def new_sweep_id() -> str:
    return f"sweep-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def sweep_jobs(
    bases: dict[str, dict],
    grid: dict[str, list],
    seeds: Sequence[int],
    extra: dict | None = None,
    half_weights: bool = False,
) -> tuple[str, list[Job]]:
    """The sweep's id and one job per (point, seed) of :func:`expand`, each tagged with
    the sweep in its ``config.json``."""
    sweep_id = new_sweep_id()
    full = {"arch": list(bases), **grid}
    jobs = []
    for point, seed in expand(bases, grid, seeds):
        tag = {"id": sweep_id, "grid": full, "seeds": list(seeds), "point": point, "seed": seed}
        config = TrainConfig.from_dict(_with(bases[point["arch"]], point, seed))
        jobs.append(Job(config, extra={**(extra or {}), SWEEP_KEY: tag}, half_weights=half_weights))
    return sweep_id, jobs


def sweep_runs(store: RunStore, sweep_id: str) -> list[Run]:
    """The runs of one sweep, in grid order (seeds slowest)."""
    runs = [r for r in store.list() if r.config().get(SWEEP_KEY, {}).get("id") == sweep_id]
    if not runs:
        raise UserError(f"no runs of sweep {sweep_id!r} in {store.root}")

    def order(run: Run) -> tuple:
        tag = run.config()[SWEEP_KEY]
        spot = [tag["grid"][k].index(v) for k, v in tag["point"].items()]
        return tag["seeds"].index(tag["seed"]), spot

    return sorted(runs, key=order)


def val_metrics(run: Run) -> dict[str, float]:
    """The run's validation metrics (empty until it has an evaluation)."""
    report = records.split_report(run.evaluation(), "val")
    return {k: report[k] for k in VAL_METRICS if k in report}


def run_rows(runs: Sequence[Run]) -> list[dict]:
    """One row per run: id, status, grid point, seed and validation metrics."""
    # Imported here: it imports torch, which the CLI's parser must not need.
    from cxr_core.predict.evalsets import val_beats_chance

    rows = []
    for run in runs:
        tag, status = run.config().get(SWEEP_KEY, {}), run.status()
        rows.append(
            {
                "id": run.id,
                "status": status.get("status"),
                "sweep": tag.get("id"),
                "point": tag.get("point", {}),
                "seed": tag.get("seed"),
                "val": val_metrics(run),
                "beats_chance": val_beats_chance(run),
                "message": status.get("message"),
            }
        )
    return rows


def summarize(runs: Sequence[Run], metric: str = "roc_auc") -> list[dict]:
    """Per grid point: its runs, and ``metric`` on validation as mean and sd (n - 1) over
    the seeds whose run completed; the point with the highest mean is ``best``, and
    ``chosen`` is the best unless validation cannot tell it from the runner-up and the
    runner-up is simpler (:func:`choose_point`). A point is ``chance`` when no completed
    run of it beats chance on validation (its AUC interval includes 0.5): the best of such
    points is the luckiest draw, not a choice.

    A cancelled run's evaluation is of an unfinished training: it is left out.
    """
    if metric not in VAL_METRICS:
        raise UserError(f"metric must be one of {', '.join(VAL_METRICS)}")
    points: dict[str, dict] = {}
    for row in run_rows(runs):
        key = json.dumps(row["point"], sort_keys=True)
        entry = points.setdefault(
            key, {"point": row["point"], "runs": [], "values": [], "beats": []}
        )
        entry["runs"].append(row["id"])
        if row["status"] == "completed" and metric in row["val"]:
            entry["values"].append(row["val"][metric])
            entry["beats"].append(row["beats_chance"])
    summary = []
    for entry in points.values():
        values, beats = entry.pop("values"), entry.pop("beats")
        summary.append(
            {
                **entry,
                "metric": metric,
                "n": len(values),
                "mean": statistics.fmean(values) if values else None,
                "sd": statistics.stdev(values) if len(values) > 1 else None,
                "best": False,
                "chosen": False,
                "chance": bool(beats) and not any(beats),
            }
        )
    scored = [s for s in summary if s["mean"] is not None]
    if scored:
        best = max(scored, key=lambda s: s["mean"])
        best["best"] = True
        choice = choose_point(runs, summary)
        chosen = choice.chosen if choice else describe(best["point"])
        next(s for s in scored if describe(s["point"]) == chosen)["chosen"] = True
    return summary


def _val_scores(run: Run) -> tuple[str, list[int], list[float]] | None:
    """(fingerprint, labels, probabilities) of a completed run's validation split."""
    from cxr_core.predict.evalsets import fingerprint

    if run.status().get("status") != "completed":
        return None
    report = records.split_report(run.evaluation(), "val")
    if not {"paths", "labels", "probs"} <= set(report):
        return None
    return fingerprint(report["paths"]), report["labels"], report["probs"]


def _cost(runs: Sequence[Run]) -> tuple[float, float]:
    """A point's size for the tie rule: mean parameters, then mean epochs trained."""
    evaluations = [r.evaluation() or {} for r in runs]
    return (
        statistics.fmean(e.get("params", math.inf) for e in evaluations),
        statistics.fmean(e.get("epochs_run", math.inf) for e in evaluations),
    )


def choose_point(runs: Sequence[Run], summary: list[dict]) -> Selection | None:
    """The best point against the runner-up (by mean) on validation, paired seed by seed
    (a seed's runs share its validation split): :func:`cxr_core.scoring.selection.select`.
    None with fewer than two scored points."""
    ranked = sorted((s for s in summary if s["mean"] is not None), key=lambda s: -s["mean"])
    if len(ranked) < 2:
        return None
    by_id = {r.id: r for r in runs}
    top = ranked[:2]
    names = [describe(s["point"]) for s in top]
    by_seed = [{by_id[i].config()[SWEEP_KEY]["seed"]: by_id[i] for i in s["runs"]} for s in top]
    pairs: list[Pair] = []
    for seed in set(by_seed[0]) & set(by_seed[1]):
        a, b = (_val_scores(side[seed]) for side in by_seed)
        if a and b and a[0] == b[0]:
            pairs.append((a[1], a[2], b[2]))
    cost = {name: _cost([by_id[i] for i in s["runs"]]) for name, s in zip(names, top)}
    return select(names[0], names[1], pairs, cost)


def describe(point: dict) -> str:
    """``arch=resnet18 lr=0.001``: a grid point in one short line."""
    return " ".join(f"{k.removeprefix('augment.')}={v}" for k, v in point.items())


def sweeps_in(runs: Sequence[Run]) -> dict[str, dict]:
    """The sweeps ``runs`` belong to, newest first (an id begins with its launch time):
    each one's tag (``grid``, ``seeds`` ...) and ``n``, how many of the runs are its."""
    found: dict[str, dict] = {}
    for run in runs:
        tag = run.config().get(SWEEP_KEY) or {}
        if tag.get("id"):
            found.setdefault(tag["id"], {**tag, "n": 0})["n"] += 1
    return dict(sorted(found.items(), reverse=True))


def varying(grid: dict[str, list]) -> list[str]:
    """The grid's dimensions that vary (an architecture picked alone does not)."""
    return [k for k, values in grid.items() if len(values) > 1]
