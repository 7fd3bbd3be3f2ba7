"""``compare`` and ``report``: several runs side by side on the same images."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_core.cli._verbs import (
    add_scoring_options,
    metrics_json,
    print_json,
    register_verb,
    run_store,
    scored_set,
)
from cxr_core.errors import UserError


def _compared_sets(args: argparse.Namespace, runs: list) -> dict:
    """Each run's scores on one image set: all scored now on ``--data`` (``--split``), or
    the first set they share (an outside test set first)."""
    from cxr_core.analysis.comparison import sets_on
    from cxr_core.predict import evalsets
    from cxr_core.predict.ensembles import load_any

    if len({r.id for r in runs}) != len(runs):
        raise UserError("name each run once")
    if args.data:
        split = args.split or "test"
        sets = {r.id: scored_set(args.data, split, load_any(r.path, args.device)) for r in runs}
        if len({s.key for s in sets.values()}) > 1:
            raise UserError("the runs were scored on different images (their splits differ)")
        return sets
    shared = [s for s in evalsets.shared_sets(runs) if args.split in (None, s.split)]
    if not shared:
        which = f"{args.split} set" if args.split else "evaluation set"
        raise UserError(
            f"these runs share no recorded {which}; give --data DIR to score them on it"
        )
    return sets_on(runs, shared[0].key)


def _text_table(table):
    """The comparison as a terminal shows it: headline metrics with their intervals."""
    from cxr_core.predict.adaptation_catalogue import INDUCTIVE
    from cxr_core.scoring.metrics import CATALOGUE
    from cxr_core.scoring.stats import format_ci

    adapted = (table["figures"] != INDUCTIVE).any()
    out = table[["run", "arch", *(["figures"] if adapted else []), "threshold"]].copy()
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        info = CATALOGUE[key]
        out[info.label] = [
            format_ci(r[key], (r[f"{key}_lo"], r[f"{key}_hi"]), info.percent)
            for _, r in table.iterrows()
        ]
    return out


def _set_options(p: argparse.ArgumentParser) -> None:
    """``--data``/``--split``/``--device``. Without --data, --split picks one of the sets
    the runs were scored on (default: the first they share); with it, the folder's split
    (default: test)."""
    add_scoring_options(p, required=False)
    p.set_defaults(split=None)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+")
    _set_options(p)
    p.add_argument("--json", action="store_true")


@register_verb(
    "compare",
    "runs side by side on the same images, with paired tests",
    order=100,
    arguments=_compare_arguments,
)
def cmd_compare(args: argparse.Namespace) -> int:
    """Runs side by side; with ``--data``, every run scored on the same images and each
    pair tested (McNemar on the decisions, DeLong on the AUCs, Holm-corrected)."""
    from cxr_core.analysis.comparison import compare_table, run_facts
    from cxr_core.predict.adaptation_catalogue import figures_label
    from cxr_core.scoring import stats

    store = run_store(args)
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
        print_json(
            {
                "set": first.name,
                "fingerprint": first.key,
                "runs": [
                    {
                        **run_facts(r),
                        "figures": figures_label(r, first.key),
                        **metrics_json(sets[r.id]),
                    }
                    for r in runs
                ],
                "paired": [row.to_dict() for row in paired],
            }
        )
        return 0
    print(f"scored on {first.name}; 95% CIs by patient")
    print(_text_table(table).to_string(index=False))
    for row in paired:
        print(f"{row.a} vs {row.b}: {row.verdict}")
    return 0


def _html_report(args: argparse.Namespace) -> int:
    from cxr_core.analysis.html_report import write_report

    if not args.out:
        raise UserError("report --runs needs --out FILE.html")
    store = run_store(args)
    runs = [store.get(r) for r in args.runs]
    sets = _compared_sets(args, runs)
    out = write_report(runs, sets, args.out)
    print(f"wrote {out}: {len(runs)} run(s) on {next(iter(sets.values())).name}")
    return 0


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--readme", help="replace the <!-- runs:start/end --> block of this file")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="an HTML report of these runs")
    _set_options(p)
    p.add_argument("--out", help="the HTML report to write (with --runs)")


@register_verb(
    "report",
    "markdown results table of the bundled runs, or an HTML report (--runs)",
    order=130,
    arguments=_report_arguments,
)
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
