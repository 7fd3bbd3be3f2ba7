"""Tune the "quick on CPU" preset on the validation split only.

For each image size, decode the real training data and compute the frozen
efficientnet_lite0 features once (the engine's cached-features path), then train the head
for each training-subset size, learning rate and epoch count with the engine's own
``train_one_epoch`` / ``evaluate``, and print validation AUC. The test splits are never
looked at. Features are kept in $CXR_CACHE_DIR between invocations of this script.

    python benchmarks/tune_quick_preset.py --sizes 96 128 160 --subsets 1000 1500 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_core.data.folders import make_splits, scan  # noqa: E402
from cxr_core.scoring import metrics  # noqa: E402
from cxr_core.settings import cache_dir  # noqa: E402
from cxr_core.training import features  # noqa: E402
from cxr_core.training.config import TrainConfig  # noqa: E402
from cxr_core.training.engine import evaluate, train_one_epoch  # noqa: E402
from cxr_core.training.inputs import load_data  # noqa: E402
from cxr_core.training.optim import make_optimizer, make_scheduler  # noqa: E402
from cxr_core.training.presets import PRESETS  # noqa: E402
from cxr_core.training.runtime import build_network, select_device  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "chest_xray"


def base_config(size: int, **overrides) -> TrainConfig:
    preset = {**PRESETS["quick on CPU"], "img_size": size, "max_images": None, **overrides}
    return TrainConfig.from_options({"data": str(DATA), **preset})


def all_features(size: int, device: torch.device) -> tuple:
    """Decoded data of every image and the frozen backbone's features for each row."""
    cfg = base_config(size)
    data = load_data(cfg)
    file = cache_dir() / f"tune-features-{size}-{len(data.pixels)}.npy"
    if file.exists():
        feats = torch.from_numpy(np.load(file))
    else:
        started = time.perf_counter()
        feats = features.extract(build_network(cfg, device), data.pixels, cfg, device)
        took = time.perf_counter() - started
        print(f"{size} px: features of {len(feats)} images in {took:.0f} s", flush=True)
        np.save(file, feats.numpy())
    return data, feats


def subset_data(data, feats: torch.Tensor, cfg: TrainConfig):
    """The cached-features Data of the split ``cfg`` (seed, fractions, max_images) makes."""
    manifest = make_splits(
        scan(cfg.data), cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.max_images
    )
    where = {
        s.path: int(row)
        for name, samples in data.manifest.splits.items()
        for s, row in zip(samples, data.rows.get(name, []))
    }
    rows = {k: torch.tensor([where[s.path] for s in v]) for k, v in manifest.splits.items() if v}
    labels = {
        k: torch.tensor([s.label for s in v], dtype=torch.float32)
        for k, v in manifest.splits.items()
        if v
    }
    return dataclasses.replace(data, manifest=manifest, rows=rows, labels=labels, pixels=feats)


def val_curve(network, data, cfg: TrainConfig, device: torch.device) -> list[float]:
    """Validation AUC after each epoch of head training (fresh head, seeded)."""
    torch.manual_seed(cfg.seed)
    network.head.reset_parameters()
    head = features.head_only(network)
    optimizer = make_optimizer(cfg, network.model)
    n = len(data.rows["train"])
    scheduler, unit = make_scheduler(cfg, optimizer, max(n // cfg.batch_size, 1))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    curve = []
    for epoch in range(1, cfg.epochs + 1):
        train_one_epoch(head, optimizer, scheduler, unit, scaler, data, cfg, device, epoch)
        if scheduler is not None and unit == "epoch":
            scheduler.step()
        probs, labels, _ = evaluate(head, data, "val", cfg, device)
        curve.append(metrics.summary(labels, probs)["roc_auc"])
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--subsets", type=int, nargs="+", default=[800, 1200, 1600, 0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, help="append JSON lines of results here")
    args = parser.parse_args()
    device = select_device("cpu")
    for size in args.sizes:
        data, feats = all_features(size, device)
        network = build_network(base_config(size), device)
        for subset in args.subsets:
            for lr in args.lrs:
                cfg = base_config(size, max_images=subset or None, lr=lr, epochs=args.epochs)
                sub = subset_data(data, feats, cfg)
                curve = val_curve(network, sub, cfg, device)
                best = int(np.argmax(curve))
                row = {
                    "img_size": size,
                    "max_images": subset or None,
                    "n_train": len(sub.rows["train"]),
                    "n_val": len(sub.rows["val"]),
                    "lr": lr,
                    "val_auc_by_epoch": [round(a, 4) for a in curve],
                    "best_epoch": best + 1,
                    "best_val_auc": round(curve[best], 4),
                }
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
