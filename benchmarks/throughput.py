"""Training throughput: CXR Lab's engine against a student-style reference loop.

Engine: ``cxr_core.training.engine.train_one_epoch`` over the decoded uint8 cache, 1-channel input,
channels_last, batched augmentation on the device. Reference: torchvision ``ImageFolder``
decoding the JPEGs every epoch with per-image transforms, 3-channel RGB input (as
notebooks feed ImageNet-style models), fp32, default memory format, ``DataLoader`` with
its default ``num_workers=0``. Same architecture, batch size, optimizer, loss, device and
images; both are timed over the same number of steps, interleaved, median of ``reps``.

The ablations switch one engine optimisation off at a time (interleaved with the full
engine) to show what each buys. Every side runs in a worker process of its own (the engine
as its training processes run it, with the allocator tuning of :mod:`cxr_core.execution.allocator`;
the reference as a notebook kernel would, without), and the measuring process alternates
single steps between them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.common import DATA, alternate, summarise, sync, timed
from cxr_core.data.imaging import load_and_preprocess
from cxr_core.execution.allocator import keep_freed_memory
from cxr_core.models.zoo import create_network
from cxr_core.training.config import Augmentation, TrainConfig
from cxr_core.training.engine import train_one_epoch
from cxr_core.training.inputs import Data, load_data
from cxr_core.training.optim import make_optimizer
from cxr_core.training.runtime import autocast, build_network, select_device

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- engine side


def engine_config(arch: str, size: int, batch_size: int, device: str) -> TrainConfig:
    return TrainConfig(
        arch=arch, data=str(DATA), img_size=size, batch_size=batch_size, epochs=1, device=device
    )


def subset(data: Data, n: int, seed: int = 0) -> Data:
    """The same ``n`` training images for every measurement (a fixed random subset)."""
    pick = torch.randperm(len(data.rows["train"]), generator=torch.Generator().manual_seed(seed))
    pick = pick[:n]
    return dataclasses.replace(
        data,
        rows={**data.rows, "train": data.rows["train"][pick]},
        labels={**data.labels, "train": data.labels["train"][pick]},
    )


def row_paths(data: Data) -> dict[int, str]:
    """Which file each row of ``data.pixels`` was decoded from."""
    return {
        int(row): s.path
        for name, samples in data.manifest.splits.items()
        for s, row in zip(samples, data.rows.get(name, []))
    }


class EngineTrainer:
    """One engine model and optimizer; ``run(data)`` trains one epoch over ``data``."""

    def __init__(self, cfg: TrainConfig, wrap=None) -> None:
        self.cfg = cfg
        self.device = select_device(cfg.device)
        self.network = build_network(cfg, self.device)
        if wrap is not None:
            self.network = wrap(self.network)
        self.optimizer = make_optimizer(cfg, self.network.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    def run(self, data: Data) -> float:
        """Images per second over one pass of ``data``'s training rows."""
        n = len(data.rows["train"])
        seconds = timed(
            lambda: train_one_epoch(
                self.network,
                self.optimizer,
                None,
                "never",
                self.scaler,
                data,
                self.cfg,
                self.device,
                1,
            )
        )
        return n / seconds


# --------------------------------------------------------------------------- reference side


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def make_three_channel(model: nn.Module) -> nn.Module:
    """Give the first conv 3 input channels (gray kernels / 3), as an RGB notebook model has."""
    conv = first_conv(model)
    with torch.no_grad():
        conv.weight = nn.Parameter(conv.weight.repeat(1, 3, 1, 1) / 3)
    conv.in_channels = 3
    return model


def reference_transform(size: int):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((size, size)),
            T.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
            T.ColorJitter(brightness=0.15, contrast=0.15),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ReferenceTrainer:
    """The loop a student notebook writes: ImageFolder -> DataLoader -> fp32 model."""

    def __init__(self, cfg: TrainConfig, paths: list[str], workers: int) -> None:
        from torchvision.datasets import ImageFolder

        self.device = select_device(cfg.device)
        self.cfg, self.workers = cfg, workers
        self.folder = ImageFolder(str(DATA / "train"), transform=reference_transform(cfg.img_size))
        self.index = {
            str(Path(p).relative_to(DATA)): i for i, (p, _) in enumerate(self.folder.samples)
        }
        torch.manual_seed(cfg.seed)
        self.model = make_three_channel(create_network(cfg.arch, False, cfg.img_size).model)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        labels = torch.tensor(
            [self.folder.samples[self.index[p]][1] for p in paths], dtype=torch.float32
        )
        self.pos_weight = ((len(labels) - labels.sum()) / labels.sum()).to(self.device)

    def run(self, paths: list[str]) -> float:
        """Images per second over one pass of a DataLoader on ``paths`` (decoded now)."""
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(
            Subset(self.folder, [self.index[p] for p in paths]),
            batch_size=self.cfg.batch_size,
            shuffle=True,
            num_workers=self.workers,
            drop_last=True,
        )
        self.model.train()
        seen = 0
        sync()
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(self.device), y.float().to(self.device)
            loss = nn.functional.binary_cross_entropy_with_logits(
                self.model(x).squeeze(1), y, pos_weight=self.pos_weight
            )
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()
            seen += len(y)
        sync()
        return seen / (time.perf_counter() - start)


