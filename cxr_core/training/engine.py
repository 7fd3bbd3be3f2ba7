"""Training and evaluation, in the shape of torchvision's reference ``train.py``:
``train_one_epoch``, ``evaluate`` and ``fit`` (the ``main``), one config threaded through.

Images come from the decoded uint8 cache as one tensor; batches are sliced from it,
augmented on the device, and fed channels-last. Every epoch reseeds from
``(seed, epoch)``, so a run resumed from its last checkpoint replays the interrupted
epoch exactly and ends with the same weights as one that was never stopped (on CPU).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.zoo import Network, count_parameters
from cxr_core.scoring import metrics, selection
from cxr_core.store.runs import Run
from cxr_core.training import features, recipes
from cxr_core.training.config import TrainConfig
from cxr_core.training.inputs import Data, load_data
from cxr_core.training.optim import make_optimizer, make_scheduler
from cxr_core.training.reporting import Cancelled, Reporter, StepReport
from cxr_core.training.resume_state import load_resume_state, save_resume_state
from cxr_core.training.runtime import (
    autocast,
    build_network,
    predict_pixels,
    select_device,
    to_input,
)

# --------------------------------------------------------------------------- loops


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
    recipes.start_epoch(network, cfg, epoch)
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
        with autocast(device, model, training=True):
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


EPOCH_RULE = "the shorter-trained one: the earlier epoch"
"""Which epoch is kept when validation cannot tell a later, better-scoring one from it."""


def _replaces_kept_epoch(
    state: dict, epoch: int, labels: np.ndarray, probs: np.ndarray, by_auc: bool
) -> bool:
    """Whether ``epoch``, better on the monitored metric, replaces the epoch kept so far.
    Monitoring the AUC, only when validation tells them apart (DeLong's paired test,
    :func:`cxr_core.scoring.selection.select`, :data:`EPOCH_RULE`); monitoring the loss or
    F1, which that test does not measure, the monitored metric decides. The verdict goes
    to ``state["epoch_choice"]``, the kept epoch's validation scores to
    ``state["kept_val"]`` (so a resumed run decides alike)."""
    kept = state.get("kept_val")
    if by_auc and kept is not None and len(kept["probs"]) == len(probs):
        names = (f"epoch {epoch}", f"epoch {kept['epoch']}")
        pairs = [(labels, probs, np.asarray(kept["probs"]))]
        cost = {names[0]: (epoch,), names[1]: (kept["epoch"],)}
        choice = selection.select(*names, pairs, cost, EPOCH_RULE)
        state["epoch_choice"] = choice.to_dict()
        if choice.chosen != names[0]:
            return False
    state.update(best_epoch=epoch, kept_val={"epoch": epoch, "probs": np.asarray(probs).tolist()})
    return True


# --------------------------------------------------------------------------- preparing


@dataclass
class Training:
    """Everything an epoch loop needs, prepared (and restored on resume) before it starts."""

    network: Network
    """The whole model: what is saved and shipped."""
    trainee: Network
    """What the loop trains: the head alone when it trains on cached features."""
    data: Data
    """What the loop feeds: decoded images, or the backbone's cached features."""
    images: Data
    """The decoded images, to score what ships (fp16 weights change the features)."""
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scheduler_unit: str
    scaler: torch.amp.GradScaler
    device: torch.device
    state: dict
    info: dict


def prepare(run: Run, cfg: TrainConfig, resume: bool, reporter: Reporter) -> Training:
    """Data (the saved split on resume), network, optimizer, scheduler and saved state;
    for a frozen backbone without augmentation, the backbone's features computed once."""
    device = select_device(cfg.device)
    reporter.status(force=True, phase="preparing data", message=None)
    manifest = run.manifest() if resume else None
    images = load_data(
        cfg, manifest, progress=lambda d, t: reporter.progress("decoding images", d, t)
    )
    if not resume:
        run.save_split(
            {
                **images.manifest.to_dict(),
                "skipped": images.skipped,
                "notes": images.notes,
                "synthetic": images.synthetic,
                "root": str(images.root),
            },
        )
        run.save_environment(environment(device))
    for note in images.notes:
        print(f"note: {note}", file=sys.stderr)

    network = build_network(cfg, device)
    n_train = len(images.rows["train"])
    steps = n_train // cfg.batch_size if n_train > cfg.batch_size else 1
    optimizer = make_optimizer(cfg, network.model)
    scheduler, unit = make_scheduler(cfg, optimizer, steps)
    scaler = torch.amp.GradScaler(
        device.type,
        enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported(),
    )
    state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "train_time_s": 0.0}
    if resume:
        state = {**state, **load_resume_state(run, network, optimizer, scheduler, scaler)}
        run.truncate_history(state["epoch"])
    trainee, data = network, images
    if features.applies(cfg):
        trainee, data = features.cache_features(
            network,
            images,
            cfg,
            device,
            progress=lambda d, t: reporter.progress("computing features", d, t),
        )
    info = count_parameters(network.model)
    return Training(
        network, trainee, data, images, optimizer, scheduler, unit, scaler, device, state, info
    )


# --------------------------------------------------------------------------- main


