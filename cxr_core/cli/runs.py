"""``runs``, ``edit``, ``delete``, ``export`` and ``quantize``: what is done with a run once
it exists."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cxr_core.cli._verbs import (
    add_meta_options,
    add_threshold_options,
    print_json,
    register_verb,
    run_store,
)
from cxr_core.errors import UserError


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list"])
    p.add_argument("--status")
    p.add_argument("--arch")
    p.add_argument("--tag")
    p.add_argument("--json", action="store_true")


@register_verb("runs", "list runs", order=90, arguments=_runs_arguments)
def cmd_runs(args: argparse.Namespace) -> int:
    rows = [run.summary() for run in run_store(args).list(args.status, args.arch, args.tag)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no runs")
        return 0
    print(f"{'id':44s} {'arch':18s} {'status':12s} {'val_auc':>8s} {'test_auc':>9s}")
    for r in rows:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
        tag = " (bundled)" if r["bundled"] else ""
        print(
            f"{r['id']:44s} {r['arch'] or '?':18s} {r['status']:12s} "
            f"{fmt(r['val_auc']):>8s} {fmt(r['test_auc']):>9s}{tag}"
        )
    return 0


def _edit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    add_meta_options(p)


@register_verb("edit", "name, tag or annotate a run", order=50, arguments=_edit_arguments)
def cmd_edit(args: argparse.Namespace) -> int:
    run = run_store(args).get(args.run)
    meta = run.set_meta(name=args.name, tags=args.tags, note=args.note)
    print(f"{run.id}: " + ", ".join(f"{k} {v!r}" for k, v in meta.items() if k != "owner"))
    return 0


def _delete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--yes", action="store_true", help="do not ask")


@register_verb(
    "delete",
    "delete a finished or failed run (not a bundled one)",
    order=60,
    arguments=_delete_arguments,
)
def cmd_delete(args: argparse.Namespace) -> int:
    store = run_store(args)
    run = store.get(args.run)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"delete {run.id} for good? add --yes (no terminal to ask in)")
        answer = input(f"Delete run {run.id} and everything recorded for it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 0
    store.delete(run)
    print(f"deleted {run.id}")
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--out", required=True, help="e.g. checkpoints/ to bundle it with the app")


@register_verb(
    "export",
    "copy a completed run without its resume state",
    order=110,
    arguments=_export_arguments,
)
def cmd_export(args: argparse.Namespace) -> int:
    from cxr_core.store.bundle import export_run

    print(export_run(run_store(args).get(args.run), Path(args.out)))
    return 0


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--precision", choices=["fp16", "int8"], default="int8")


@register_verb(
    "quantize",
    "store a completed run's weights at a lower precision and re-score it",
    order=120,
    arguments=_quantize_arguments,
)
def cmd_quantize(args: argparse.Namespace) -> int:
    from cxr_core.training.quantize import store_weights_as

    run = run_store(args).get(args.run)
    was = run.evaluation() or {}
    evaluation = store_weights_as(run, args.precision)
    _append_command(run)
    val, before = evaluation["splits"]["val"], was.get("splits", {}).get("val", {})
    print(
        f"{run.id}: {args.precision} weights, {evaluation['file_mb']:.1f} MB "
        f"(was {was.get('file_mb', float('nan')):.1f}); val AUC {val['roc_auc']:.4f} "
        f"(was {before.get('roc_auc', float('nan')):.4f}), accuracy {val['accuracy']:.1%} "
        f"(was {before.get('accuracy', float('nan')):.1%})"
    )
    return 0


def _append_command(run) -> None:
    """The run's recorded command gains this one: its record says how it came to be."""
    record = run.config()
    record["command"] = f"{record.get('command')} && python -m cxr_core " + shlex.join(sys.argv[1:])
    run.save_config(record)


def _threshold_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    add_threshold_options(p)
    p.add_argument("--json", action="store_true")


@register_verb(
    "threshold",
    "choose a trained run's threshold again on its recorded validation scores",
    order=125,
    arguments=_threshold_arguments,
    description="No forward pass: the run's validation scores are in its record. Every "
    "split's report is recomputed at the new threshold; the weights stay as they are.",
)
def cmd_threshold(args: argparse.Namespace) -> int:
    from cxr_core.store.thresholds import rethreshold
    from cxr_core.training.config import TrainConfig

    run = run_store(args).get(args.run)
    was = (run.evaluation() or {}).get("threshold")
    method = args.threshold_method or TrainConfig.threshold_method
    choice = rethreshold(run, method, args.target_sensitivity, args.target_specificity)
    _append_command(run)
    if args.json:
        print_json({"run": run.id, "was": was, **choice.record(), "threshold": choice.threshold})
        return 0
    plateau = f"; {choice.sentence()}" if choice.low is not None else ""
    before = f" (was {was:.4f})" if was is not None else ""
    print(f"{run.id}: threshold {choice.threshold:.4f} by the {method} rule{before}{plateau}")
    return 0
