"""Time to a useful model: ``train`` with the "quick on CPU" preset, cold decode cache, to a
model with validation AUC >= 0.95, on (at most) 2 CPU cores.

The run is launched the way the Train page launches it (a config file handed to
``python -m cxr_core train --config``), in a fresh runs folder and a fresh, empty cache,
pinned to 2 cores and to the CPU. Wall clock covers everything from process start to the
finished evaluation. The phases come from the run's own status file, polled.

The second measurement shows what the cached-features path buys: one epoch of the head
on cached features against one epoch of the per-batch path (the frozen backbone run on
every batch), interleaved, on the same split.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DATA, ROOT, interleaved, summarise, timed
from cxr_core import features
from cxr_core.config import TrainConfig
from cxr_core.engine import (
    build_network,
    load_data,
    make_optimizer,
    select_device,
    train_one_epoch,
)
from cxr_core.presets import PRESETS, apply_preset

PRESET = "quick on CPU"
TARGET_AUC = 0.95
CORES = 2


def preset_config() -> TrainConfig:
    return TrainConfig(**apply_preset(PRESET, {"data": str(DATA), "device": "cpu"}))


def _pin_to_cores() -> None:
    cpus = sorted(os.sched_getaffinity(0))[:CORES]
    os.sched_setaffinity(0, cpus)


def train_once(workdir: Path) -> dict:
    """One cold ``train`` of the preset; wall clock, CPU time, phases and the evaluation."""
    cfg = preset_config()
    config_file = workdir / "config.json"
    config_file.write_text(json.dumps(cfg.to_dict()))
    runs, cache = workdir / "runs", workdir / "cache"
    env = {
        **os.environ,
        "CXR_RUNS_DIR": str(runs),
        "CXR_CACHE_DIR": str(cache),
        "CUDA_VISIBLE_DEVICES": "",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_core", "train", "--config", str(config_file), "--run-id", "q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin_to_cores,
    )
    phases: dict[str, float] = {}
    status_file = runs / "q" / "status.json"
    while process.poll() is None:
        try:
            phase = json.loads(status_file.read_text()).get("phase") or ""
        except (OSError, json.JSONDecodeError):
            phase = "starting"
        name = phase.split(" ")[0] if phase else "starting"
        phases.setdefault(name, round(time.perf_counter() - started, 1))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"train failed: {stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    evaluation = json.loads((runs / "q" / "evaluation.json").read_text())
    history = [
        json.loads(line)
        for line in (runs / "q" / "history.jsonl").read_text().splitlines()
        if '"epoch"' in line
    ]
    epochs = [r for r in history if r.get("type") == "epoch"]
    first_good = next((r["epoch"] for r in epochs if r["val_roc_auc"] >= TARGET_AUC), None)
    split = json.loads((runs / "q" / "split.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "cores": CORES,
        "load_average_1min_at_start": round(load_before, 2),
        "phases_started_at_s": phases,
        "val_auc": round(evaluation["splits"]["val"]["roc_auc"], 4),
        "test_auc": round(evaluation["splits"][evaluation["test_split"]]["roc_auc"], 4),
        "test_split": evaluation["test_split"],
        "first_epoch_with_val_auc_ge_target": first_good,
        "epochs_run": evaluation["epochs_run"],
        "counts": split["counts"],
        "config": {
            k: cfg.to_dict()[k]
            for k in ("arch", "img_size", "epochs", "batch_size", "lr", "max_images")
        },
    }


def measure(reps: int) -> dict:
    """``reps`` cold runs of the preset (median wall clock), then the fast-path ablation."""
    results = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="cxr-ttm-") as tmp:
            results.append(train_once(Path(tmp)))
    walls = sorted(r["wall_s"] for r in results)
    median_run = min(results, key=lambda r: abs(r["wall_s"] - walls[len(walls) // 2]))
    return {
        "preset": PRESET,
        "preset_values": PRESETS[PRESET],
        "target_s": 180,
        "target_val_auc": TARGET_AUC,
        "reps": reps,
        "wall_s_samples": [r["wall_s"] for r in results],
        **median_run,
        "meets_target": median_run["wall_s"] <= 180 and median_run["val_auc"] >= TARGET_AUC,
    }


def measure_fast_path(reps: int) -> dict:
    """Seconds per epoch: head on cached features vs the frozen backbone run every batch."""
    cfg = preset_config()
    device = select_device("cpu")
    data = load_data(cfg)
    network = build_network(cfg, device)
    started = time.perf_counter()
    head, cached = features.cache_features(network, data, cfg, device)
    extract_s = time.perf_counter() - started
    optimizer = make_optimizer(cfg, network.model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def epoch(trainee, epoch_data) -> float:
        return timed(
            lambda: train_one_epoch(
                trainee, optimizer, None, "never", scaler, epoch_data, cfg, device, 1
            )
        )

    samples = interleaved(
        {
            "cached features": lambda: epoch(head, cached),
            "per-batch backbone": lambda: epoch(network, data),
        },
        reps,
    )
    summary = summarise(samples, "per-batch backbone", higher_is_better=False)
    per_batch = summary["per-batch backbone"]["median"]
    cached_epoch = summary["cached features"]["median"]
    n_epochs = cfg.epochs
    return {
        "n_train": len(data.rows["train"]),
        "images_featurised": len(data.pixels),
        "feature_extraction_s": round(extract_s, 1),
        "epoch_s": {k: v["median"] for k, v in summary.items()},
        "epoch_speedup": summary["cached features"]["ratio_to_per-batch backbone"],
        "training_s_for_preset_epochs": {
            "cached features (extraction + epochs)": round(extract_s + n_epochs * cached_epoch, 1),
            "per-batch backbone": round(n_epochs * per_batch, 1),
        },
        "reps": reps,
        "samples": {k: v["samples"] for k, v in summary.items()},
    }
