"""``export-mlflow``: log runs into an MLflow tracking store (MLflow is optional)."""

from __future__ import annotations

import argparse
import logging
import os

from cxr_core.cli._verbs import register_verb, run_store
from cxr_core.store.mlflow_export import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI


def _export_mlflow_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="*", metavar="RUN", help="default: every completed run, bundled included"
    )
    p.add_argument(
        "--tracking-uri",
        help=f"default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}",
    )
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="created when missing")
    p.add_argument(
        "--artifact-location", help="where a new experiment keeps its artifacts (path or URI)"
    )


@register_verb(
    "export-mlflow",
    "log runs into an MLflow tracking store",
    order=170,
    arguments=_export_mlflow_arguments,
)
def cmd_export_mlflow(args: argparse.Namespace) -> int:
    from cxr_core.store.mlflow_export import export_runs, require_mlflow, runs_to_export

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    require_mlflow(tracking_uri)
    runs = runs_to_export(run_store(args), args.runs)
    if not runs:
        print("no completed runs to export")
        return 0
    import mlflow  # sets its logger up on import: quiet its database set-up chatter after

    logging.getLogger(mlflow.__name__).setLevel(logging.WARNING)
    for done in export_runs(runs, tracking_uri, args.experiment, args.artifact_location):
        print(f"{done.run_id}: {done.action} (MLflow run {done.mlflow_run_id})", flush=True)
    print(f"MLflow experiment {args.experiment!r} at {tracking_uri}")
    return 0
