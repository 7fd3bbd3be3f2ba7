"""Sharing runs: export a run folder without its resume state, and write the README's
results table from run records (never typed by hand)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from cxr_core.errors import UserError
from cxr_core.store import records
from cxr_core.store.runs import Run

SHARED_FILES = records.SHARED


def export_run(run: Run, out_dir: Path) -> Path:
    """Copy ``run`` into ``out_dir/<run id>`` with only :data:`SHARED_FILES`."""
    if run.status().get("status") != "completed":
        raise UserError(f"run {run.id} is {run.status().get('status')}; export completed runs")
    target = Path(out_dir) / run.id
    if target.exists():
        raise UserError(f"{target} already exists")
    target.mkdir(parents=True)
    for name in SHARED_FILES:
        if (run.path / name).exists():
            shutil.copy2(run.path / name, target / name)
    return target


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _weights(config: dict) -> str:
    if config.get("arch") == "ensemble":
        return "mean of " + ", ".join(f"`{m}`" for m in config["members"])
    if not config.get("pretrained"):
        return "scratch"
    unfreeze = config.get("unfreeze_last", -1)
    if unfreeze == 0:
        return "ImageNet, frozen backbone"
    return "ImageNet, fine-tuned" + (f" (last {unfreeze} stages)" if unfreeze > 0 else "")


def results_markdown(runs: list[Run]) -> str:
    """A markdown table of runs: validation, internal/official test and the 16-image
    official val (reported only), cost, and the command that produced each run."""
    lines = [
        "| run | weights | px | params | file MB | train min | best epoch | val acc | val AUC "
        "| test set | test acc | test sens | test spec | test AUC | official val acc (n=16) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands = []
    for run in sorted(runs, key=lambda r: r.id):
        config, ev = run.config(), run.evaluation() or {}
        val, test = records.split_report(ev, "val"), records.report_on_test(ev)
        official = records.split_report(ev, "official_val")
        minutes = ev.get("train_time_s", 0) / 60
        lines.append(
            f"| `{run.id}` | {_weights(config)} | {config.get('img_size', '-')} "
            f"| {ev.get('params', 0) / 1e6:.1f}M | {_num(ev.get('file_mb'), 1)} "
            f"| {_num(minutes, 1)} | {ev.get('best_epoch', '-')} "
            f"| {_pct(val.get('accuracy'))} | {_num(val.get('roc_auc'))} "
            f"| {ev.get('test_split')} (n={test.get('n')}) "
            f"| {_pct(test.get('accuracy'))} | {_pct(test.get('sensitivity'))} "
            f"| {_pct(test.get('specificity'))} | {_num(test.get('roc_auc'))} "
            f"| {_pct(official.get('accuracy'))} |"
        )
        commands.append(f"- `{run.id}`: `{config.get('command', '(not recorded)')}`")
    return "\n".join([*lines, "", "Commands that produced them:", "", *commands])


def update_readme_block(readme: Path, name: str, content: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise UserError(f"{readme} has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    readme.write_text(pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text))
