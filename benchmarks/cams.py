"""CAM latency per method and model, p50 and p95 per image, on the bundled runs (CPU).

Each sample is one ``inference.explain`` call on an image already predicted, with the
predicted class as the target (what the Predict page does when a user picks a method).
Where no run is bundled, tiny synthetic runs of the same architectures and sizes stand
in (see :mod:`benchmarks.latency`). ``--original`` also times pytorch-grad-cam's own
ScoreCAM (every channel of the CAM layer) on one image per model: the "before" figure
of the ScoreCAM fix, slow (about a forward pass per channel).

    python -m benchmarks.cams                   # every method, every bundled run
    python -m benchmarks.cams --methods scorecam --images 4 --original

A run's ROAD and CAM-energy figures are not timings: ``python -m cxr_core cam-check``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from benchmarks.common import machine, percentile
from benchmarks.latency import checkpoints_to_measure, sample_images
from cxr_core.predict.inference import CAM_METHODS, LoadedModel, explain, load_model, predict

SCORECAM_TARGET_S = 2.0
"""ScoreCAM per image at 224 px on 2 cores."""


def original_scorecam_ms(model: LoadedModel, pixels, target: int) -> tuple[float, float]:
    """pytorch-grad-cam's ScoreCAM as a user would call it: milliseconds and the map's max
    (0 is the all-zero map)."""
    net = model.network
    x = model.input_for(pixels)
    with ScoreCAM(net.model, [net.cam_layer], reshape_transform=net.reshape_transform) as cam:
        cam.batch_size = 32
        start = time.perf_counter()
        heat = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(target)])[0]
        return (time.perf_counter() - start) * 1000, float(heat.max())


def measure_model(run: Path, images: list[Path], methods: list[str], reps: int) -> dict:
    """p50/p95 milliseconds per image for each method; the methods take turns per image."""
    model = load_model(run)
    predictions = predict(model, images)
    for method in methods:  # warm-up
        explain(model, predictions[0].pixels, method, predictions[0].predicted)
    samples: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(reps):
        for p in predictions:
            for method in methods:
                start = time.perf_counter()
                explain(model, p.pixels, method, p.predicted)
                samples[method].append((time.perf_counter() - start) * 1000)
    return {
        "run": run.name,
        "arch": model.config.arch,
        "img_size": model.config.img_size,
        "samples": len(predictions) * reps,
        "ms": {
            m: {"p50": round(percentile(v, 50), 1), "p95": round(percentile(v, 95), 1)}
            for m, v in samples.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(CAM_METHODS), choices=list(CAM_METHODS))
    p.add_argument("--images", type=int, default=8, help="images per pass")
    p.add_argument("--reps", type=int, default=2, help="passes over the images")
    p.add_argument("--original", action="store_true", help="also time pytorch-grad-cam ScoreCAM")
    p.add_argument("--synthetic-models", action="store_true", help="tiny synthetic runs")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)

    where = machine()
    print(
        f"{where['device_name']}, {where['cpus']} CPUs, torch threads {where['torch_threads']}, "
        f"load average {where['load_average']} (a shared machine: absolute times are noisy)",
        flush=True,
    )
    images = sample_images(args.images)
    results = []
    for run, origin in checkpoints_to_measure(args.synthetic_models):
        r = measure_model(run, images, args.methods, args.reps)
        r["origin"] = origin
        for method, ms in r["ms"].items():
            line = f"{r['run']:<36} {r['arch']}@{r['img_size']:<4} {method:<10} "
            line += f"p50 {ms['p50']:8.1f} ms  p95 {ms['p95']:8.1f} ms"
            if method == "scorecam" and r["img_size"] == 224:
                ok = ms["p50"] <= SCORECAM_TARGET_S * 1000
                line += f"  (target <= {SCORECAM_TARGET_S:.0f} s: {'PASS' if ok else 'MISS'})"
            print(line, flush=True)
        if args.original:
            model = load_model(run)
            first = predict(model, images[:1])[0]
            ms, peak = original_scorecam_ms(model, first.pixels, first.predicted)
            r["original_scorecam"] = {"ms": round(ms, 1), "map_max": peak}
            print(
                f"{r['run']:<36} pytorch-grad-cam ScoreCAM, 1 image: {ms / 1000:.1f} s, "
                f"map max {peak:.3f}" + (" (all zero)" if peak == 0 else ""),
                flush=True,
            )
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "models": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
