"""Runs side by side on one image set, shared by the CLI's ``compare``, the Compare page
and the report: what each run is and costs, each metric with its patient-bootstrap 95%
interval, paired tests, operating points chosen on validation, the calibration (and a
temperature fitted on validation, kept beside the run), the shift from the internal split
to an outside set.

Nothing here is fitted or chosen on the set being compared: thresholds and temperatures
come from each run's own validation split.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_core.data.synthetic import is_synthetic, synthetic_names
from cxr_core.errors import UserError
from cxr_core.predict.adaptation_catalogue import INDUCTIVE, figures_label
from cxr_core.predict.evalsets import EvalSet, run_sets
from cxr_core.scoring import stats
from cxr_core.scoring.metrics import (
    CATALOGUE,
    ThresholdChoice,
    choose_threshold,
    confusion,
    full_report,
)
from cxr_core.store.runs import Run

VAL_THRESHOLDS = {
    "Youden's plateau centre": {"method": "plateau"},
    "Youden's J": {"method": "youden"},
    "95% sensitivity": {"method": "sensitivity", "target_sensitivity": 0.95},
    "90% specificity": {"method": "specificity", "target_specificity": 0.90},
}
"""Thresholds a run may be given, each chosen on its own validation scores."""

HEADLINE = ("accuracy", "sensitivity", "specificity", "roc_auc")
"""The metrics of the shift table and the default forest plot."""

FACT_LABELS = {
    "run": "run",
    "arch": "architecture",
    "pretrained": "ImageNet weights",
    "img_size": "image px",
    "params_M": "parameters (M)",
    "size_mb": "weights (MB)",
    "train_min": "training (min)",
    "best_epoch": "best epoch",
    "latency_ms": "latency (ms/image)",
}
"""The columns of :func:`run_facts` as people read them."""


def run_facts(run: Run) -> dict:
    """What a run is and what it cost, from its record."""
    config, evaluation = run.config(), run.evaluation() or {}
    return {
        "run": run.id,
        "arch": config.get("arch"),
        "pretrained": config.get("pretrained"),
        "img_size": config.get("img_size"),
        "params_M": round(evaluation.get("params", 0) / 1e6, 2) if evaluation else None,
        "size_mb": evaluation.get("file_mb"),
        "train_min": round(evaluation.get("train_time_s", 0) / 60, 1) if evaluation else None,
        "best_epoch": evaluation.get("best_epoch"),
        "latency_ms": evaluation.get("latency_ms"),
    }


def compare_table(runs: list[Run], sets: dict[str, EvalSet]) -> pd.DataFrame:
    """One row per run scored in ``sets`` (by run id): facts, whether its figures are
    inductive or adapted without labels (``figures``), threshold and its plateau on
    validation (``threshold_low``, ``threshold_high``: None for a record without one), and
    for each catalogue metric its value and 95% interval (``<key>``, ``<key>_lo``,
    ``<key>_hi``)."""
    rows = []
    for run in runs:
        evalset = sets[run.id]
        values, ci = evalset.metrics(), evalset.ci95()
        plateau = ThresholdChoice.from_record(run.evaluation())
        row = {
            **run_facts(run),
            "figures": figures_label(run, evalset.key),
            "threshold": round(evalset.threshold, 4),
            "threshold_low": plateau and plateau.low,
            "threshold_high": plateau and plateau.high,
            "n": evalset.n,
        }
        for key in CATALOGUE:
            lo, hi = ci.get(key, (None, None))
            row |= {key: values[key], f"{key}_lo": lo, f"{key}_hi": hi}
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- sets

_SETS: dict[Path, tuple[tuple, dict[str, EvalSet]]] = {}


def scored_sets(run: Run) -> dict[str, EvalSet]:
    """:func:`run_sets`, read again only when one of the run's records changed: a page
    asks for them many times per rerun, and each read parses every record (evaluation.json
    alone is 140 KB). The sets are shared: read them, never change them."""
    files = run.record_files()
    stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists())
    cached = _SETS.get(run.path)
    if cached is None or cached[0] != stamp:
        if len(_SETS) > 256:
            _SETS.clear()
        cached = _SETS[run.path] = (stamp, run_sets(run))
    return cached[1]


def sets_on(runs: list[Run], key: str) -> dict[str, EvalSet]:
    """Each run's scores on the image set ``key`` (by run id); a UserError names the runs
    never scored on it."""
    found = {r.id: scored_sets(r).get(key) for r in runs}
    missing = [i for i, s in found.items() if s is None]
    if missing:
        raise UserError(f"not scored on that image set: {', '.join(missing)}")
    return found


def split_set(run: Run, split: str) -> EvalSet | None:
    """The run's scores on one of its own splits ("val", "internal_test"), or None."""
    found = [s for s in scored_sets(run).values() if s.split == split]
    return max(found, key=lambda s: s.n) if found else None


