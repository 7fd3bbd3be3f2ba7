"""Issue 20's figures, each printed beside its target: how fast CXR Lab scores on this CPU.

    python benchmarks/speed.py                 # about 15 minutes on 2 shared cores
    python benchmarks/speed.py --films 128 --reps 1 --skip-int8   # a quick look

- CLI start: ``--help``, ``runs list`` and ``train --help`` (the slowest verb's flags),
  whole process, median of ``--reps``.
- ``evaluate`` of small_cnn, Lite0-224 and the bundled ensemble on ``--films`` films sampled
  from the real train/ folder (the 624-film test set's stand-in: same class mix), whole
  process, warm decode cache and graphs, with its peak RSS; beside it, in the same run and
  interleaved, a plain PyTorch loop in a fresh process (import, load, decode each JPEG with
  PIL, forward in batches of 64) and ``evaluate`` with ``CXR_ENGINE=torch``.
- The forward pass alone per film: PyTorch eager, PyTorch with BatchNorm folded into the
  convolutions, ONNX Runtime at batch 8/32/64, int8 (ONNX Runtime static quantisation,
  calibrated on other train films) with its AUC against fp32's; and the floor: the
  network's FLOPs per film over the GFLOP/s this CPU reaches on a large matmul.

The browser timings (Compare tabs, slider, Predict) belong to the browser harness
(tests/test_journeys*.py); it can import :func:`sample_folder` for the same 624 films.
Figures on a shared machine are noisy: compare the ratios, taken side by side.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import DATA  # noqa: E402

RUNS = {
    "small_cnn-scratch-128": 6.0,
    "efficientnet_lite0-pretrained-224": 10.0,
    "ensemble-lite0-resnet18-strongaug": 15.0,
}
"""The bundled runs timed, and issue 20's target for ``evaluate`` on 624 films (s)."""
PNEUMONIA_SHARE = 390 / 624
"""The class mix of the Kaggle test set the sample stands in for."""


def sample_folder(dest: Path, n: int, seed: int = 0) -> Path:
    """``dest/test/{NORMAL,PNEUMONIA}`` holding links to ``n`` films of the real train/."""
    rng = random.Random(seed)
    wanted = {"PNEUMONIA": round(n * PNEUMONIA_SHARE)}
    wanted["NORMAL"] = n - wanted["PNEUMONIA"]
    for label, count in wanted.items():
        films = sorted((DATA / "train" / label).glob("*.jpeg"))
        folder = dest / "test" / label
        folder.mkdir(parents=True, exist_ok=True)
        for film in rng.sample(films, count):
            (folder / film.name).symlink_to(film)
    return dest


def _timed(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-400:]}")
    return elapsed, usage.ru_maxrss / 1024


def _line(what: str, value: str, target: str, ok: bool | None) -> None:
    verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
    print(f"{what:58s} {value:>18s}   target {target:12s} {verdict}", flush=True)


def cli_start(reps: int) -> None:
    cli = [sys.executable, "-m", "cxr_core"]
    for argv in (["--help"], ["runs", "list"], ["train", "--help"]):
        seconds = statistics.median(_timed([*cli, *argv])[0] for _ in range(reps))
        _line(f"CLI {' '.join(argv)}", f"{seconds:.2f} s", "<= 1 s", seconds <= 1.0)
    for module in ("torch", "sklearn.metrics", "onnxruntime"):  # what scoring still imports
        seconds = statistics.median(
            _timed([sys.executable, "-c", f"import {module}"])[0] for _ in range(reps)
        )
        _line(f"  (python -c 'import {module}')", f"{seconds:.2f} s", "", None)


def plain_loop(run: str, data: str) -> None:
    """What a notebook does: import, load, decode each JPEG, forward in batches of 64."""
    import numpy as np
    import torch
    from PIL import Image

    from cxr_core.predict.ensembles import load_any

    model = load_any(ROOT / "checkpoints" / run)
    members = getattr(model, "members", {run: model})
    films = sorted(Path(data, "test").glob("*/*.jpeg"))
    for member in members.values():
        size, net = member.config.img_size, member.network.model
        probs = []
        with torch.no_grad():
            for i in range(0, len(films), 64):
                batch = [
                    np.asarray(Image.open(f).convert("L").resize((size, size)), np.float32)
                    for f in films[i : i + 64]
                ]
                x = torch.from_numpy(np.stack(batch))[:, None] / 255
                x = (x - member.config.norm_mean) / member.config.norm_std
                probs.append(torch.sigmoid(net(x)).squeeze(1))
        torch.cat(probs)


def evaluate_runs(data: Path, reps: int) -> None:
    cli = [sys.executable, "-m", "cxr_core", "evaluate", "--data", str(data), "--json"]
    plain = [sys.executable, __file__, "--plain-loop"]
    for run, target in RUNS.items():
        variants = {
            "onnx": lambda run=run: _timed([*cli, "--run", run], {"CXR_ENGINE": "onnx"}),
            "torch": lambda run=run: _timed([*cli, "--run", run], {"CXR_ENGINE": "torch"}),
            "plain": lambda run=run: _timed([*plain, run, str(data)]),
        }
        variants["onnx"]()  # fills the decode cache and exports the graphs
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                times[name].append(fn())
        med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
        rss = max(r for _, r in times["onnx"])
        ratio = statistics.median(
            o[0] / p[0] for o, p in zip(times["onnx"], times["plain"], strict=True)
        )
        _line(f"evaluate {run}", f"{med['onnx']:.1f} s", f"<= {target:g} s", med["onnx"] <= target)
        _line("  its peak RSS", f"{rss:.0f} MB", "<= 1024 MB", rss <= 1024)
        _line("  against a plain PyTorch loop (ratio)", f"{ratio:.2f}x", "<= 0.5x", ratio <= 0.5)
        _line(
            f"  (plain loop {med['plain']:.1f} s; CXR_ENGINE=torch)",
            f"{med['torch']:.1f} s",
            "",
            None,
        )


