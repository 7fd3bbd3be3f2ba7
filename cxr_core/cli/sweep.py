"""``sweep``: launch a grid of settings x seeds, wait, and report.

Every train option (:func:`cxr_core.cli.train.add_train_options`) applies to every point of
the grid.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import TYPE_CHECKING

from cxr_core.cli._verbs import register_verb
from cxr_core.cli.train import add_train_options, config_from_args
from cxr_core.errors import UserError

if TYPE_CHECKING:  # for the hints only
    from cxr_core.scoring.selection import Selection


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The train options, with ``--arch`` repeatable, plus the grid."""
    from cxr_core.execution.executors import EXECUTORS
    from cxr_core.execution.sweeps import VAL_METRICS
    from cxr_core.models.catalogue import REGISTRY

    add_train_options(p)
    p.add_argument(
        "--arch", action="append", choices=list(REGISTRY), help="an architecture; repeat it"
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="OPTION=V1,V2",
        help="values of a training setting (lr, batch_size, img_size, pretrained, "
        "unfreeze_last, augment.crop, ...); repeat for more dimensions",
    )
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: --seed)")
    p.add_argument("--executor", choices=list(EXECUTORS), help="default: $CXR_EXECUTOR, else local")
    p.add_argument(
        "--queue", type=int, default=1, metavar="N", help="local executor: N runs at once"
    )
    p.add_argument("--metric", choices=VAL_METRICS, default="roc_auc", help="validation metric")
    p.add_argument("--detach", action="store_true", help="launch and return at once")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")


@register_verb(
    "sweep",
    "train a grid of settings x seeds, one run each",
    order=20,
    arguments=_sweep_arguments,
    description="Every point of the grid, with every seed, is one normal run tagged "
    "with the sweep; the best point is chosen on validation only.",
    conflict_handler="resolve",  # --arch and --queue replace the train options'
)
def cmd_sweep(args: argparse.Namespace) -> int:
    from cxr_core.execution.executors import get_executor
    from cxr_core.execution.sweeps import (
        choose_point,
        parse_grid,
        parse_seeds,
        run_rows,
        summarize,
        sweep_jobs,
    )
    from cxr_core.store.runs import Run, RunStore

    grid = parse_grid(args.grid)
    if args.run_id:
        raise UserError("a sweep names its runs itself: drop --run-id")
    # Each architecture's base config as `train` would build it from these options.
    if args.config and args.arch:
        raise UserError("--config fixes the architecture: drop --arch, or --config")
    archs = args.arch or [None]
    bases = {}
    for arch in archs:
        config = config_from_args(argparse.Namespace(**{**vars(args), "arch": arch})).to_dict()
        bases[config["arch"]] = config
    seeds = parse_seeds(args.seeds) if args.seeds else [next(iter(bases.values()))["seed"]]
    executor = get_executor(args.executor, args.queue)
    command = "python -m cxr_core " + shlex.join(sys.argv[1:])
    sweep_id, jobs = sweep_jobs(bases, grid, seeds, {"command": command}, args.half_weights)

    store = RunStore(args.runs_dir)
    launched = executor.launch(jobs, store.root)
    out = sys.stderr if args.json else sys.stdout
    print(f"sweep {sweep_id}: {len(jobs)} runs on the {executor.name} executor", file=out)
    if args.detach:
        statuses = {job.run_id: {"status": "queued"} for job in jobs}
    else:
        statuses = launched.wait(
            store,
            on_change=lambda run_id, s: print(f"  {run_id}: {s.get('status')}", file=out),
        )
    runs = [Run(store.root / j.run_id) for j in jobs if (store.root / j.run_id).is_dir()]
    found = {row["id"]: row for row in run_rows(runs)}
    rows = [
        found.get(job.run_id)
        or {
            "id": job.run_id,
            "status": statuses[job.run_id]["status"],
            "sweep": sweep_id,
            "point": job.extra["sweep"]["point"],
            "seed": job.extra["sweep"]["seed"],
            "val": {},
            "message": statuses[job.run_id].get("message"),
        }
        for job in jobs
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not args.detach:
        summary = summarize(runs, args.metric)
        _print_table(rows, summary, args.metric, choose_point(runs, summary))
    return 0 if args.detach or all(r["status"] == "completed" for r in rows) else 1


def _print_table(
    rows: list[dict], summary: list[dict], metric: str, choice: Selection | None = None
) -> None:
    from cxr_core.execution.sweeps import describe

    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    width = max(len(r["id"]) for r in rows)
    print(f"\n{'run':{width}s}  {'status':11s} {'seed':>4s}  {'val ' + metric:>12s}  point")
    for r in rows:
        print(
            f"{r['id']:{width}s}  {r['status']:11s} {r['seed']:>4}  "
            f"{fmt(r['val'].get(metric)):>12s}  {describe(r['point'])}"
            + (f"  ({r['message']})" if r["status"] != "completed" and r["message"] else "")
        )
    print(f"\n{'val ' + metric + ' mean':>18s} {'sd':>7s} {'n':>3s}  point")
    for s in summary:
        flag = "  <- best on validation" if s["best"] else ""
        flag += " (no better than chance: its validation AUC interval includes 0.5)" * (
            s["best"] and s["chance"]
        )
        stats = f"{fmt(s['mean']):>18s} {fmt(s['sd']):>7s} {s['n']:>3d}"
        print(f"{stats}  {describe(s['point'])}{flag}")
    if choice is not None:
        print(f"\n{choice.sentence()}")