# --------------------------------------------------------------------------- ablations


class _Wrapped(nn.Module):
    """A model with something done to its input (and output) on the way through."""

    def __init__(self, model: nn.Module, before, autocast: bool | None = None) -> None:
        super().__init__()
        self.model, self.before, self.autocast = model, before, autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``autocast`` None leaves the engine's precision as it is."""
        x = self.before(x)
        if self.autocast is None:
            return self.model(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(x).float()


def without_channels_last(network):
    network.model.to(memory_format=torch.contiguous_format)
    return dataclasses.replace(network, model=_Wrapped(network.model, lambda x: x.contiguous()))


def with_three_channels(network):
    make_three_channel(network.model)
    model = _Wrapped(
        network.model,
        lambda x: x.repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last),
    )
    return dataclasses.replace(network, model=model.to(memory_format=torch.channels_last))


def compiled(network):
    """The model through ``torch.compile`` (inductor), compiled cold during the warm-up step
    (no on-disk cache from an earlier run shortens it)."""
    import torch._inductor.config

    torch._inductor.config.force_disable_caches = True
    return dataclasses.replace(network, model=torch.compile(network.model))


def with_bf16(enabled: bool):
    """Force CPU bf16 autocast on or off inside the engine's own autocast region."""

    def wrap(network):
        model = _Wrapped(network.model, lambda x: x, autocast=enabled)
        return dataclasses.replace(network, model=model)

    return wrap


class DecodeOnRead:
    """Stands in for the decoded cache: decodes the JPEGs of the rows asked for, every time."""

    def __init__(self, data: Data, size: int) -> None:
        self.paths, self.root, self.size = row_paths(data), data.root, size

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        images = [load_and_preprocess(self.root / self.paths[int(r)], self.size) for r in rows]
        return torch.from_numpy(np.stack(images))


class PerImageAugment:
    """Cached pixels, but augmented one image at a time with torchvision transforms."""

    def __init__(self, pixels: torch.Tensor, size: int) -> None:
        from torchvision.transforms import v2

        self.pixels = pixels
        self.transform = v2.Compose(
            [
                v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
                v2.RandomResizedCrop(size, scale=(0.72, 1.0), antialias=True),
                v2.ColorJitter(brightness=0.15, contrast=0.15),
            ]
        )

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(self.pixels[int(r)][None])[0] for r in rows])


# --------------------------------------------------------------------------- measurements


def batches(data: Data, batch_size: int, count: int, seed: int = 0) -> list[Data]:
    """``count`` one-batch views of ``data``: different images each, the same for every
    variant measured on that round."""
    sub = subset(data, batch_size * count, seed)
    return [
        dataclasses.replace(
            sub,
            rows={**sub.rows, "train": sub.rows["train"][i * batch_size : (i + 1) * batch_size]},
            labels={
                **sub.labels,
                "train": sub.labels["train"][i * batch_size : (i + 1) * batch_size],
            },
        )
        for i in range(count)
    ]


class StepWorker:
    """One trainer in a process of its own, stepped on demand from the measuring process.

    Each side keeps its own allocator, thread and compilation state, as it would in real
    use (the engine's training processes tune glibc's malloc, a notebook does not), while
    the measuring process still alternates single steps between them. A worker waiting
    for its turn is blocked on its pipe, so it never competes for the CPU.
    """

    def __init__(self, build, *args) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, build, args), daemon=True)
        self.process.start()
        self.setup_s = self._reply()

    def __call__(self, i: int) -> float:
        self.conn.send(i)
        return self._reply()

    def _reply(self) -> float:
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(60)


def _serve(conn, build, args) -> None:
    """Worker loop: build the stepper (its warm-up included), then answer step requests."""
    try:
        started = time.perf_counter()
        step = build(*args)
        conn.send(("ok", time.perf_counter() - started))
        while (i := conn.recv()) is not None:
            conn.send(("ok", step(i)))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def _steps_data(cfg: TrainConfig, rounds: int) -> tuple[Data, list[Data]]:
    """The data and the batches of every round (+1 for warm-up), from the shared cache."""
    data = load_data(cfg)
    return data, batches(data, cfg.batch_size, rounds + 1)


VARIANTS = (
    "engine",
    "no channels_last",
    "3-channel input",
    "no decode cache",
    "per-image augmentation",
    "unfused optimizer",
    "glibc malloc defaults",
    "other precision",
    "torch.compile",
)
"""The engine, then the engine with one optimisation taken away (or, for the precision
and torch.compile, with the choice the engine did not make)."""