def _gflops_peak() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9


def _ms_per_film(fn, films, reps: int = 3) -> float:
    fn(films[:8])
    runs = []
    for _ in range(reps):
        started = time.perf_counter()
        fn(films)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) / len(films) * 1000


def forward_pass(data: Path, skip_int8: bool) -> None:
    from cxr_core.data.folders import labelled_images

    peak = _gflops_peak()
    print(f"this CPU's fp32 matmul (2048^2, all threads): {peak:.0f} GFLOP/s", flush=True)
    root, samples, _ = labelled_images(data, "test")
    for run in ("small_cnn-scratch-128", "efficientnet_lite0-pretrained-224"):
        _forward_one(run, peak, root, samples, skip_int8)


def _forward_one(run: str, peak: float, root: Path, samples: list, skip_int8: bool) -> None:
    import numpy as np
    import torch
    from torch.fx.experimental.optimization import fuse
    from torch.utils.flop_counter import FlopCounterMode

    from cxr_core.data.decode_cache import decode_images
    from cxr_core.predict import graphs
    from cxr_core.predict.inference import load_model
    from cxr_core.training.runtime import predict_pixels

    model = load_model(ROOT / "checkpoints" / run)
    cfg, net = model.config, model.network.model
    films = decode_images(root, samples, cfg.img_size, cfg.clahe).pixels
    films64 = films[:64]
    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, cfg.img_size, cfg.img_size))
    gflop = counter.get_total_flops() / 1e9
    floor = gflop / peak * 1000
    eager = _ms_per_film(
        lambda f: predict_pixels(net, torch.from_numpy(f), cfg, model.device), films64
    )
    try:
        folded = fuse(net.eval())
        fold = _ms_per_film(
            lambda f: predict_pixels(folded, torch.from_numpy(f), cfg, model.device), films64
        )
        fold_text = f"{fold:.1f}"
    except Exception as exc:  # symbolic tracing fails on some networks
        fold_text = f"n/a ({type(exc).__name__})"
    graph = graphs._session(graphs.export(model.network, cfg))
    by_batch = {}
    for batch in (8, 32, 64):
        graphs.BATCH = batch
        by_batch[batch] = _ms_per_film(lambda f: graphs.run(graph, f, cfg), films64)
    graphs.BATCH = 32
    print(
        f"{run}: {gflop:.2f} GFLOP a film, floor {floor:.1f} ms; PyTorch {eager:.1f} ms, "
        f"BN folded {fold_text} ms; ONNX Runtime "
        + ", ".join(f"batch {b} {ms:.1f} ms" for b, ms in by_batch.items()),
        flush=True,
    )
    if not skip_int8:
        labels = np.array([s.label for s in samples])
        _int8(graph, model.network, cfg, root, films, labels)


def _int8(graph, network, cfg, root, films, labels) -> None:
    """Static int8 (QDQ, per channel) calibrated on 128 other train films, against fp32."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from cxr_core.data.decode_cache import decode_images
    from cxr_core.data.folders import labelled_images
    from cxr_core.predict import graphs
    from cxr_core.scoring.metrics import summary

    scored = {Path(s.path).name for s in labelled_images(root, "test")[1]}
    train = labelled_images(DATA, "train")[1]
    others = [s for s in train if Path(s.path).name not in scored][::40][:128]
    calibration = decode_images(DATA, others, cfg.img_size, cfg.clahe).pixels

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 16] for i in range(0, len(calibration), 16))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": graphs.network_input(batch, cfg)}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(graphs.export(network, cfg))
        quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        quantised = graphs._session(str(int8))
    p32, p8 = graphs.run(graph, films, cfg), graphs.run(quantised, films, cfg)
    ms32 = _ms_per_film(lambda f: graphs.run(graph, f, cfg), films[:64])
    ms8 = _ms_per_film(lambda f: graphs.run(quantised, f, cfg), films[:64])
    auc32, auc8 = summary(labels, p32, 0.5)["roc_auc"], summary(labels, p8, 0.5)["roc_auc"]
    print(
        f"  int8: AUC {auc8:.4f} vs fp32 {auc32:.4f}, max |p8-p32| "
        f"{np.abs(p8 - p32).max():.3f}; {ms8:.1f} vs {ms32:.1f} ms a film",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--films", type=int, default=624)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument("--only", choices=["cli", "evaluate", "forward"], action="append")
    p.add_argument("--plain-loop", nargs=2, metavar=("RUN", "DATA"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_loop:
        plain_loop(*args.plain_loop)
        return 0
    if not (DATA / "train").is_dir():
        print(f"no real data at {DATA} (set CXR_BENCH_DATA)")
        return 1
    info = Path("/proc/cpuinfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?")
    bf16 = " avx512_bf16" in info
    print(
        f"{cpu}, {len(os.sched_getaffinity(0))} cores, avx512_bf16: {bf16}; load {os.getloadavg()}"
    )
    only = set(args.only or ["cli", "evaluate", "forward"])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CXR_RUNS_DIR"] = str(Path(tmp, "runs"))  # the graphs made go there
        data = sample_folder(Path(tmp, "data"), args.films)
        if "cli" in only:
            cli_start(args.reps)
        if "evaluate" in only:
            evaluate_runs(data, args.reps)
        if "forward" in only:
            forward_pass(data, args.skip_int8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
