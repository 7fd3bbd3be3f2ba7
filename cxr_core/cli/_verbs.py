"""The CLI's verbs: one registry, one place to add a verb, and the options verbs share.

Every module of :mod:`cxr_core.cli` but the ``_``-prefixed ones registers its verbs, and
:func:`cxr_core.cli.build_parser` finds them all; adding a verb is one module (or a
function in one) plus its test::

    def _hello_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name")

    @register_verb("hello", "say hello", order=210, arguments=_hello_arguments)
    def cmd_hello(args: argparse.Namespace) -> int:
        ...

A verb's flags are added only when that verb is parsed (or its ``--help`` shown), and a
command imports what it needs inside its function: building the parser imports neither
torch nor anything else heavy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxr_core.errors import UserError

if TYPE_CHECKING:  # for the hints only: these import torch
    from cxr_core.predict.ensembles import Ensemble
    from cxr_core.predict.evalsets import EvalSet
    from cxr_core.predict.inference import LoadedModel
    from cxr_core.store.runs import RunStore

EXIT_USAGE = 2


@dataclass(frozen=True)
class Verb:
    """A verb of ``cxr-lab``: its subparser, its flags and the command that runs it."""

    name: str
    help: str
    order: int
    """Its place in ``cxr-lab --help``: verbs are listed by this number."""
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    conflict_handler: str = "error"
    """``resolve`` lets a verb's later flag replace a shared one of the same name."""


VERBS: dict[str, Verb] = {}


def register_verb(
    name: str,
    help: str,
    *,
    order: int,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    description: str | None = None,
    conflict_handler: str = "error",
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated command as the verb ``name`` (a name is registered once)."""
    if name in VERBS:
        raise ValueError(f"verb {name!r} is registered twice")

    def decorator(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[name] = Verb(name, help, order, run, arguments, description, conflict_handler)
        return run

    return decorator


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=1, default=str))


def run_store(args: argparse.Namespace) -> RunStore:
    """The run store ``--runs-dir`` names (default: $CXR_RUNS_DIR or ./runs)."""
    from cxr_core.store.runs import RunStore

    return RunStore(args.runs_dir)


def add_meta_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="a readable name for the run")
    p.add_argument("--tags", help="comma-separated tags, e.g. baseline,cpu")
    p.add_argument("--note", help="a free-text note")


def add_threshold_options(p: argparse.ArgumentParser) -> None:
    """TrainConfig's threshold options (rule and targets) as flags, for verbs that choose a
    threshold on validation outside training."""
    from cxr_core.training.config import THRESHOLD_OPTIONS, options

    for opt in options():
        if opt.name in THRESHOLD_OPTIONS:
            opt.add_flag(p)


def add_scoring_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--data``, ``--split`` and ``--device``: the set a verb scores a model on."""
    p.add_argument(
        "--data",
        required=required,
        help="a labelled folder: a Kaggle-layout root (with or without train/), a root with "
        "only test/, or NORMAL/ and PNEUMONIA/ directly",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "official_val", "train", "val", "internal_test"],
        help="test/official_val/train: that folder; val/internal_test: the run's carved split",
    )
    p.add_argument("--device", default="auto")


def scored_set(data: str, split: str, model: LoadedModel | Ensemble) -> EvalSet:
    """``model`` scored on a folder's split (any labelled layout), or on one of its run's
    carved splits (val, internal_test) of the Kaggle-layout folder ``data``: the one set
    that evaluate, compare, errors and cam-check all see."""
    from cxr_core.data.folders import scan
    from cxr_core.data.sources import resolve_data
    from cxr_core.predict import evalsets
    from cxr_core.store import records

    if split in evalsets.INTERNAL:
        record = records.read(model.source.parent, records.SPLIT)
        if record is None:
            raise UserError(f"--split {split} needs the run's {records.SPLIT} beside the weights")
        manifest = records.split_manifest(record)
        if split not in manifest.splits:
            raise UserError(f"the run has no {split} split")
        root = scan(resolve_data(data)).root
        samples = manifest.splits[split]
        return evalsets.score(model, root, samples, f"{split} ({len(samples)} images)", split)
    folder = {"official_val": "val"}.get(split, split)
    return evalsets.score_folder(model, resolve_data(data), folder)


def metrics_json(evalset: EvalSet, threshold: float | None = None) -> dict:
    """Every catalogue metric and its patient-bootstrap 95% CI, as evaluate and compare
    print them."""
    from cxr_core.scoring.metrics import CATALOGUE, confusion

    values = evalset.metrics(threshold)
    at_run_threshold = threshold is None or threshold == evalset.threshold
    ci = evalset.ci95() if at_run_threshold else {}
    return {
        **values,
        "threshold": evalset.threshold if threshold is None else threshold,
        "confusion_matrix": confusion(
            evalset.labels, evalset.probs, threshold or evalset.threshold
        ),
        "n": evalset.n,
        "ci95": {k: [round(lo, 6), round(hi, 6)] for k, (lo, hi) in ci.items() if k in CATALOGUE},
    }
