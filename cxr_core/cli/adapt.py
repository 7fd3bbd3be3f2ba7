"""``shift`` and ``adapt``: another site's films without their labels, seen and adapted to
(:mod:`cxr_core.predict.site_shift`, :mod:`cxr_core.predict.adaptation`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from cxr_core.cli._verbs import print_json, register_verb, run_store


def _site_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run")
    p.add_argument("--checkpoint")
    p.add_argument(
        "--data",
        required=True,
        help="the site's films: a folder of images (any sub-folders), or a labelled folder "
        "whose labels are not used",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "train"],
        help="of a Kaggle-layout root, the sub-folder whose films are the site's",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")


@register_verb(
    "shift",
    "how another site's films differ for a run, without their labels",
    order=205,
    arguments=_site_options,
    description="The share the run calls pneumonia against its training prevalence and "
    "the prevalence EM estimates, its scores against its validation scores (KS), and "
    "the BatchNorm input statistics of the site against those the network learned "
    "(mean symmetric KL), read in plain words. Labels are never read.",
)
def cmd_shift(args: argparse.Namespace) -> int:
    from cxr_core.predict.adaptation import load_single
    from cxr_core.predict.site_shift import diagnose, site_films

    _, model = load_single(args.runs_dir, args.run, args.checkpoint, args.device)
    report = diagnose(model, site_films(model, args.data, args.split))
    if args.json:
        print_json(report.to_json())
        return 0
    print(f"{report.site}, fingerprint {report.fingerprint}, labels not used")
    print("\n".join(f"  {line}" for line in report.reading))
    return 0


def _adapt_arguments(p: argparse.ArgumentParser) -> None:
    from cxr_core.predict.adaptation_catalogue import METHODS

    _site_options(p)
    p.add_argument(
        "--method",
        default="both",
        choices=METHODS,
        help="bn: re-estimate BatchNorm statistics (AdaBN); prior: move the threshold by "
        "the prevalence EM estimates; both (default)",
    )
    p.add_argument("--run-id", help="name of the adapted run's folder")


@register_verb(
    "adapt",
    "adapt a run to another site's films without their labels, as a new run",
    order=206,
    arguments=_adapt_arguments,
    description="AdaBN (BatchNorm statistics re-estimated on the site's films) and/or "
    "the threshold moved by the site's prevalence estimated by EM. The adapted model is "
    "a new run recording what was adapted, on which films (by fingerprint) and from "
    "which run; the source run is untouched. Its figures on these films are adapted on "
    "them without their labels: compare it with its source on a labelled outside set.",
)
def cmd_adapt(args: argparse.Namespace) -> int:
    from cxr_core.predict.adaptation import adapt, load_single
    from cxr_core.predict.adaptation_catalogue import ON_THESE_FILMS

    command = "python -m cxr_core " + shlex.join(sys.argv[1:])
    _, model = load_single(args.runs_dir, args.run, args.checkpoint, args.device)
    run = adapt(model, args.data, args.method, args.split, run_store(args), args.run_id, command)
    record = run.adaptation()
    if args.json:
        print_json({"run": run.id, "figures": ON_THESE_FILMS, **record})
        return 0
    site = record["site"]
    print(f"adapted run {run.id} (from {record['source_run']}, method {record['method']})")
    print(f"  on {site['name']}, fingerprint {site['fingerprint']}, labels not used")
    if record["bn_layers"]:
        print(f"  BatchNorm statistics re-estimated in {record['bn_layers']} layers (AdaBN)")
    if "site_prevalence" in record:
        print(
            f"  prevalence: {record['training_prevalence']:.1%} in training, "
            f"{record['learned_prior']:.1%} assumed by its probabilities, "
            f"{record['site_prevalence']:.1%} estimated here (EM)"
        )
    print(f"  threshold {record['threshold_before']:.4f} -> {record['threshold_after']:.4f}")
    print(
        f"Its figures on these films are {ON_THESE_FILMS}. Compare it with its source on "
        f"a labelled outside set: compare {record['source_run']} {run.id} --data DIR"
    )
    return 0
