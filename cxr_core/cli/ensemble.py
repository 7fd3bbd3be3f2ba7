"""``ensemble``: combine completed runs into an ensemble run."""

from __future__ import annotations

import argparse
import shlex
import sys

from cxr_core.cli._verbs import add_threshold_options, print_json, register_verb, run_store


def _ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more completed runs")
    p.add_argument(
        "--weights", nargs="+", type=float, metavar="W", help="one per run (default: equal)"
    )
    p.add_argument("--name", help="a readable name for the ensemble")
    p.add_argument("--run-id", help="name of its run folder (default: time-ensemble-random)")
    add_threshold_options(p)
    p.add_argument("--json", action="store_true")


@register_verb(
    "ensemble",
    "combine completed runs into an ensemble run (weighted mean probability)",
    order=200,
    arguments=_ensemble_arguments,
    description="The ensemble is a run of its own: it predicts the weighted mean "
    "probability of its members, with a threshold chosen on the validation split they "
    "share, and is evaluated, compared and explained like any run. Members are "
    "referenced by id, never copied.",
)
def cmd_ensemble(args: argparse.Namespace) -> int:
    from cxr_core.predict.ensembles import create
    from cxr_core.predict.evalsets import run_sets
    from cxr_core.scoring.metrics import CATALOGUE, ThresholdChoice
    from cxr_core.scoring.selection import Selection
    from cxr_core.scoring.stats import format_ci
    from cxr_core.training.config import THRESHOLD_OPTIONS

    command = "python -m cxr_core " + shlex.join(sys.argv[1:])
    rule = {k: getattr(args, k) for k in THRESHOLD_OPTIONS}
    run = create(
        run_store(args), args.runs, args.weights, args.name, args.run_id, command, threshold=rule
    )
    evaluation = run.evaluation()
    by_split = {s.split: s for s in run_sets(run).values() if s.split in evaluation["splits"]}
    shown = ("accuracy", "sensitivity", "specificity", "roc_auc")
    if args.json:
        kept = (
            "members",
            "weights",
            "threshold",
            "threshold_low",
            "threshold_high",
            "selection",
            "test_split",
        )
        out = {k: evaluation.get(k) for k in kept}
        out["splits"] = {
            split: {
                "n": s.n,
                **{k: s.metrics()[k] for k in shown},
                "ci95": {k: list(s.ci95()[k]) for k in shown},
            }
            for split, s in by_split.items()
        }
        print_json({"run": run.id, **out})
        return 0
    weights = ", ".join(
        f"{m} x{w:.3g}" for m, w in zip(evaluation["members"], evaluation["weights"])
    )
    print(f"ensemble {run.id}: {weights}")
    print(
        f"threshold {evaluation['threshold']:.4f} ({evaluation['threshold_method']} rule on "
        "the shared validation split)"
    )
    plateau = ThresholdChoice.from_record(evaluation)
    if plateau is not None:
        print(f"  {plateau.sentence()}")
    print(Selection.from_dict(evaluation["selection"]).sentence())
    for split, s in by_split.items():
        values, ci = s.metrics(), s.ci95()
        figures = "  ".join(
            f"{CATALOGUE[k].label} {format_ci(values[k], ci[k], CATALOGUE[k].percent)}"
            for k in shown
        )
        print(f"  {split:14s} n={s.n:5d}  {figures}")
    print("95% CIs by patient")
    return 0