def outside_sets(run: Run) -> list[EvalSet]:
    """Sets from outside the training folder's split: a test/ folder or any labelled
    folder. The 16 films of the official val/ are too few to show a shift."""
    return [s for s in scored_sets(run).values() if not s.internal and s.split != "official_val"]


def internal_set(run: Run) -> EvalSet | None:
    """The run's own held-out split: internal_test, else val (which chose the threshold)."""
    return split_set(run, "internal_test") or split_set(run, "val")


# --------------------------------------------------------------------------- numbers


def readable_table(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """A :func:`compare_table` as people read it: one column per metric of ``metrics``
    (all of the catalogue unless named), named by its label, holding "91.2% (88.9-93.3)";
    the headline metrics first (on a narrow screen the last columns are the ones scrolled
    out of sight), and whether the figures are inductive when a run adapted without labels
    is among them."""
    metrics = tuple(CATALOGUE) if metrics is None else metrics  # a metric added later too
    out = pd.DataFrame({"run": table["run"]})
    if (table["figures"] != INDUCTIVE).any():  # a run adapted without labels: say so
        out["figures"] = table["figures"]
    for key in dict.fromkeys([*(k for k in HEADLINE if k in metrics), *metrics]):
        info = CATALOGUE[key]
        out[info.label] = [
            stats.format_ci(r[key], (r[f"{key}_lo"], r[f"{key}_hi"]), info.percent)
            for r in table.to_dict("records")
        ]
    out["threshold"] = table["threshold"].round(3)
    out[PLATEAU_COLUMN] = [
        f"{r['threshold_low']:.3f} to {r['threshold_high']:.3f}"
        if pd.notna(r.get("threshold_low")) and pd.notna(r.get("threshold_high"))
        else ""
        for r in table.to_dict("records")
    ]
    return out


PLATEAU_COLUMN = "ties on val"
"""The readable table's column of each threshold's plateau on validation."""


def plateau_notes(runs: list[Run]) -> list[str]:
    """One line per run whose record keeps its threshold's plateau, in plain words: "run:
    any threshold from 0.090 to 0.710 gives the same validation Youden's J ..."."""
    found = {run.id: ThresholdChoice.from_record(run.evaluation()) for run in runs}
    return [f"{run_id}: {plateau.sentence()}." for run_id, plateau in found.items() if plateau]


def metrics_by_run(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`readable_table` turned on its side: one row per catalogue metric, one column
    per run, so a few runs' every metric fit a page's width."""
    readable = readable_table(table).set_index("run")
    readable["threshold"] = [f"{t:.3f}" for t in readable["threshold"]]  # a column of text
    return readable.T.rename_axis("metric").reset_index().rename_axis(columns=None)


def paired(sets: dict[str, EvalSet]) -> list[stats.PairedResult]:
    """Every pair of runs on the same images: McNemar, DeLong and a verdict (Holm-adjusted
    over the pairs when there are more than one)."""
    first = next(iter(sets.values()))
    return stats.pairwise_table(
        list(sets),
        first.labels,
        {i: s.probs for i, s in sets.items()},
        {i: s.threshold for i, s in sets.items()},
    )


def pairs_table(pairs: list[stats.PairedResult]) -> pd.DataFrame:
    """The pairwise comparisons as a readable table (differences are a - b); each pair's
    verdict is a sentence, written beside the table rather than in a column that would
    make it too wide to read."""
    holm = len(pairs) > 1
    suffix = " (Holm)" if holm else ""
    rows = []
    for p in pairs:
        mcnemar_p, delong_p = p.p_values(adjusted=holm)
        rows.append(
            {
                "a": p.a,
                "b": p.b,
                "accuracy a - b": f"{100 * p.accuracy_diff:+.1f} points",
                f"McNemar p{suffix}": stats.format_p(mcnemar_p),
                "AUC a - b": stats.format_ci(p.roc_auc_diff, p.roc_auc_diff_ci95, percent=False),
                f"DeLong p{suffix}": stats.format_p(delong_p),
            }
        )
    return pd.DataFrame(rows)


def curve_report(evalset: EvalSet) -> dict:
    """What the ROC/PR charts and the per-class report draw for one set."""
    return full_report(evalset.labels, evalset.probs, evalset.threshold)


def operating_point(evalset: EvalSet, threshold: float) -> dict:
    """The decisions at ``threshold`` on ``evalset``: confusion matrix, the rates, and per
    1000 children at the set's prevalence how many pneumonias are missed and how many
    normal films are called pneumonia."""
    (tn, fp), (fn, tp) = confusion(evalset.labels, evalset.probs, threshold)
    values = evalset.metrics(threshold)
    n = max(evalset.n, 1)
    return {
        "threshold": threshold,
        "confusion": [[tn, fp], [fn, tp]],
        "accuracy": values["accuracy"],
        "sensitivity": values["sensitivity"],
        "specificity": values["specificity"],
        "PPV": values["precision"],
        "NPV": values["npv"],
        "prevalence": float(np.mean(evalset.labels)) if evalset.n else math.nan,
        "missed_per_1000": 1000 * fn / n,
        "false_alarms_per_1000": 1000 * fp / n,
    }


def val_thresholds(run: Run) -> dict[str, float]:
    """The thresholds of :data:`VAL_THRESHOLDS`, chosen on the run's validation scores;
    empty when the run kept none."""
    val = split_set(run, "val")
    if val is None or len(np.unique(val.labels)) < 2:
        return {}
    return {
        name: choose_threshold(val.labels, val.probs, **kwargs)
        for name, kwargs in VAL_THRESHOLDS.items()
    }


def operating_points(run: Run, evalset: EvalSet) -> pd.DataFrame:
    """Where the run's own threshold and each validation-chosen one land on ``evalset``."""
    marks = {"run's threshold": evalset.threshold} | {
        f"{name} on val": t for name, t in val_thresholds(run).items()
    }
    rows = []
    for name, threshold in marks.items():
        point = operating_point(evalset, threshold)
        rows.append(
            {
                "threshold": name,
                "value": round(threshold, 4),
                **{k: percent(point[k]) for k in ("sensitivity", "specificity", "PPV", "NPV")},
                "missed / 1000": round(point["missed_per_1000"]),
                "false alarms / 1000": round(point["false_alarms_per_1000"]),
            }
        )
    return pd.DataFrame(rows)


def shift_frame(internal: EvalSet, outside: EvalSet) -> pd.DataFrame:
    """The same run on its internal test split and on an outside set: per headline metric
    and set (``where``: internal or outside; ``name``), its ``value``, ``lo`` and ``hi``."""
    rows = []
    for where, evalset in (("internal", internal), ("outside", outside)):
        values, ci = evalset.metrics(), evalset.ci95()
        for key in HEADLINE:
            lo, hi = ci[key]
            rows.append(
                {
                    "metric": key,
                    "where": where,
                    "name": evalset.name,
                    "value": values[key],
                    "lo": lo,
                    "hi": hi,
                }
            )
    return pd.DataFrame(rows)


SHIFT_COLUMNS = {"internal": "internal split", "outside": "outside set"}


def shift_names(frame: pd.DataFrame) -> str:
    """The two sets of a :func:`shift_frame`, named: "internal: A; outside: B"."""
    names = frame.drop_duplicates("where").set_index("where")["name"]
    return f"internal split: {names['internal']}; outside set: {names['outside']}"


def shift_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A :func:`shift_frame` as people read it: per metric, the internal split and the
    outside set with their intervals, and the gap. The columns say which is which, not the
    sets' names (a folder's path made the table too wide): :func:`shift_names` gives them
    for the text beside it."""
    rows = []
    for key in HEADLINE:
        info = CATALOGUE[key]
        both = frame[frame["metric"] == key].set_index("where")
        row = {"metric": info.label}
        for where in ("internal", "outside"):
            r = both.loc[where]
            row[SHIFT_COLUMNS[where]] = stats.format_ci(
                r["value"], (r["lo"], r["hi"]), info.percent
            )
        gap = both.loc["outside", "value"] - both.loc["internal", "value"]
        row["gap"] = f"{100 * gap:+.1f} points" if info.percent else f"{gap:+.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def shift_key(runs: list[Run], compared: EvalSet) -> str | None:
    """The one outside set the shift puts every run on: the compared set when it is
    outside, else the outside set most of ``runs`` were scored on (a test/ folder before
    the 16 official val films). One set for all, so that a run not scored on it yet is
    left out rather than drawn on other films under the same label."""
    if not compared.internal:
        return compared.key
    counts: Counter[str] = Counter()
    found: dict[str, EvalSet] = {}
    for run in runs:
        for key, evalset in scored_sets(run).items():
            if not evalset.internal:
                counts[key] += 1
                found[key] = evalset
    if not counts:
        return None
    return max(counts, key=lambda k: (found[k].split != "official_val", counts[k], found[k].n))


def shifts(runs: list[Run], compared: EvalSet) -> dict[str, pd.DataFrame]:
    """:func:`shift_frame` of each run that has an internal test split and was scored on
    the outside set :func:`shift_key` chooses."""
    key = shift_key(runs, compared)
    out = {}
    for run in runs:
        internal = split_set(run, "internal_test")
        outside = scored_sets(run).get(key) if key else None
        if internal is not None and outside is not None:
            out[run.id] = shift_frame(internal, outside)
    return out


def percent(value: float) -> str:
    """A share as "91.2%", or "n/a" where it is undefined (NPV when nothing is called
    normal): never "nan%"."""
    return f"{100 * value:.1f}%" if math.isfinite(value) else "n/a"


def shows_reference(evalset: EvalSet) -> bool:
    """Whether the published reference point (Kermany et al. on the official test split) may
    be drawn beside runs scored on ``evalset``: only on real, labelled chest films, never on
    the synthetic demo set (its marker file, or its files' names where the folder is not
    here, as for a bundled run scored on another machine)."""
    if evalset.root is not None and Path(evalset.root).is_dir():
        return not is_synthetic(Path(evalset.root))
    return not synthetic_names(evalset.paths)


def comparable_runs(runs: list[Run]) -> list[Run]:
    """The largest group of ``runs`` scored on one same image set, in their order, real
    films before synthetic ones: what "All" means on Compare, since runs that share no set
    cannot stand side by side (choosing every run mixed synthetic and sweep runs with the
    bundled ones, and the page had nothing to show)."""
    groups: dict[str, list[Run]] = {}
    real: dict[str, bool] = {}
    for run in runs:
        for key, evalset in run_sets(run).items():
            groups.setdefault(key, []).append(run)
            real.setdefault(key, shows_reference(evalset))
    if not groups:
        return []
    return groups[max(groups, key=lambda k: (real[k], len(groups[k])))]
