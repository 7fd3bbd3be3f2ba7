"""Predict + Grad-CAM latency per image, p50 and p95, for every bundled model on CPU.

Bundled runs are discovered in ``checkpoints/`` (or ``$CXR_BUNDLED_DIR``). Where there are
none yet, tiny runs are trained on synthetic data first, so the figures exist on any
machine (same architectures and sizes, so the same cost per image). Each sample is what
the app does for one upload: ``inference.predict`` on the file (decode + preprocess +
forward) then ``inference.explain`` (Grad-CAM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from benchmarks.common import DATA, ROOT, interleaved, percentile, summarise
from cxr_core.predict.inference import LoadedModel, explain, load_model, predict
from cxr_core.settings import bundled_runs_dir

SYNTHETIC_RUNS = (("small_cnn", 128), ("resnet18", 224), ("efficientnet_lite0", 224))
TARGET_MODEL = ("resnet18", 224)
"""The latency target is set for this architecture and size."""


def bundled_checkpoints() -> list[Path]:
    folder = bundled_runs_dir()
    return sorted(p.parent for p in folder.glob("*/model.safetensors")) if folder.is_dir() else []


def synthetic_checkpoints(
    folder: Path, which: tuple[tuple[str, int], ...] = SYNTHETIC_RUNS
) -> list[Path]:
    """Train one tiny run per (architecture, size) on synthetic data (1 epoch, untimed)."""
    runs = []
    for arch, size in which:
        run_id = f"synthetic-{arch}-{size}"
        if not (folder / run_id / "model.safetensors").exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cxr_core",
                    "--runs-dir",
                    str(folder),
                    "train",
                    "--arch",
                    arch,
                    "--data",
                    "synthetic:12",
                    "--img-size",
                    str(size),
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    "--run-id",
                    run_id,
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
        runs.append(folder / run_id)
    return runs


def sample_images(count: int) -> list[Path]:
    """The official val originals (full-size uploads), then training images, ``count`` in all."""
    files = sorted((DATA / "val").glob("*/*.jpeg")) + sorted((DATA / "train").glob("*/*.jpeg"))
    picked = files[:16] + files[16 :: max(1, len(files) // count)]
    return picked[:count]


def predict_and_explain(model: LoadedModel, image: Path) -> tuple[float, float]:
    """Milliseconds for the prediction and for its Grad-CAM, one uploaded file."""
    start = time.perf_counter()
    result = predict(model, [image])[0]
    middle = time.perf_counter()
    explain(model, result.pixels, "gradcam", result.predicted)  # as the app does
    return (middle - start) * 1000, (time.perf_counter() - middle) * 1000


def measure_model(run: Path, images: list[Path], reps: int) -> dict:
    model = load_model(run)
    predict_and_explain(model, images[0])  # warm-up
    pred_ms, cam_ms, total_ms = [], [], []
    for _ in range(reps):
        for image in images:
            p, c = predict_and_explain(model, image)
            pred_ms.append(p)
            cam_ms.append(c)
            total_ms.append(p + c)

    def stats(values: list[float]) -> dict:
        return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}

    return {
        "run": run.name,
        "arch": model.config.arch,
        "img_size": model.config.img_size,
        "samples": len(total_ms),
        "predict_ms": stats(pred_ms),
        "gradcam_ms": stats(cam_ms),
        "total_ms": stats(total_ms),
    }


# --------------------------------------------------------------------------- ablations


def _inputs(model: LoadedModel, images: list[Path]) -> list[torch.Tensor]:
    """The model inputs of ``images``, preprocessed as predict() does."""
    return [model.input_for(p.pixels) for p in predict(model, images)]


def _per_image_ms(fn, xs: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for x in xs:
        fn(x)
    return (time.perf_counter() - start) * 1000 / len(xs)


def _with_threads(n: int, fn):
    def run() -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def _full_backward_gradcam(model: LoadedModel, pixels: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM as it is usually called: every weight and the input require gradients, so
    the backward runs through the whole network (what explain() avoids)."""
    net = model.network
    x = model.input_for(pixels)
    with GradCAM(
        model=net.model, target_layers=[net.cam_layer], reshape_transform=net.reshape_transform
    ) as cam:
        return cam(
            input_tensor=x.requires_grad_(True), targets=[BinaryClassifierOutputTarget(target)]
        )


