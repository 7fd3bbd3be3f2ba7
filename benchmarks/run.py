"""CXR Lab benchmarks: print every figure with its target and ratio, write them to JSON,
and regenerate the markdown table (benchmarks/RESULTS.md) from that JSON.

    python benchmarks/run.py                      # everything (long on a 2-core CPU)
    python benchmarks/run.py --quick              # a small subset of each section
    python benchmarks/run.py --only latency,app   # some sections
    python benchmarks/run.py --only throughput --archs resnet18 --sizes 224 --steps 4

Sections: throughput (engine vs a student-style loop, plus ablations), time (time to a
useful model with the "quick on CPU" preset), latency (predict + Grad-CAM per image, plus
ablations), app (Compare page render time, server peak RSS). A run updates only the
sections it measured; the others keep their last results in the JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.common import DATA, machine  # noqa: E402

SECTIONS = ("throughput", "time", "latency", "app")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def run_throughput(args) -> dict:
    from benchmarks import throughput
    from cxr_core.training.runtime import select_device

    device = select_device(args.device)
    target = 3.0 if device.type == "cuda" else 1.5
    pairs = []
    for arch in args.archs:
        for size in args.sizes:
            r = throughput.measure_pair(
                arch, size, args.batch_size, args.steps, args.reps, args.device, args.ref_workers
            )
            r["target_speedup"] = target
            r["meets_target"] = r["speedup"] >= target
            pairs.append(r)
            print(
                f"throughput {arch}@{size}: engine {r['engine_images_per_s']:.1f} img/s vs "
                f"reference {r['reference_images_per_s']:.1f} img/s -> {r['speedup']:.2f}x "
                f"(target >= {target}x on {device.type}) {_verdict(r['meets_target'])}",
                flush=True,
            )
    ablations = []
    for arch in args.ablate:
        r = throughput.measure_ablations(
            arch, args.ablate_size, args.batch_size, args.steps, args.reps, args.device
        )
        ablations.append(r)
        gains = ", ".join(f"{k} {v:.2f}x" for k, v in r["engine_speedup_over"].items())
        print(f"ablation {arch}@{args.ablate_size}: engine is faster than {gains}", flush=True)
    return {"device": device.type, "pairs": pairs, "ablations": ablations}


def run_time(args) -> dict:
    from benchmarks import time_to_model

    r = time_to_model.measure(args.time_reps)
    print(
        f"time to model ({r['preset']}, cold cache, {r['cores']} cores): {r['wall_s']:.0f} s "
        f"wall ({r['cpu_s']:.0f} CPU-s), val AUC {r['val_auc']:.3f} "
        f"(target <= {r['target_s']} s, AUC >= {r['target_val_auc']}) "
        f"{_verdict(r['meets_target'])}",
        flush=True,
    )
    fast = None
    if not args.quick:
        fast = time_to_model.measure_fast_path(args.reps)
        t = fast["projected_training_s"]
        print(
            f"cached features: a head epoch is {fast['epoch_speedup']:.0f}x faster per image "
            f"than running the frozen backbone per batch; projected preset training "
            f"{t['cached features']:.0f} s vs {t['per-batch backbone']:.0f} s "
            f"({fast['projected_speedup']:.1f}x)",
            flush=True,
        )
    return {"run": r, "fast_path": fast}


def run_latency(args) -> dict:
    from benchmarks import latency

    runs = latency.checkpoints_to_measure(args.synthetic_models)
    images = latency.sample_images(args.images)
    models = []
    for run, origin in runs:
        r = latency.measure_model(run, images, args.latency_reps)
        target = 250.0 if (r["arch"], r["img_size"]) == latency.TARGET_MODEL else None
        r["origin"] = origin
        r["target_p50_ms"] = target
        r["meets_target"] = None if target is None else r["total_ms"]["p50"] <= target
        models.append(r)
        print(
            f"latency {r['run']} ({r['arch']}@{r['img_size']}, {origin}): predict+Grad-CAM "
            f"p50 {r['total_ms']['p50']:.0f} ms, p95 {r['total_ms']['p95']:.0f} ms "
            f"(predict p50 {r['predict_ms']['p50']:.0f}, CAM p50 {r['gradcam_ms']['p50']:.0f})"
            + (f" target p50 <= {target:.0f} ms {_verdict(r['meets_target'])}" if target else ""),
            flush=True,
        )
    ablation = None
    if not args.quick and runs:
        target = [m for m in models if (m["arch"], m["img_size"]) == latency.TARGET_MODEL]
        pick = (target or models)[0]
        ablation = latency.measure_ablations(
            next(r for r, _ in runs if r.name == pick["run"]), images[:8], args.reps, args.compile
        )
        print(
            "latency ablation "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in ablation["forward_ms_per_image"].items())
            + "; CAM "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in ablation["cam_ms_per_image"].items()),
            flush=True,
        )
    return {"images": len(images), "models": models, "ablation": ablation}


def run_app(args) -> dict:
    from benchmarks import app_bench, latency

    tiny = latency.synthetic_checkpoints(latency.synthetic_folder(), [("small_cnn", 128)])[0]
    compare = app_bench.compare_render(tiny, args.reps)
    print(
        f"Compare page with {compare['runs_in_store']} runs: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in compare["render_s"].items())
        + f" (target <= {compare['target_s']} s) {_verdict(compare['meets_target'])}",
        flush=True,
    )
    memory = None
    if app_bench.CHROMIUM.exists():
        bundled = [] if args.synthetic_models else latency.bundled_checkpoints()
        folder = bundled[0].parent if bundled else tiny.parent
        if not bundled:
            latency.synthetic_checkpoints(folder)
        image = sorted((DATA / "val" / "PNEUMONIA").glob("*.jpeg"))[0]
        memory = app_bench.server_peak_rss(folder, image)
        memory["origin"] = "bundled" if bundled else "synthetic"
        print(
            f"streamlit server peak RSS with {memory['models']} models + Grad-CAM: "
            f"{memory['peak_rss_gb']:.2f} GB (idle {memory['idle_rss_gb']:.2f} GB; "
            f"target <= {memory['target_gb']} GB) {_verdict(memory['meets_target'])}",
            flush=True,
        )
    else:
        print(f"server memory: skipped, {app_bench.CHROMIUM} is missing", flush=True)
    return {"compare": compare, "memory": memory}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--quick", action="store_true", help="a small subset of each section")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18", "efficientnet_lite0"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--steps", type=int, default=3, help="throughput: steps x reps alternated rounds"
    )
    p.add_argument("--ref-workers", type=int, default=0, help="reference DataLoader workers")
    p.add_argument("--ablate", nargs="*", default=["resnet18", "efficientnet_lite0"])
    p.add_argument("--ablate-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--time-reps", type=int, default=1, help="cold preset runs (minutes each)")
    p.add_argument("--images", type=int, default=20, help="images per latency pass")
    p.add_argument("--latency-reps", type=int, default=3, help="passes over the images")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    p.add_argument(
        "--synthetic-models",
        action="store_true",
        help="measure tiny synthetic runs even when bundled runs exist",
    )
    p.add_argument("--out", type=Path, default=report.RESULTS_JSON)
    args = p.parse_args(argv)
    if args.quick:
        args.archs, args.sizes, args.steps = ["small_cnn"], [128], 2
        args.ablate, args.images, args.latency_reps = [], 8, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"error: unknown section(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = json.loads(args.out.read_text()) if args.out.exists() else {"sections": {}}
    runners = {"throughput": run_throughput, "time": run_time, "latency": run_latency}
    runners["app"] = run_app
    for name in wanted:
        started = time.perf_counter()
        facts = machine()
        section = runners[name](args)
        section["machine"] = facts
        section["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        section["seconds"] = round(time.perf_counter() - started, 1)
        section["quick"] = args.quick
        results["sections"][name] = section
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.write(args.out)
    print(f"wrote {args.out} and {markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