def run_epochs(
    run: Run,
    cfg: TrainConfig,
    t: Training,
    reporter: Reporter,
    clock: Callable[[], float],
    precision: str,
) -> None:
    """The epoch loop: train, validate, keep the best weights (on the monitored validation
    metric), checkpoint for resume, stop early when validation stops improving."""
    state = t.state
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        started = time.perf_counter()
        train_stats = train_one_epoch(
            t.trainee,
            t.optimizer,
            t.scheduler,
            t.scheduler_unit,
            t.scaler,
            t.data,
            cfg,
            t.device,
            epoch,
            reporter.step,
        )
        reporter.status(phase="validating", epoch=epoch)
        probs, labels, val_loss = evaluate(t.trainee, t.data, "val", cfg, t.device)
        val = metrics.summary(labels, probs)
        record = {
            "type": "epoch",
            "epoch": epoch,
            **train_stats,
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.perf_counter() - started,
        }
        reporter.epoch(record)
        monitored = record[cfg.monitor if cfg.monitor != "val_auc" else "val_roc_auc"]
        if t.scheduler is not None and t.scheduler_unit == "epoch":
            t.scheduler.step(monitored) if cfg.scheduler == "plateau" else t.scheduler.step()
        state["epoch"] = epoch
        if epoch == cfg.probe_epochs + 1:  # LP-FT ships a fine-tuned network, not the probe
            state.update(best=None, bad_epochs=0, kept_val=None)
        if _improved(cfg, monitored, state["best"]):
            state.update(best=monitored, bad_epochs=0)
            if _replaces_kept_epoch(state, epoch, labels, probs, cfg.monitor == "val_auc"):
                weights_file.save_weights(
                    run.weights,
                    t.network.model,
                    {"config": cfg.to_dict(), "epoch": epoch},
                    precision,
                )
        else:
            state["bad_epochs"] += 1
        recipes.end_epoch(run, t.network, cfg, epoch)
        state["train_time_s"] = clock()
        save_resume_state(run, t.network, t.optimizer, t.scheduler, t.scaler, state)
        if state["bad_epochs"] >= cfg.patience:
            print(f"early stop: no {cfg.monitor} gain for {cfg.patience} epochs", file=sys.stderr)
            break


def fit(run: Run, cfg: TrainConfig, resume: bool = False, half_weights: bool = False) -> dict:
    """Train ``cfg`` into ``run``: the whole life of a run, from data to evaluation.json.

    Writes status (with heartbeat, progress and ETA), history, checkpoints and the
    evaluation as it goes; the best epoch and the decision threshold are chosen on
    validation only. ``train_time_s`` counts the whole run (decoding, cached features,
    epochs), summed over the processes of a resumed run.
    """
    precision = "fp16" if half_weights else "fp32"
    with run.keep_alive():
        reporter = Reporter(run, cfg)
        process_started = time.perf_counter()
        try:
            t = prepare(run, cfg, resume, reporter)
        except Cancelled:
            run.set_status("cancelled", message="cancelled while preparing data")
            return {}
        before = t.state["train_time_s"]

        def clock() -> float:
            return before + time.perf_counter() - process_started

        status = "completed"
        try:
            run_epochs(run, cfg, t, reporter, clock, precision)
        except Cancelled:
            status = "cancelled"
        except KeyboardInterrupt:
            run.set_status("interrupted", message="stopped by Ctrl-C")
            raise
        except torch.OutOfMemoryError:
            message = (
                f"out of GPU memory at batch size {cfg.batch_size}: try a smaller --batch-size"
            )
            run.set_status("failed", message=message)
            raise UserError(message) from None
        if not run.weights.exists():
            run.set_status(status, message="stopped before any epoch finished")
            return {}
        run.set_status("running", phase="final evaluation")
        recipes.ship_average(run, t.network, cfg, t.images, precision)
        t.state["train_time_s"] = clock()
        scored = t.images if precision != "fp32" else t.data
        evaluation = final_evaluation(run, scored, t.device, cfg, t.state, t.info, precision)
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
    precision: str,
) -> dict:
    """Reload the saved best weights (exactly what ships), pick the threshold on val,
    report every split and store the threshold in the checkpoint, at ``precision``."""
    state_dict, meta = weights_file.load_weights(run.weights)
    network = build_network(cfg, device)
    weights_file.load_state_into(network.model, state_dict, cfg.arch, run.weights)
    scorer = features.head_only(network) if features.is_cached(data) else network
    val_probs, val_labels, _ = evaluate(scorer, data, "val", cfg, device)
    choice = metrics.threshold_choice(
        val_labels, val_probs, cfg.threshold_method, cfg.target_sensitivity, cfg.target_specificity
    )
    threshold = choice.threshold
    splits = {}
    for split in data.rows:
        if split == "train":
            continue
        probs, labels, _ = evaluate(scorer, data, split, cfg, device)
        splits[split] = metrics.full_report(labels, probs, threshold, data.paths(split))
    evaluation = {
        "threshold": threshold,
        "threshold_method": cfg.threshold_method,
        **choice.record(),
        "best_epoch": meta.get("epoch"),
        "epoch_choice": state.get("epoch_choice"),
        **({"averaged": meta["averaged"]} if "averaged" in meta else {}),
        "epochs_run": state["epoch"],
        "train_time_s": round(state["train_time_s"], 1),
        "test_split": data.manifest.test_split,
        "synthetic": data.synthetic,
        "latency_ms": round(measure_latency(network.model, cfg), 2),
        **info,
        "file_mb": round(run.weights.stat().st_size / 2**20, 2),
        "weights_precision": precision,
        "splits": splits,
    }
    run.save_evaluation(evaluation)
    weights_file.save_weights(
        run.weights, network.model, {**meta, "threshold": threshold, "run_id": run.id}, precision
    )
    return evaluation