def measure_ablations(run: Path, images: list[Path], reps: int, compile_too: bool) -> dict:
    """What inference_mode, channels_last, threads and explain()'s short backward buy, per image."""
    model = load_model(run)
    xs = _inputs(model, images)
    contiguous = load_model(run)
    contiguous.network.model.to(memory_format=torch.contiguous_format)
    xs_contiguous = [x.contiguous() for x in xs]
    net = model.network.model

    def forward_inference_mode() -> float:
        with torch.inference_mode():
            return _per_image_ms(net, xs)

    def forward_grad_enabled() -> float:
        return _per_image_ms(lambda x: net(x).sum().item(), xs)

    def forward_contiguous() -> float:
        with torch.inference_mode():
            return _per_image_ms(contiguous.network.model, xs_contiguous)

    forward = {
        "inference_mode": forward_inference_mode,
        "grad enabled (no inference_mode)": forward_grad_enabled,
        "contiguous (no channels_last)": forward_contiguous,
        "1 thread": _with_threads(1, forward_inference_mode),
    }
    compile_s = None
    if compile_too:
        started = time.perf_counter()
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(xs[0])
        compile_s = round(time.perf_counter() - started, 1)

        def forward_compiled() -> float:
            with torch.inference_mode():
                return _per_image_ms(compiled, xs)

        forward["torch.compile"] = forward_compiled
    for fn in forward.values():
        fn()  # warm-up
    forward_samples = interleaved(forward, reps)

    predictions = predict(model, images[:8])
    full = load_model(run)
    full.network.model.requires_grad_(True)

    def cams(fn) -> float:
        return _per_image_ms(lambda p: fn(p.pixels.copy(), p.predicted), predictions)

    cam = {
        "explain() per image": lambda: cams(lambda px, t: explain(model, px, "gradcam", t)),
        "explain() finding its own target": lambda: cams(
            lambda px, t: explain(model, px, "gradcam")
        ),
        "full backward (weights and input)": lambda: cams(
            lambda px, t: _full_backward_gradcam(full, px, t)
        ),
        "explain() per image, 1 thread": _with_threads(
            1, lambda: cams(lambda px, t: explain(model, px, "gradcam", t))
        ),
    }
    for fn in cam.values():
        fn()
    cam_samples = interleaved(cam, reps)
    forward_summary = summarise(forward_samples, "inference_mode", higher_is_better=False)
    cam_summary = summarise(cam_samples, "explain() per image", higher_is_better=False)
    return {
        "run": run.name,
        "arch": model.config.arch,
        "img_size": model.config.img_size,
        "threads": torch.get_num_threads(),
        "forward_ms_per_image": {k: v["median"] for k, v in forward_summary.items()},
        "forward_ratio_to_inference_mode": {
            k: v["ratio_to_inference_mode"] for k, v in forward_summary.items()
        },
        "cam_ms_per_image": {k: v["median"] for k, v in cam_summary.items()},
        "cam_ratio_to_explain": {
            k: v["ratio_to_explain() per image"] for k, v in cam_summary.items()
        },
        "compile_s": compile_s,
        "reps": reps,
    }


def checkpoints_to_measure(synthetic: bool) -> list[tuple[Path, str]]:
    """Run folders to measure and where each comes from ("bundled" or "synthetic").

    The bundled runs (unless ``synthetic`` forces tiny ones); where none is bundled, tiny
    synthetic runs of every architecture; and resnet18 at 224 px (the target's model)
    from a tiny synthetic run when no bundled run has it.
    """
    bundled = [] if synthetic else bundled_checkpoints()
    if not bundled:
        return [(p, "synthetic") for p in synthetic_checkpoints(synthetic_folder())]
    found = [(p, "bundled") for p in bundled]
    if not any(_arch_and_size(p) == TARGET_MODEL for p in bundled):
        found += [
            (p, "synthetic") for p in synthetic_checkpoints(synthetic_folder(), [TARGET_MODEL])
        ]
    return found


def _arch_and_size(run: Path) -> tuple[str, int]:
    config = json.loads((run / "config.json").read_text())
    return config.get("arch"), config.get("img_size")


def synthetic_folder() -> Path:
    """Where the tiny synthetic runs are kept between benchmark invocations."""
    base = Path(os.environ.get("CXR_BENCH_SYNTHETIC_RUNS", tempfile.gettempdir()))
    return base / "cxr-bench-synthetic-runs"
