"""``python -m cxr_core`` / ``cxr-lab``: train, evaluate, predict, list and compare runs.

A user's mistake prints one line (``error: ...``) and exits 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NoReturn

from cxr_core.errors import UserError

EXIT_USAGE = 2


def _add_train_options(p: argparse.ArgumentParser) -> None:
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
    _add_meta_options(p)
    p.add_argument(
        "--queue",
        type=int,
        default=0,
        metavar="N",
        help="wait until fewer than N runs are running (0: start now)",
    )


def _config_from_args(args: argparse.Namespace):
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


def _add_meta_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="a readable name for the run")
    p.add_argument("--tags", help="comma-separated tags, e.g. baseline,cpu")
    p.add_argument("--note", help="a free-text note")


def _add_scoring_options(p: argparse.ArgumentParser, required: bool = True) -> None:
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


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _store(args):
    from cxr_core.store.runs import RunStore

    return RunStore(args.runs_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from cxr_core.execution.jobs import train_in_store

    cfg = _config_from_args(args)
    command = "python -m cxr_core " + shlex.join(sys.argv[1:])
    meta = {"name": args.name, "tags": args.tags, "note": args.note}
    record = {**cfg.to_dict(), "command": command, "half_weights": args.half_weights}
    if any(meta.values()):
        record["meta"] = meta
    run = train_in_store(_store(args), record, args.run_id, args.queue)
    _print_final(run, run.evaluation() or {})
    return 0


def _print_final(run, evaluation: dict) -> None:
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


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted run here, or on an executor (``--executor ray``: on the
    cluster, whichever executor the run started on)."""
    from cxr_core.execution.executors import get_executor, resumable
    from cxr_core.execution.jobs import fit_recorded

    store = _store(args)
    run = resumable(store, args.run)
    (run.path / "cancel").unlink(missing_ok=True)
    if args.executor:
        status = get_executor(args.executor).resume(run.id, store.root).wait(store)[run.id]
        print(f"run {run.id}: {status.get('status')}")
        return 0 if status.get("status") == "completed" else 1
    _print_final(run, fit_recorded(run, run.config(), resume=True))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    run = _store(args).get(args.run)
    meta = run.set_meta(name=args.name, tags=args.tags, note=args.note)
    print(f"{run.id}: " + ", ".join(f"{k} {v!r}" for k, v in meta.items() if k != "owner"))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store = _store(args)
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


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _store(args).get(args.run)
    run.request_cancel()
    print(f"cancel requested for {run.id}")
    return 0


def _scored_set(data: str, split: str, model):
    """``model`` scored on a folder's split (any labelled layout), or on one of its run's
    carved splits (val, internal_test) of the Kaggle-layout folder ``data``."""
    from cxr_core.data.folders import SplitManifest, scan
    from cxr_core.data.sources import resolve_data
    from cxr_core.predict import evalsets

    if split in evalsets.INTERNAL:
        manifest_file = model.source.parent / "split.json"
        if not manifest_file.exists():
            raise UserError(f"--split {split} needs the run's split.json beside the weights")
        manifest = SplitManifest.from_dict(json.loads(manifest_file.read_text()))
        if split not in manifest.splits:
            raise UserError(f"the run has no {split} split")
        root = scan(resolve_data(data)).root
        samples = manifest.splits[split]
        return evalsets.score(model, root, samples, f"{split} ({len(samples)} images)", split)
    folder = {"official_val": "val"}.get(split, split)
    return evalsets.score_folder(model, resolve_data(data), folder)


def _metrics_json(evalset, threshold: float | None = None) -> dict:
    """Every catalogue metric and its patient-bootstrap 95% CI, as the CLI prints them."""
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr_core.predict import evalsets
    from cxr_core.predict.ensembles import load_chosen
    from cxr_core.scoring.metrics import CATALOGUE
    from cxr_core.scoring.stats import format_ci

    if args.save and (not args.run or args.threshold is not None):
        raise UserError("--save needs --run ID (and the run's own threshold)")
    run, model = load_chosen(args.runs_dir, args.run, args.checkpoint, args.device)
    evalset = _scored_set(args.data, args.split, model)
    out = {
        "checkpoint": str(model.source),
        "split": args.split,
        "set": evalset.name,
        "fingerprint": evalset.key,
        **_metrics_json(evalset, args.threshold),
        "skipped": len(evalset.skipped),
    }
    if args.save:
        out["saved"] = str(evalsets.save(run, evalset))
    if args.json:
        _print_json(out)
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


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60] or "image"


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from cxr_core.predict.ensembles import EnsemblePrediction, load_any, overlays, predict_any

    model = load_any(args.checkpoint, args.device)
    if args.cam and not args.out:
        raise UserError("--cam needs --out DIR for the overlay images")
    results, failed = [], 0
    for i, image in enumerate(args.images):
        try:
            (prediction,) = predict_any(model, [image])
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        row = {
            "image": image,
            "probability": round(prediction.probability, 6),
            "label": prediction.label,
            "threshold": round(prediction.threshold, 6),
        }
        if isinstance(prediction, EnsemblePrediction):  # each member's own say too
            row["members"] = {i: round(p.probability, 6) for i, p in prediction.members.items()}
        if args.cam:  # one overlay, or one per member of an ensemble
            written = {}
            for member, rgb in overlays(model, prediction, args.cam, args.opacity).items():
                stem = _safe_stem(image) + (f"-{member}" if member else "")
                out = Path(args.out) / f"{i:03d}-{stem}-{args.cam}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(out)
                written[member] = str(out)
            if None in written:
                row["overlay"] = written[None]
            else:
                row["overlays"] = written
        results.append(row)
        if not args.json:
            shown = [row["overlay"]] if "overlay" in row else list(row.get("overlays", {}).values())
            extra = f"  overlay {', '.join(shown)}" if shown else ""
            print(
                f"{image}: {row['label']}  p(pneumonia)={row['probability']:.4f}  "
                f"(threshold {row['threshold']:.3f}){extra}"
            )
    if args.json:
        _print_json(results)
    return EXIT_USAGE if failed else 0


