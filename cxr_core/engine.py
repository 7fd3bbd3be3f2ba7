"""Training and evaluation, in the shape of torchvision's reference ``train.py``:
``train_one_epoch``, ``evaluate`` and ``fit`` (the ``main``), one config threaded through.

Images come from the decoded uint8 cache as one tensor; batches are sliced from it,
augmented on the device, and fed channels-last. Every epoch reseeds from
``(seed, epoch)``, so a run resumed from its last checkpoint replays the interrupted
epoch exactly and ends with the same weights as one that was never stopped (on CPU).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cxr_core import checkpoints, features, metrics
from cxr_core.augment import augment_batch
from cxr_core.cache import decode_images, describe_skipped
from cxr_core.config import TrainConfig
from cxr_core.datasets import SplitManifest, make_splits, scan
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_files, atomic_write_json, read_json
from cxr_core.models import Network, count_parameters, create_network, set_trainable
from cxr_core.runs import Run
from cxr_core.synthetic import is_synthetic, synthetic_dataset


class Cancelled(Exception):
    """The user asked the run to stop (the run folder's ``cancel`` flag)."""


# --------------------------------------------------------------------------- setup


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but Apple MPS is not available")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_data(spec: str) -> Path:
    """A folder path, or ``synthetic`` / ``synthetic:N`` (N images per class)."""
    if spec.startswith("synthetic"):
        _, _, count = spec.partition(":")
        if count and not count.isdigit():
            raise UserError("use --data synthetic or synthetic:N with N images per class")
        return synthetic_dataset(per_class=int(count or 150))
    return Path(spec).expanduser()


@dataclass
class Data:
    """Decoded images of a run's splits, ready to slice into batches."""

    root: Path
    manifest: SplitManifest
    pixels: torch.Tensor
    rows: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    skipped: dict[str, str]
    notes: list[str]
    synthetic: bool

    def paths(self, split: str) -> list[str]:
        return [s.path for s in self.manifest.splits[split]]


def load_data(
    cfg: TrainConfig,
    manifest: SplitManifest | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Data:
    """Scan, split (unless a saved ``manifest`` is given) and decode through the cache."""
    root = resolve_data(cfg.data)
    index = scan(root)
    if manifest is None:
        manifest = make_splits(index, cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.max_images)
    samples = [s for split in manifest.splits.values() for s in split]
    images = decode_images(index.root, samples, cfg.img_size, cfg.clahe, progress)
    manifest = manifest.without(set(images.skipped))
    for name in ("train", "val"):
        if {s.label for s in manifest.splits[name]} != {0, 1}:
            raise UserError(f"the {name} split lacks a class once unreadable files are skipped")
    rows = {k: torch.from_numpy(images.rows(v)) for k, v in manifest.splits.items() if v}
    labels = {
        k: torch.tensor([s.label for s in v], dtype=torch.float32)
        for k, v in manifest.splits.items()
        if v
    }
    notes = list(index.notes)
    if images.skipped:
        notes.append(describe_skipped(images.skipped))
    return Data(
        index.root,
        manifest,
        torch.from_numpy(images.pixels),
        rows,
        labels,
        images.skipped,
        notes,
        is_synthetic(index.root),
    )


def to_input(
    pixels: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> normalised float ``[B, 1, H, W]`` (augmented if ``gen``).

    Float rows are cached backbone features (:mod:`cxr_core.features`): used as they are.
    """
    if pixels.is_floating_point():
        return pixels.to(device, non_blocking=True)
    x = pixels.to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    if gen is not None:
        x = augment_batch(x, cfg.augment, gen)
    x = (x - cfg.norm_mean) / cfg.norm_std
    return x.contiguous(memory_format=torch.channels_last) if device.type != "mps" else x


def build_network(cfg: TrainConfig, device: torch.device) -> Network:
    torch.manual_seed(cfg.seed)
    network = create_network(cfg.arch, cfg.pretrained, cfg.img_size)
    set_trainable(network, cfg.unfreeze_last)
    memory_format = torch.channels_last if device.type != "mps" else torch.preserve_format
    network.model.to(device, memory_format=memory_format)
    return network


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel a step instead of a pass over the weights per operation (CUDA and
    # CPU have it; NAdam not). On 2-core CPUs it measured 1.02-1.2x on a Xeon and 0.91-0.96x
    # on an AMD EPYC, near the noise: the optimizer is 1% of a step there (benchmarks/).
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if cfg.optimizer == "nadam":
        return torch.optim.NAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("adam", "adamw"):
        kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[object | None, str]:
    """The scheduler and when it steps: ``"step"`` (each batch) or ``"epoch"``."""
    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), "step"
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=total), "step"
    if cfg.scheduler == "step":
        size = max(1, cfg.epochs // 3)
        return torch.optim.lr_scheduler.StepLR(optimizer, size, gamma=0.1), "epoch"
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.monitor == "val_loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode, patience=2), "epoch"
    return None, "never"


def _freeze_frozen_batchnorm(model: torch.nn.Module) -> None:
    """Frozen stages keep their ImageNet BatchNorm statistics (eval mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


@functools.cache
def _cpu_has_bf16() -> bool:
    """Native bf16 units (AMX or AVX-512 BF16); ``CXR_CPU_BF16=0`` keeps CPUs in fp32.

    Without them bf16 is emulated and slower than fp32.
    """
    if os.environ.get("CXR_CPU_BF16") == "0":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _autocast(device: torch.device, model: torch.nn.Module, training: bool):
    """Mixed precision where it is faster: bf16/fp16 on CUDA; on a CPU with native bf16
    units, bf16 for training convolutional networks without depthwise convolutions (on a
    2-core Xeon with AMX, resnet18 and small_cnn trained 2.4-2.8x faster; efficientnet's
    depthwise convolutions ran 0.8x and a lone linear head gains nothing: those stay fp32).
    Without those units bf16 is emulated: several times slower (benchmarks/, AMD EPYC).
    CPU inference stays fp32, so a run's recorded scores reproduce on any CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    plain = convs and all(c.groups == 1 for c in convs)
    if device.type == "cpu" and training and plain and _cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# --------------------------------------------------------------------------- loops


@dataclass
class StepReport:
    epoch: int
    step: int
    steps: int
    loss: float
    images_per_s: float


def train_one_epoch(
    network: Network,
    optimizer: torch.optim.Optimizer,
    scheduler: object | None,
    scheduler_unit: str,
    scaler: torch.amp.GradScaler,
    data: Data,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    on_step: Callable[[StepReport], None] = lambda report: None,
) -> dict[str, float]:
    """One pass over the training split; ``on_step`` may raise :class:`Cancelled`."""
    model = network.model
    model.train()
    _freeze_frozen_batchnorm(model)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout, replayed identically on resume
    rows, labels = data.rows["train"], data.labels["train"]
    n = len(rows)
    if cfg.imbalance == "sampler":
        weights = torch.where(labels == 1, 1 / labels.sum(), 1 / (n - labels.sum()))
        order = torch.multinomial(weights, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    steps = n // cfg.batch_size if n > cfg.batch_size else 1
    pos_weight = None
    if cfg.imbalance == "weighted":
        pos_weight = ((n - labels.sum()) / labels.sum()).to(device)
    total_loss, seen, started, window = 0.0, 0, time.perf_counter(), []
    seen_probs, seen_labels = [], []  # running train metrics, as Keras reports them
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch}/{cfg.epochs}",
        file=sys.stderr,
        mininterval=1.0,
        leave=False,
        disable=None,
    )
    for step in bar:
        batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        x = to_input(data.pixels[rows[batch]], cfg, device, gen)
        y = labels[batch].to(device)
        target = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
        with _autocast(device, model, training=True):
            logits = model(x).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"loss became {loss.item()} at epoch {epoch}; lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None and scheduler_unit == "step":
            scheduler.step()
        value = loss.item()
        seen_probs.append(torch.sigmoid(logits.detach()).cpu())
        seen_labels.append(y.cpu())
        total_loss += value * len(batch)
        seen += len(batch)
        window.append(value)
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            rate = seen / (time.perf_counter() - started)
            on_step(StepReport(epoch, step + 1, steps, float(np.mean(window)), rate))
            window = []
    bar.close()
    running = metrics.summary(torch.cat(seen_labels).numpy(), torch.cat(seen_probs).numpy())
    return {
        "train_loss": total_loss / max(seen, 1),
        **{f"train_{k}": running[k] for k in ("accuracy", "f1", "roc_auc")},
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / (time.perf_counter() - started),
    }


@torch.inference_mode()
def predict_pixels(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """Pneumonia probabilities for uint8 ``[N, H, W]`` images (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        x = to_input(pixels[start : start + batch_size], cfg, device)
        with _autocast(device, model, training=False):
            out.append(torch.sigmoid(model(x).float().squeeze(1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def evaluate(
    network: Network, data: Data, split: str, cfg: TrainConfig, device: torch.device
) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities, labels and mean BCE loss on one split."""
    probs = predict_pixels(network.model, data.pixels[data.rows[split]], cfg, device)
    labels = data.labels[split].numpy()
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    return probs, labels, loss


def measure_latency(model: torch.nn.Module, cfg: TrainConfig, repeats: int = 15) -> float:
    """Median CPU milliseconds to classify one image (batch of 1, inference mode)."""
    cpu = torch.device("cpu")
    model = model.to(cpu).eval()
    x = torch.zeros(1, cfg.img_size, cfg.img_size, dtype=torch.uint8)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(to_input(x, cfg, cpu))
            if i >= 2:
                times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


# --------------------------------------------------------------------------- run state


def _save_resume_state(run: Run, network, optimizer, scheduler, scaler, state: dict) -> None:
    """Model + optimizer tensors in safetensors, the rest as JSON (no pickle anywhere)."""
    tensors = {f"model.{k}": v for k, v in network.model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    resume = {
        **state,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
    }
    # Both files or neither: a full disk or a kill never pairs weights with another epoch.
    atomic_write_files(
        {
            run.path / "last.safetensors": blob,
            run.path / "last.json": json.dumps(resume, indent=1, allow_nan=True).encode(),
        }
    )


def _load_resume_state(run: Run, network, optimizer, scheduler, scaler) -> dict:
    path = run.path / "last.safetensors"
    if not path.exists() or not (run.path / "last.json").exists():
        raise UserError(f"run {run.id} has no checkpoint to resume from (no epoch finished)")
    tensors, _ = checkpoints.read_safetensors(path)
    state = read_json(run.path / "last.json")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    checkpoints.load_state_into(network.model, model_state, run.config().get("arch", "?"), path)
    slots: dict[int, dict] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            param = params[int(pid)]
            if value.shape == param.shape:
                # Moments back in their parameter's memory format (channels_last): the
                # fused optimizers pair elements by memory position, not by index.
                value = torch.empty_like(param).copy_(value)
            slots.setdefault(int(pid), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        slots.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    return state


def environment(device: torch.device) -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def _improved(cfg: TrainConfig, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if cfg.monitor == "val_loss" else value > best


# --------------------------------------------------------------------------- main


def fit(run: Run, cfg: TrainConfig, resume: bool = False, half_weights: bool = False) -> dict:
    """Train ``cfg`` into ``run``: the whole life of a run, from data to evaluation.json.

    Writes status (with heartbeat and ETA), history, checkpoints and the evaluation as it
    goes; the best epoch and the decision threshold are chosen on validation only.
    """
    with run.keep_alive():
        return _fit(run, cfg, resume, half_weights)


def _fit(run: Run, cfg: TrainConfig, resume: bool, half_weights: bool) -> dict:
    device = select_device(cfg.device)
    run.set_status("running", phase="preparing data", message=None)
    last_beat = [0.0]

    def beat(**fields) -> None:
        if run.cancel_requested():
            raise Cancelled()
        if time.time() - last_beat[0] > 1.0:
            run.set_status("running", **fields)
            last_beat[0] = time.time()

    saved_split = run.split() if resume else None
    manifest = SplitManifest.from_dict(saved_split) if saved_split else None
    try:
        data = load_data(
            cfg,
            manifest,
            progress=lambda done, total: beat(phase=f"decoding images {done}/{total}"),
        )
    except Cancelled:
        run.set_status("cancelled", message="cancelled while preparing data")
        return {}
    if not resume:
        atomic_write_json(
            run.path / "split.json",
            {
                **data.manifest.to_dict(),
                "skipped": data.skipped,
                "notes": data.notes,
                "synthetic": data.synthetic,
                "root": str(data.root),
            },
        )
        atomic_write_json(run.path / "env.json", environment(device))
    for note in data.notes:
        print(f"note: {note}", file=sys.stderr)

    network = build_network(cfg, device)
    if device.type == "cpu":
        torch.set_num_threads(max(torch.get_num_threads(), 1))
    n_train = len(data.rows["train"])
    steps = n_train // cfg.batch_size if n_train > cfg.batch_size else 1
    optimizer = make_optimizer(cfg, network.model)
    scheduler, unit = make_scheduler(cfg, optimizer, steps)
    scaler = torch.amp.GradScaler(
        device.type,
        enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported(),
    )
    state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "train_time_s": 0.0}
    if resume:
        state = {**state, **_load_resume_state(run, network, optimizer, scheduler, scaler)}
        run.truncate_history(state["epoch"])
    info = count_parameters(network.model)

    def on_step(report: StepReport) -> None:
        done = (report.epoch - 1) * report.steps + report.step
        remaining = cfg.epochs * report.steps - done
        eta = remaining * cfg.batch_size / max(report.images_per_s, 1e-9)
        run.append_history(
            {
                "type": "step",
                "epoch": report.epoch,
                "step": report.step,
                "global_step": done,
                "loss": report.loss,
            }
        )
        beat(
            phase="training",
            epoch=report.epoch,
            step=report.step,
            steps=report.steps,
            images_per_s=round(report.images_per_s, 1),
            eta_s=round(eta),
        )

    status = "completed"
    trainee = network  # the head alone when it trains on cached features
    images = data  # fp16 weights change the backbone's features: score what ships on images
    try:
        if features.applies(cfg):
            trainee, data = features.cache_features(
                network,
                data,
                cfg,
                device,
                progress=lambda done, total: beat(phase=f"computing features {done}/{total}"),
            )
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            started = time.perf_counter()
            train_stats = train_one_epoch(
                trainee, optimizer, scheduler, unit, scaler, data, cfg, device, epoch, on_step
            )
            beat(phase="validating", epoch=epoch)
            probs, labels, val_loss = evaluate(trainee, data, "val", cfg, device)
            val = metrics.summary(labels, probs)
            record = {
                "type": "epoch",
                "epoch": epoch,
                **train_stats,
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": time.perf_counter() - started,
            }
            run.append_history(record)
            monitored = record[cfg.monitor if cfg.monitor != "val_auc" else "val_roc_auc"]
            if scheduler is not None and unit == "epoch":
                scheduler.step(monitored) if cfg.scheduler == "plateau" else scheduler.step()
            state["train_time_s"] += time.perf_counter() - started
            state["epoch"] = epoch
            if _improved(cfg, monitored, state["best"]):
                state.update(best=monitored, best_epoch=epoch, bad_epochs=0)
                checkpoints.save_weights(
                    run.weights,
                    network.model,
                    {"config": cfg.to_dict(), "epoch": epoch},
                    half=half_weights,
                )
            else:
                state["bad_epochs"] += 1
            _save_resume_state(run, network, optimizer, scheduler, scaler, state)
            print(
                f"epoch {epoch}/{cfg.epochs}  loss {train_stats['train_loss']:.4f}  "
                f"val_loss {val_loss:.4f}  val_auc {val['roc_auc']:.4f}  "
                f"val_f1 {val['f1']:.4f}  {record['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            if state["bad_epochs"] >= cfg.patience:
                print(
                    f"early stop: no {cfg.monitor} gain for {cfg.patience} epochs", file=sys.stderr
                )
                break
    except Cancelled:
        status = "cancelled"
    except KeyboardInterrupt:
        run.set_status("interrupted", message="stopped by Ctrl-C")
        raise
    except torch.OutOfMemoryError:
        message = f"out of GPU memory at batch size {cfg.batch_size}: try a smaller --batch-size"
        run.set_status("failed", message=message)
        raise UserError(message) from None

    if not run.weights.exists():
        run.set_status(status, message="stopped before any epoch finished")
        return {}
    run.set_status("running", phase="final evaluation")
    scored = images if half_weights else data
    evaluation = final_evaluation(run, scored, device, cfg, state, info, half_weights)
    message = "cancelled: evaluated the best epoch so far" if status == "cancelled" else None
    run.set_status(status, phase="done", message=message)
    return evaluation


def final_evaluation(
    run: Run,
    data: Data,
    device: torch.device,
    cfg: TrainConfig,
    state: dict,
    info: dict,
    half: bool,
) -> dict:
    """Reload the saved best weights (exactly what ships), pick the threshold on val,
    report every split and store the threshold in the checkpoint."""
    state_dict, meta = checkpoints.load_weights(run.weights)
    network = build_network(cfg, device)
    checkpoints.load_state_into(network.model, state_dict, cfg.arch, run.weights)
    scorer = features.head_only(network) if features.is_cached(data) else network
    val_probs, val_labels, _ = evaluate(scorer, data, "val", cfg, device)
    threshold = metrics.choose_threshold(
        val_labels, val_probs, cfg.threshold_method, cfg.target_sensitivity
    )
    splits = {}
    for split in data.rows:
        if split == "train":
            continue
        probs, labels, _ = evaluate(scorer, data, split, cfg, device)
        splits[split] = metrics.full_report(labels, probs, threshold, data.paths(split))
    evaluation = {
        "threshold": threshold,
        "threshold_method": cfg.threshold_method,
        "best_epoch": meta.get("epoch"),
        "epochs_run": state["epoch"],
        "train_time_s": round(state["train_time_s"], 1),
        "test_split": data.manifest.test_split,
        "synthetic": data.synthetic,
        "latency_ms": round(measure_latency(network.model, cfg), 2),
        **info,
        "file_mb": round(run.weights.stat().st_size / 2**20, 2),
        "fp16_weights": half,
        "splits": splits,
    }
    atomic_write_json(run.path / "evaluation.json", evaluation)
    checkpoints.save_weights(
        run.weights, network.model, {**meta, "threshold": threshold, "run_id": run.id}, half=half
    )
    return evaluation
