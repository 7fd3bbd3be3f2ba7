"""``train``, ``resume`` and ``cancel``: a run from its start to its end."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_core.cli._verbs import add_meta_options, register_verb, run_store
from cxr_core.errors import UserError

if TYPE_CHECKING:  # for the hints only: it imports torch
    from cxr_core.training.config import TrainConfig


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The ``train`` flags, one per :func:`cxr_core.training.config.options` (defaults come from
    TrainConfig, or the preset), plus what concerns the run rather than the model."""
    from cxr_core.training.config import options
    from cxr_core.training.presets import PRESETS

    p.add_argument("--config", help="a TrainConfig JSON (as saved in a run); flags are ignored")
    p.add_argument("--preset", choices=list(PRESETS), help="start from a preset; flags win")
    for opt in options():
        opt.add_flag(p)
    p.add_argument("--half-weights", action="store_true", help="store best weights as fp16")
    p.add_argument("--run-id", help="name of the run folder (default: time-arch-random)")
    add_meta_options(p)
    p.add_argument(
        "--queue",
        type=int,
        default=0,
        metavar="N",
        help="wait until fewer than N runs are running (0: start now)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the train options describe: ``--config``, else the flags over the
    ``--preset``."""
    from cxr_core.training.config import TrainConfig, options
    from cxr_core.training.presets import apply_preset

    if args.config:
        try:
            return TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"{args.config}: not a usable training config ({exc})") from None
    given = {o.name: getattr(args, o.name) for o in options() if getattr(args, o.name) is not None}
    values = apply_preset(args.preset, given) if args.preset else given
    if not values.get("arch") or not values.get("data"):
        raise UserError("train needs --arch and --data (or --config FILE, or a --preset)")
    return TrainConfig.from_options(values)


@register_verb("train", "train a model into a new run", order=10, arguments=add_train_options)
def cmd_train(args: argparse.Namespace) -> int:
    from cxr_core.execution.jobs import train_in_store

    cfg = config_from_args(args)
    cfg.check_launch()
    command = "python -m cxr_core " + shlex.join(sys.argv[1:])
    meta = {"name": args.name, "tags": args.tags, "note": args.note}
    record = {**cfg.to_dict(), "command": command, "half_weights": args.half_weights}
    if any(meta.values()):
        record["meta"] = meta
    run = train_in_store(run_store(args), record, args.run_id, args.queue)
    _print_final(run, run.evaluation() or {})
    return 0


def _print_final(run, evaluation: dict) -> None:
    from cxr_core.scoring.metrics import ThresholdChoice
    from cxr_core.scoring.selection import Selection

    status = run.status()
    print(
        f"run {run.id}: {status['status']}"
        + (f" ({status['message']})" if status.get("message") else "")
    )
    for split, report in evaluation.get("splits", {}).items():
        print(
            f"  {split:14s} n={report['n']:5d}  acc {report['accuracy']:.3f}  "
            f"auc {report['roc_auc']:.3f}  sens {report['sensitivity']:.3f}  "
            f"spec {report['specificity']:.3f}  (threshold {report['threshold']:.3f})"
        )
    plateau = ThresholdChoice.from_record(evaluation)
    if plateau is not None:
        print(f"  threshold: {plateau.sentence()}")
    epoch_choice = Selection.from_dict(evaluation.get("epoch_choice"))
    if epoch_choice is not None:
        print(f"  best epoch: {epoch_choice.sentence()}")


def _resume_arguments(p: argparse.ArgumentParser) -> None:
    from cxr_core.execution.executors import EXECUTORS

    p.add_argument("run")
    p.add_argument(
        "--executor", choices=list(EXECUTORS), help="resume there (default: in this process)"
    )


@register_verb(
    "resume",
    "continue an interrupted run from its last checkpoint",
    order=30,
    arguments=_resume_arguments,
)
def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted run here, or on an executor (``--executor ray``: on the
    cluster, whichever executor the run started on)."""
    from cxr_core.execution.executors import get_executor, resumable
    from cxr_core.execution.jobs import fit_recorded

    store = run_store(args)
    run = resumable(store, args.run)
    run.clear_cancel()
    if args.executor:
        status = get_executor(args.executor).resume(run.id, store.root).wait(store)[run.id]
        print(f"run {run.id}: {status.get('status')}")
        return 0 if status.get("status") == "completed" else 1
    _print_final(run, fit_recorded(run, run.config(), resume=True))
    return 0


def _one_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")


@register_verb(
    "cancel", "ask a running run to stop after the current step", order=40, arguments=_one_run
)
def cmd_cancel(args: argparse.Namespace) -> int:
    run = run_store(args).get(args.run)
    run.request_cancel()
    print(f"cancel requested for {run.id}")
    return 0