def cmd_runs(args: argparse.Namespace) -> int:
    rows = [run.summary() for run in _store(args).list(args.status, args.arch, args.tag)]
    if args.json:
        _print_json(rows)
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


def _text_table(table):
    """The comparison as a terminal shows it: headline metrics with their intervals."""
    from cxr_core.scoring.metrics import CATALOGUE
    from cxr_core.scoring.stats import format_ci

    out = table[["run", "arch", "threshold"]].copy()
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        info = CATALOGUE[key]
        out[info.label] = [
            format_ci(r[key], (r[f"{key}_lo"], r[f"{key}_hi"]), info.percent)
            for _, r in table.iterrows()
        ]
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    """Runs side by side; with ``--data``, every run scored on the same images and each
    pair tested (McNemar on the decisions, DeLong on the AUCs, Holm-corrected)."""
    from cxr_core.analysis.comparison import compare_table, run_facts
    from cxr_core.scoring import stats

    store = _store(args)
    runs = [store.get(r) for r in args.runs]
    sets = _compared_sets(args, runs)
    first = next(iter(sets.values()))
    table = compare_table(runs, sets)
    paired = stats.pairwise_table(
        list(sets),
        first.labels,
        {i: s.probs for i, s in sets.items()},
        {i: s.threshold for i, s in sets.items()},
    )
    if args.json:
        _print_json(
            {
                "set": first.name,
                "fingerprint": first.key,
                "runs": [{**run_facts(r), **_metrics_json(sets[r.id])} for r in runs],
                "paired": [row.to_dict() for row in paired],
            }
        )
        return 0
    print(f"scored on {first.name}; 95% CIs by patient")
    print(_text_table(table).to_string(index=False))
    for row in paired:
        print(f"{row.a} vs {row.b}: {row.verdict}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cxr_core.store.bundle import export_run

    print(export_run(_store(args).get(args.run), Path(args.out)))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from cxr_core.fileio import atomic_write_json
    from cxr_core.training.engine import store_weights_as

    run = _store(args).get(args.run)
    was = run.evaluation() or {}
    evaluation = store_weights_as(run, args.precision)
    record = run.config()
    record["command"] = f"{record.get('command')} && python -m cxr_core " + shlex.join(sys.argv[1:])
    atomic_write_json(run.path / "config.json", record)
    val, before = evaluation["splits"]["val"], was.get("splits", {}).get("val", {})
    print(
        f"{run.id}: {args.precision} weights, {evaluation['file_mb']:.1f} MB "
        f"(was {was.get('file_mb', float('nan')):.1f}); val AUC {val['roc_auc']:.4f} "
        f"(was {before.get('roc_auc', float('nan')):.4f}), accuracy {val['accuracy']:.1%} "
        f"(was {before.get('accuracy', float('nan')):.1%})"
    )
    return 0


def _compared_sets(args: argparse.Namespace, runs: list) -> dict:
    """Each run's scores on one image set: all scored now on ``--data`` (``--split``), or
    the first set they share (an outside test set first)."""
    from cxr_core.analysis.comparison import sets_on
    from cxr_core.predict import evalsets
    from cxr_core.predict.ensembles import load_any

    if len({r.id for r in runs}) != len(runs):
        raise UserError("name each run once")
    if args.data:
        sets = {
            r.id: _scored_set(args.data, args.split, load_any(r.path, args.device)) for r in runs
        }
        if len({s.key for s in sets.values()}) > 1:
            raise UserError("the runs were scored on different images (their splits differ)")
        return sets
    shared = evalsets.shared_sets(runs)
    if not shared:
        raise UserError(
            "these runs share no evaluation set; give --data DIR to score them all on it"
        )
    return sets_on(runs, shared[0].key)


def _html_report(args: argparse.Namespace) -> int:
    from cxr_core.analysis.html_report import write_report

    if not args.out:
        raise UserError("report --runs needs --out FILE.html")
    store = _store(args)
    runs = [store.get(r) for r in args.runs]
    sets = _compared_sets(args, runs)
    out = write_report(runs, sets, args.out)
    print(f"wrote {out}: {len(runs)} run(s) on {next(iter(sets.values())).name}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """With --runs: one self-contained HTML report of those runs on the same images.
    Without: the markdown results table of the bundled runs (or of --runs-dir's)."""
    from cxr_core.settings import bundled_runs_dir
    from cxr_core.store.bundle import results_markdown, update_readme_block
    from cxr_core.store.runs import RunStore

    if args.runs:
        return _html_report(args)
    if args.out or args.data:
        raise UserError("--out and --data make an HTML report: name its runs with --runs A B ...")
    store = RunStore(args.runs_dir) if args.runs_dir else None
    runs = (
        store.list(status="completed")
        if store
        else [r for r in RunStore(include_bundled=True).list(status="completed") if r.bundled]
    )
    table = results_markdown(runs)
    if args.readme:
        update_readme_block(Path(args.readme), "runs", table)
        print(
            f"updated the runs table in {args.readme} from {len(runs)} run(s)"
            + ("" if store else f" in {bundled_runs_dir()}")
        )
    else:
        print(table)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from cxr_core.data.synthetic import make_synthetic_dataset

    out = make_synthetic_dataset(Path(args.out), args.per_class, args.size, args.seed)
    print(out)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from cxr_core.data.downloads import download_kaggle, download_pneumoniamnist

    if args.source == "kaggle":
        print(download_kaggle())
    else:
        print(download_pneumoniamnist(Path(args.out), args.size))
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from cxr_core.models.zoo import REGISTRY

    for spec in REGISTRY.values():
        weights = f"pretrained: {spec.pretrained_source}" if spec.pretrained_source else "scratch"
        print(f"{spec.name:20s} {spec.default_img_size:4d}px  {weights:22s} {spec.description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage mistake is a user error too: one line and exit 2, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cxr-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", help="where runs live (default: $CXR_RUNS_DIR or ./runs)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a new run")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
    from cxr_core.cli.sweep import add_sweep_parser

    add_sweep_parser(sub, _add_train_options, _config_from_args)

    p = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    p.add_argument("run")
    p.add_argument(
        "--executor", choices=["local", "ray"], help="resume there (default: in this process)"
    )
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("cancel", help="ask a running run to stop after the current step")
    p.add_argument("run")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("edit", help="name, tag or annotate a run")
    p.add_argument("run")
    _add_meta_options(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("delete", help="delete a finished or failed run (not a bundled one)")
    p.add_argument("run")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("evaluate", help="metrics (with 95%% CIs) of a run on any labelled folder")
    p.add_argument("--run")
    p.add_argument("--checkpoint")
    _add_scoring_options(p)
    p.add_argument("--threshold", type=float, help="override the run's threshold")
    p.add_argument(
        "--save", action="store_true", help="keep the result as an evaluation set of the run"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images, optionally with CAM overlays")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    from cxr_core.predict.inference import CAM_METHODS

    p.add_argument("--cam", choices=list(CAM_METHODS))
    p.add_argument("--out", help="folder for overlay PNGs")
    p.add_argument("--opacity", type=float, default=0.45)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("action", choices=["list"])
    p.add_argument("--status")
    p.add_argument("--arch")
    p.add_argument("--tag")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("compare", help="runs side by side on the same images, with paired tests")
    p.add_argument("runs", nargs="+")
    _add_scoring_options(p, required=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="copy a completed run without its resume state")
    p.add_argument("run")
    p.add_argument("--out", required=True, help="e.g. checkpoints/ to bundle it with the app")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "quantize", help="store a completed run's weights at a lower precision and re-score it"
    )
    p.add_argument("run")
    p.add_argument("--precision", choices=["fp16", "int8"], default="int8")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "report", help="markdown results table of the bundled runs, or an HTML report (--runs)"
    )
    p.add_argument("--readme", help="replace the <!-- runs:start/end --> block of this file")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="an HTML report of these runs")
    _add_scoring_options(p, required=False)
    p.add_argument("--out", help="the HTML report to write (with --runs)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("synth", help="write the synthetic demo data set (Kaggle layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("download", help="download the real data (needs a network)")
    p.add_argument("source", choices=["kaggle", "pneumoniamnist"])
    p.add_argument("--out", default="data/pneumoniamnist")
    p.add_argument("--size", type=int, default=224)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("archs", help="list the architectures")
    p.set_defaults(func=cmd_archs)
    from cxr_core.store.mlflow_export import add_export_mlflow_parser

    add_export_mlflow_parser(sub)
    from cxr_core.analysis.mistakes import add_errors_parser

    add_errors_parser(sub, _add_scoring_options, _scored_set)
    from cxr_core.analysis.cam_report import add_cam_check_parser

    add_cam_check_parser(sub, _add_scoring_options, _scored_set)
    from cxr_core.predict.ensembles import add_ensemble_parser

    add_ensemble_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"interrupted after {time.time() - started:.0f}s", file=sys.stderr)
        return 130
