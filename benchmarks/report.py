"""Markdown tables from benchmarks/results.json: benchmarks/RESULTS.md, and the README's
block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` when those markers exist.

    python benchmarks/report.py [results.json]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ok(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "**no**")


def _where(section: dict) -> str:
    m = section["machine"]
    load = ", ".join(str(x) for x in m["load_average"])
    quick = ", quick subset" if section.get("quick") else ""
    return (
        f"_{m['device']} ({m['device_name']}, {m['cpus']} cores, {m['torch_threads']} torch "
        f"threads), load average {load} at start, {section['measured_at']}{quick}._"
    )


def throughput(section: dict) -> str:
    out = ["### Training throughput", _where(section), ""]
    rows = [
        [
            r["arch"],
            r["img_size"],
            f"{r['engine_images_per_s']:.1f}",
            f"{r['reference_images_per_s']:.1f}",
            f"**{r['speedup']:.2f}x**",
            f">= {r['target_speedup']}x",
            _ok(r["meets_target"]),
        ]
        for r in section["pairs"]
    ]
    out.append(
        _table(["model", "px", "engine img/s", "reference img/s", "speedup", "target", "met"], rows)
    )
    if section["pairs"]:
        r = section["pairs"][0]
        out.append(
            f"\nMedians over {r['rounds']} rounds; each round times one training step of "
            f"each side on the same {r['batch_size']} images (order alternated), speedup = "
            "median of the per-round ratios. Reference: "
            "ImageFolder + per-image transforms decoding JPEGs every epoch, 3-channel input, "
            f"fp32, default memory format, DataLoader num_workers={r['reference_workers']}."
        )
    if section.get("ablations"):
        # Models differ in their variants: the precision the engine did not pick is fp32 for
        # one model and bf16 for another (none on a GPU), so a column per name, "-" where
        # a model has no such variant.
        names = list(
            dict.fromkeys(n for a in section["ablations"] for n in a["engine_speedup_over"])
        )
        rows = [
            [f"{a['arch']}@{a['img_size']}", f"{a['images_per_s']['engine']:.1f}"]
            + [
                f"{a['engine_speedup_over'][n]:.2f}x" if n in a["engine_speedup_over"] else "-"
                for n in names
            ]
            for a in section["ablations"]
        ]
        out += [
            "",
            "What each optimisation buys in training: the full engine's speed over the engine "
            "with that one optimisation taken away (> 1: the optimisation helps; for the "
            "precision and torch.compile, the choice the engine did not make).",
            "",
            _table(["model", "engine img/s", *[f"vs {n}" for n in names]], rows),
            "",
            "Every side runs in a process of its own, as in real use: the engine as its "
            "`train` processes run it (glibc malloc keeping freed activation memory, "
            "`cxr_core/execution/allocator.py`), the reference as a notebook kernel would. "
            "torch.compile's compilation is not in the figures (`torch_compile_s` in the JSON).",
        ]
    return "\n".join(out)


def time_to_model(section: dict) -> str:
    r = section["run"]
    cfg = r["config"]
    out = ["### Time to a useful model", _where(section), ""]
    out.append(
        _table(
            ["preset", "wall clock", "CPU time", "val AUC", "test AUC", "target", "met"],
            [
                [
                    f"{r['preset']} ({cfg['arch']}, {cfg['img_size']} px, {cfg['epochs']} "
                    f"epochs, max {cfg['max_images']} images)",
                    f"**{r['wall_s']:.0f} s**",
                    f"{r['cpu_s']:.0f} s",
                    f"{r['val_auc']:.3f}",
                    f"{r['test_auc']:.3f} ({r['test_split']})",
                    f"<= {r['target_s']} s, val AUC >= {r['target_val_auc']}",
                    _ok(r["meets_target"]),
                ]
            ],
        )
    )
    phases = ", ".join(f"{k} at {v:.0f} s" for k, v in r["phases_started_at_s"].items())
    out.append(
        f"\n`train` from process start to the finished evaluation, cold decode cache, pinned "
        f"to {r['cores']} cores; phases started: {phases}."
    )
    fast = section.get("fast_path")
    if fast:
        ms, t = fast["ms_per_image"], fast["projected_training_s"]
        out.append(
            f"\nWhat the cached features buy (per image, median of {fast['reps']} interleaved "
            f"repetitions on {fast['images_measured']} images): a per-batch epoch with the "
            f"frozen backbone {ms['per-batch epoch']:.1f} ms, feature extraction "
            f"{ms['feature extraction']:.1f} ms once, a head epoch on cached features "
            f"{ms['cached-feature epoch']:.3f} ms (**{fast['epoch_speedup']:.0f}x** per "
            f"epoch). Projected for the preset ({fast['projection']}): "
            f"{t['cached features']:.0f} s against {t['per-batch backbone']:.0f} s "
            f"(**{fast['projected_speedup']:.1f}x**). Extracting in small CPU batches "
            f"(~128k pixels) instead of 64 images a batch: "
            f"**{fast['small_batch_extraction_speedup']:.2f}x**."
        )
    return "\n".join(out)


def latency(section: dict) -> str:
    out = ["### Predict + Grad-CAM latency (CPU, per image)", _where(section), ""]
    rows = [
        [
            f"{m['run']} ({m['origin']})",
            f"{m['arch']}@{m['img_size']}",
            f"{m['predict_ms']['p50']:.0f}",
            f"{m['gradcam_ms']['p50']:.0f}",
            f"**{m['total_ms']['p50']:.0f}**",
            f"{m['total_ms']['p95']:.0f}",
            f"<= {m['target_p50_ms']:.0f} ms" if m["target_p50_ms"] else "",
            _ok(m["meets_target"]),
        ]
        for m in section["models"]
    ]
    out.append(
        _table(
            [
                "run",
                "model",
                "predict p50 ms",
                "Grad-CAM p50 ms",
                "total p50 ms",
                "total p95 ms",
                "target",
                "met",
            ],
            rows,
        )
    )
    out.append(
        "\nbundled: a run in checkpoints/; synthetic: a tiny run trained on synthetic data "
        "(same architecture and size, so the same cost per image) where none is bundled. "
        f"{section['images']} images (the official val/ originals, then training images); "
        "each is `inference.predict` on the file (decode + preprocess + forward), then "
        "`inference.explain` (Grad-CAM)."
    )
    a = section.get("ablation")
    if a:
        forward = ", ".join(
            f"{k} {v:.1f} ms ({a['forward_ratio_to_inference_mode'][k]:.2f}x)"
            for k, v in a["forward_ms_per_image"].items()
        )
        cam = ", ".join(
            f"{k} {v:.1f} ms ({a['cam_ratio_to_explain'][k]:.2f}x)"
            for k, v in a["cam_ms_per_image"].items()
        )
        out.append(
            f"\nInference ablations on {a['run']} ({a['arch']}@{a['img_size']}), ms per image "
            f"(ratio: > 1 is faster than the first entry): forward {forward}. Grad-CAM {cam}."
        )
        if a.get("compile_s") is not None:
            out.append(f"torch.compile took {a['compile_s']} s to compile.")
    return "\n".join(out)


def app(section: dict) -> str:
    out = ["### App", _where(section), ""]
    c = section["compare"]
    rows = [
        [
            f"Compare page, {c['runs_in_store']} runs, {k}",
            f"**{v:.2f} s**",
            f"<= {c['target_s']} s",
            _ok(v <= c["target_s"]),
        ]
        for k, v in c["render_s"].items()
    ]
    m = section.get("memory")
    if m:
        rows.append(
            [
                f"`streamlit run app.py` peak RSS, {m['models']} models loaded + Grad-CAM "
                f"({m['origin']})",
                f"**{m['peak_rss_gb']:.2f} GB**",
                f"<= {m['target_gb']} GB",
                _ok(m["meets_target"]),
            ]
        )
    out.append(_table(["measure", "value", "target", "met"], rows))
    out.append(
        f"\nCompare: script-run time in AppTest, median of {c['reps']} interleaved reruns "
        f"(first render {c['first_render_s']:.2f} s). Memory: the server's process tree, "
        "sampled every 0.1 s while headless Chromium drives the Predict page."
    )
    return "\n".join(out)


RENDERERS = {"throughput": throughput, "time": time_to_model, "latency": latency, "app": app}


def targets(sections: dict) -> list[list[str]]:
    """Every figure that has a target: what, measured, target, met."""
    rows = []
    for r in sections.get("throughput", {}).get("pairs", []):
        rows.append(
            [
                f"training throughput {r['arch']}@{r['img_size']} vs reference",
                f"{r['speedup']:.2f}x",
                f">= {r['target_speedup']}x",
                _ok(r["meets_target"]),
            ]
        )
    if "time" in sections:
        r = sections["time"]["run"]
        rows.append(
            [
                f"time to a useful model ({r['preset']})",
                f"{r['wall_s']:.0f} s, val AUC {r['val_auc']:.3f}",
                f"<= {r['target_s']} s, val AUC >= {r['target_val_auc']}",
                _ok(r["meets_target"]),
            ]
        )
    for m in sections.get("latency", {}).get("models", []):
        if m["target_p50_ms"]:
            rows.append(
                [
                    f"predict + Grad-CAM p50, {m['arch']}@{m['img_size']}",
                    f"{m['total_ms']['p50']:.0f} ms (p95 {m['total_ms']['p95']:.0f})",
                    f"<= {m['target_p50_ms']:.0f} ms",
                    _ok(m["meets_target"]),
                ]
            )
    app_section = sections.get("app", {})
    for k, v in app_section.get("compare", {}).get("render_s", {}).items():
        target = app_section["compare"]["target_s"]
        rows.append([f"Compare page render, {k}", f"{v:.2f} s", f"<= {target} s", _ok(v <= target)])
    m = app_section.get("memory")
    if m:
        rows.append(
            [
                "server peak RSS, every bundled model + Grad-CAM",
                f"{m['peak_rss_gb']:.2f} GB",
                f"<= {m['target_gb']} GB",
                _ok(m["meets_target"]),
            ]
        )
    return rows


def render(results: dict, heading: bool = True) -> str:
    """The markdown; without ``heading`` for the README, whose section has its own."""
    parts = [
        *(["## Benchmarks", ""] if heading else []),
        "Generated by `python benchmarks/run.py` from "
        "`benchmarks/results.json`. Ratios are measured interleaved in one run (absolute "
        "times on a shared CPU are noisy).",
    ]
    rows = targets(results.get("sections", {}))
    if rows:
        parts += ["", "### Targets", "", _table(["figure", "measured", "target", "met"], rows)]
    for name, fn in RENDERERS.items():
        if name in results.get("sections", {}):
            parts += ["", fn(results["sections"][name])]
    return "\n".join(parts) + "\n"


def write(results_file: Path) -> Path:
    """Write the markdown beside ``results_file`` (RESULTS.md for the project's own
    results.json, which also refreshes the README block when the markers exist)."""
    results = json.loads(results_file.read_text())
    markdown = render(results)
    own = results_file.resolve() == RESULTS_JSON
    target = RESULTS_MD if own else results_file.with_suffix(".md")
    target.write_text(markdown)
    if own and README.exists():
        text = README.read_text()
        if START in text and END in text:
            block = f"{START}\n{render(results, heading=False)}{END}"
            pattern = re.escape(START) + r".*?" + re.escape(END)
            README.write_text(re.sub(pattern, lambda _: block, text, count=1, flags=re.S))
    return target


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_JSON))
