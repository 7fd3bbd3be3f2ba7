"""Same images, honest numbers: the time to re-score a bundled run on 624 images, and the
Compare page with 10 runs and their confidence intervals, tab by tab.

Re-scoring: ``python -m cxr_core evaluate --run ID --data D --split test --save`` in a
process of its own, as a user and the Compare page's background job run it, on a stand-in
for the official test split (withheld from us): 234 NORMAL and 390 PNEUMONIA images of
``train/`` linked into a ``test/`` folder. The runs have seen most of these images, so only
the time means anything. Cold: an empty decode cache; warm: the images already decoded.
Wall and CPU seconds of the whole process (start, imports, decoding, scoring, saving).
Target: <= 20 s on 2 cores.

Compare: the five bundled runs twice under new names (10 runs) in a tmp bundled folder,
each with the stand-in set saved, the page driven by AppTest in a child process. Choosing
all 10 (the summary's bootstraps computed) is timed, then each tab once (its own figures
and tests computed) and ``--reps`` times more (bootstraps and tests kept per run and set);
medians. Target: <= 2 s per tab.

``python -m benchmarks.compare_page [--reps 3] [--runs ID ...]``; figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA, ROOT, machine

NORMAL, PNEUMONIA = 234, 390
"""The official test split's class counts."""
COPIES = ("a", "b")


def stand_in(folder: Path) -> Path:
    """``folder/test/{NORMAL,PNEUMONIA}`` linking the first 234 and 390 train images."""
    for cls, count in (("NORMAL", NORMAL), ("PNEUMONIA", PNEUMONIA)):
        target = folder / "test" / cls
        target.mkdir(parents=True)
        for image in sorted((DATA / "train" / cls).glob("*.jpeg"))[:count]:
            (target / image.name).symlink_to(image)
    return folder


def rescore(run_id: str, data: Path, runs: Path, cache: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one ``evaluate --save`` process.
    On a machine other jobs share, the CPU time says more than the wall time."""
    env = {**os.environ, "CXR_RUNS_DIR": str(runs), "CXR_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "cxr_core", "evaluate", "--run", run_id]
    command += ["--data", str(data), "--split", "test", "--save"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rescoring(run_ids: list[str], data: Path, runs: Path, tmp: Path) -> dict:
    out = {}
    for run_id in run_ids:
        cache = tmp / f"cache-{run_id}"
        figures = {}
        for state in ("cold", "warm"):
            wall, cpu = rescore(run_id, data, runs, cache)
            figures |= {f"{state}_s": round(wall, 1), f"{state}_cpu_s": round(cpu, 1)}
        out[run_id] = figures
        print(json.dumps({run_id: figures}), flush=True)
    return {
        "images": NORMAL + PNEUMONIA,
        "runs": out,
        "target_s": 20.0,
        "meets_target": all(v["cold_s"] <= 20.0 for v in out.values()),
    }


def ten_runs(bundled: Path, runs: Path, scored: Path) -> list[str]:
    """The bundled runs twice under new names, each given the stand-in set the original was
    scored on (same weights, same images: the same scores)."""
    ids = []
    for original in sorted((ROOT / "checkpoints").iterdir()):
        for copy in COPIES:
            run_id = f"{original.name}-{copy}"
            shutil.copytree(original, bundled / run_id)
            saved = scored / ".bundled" / original.name / "evaluations"
            if saved.is_dir():
                shutil.copytree(saved, runs / ".bundled" / run_id / "evaluations")
            ids.append(run_id)
    return ids


def page(reps: int, bundled: Path, runs: Path) -> dict:
    env = {**os.environ, "CXR_RUNS_DIR": str(runs), "CXR_BUNDLED_DIR": str(bundled)}
    command = [sys.executable, "-m", "benchmarks.compare_page", "--page-child", str(reps)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _page_child(reps: int) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/compare.py").run()
    ids = list(at.multiselect(key="compare_runs").options)
    started = time.perf_counter()
    next(b for b in at.button if b.label == "All").click().run()
    all_chosen_s = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    chosen = at.multiselect(key="compare_runs").value
    evaluated_on = at.selectbox(key="compare_set").value
    tabs = [t.label for t in at.tabs]

    def render(tab: str) -> float:
        at.session_state["compare_tab"] = tab
        started = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - started
        assert not at.exception, [e.value for e in at.exception]
        return seconds

    cold = {tab: round(render(tab), 2) for tab in tabs}
    warm: dict[str, list[float]] = {tab: [] for tab in tabs}
    for _ in range(reps):
        for tab in tabs:
            warm[tab].append(render(tab))
    medians = {tab: round(sorted(v)[len(v) // 2], 2) for tab, v in warm.items()}
    return {
        "runs": len(chosen),
        "of": len(ids),
        "evaluated_on": evaluated_on,
        "all_chosen_s": round(all_chosen_s, 2),
        "cold_s": cold,
        "warm_median_s": medians,
        "reps": reps,
        "target_s": 2.0,
        "meets_target": max(medians.values()) <= 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runs", nargs="+", help="bundled runs to re-score (default: all)")
    parser.add_argument("--page-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.page_child is not None:
        print(json.dumps(_page_child(args.page_child)))
        return
    run_ids = args.runs or sorted(p.name for p in (ROOT / "checkpoints").iterdir())
    with tempfile.TemporaryDirectory(prefix="cxr-compare-bench-") as tmp:
        tmp = Path(tmp)
        data = stand_in(tmp / "stand-in")
        scored = tmp / "scored-runs"
        results = {"machine": machine(), "rescoring": rescoring(run_ids, data, scored, tmp)}
        print(json.dumps(results["rescoring"]), flush=True)
        ids = ten_runs(tmp / "bundled", tmp / "runs", scored)
        results["compare_page"] = page(args.reps, tmp / "bundled", tmp / "runs")
        results["compare_page"]["store"] = ids
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