def engine_stepper(cfg: TrainConfig, rounds: int, variant: str = "engine"):
    """In a worker: the engine as a training process runs it, less ``variant``'s change."""
    if variant != "glibc malloc defaults":
        keep_freed_memory()
    data, steps_data = _steps_data(cfg, rounds)
    pixels = None
    if variant == "per-image augmentation":
        pixels = PerImageAugment(data.pixels, cfg.img_size)
        cfg = dataclasses.replace(cfg, augment=Augmentation(enabled=False))
    elif variant == "no decode cache":
        pixels = DecodeOnRead(data, cfg.img_size)
    wrap = {
        "no channels_last": without_channels_last,
        "3-channel input": with_three_channels,
        "torch.compile": compiled,
    }.get(variant)
    if variant == "other precision":
        wrap = with_bf16(precision_label(cfg.device, cfg.arch) == "bf16 autocast")
    trainer = EngineTrainer(cfg, wrap)
    if variant == "unfused optimizer":
        trainer.optimizer = torch.optim.AdamW(
            [p for p in trainer.network.model.parameters() if p.requires_grad],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=False,
        )

    def step(i: int) -> float:
        batch = steps_data[i]
        return trainer.run(batch if pixels is None else dataclasses.replace(batch, pixels=pixels))

    step(rounds)  # warm-up: allocator, kernels (and compilation)
    return step


def precision_label(device: str, arch: str) -> str | None:
    """What "other precision" is for this model here: the precision the engine did not
    pick (on a CUDA GPU the engine always autocasts, so there is no other to ablate)."""
    engine_device = select_device(device)
    if engine_device.type != "cpu":
        return None
    network = create_network(arch, False, 64)
    bf16 = autocast(engine_device, network.model, training=True)._enabled
    return "fp32 (no bf16 autocast)" if bf16 else "bf16 autocast"


def reference_stepper(cfg: TrainConfig, rounds: int, workers: int):
    """In a worker: the notebook loop, on the same images as the engine's rounds."""
    data, steps_data = _steps_data(cfg, rounds)
    where = row_paths(data)
    paths = [[where[int(r)] for r in b.rows["train"]] for b in steps_data]
    reference = ReferenceTrainer(cfg, [p for batch in paths for p in batch], workers)

    def step(i: int) -> float:
        return reference.run(paths[i])

    step(rounds)  # warm-up
    return step


def _alternated(workers: dict[str, StepWorker], rounds: int) -> dict[str, list[float]]:
    try:
        return alternate(workers, rounds)
    finally:
        for worker in workers.values():
            worker.close()


def measure_pair(
    arch: str, size: int, batch_size: int, steps: int, reps: int, device: str, workers: int
) -> dict:
    """Engine vs reference images/s for one architecture and size, one step at a time."""
    cfg = engine_config(arch, size, batch_size, device)
    started = time.perf_counter()
    load_data(cfg)  # decode once into the cache the workers read
    load_s = time.perf_counter() - started
    rounds = steps * reps
    samples = _alternated(
        {
            "engine": StepWorker(engine_stepper, cfg, rounds),
            "reference": StepWorker(reference_stepper, cfg, rounds, workers),
        },
        rounds,
    )
    summary = summarise(samples, "reference", higher_is_better=True)
    return {
        "arch": arch,
        "img_size": size,
        "batch_size": batch_size,
        "rounds": rounds,
        "reference_workers": workers,
        "engine_images_per_s": summary["engine"]["median"],
        "reference_images_per_s": summary["reference"]["median"],
        "speedup": summary["engine"]["ratio_to_reference"],
        "samples": {k: v["samples"] for k, v in summary.items()},
        "data_load_s": round(load_s, 1),
    }


def measure_ablations(
    arch: str, size: int, batch_size: int, steps: int, reps: int, device: str
) -> dict:
    """Full engine vs the engine with one optimisation taken away, one step at a time."""
    cfg = engine_config(arch, size, batch_size, device)
    load_data(cfg)
    rounds = steps * reps
    names = {v: v for v in VARIANTS}
    precision = precision_label(device, arch)
    if precision is None:
        del names["other precision"]
    else:
        names["other precision"] = precision
    workers = {label: StepWorker(engine_stepper, cfg, rounds, v) for v, label in names.items()}
    compile_s = workers["torch.compile"].setup_s - workers["engine"].setup_s
    samples = _alternated(workers, rounds)
    summary = summarise(samples, "engine", higher_is_better=True)
    return {
        "arch": arch,
        "img_size": size,
        "batch_size": batch_size,
        "rounds": rounds,
        "images_per_s": {k: v["median"] for k, v in summary.items()},
        # How much faster the full engine is than the variant without the optimisation.
        "engine_speedup_over": {
            k: round(1 / v["ratio_to_engine"], 3) for k, v in summary.items() if k != "engine"
        },
        "torch_compile_s": round(compile_s, 1),
        "samples": {k: v["samples"] for k, v in summary.items()},
    }
