"""``evaluate``, ``errors`` and ``cam-check``: one run (or weights file) on one labelled set.

All three score the model through :func:`cxr_core.cli._verbs.scored_set`, so they see the
very same images.
"""

from __future__ import annotations

import argparse
import math

from cxr_core.cli._verbs import (
    add_scoring_options,
    metrics_json,
    print_json,
    register_verb,
    scored_set,
)
from cxr_core.errors import UserError
from cxr_core.predict.cam_catalogue import CAM_METHODS, SAMPLE


def _model_and_set_options(p: argparse.ArgumentParser) -> None:
    """``--run ID`` or ``--checkpoint PATH``, as
    :func:`cxr_core.predict.ensembles.load_chosen` reads them, and the set to score."""
    p.add_argument("--run")
    p.add_argument("--checkpoint")
    add_scoring_options(p)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _model_and_set_options(p)
    p.add_argument("--threshold", type=float, help="override the run's threshold")
    p.add_argument(
        "--save", action="store_true", help="keep the result as an evaluation set of the run"
    )
    p.add_argument("--json", action="store_true")


@register_verb(
    "evaluate",
    "metrics (with 95%% CIs) of a run on any labelled folder",
    order=70,
    arguments=_evaluate_arguments,
)
def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr_core.predict import evalsets
    from cxr_core.predict.ensembles import load_chosen
    from cxr_core.scoring.metrics import CATALOGUE
    from cxr_core.scoring.stats import format_ci

    if args.save and (not args.run or args.threshold is not None):
        raise UserError("--save needs --run ID (and the run's own threshold)")
    run, model = load_chosen(args.runs_dir, args.run, args.checkpoint, args.device)
    evalset = scored_set(args.data, args.split, model)
    out = {
        "checkpoint": str(model.source),
        "split": args.split,
        "set": evalset.name,
        "fingerprint": evalset.key,
        **metrics_json(evalset, args.threshold),
        "skipped": len(evalset.skipped),
    }
    if args.save:
        out["saved"] = str(evalsets.save(run, evalset))
    if args.json:
        print_json(out)
        return 0
    print(f"{evalset.name}, threshold {out['threshold']:.4f}, 95% CIs by patient")
    for key, info in CATALOGUE.items():
        ci = out["ci95"].get(key, (math.nan, math.nan))
        print(f"  {info.label:12s} {format_ci(out[key], ci, info.percent)}")
    print(f"  confusion    {out['confusion_matrix']} (rows: true NORMAL, PNEUMONIA)")
    if evalset.skipped:
        print(f"skipped {len(evalset.skipped)} unreadable image(s)")
    if args.save:
        print(f"saved as an evaluation set of {run.id}: {out['saved']}")
    return 0


def _errors_arguments(p: argparse.ArgumentParser) -> None:
    _model_and_set_options(p)
    p.add_argument("--json", action="store_true")


@register_verb(
    "errors",
    "the misclassified images of a run on a labelled folder, most confident first",
    order=180,
    arguments=_errors_arguments,
    description="Lists every image whose decision at the run's threshold differs from "
    "its label: as many as the off-diagonal of evaluate's confusion matrix on the same "
    "set. Confidence is the distance from the threshold in log-odds.",
)
def cmd_errors(args: argparse.Namespace) -> int:
    from cxr_core.analysis.mistakes import mistake_records
    from cxr_core.predict.ensembles import load_chosen
    from cxr_core.scoring.metrics import confusion

    _, model = load_chosen(args.runs_dir, args.run, args.checkpoint, args.device)
    evalset = scored_set(args.data, args.split, model)
    records = mistake_records(evalset)
    if args.json:
        print_json(
            {
                "checkpoint": str(model.source),
                "split": args.split,
                "set": evalset.name,
                "fingerprint": evalset.key,
                "threshold": evalset.threshold,
                "n": evalset.n,
                "confusion_matrix": confusion(evalset.labels, evalset.probs, evalset.threshold),
                "count": len(records),
                "errors": records,
            }
        )
        return 0
    print(
        f"{len(records)} of {evalset.n} images misclassified in {evalset.name} at threshold "
        f"{evalset.threshold:.4f}" + (", most confident first" if records else "")
    )
    if records:
        print(f"  {'p(pneumonia)':>12s}  {'label':9s}  {'called':9s}  image")
    for r in records:
        print(f"  {r['probability']:12.4f}  {r['label']:9s}  {r['predicted']:9s}  {r['image']}")
    if evalset.skipped:
        print(f"skipped {len(evalset.skipped)} unreadable image(s)")
    return 0


def _cam_check_arguments(p: argparse.ArgumentParser) -> None:
    _model_and_set_options(p)
    p.add_argument("--method", default="gradcam", choices=list(CAM_METHODS))
    p.add_argument("--images", type=int, default=SAMPLE, help="sample size (default %(default)s)")
    p.add_argument(
        "--no-road", action="store_true", help="skip ROAD (about 4 s per image at 224 px)"
    )
    p.add_argument("--json", action="store_true")


@register_verb(
    "cam-check",
    "where a run's CAMs look and whether they are faithful, on a sample of a set",
    order=190,
    arguments=_cam_check_arguments,
    description="On a sample of the set (half of each class), the mean share of CAM "
    "energy in the image border, outside the lung fields and below the diaphragm, ROAD "
    "faithfulness against a random map, shortcut flags, and on synthetic sets the "
    "overlap with the known opacities. With --run the result is kept beside the run "
    "and read back next time.",
)
def cmd_cam_check(args: argparse.Namespace) -> int:
    from cxr_core.analysis.cam_report import check_set, checked, report_file, summary_lines
    from cxr_core.predict.ensembles import load_chosen

    if args.images < 1:
        raise UserError(f"--images must be at least 1, not {args.images}")
    run, model = load_chosen(args.runs_dir, args.run, args.checkpoint, args.device)
    evalset = scored_set(args.data, args.split, model)
    with_road = not args.no_road
    file = None
    if run is not None:
        report, computed = checked(run, evalset, args.method, args.images, with_road, model)
        file = report_file(run, evalset.key, args.method, args.images)
    else:
        report, computed = check_set(model, evalset, args.method, args.images, with_road), True
    if args.json:
        print_json(
            {
                "checkpoint": str(model.source),
                "split": args.split,
                "fingerprint": evalset.key,
                "computed": computed,
                "file": str(file) if file else None,
                **report.to_json(),
            }
        )
        return 0
    print("\n".join(summary_lines(report)))
    if file is None:
        print(f"computed in {report.seconds:.0f} s; not kept (give --run ID to keep it)")
    elif computed:
        print(f"computed in {report.seconds:.0f} s, kept in {file}")
    else:
        print(f"read back from {file} (computed in {report.seconds:.0f} s)")
    return 0
