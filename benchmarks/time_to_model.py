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

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DATA, ROOT, interleaved, timed
from benchmarks.throughput import subset
from cxr_core.training import features
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import train_one_epoch
from cxr_core.training.inputs import load_data
from cxr_core.training.optim import make_optimizer
from cxr_core.training.presets import PRESETS, apply_preset
from cxr_core.training.runtime import build_network, select_device

PRESET = "quick on CPU"
TARGET_AUC = 0.95
CORES = 2


def preset_config() -> TrainConfig:
    return TrainConfig.from_options(apply_preset(PRESET, {"data": str(DATA), "device": "cpu"}))


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


def measure_fast_path(reps: int, batches: int = 10) -> dict:
    """What the cached features buy, per image, projected to the preset's whole run.

    Interleaved on the same ``batches`` training batches: one epoch of the per-batch path
    (the frozen backbone run on every batch), computing the features of those images, and
    one head epoch on them. The projection adds validation: the per-batch path runs the
    whole model on the val split after every epoch, the cached path featurises every
    image once.
    """
    cfg = preset_config()
    device = select_device("cpu")
    data = load_data(cfg)
    n = batches * cfg.batch_size
    picked = subset(data, n)
    rows = picked.pixels[picked.rows["train"]]
    # Only these images, so that featurising them for the cached path costs just them.
    sub = dataclasses.replace(
        picked,
        pixels=rows,
        rows={"train": torch.arange(n)},
        labels={"train": picked.labels["train"]},
    )
    network = build_network(cfg, device)
    head, cached = features.cache_features(network, sub, cfg, device)
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
            "per-batch epoch": lambda: epoch(network, sub) / n,
            "feature extraction": lambda: (
                timed(lambda: features.extract(network, rows, cfg, device)) / n
            ),
            "feature extraction, 64 a batch": lambda: (
                timed(lambda: features.extract(network, rows, cfg, device, batch_size=64)) / n
            ),
            "cached-feature epoch": lambda: epoch(head, cached) / n,
        },
        reps,
    )
    per_image = {k: statistics.median(v) for k, v in samples.items()}
    n_train, n_val, n_all = len(data.rows["train"]), len(data.rows["val"]), len(data.pixels)
    per_batch = cfg.epochs * (
        n_train * per_image["per-batch epoch"] + n_val * per_image["feature extraction"]
    )
    cached_total = (
        n_all * per_image["feature extraction"]
        + cfg.epochs * n_train * per_image["cached-feature epoch"]
    )
    return {
        "images_measured": n,
        "ms_per_image": {k: round(v * 1000, 3) for k, v in per_image.items()},
        "epoch_speedup": round(per_image["per-batch epoch"] / per_image["cached-feature epoch"], 1),
        "projected_training_s": {
            "cached features": round(cached_total, 1),
            "per-batch backbone": round(per_batch, 1),
        },
        "projected_speedup": round(per_batch / cached_total, 2),
        "small_batch_extraction_speedup": round(
            per_image["feature extraction, 64 a batch"] / per_image["feature extraction"], 2
        ),
        "projection": f"{cfg.epochs} epochs, {n_train} train, {n_val} val, {n_all} images",
        "reps": reps,
        "samples_ms": {k: [round(x * 1000, 3) for x in v] for k, v in samples.items()},
    }
