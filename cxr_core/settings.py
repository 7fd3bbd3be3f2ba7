"""The deployment settings (``CXR_*`` environment variables) and the facts every layer
shares: where runs, bundled runs and the decode cache live, and the two class labels.

A leaf module: it imports nothing from cxr_core but errors, so any module may read a
setting without pulling in the layers above it. The app copies ``st.secrets`` into the
environment, so a deployment can set these either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxr_core.errors import UserError

CLASSES = ("NORMAL", "PNEUMONIA")
"""Label 0 and label 1."""

SETTINGS = (
    "CXR_RUNS_DIR",
    "CXR_BUNDLED_DIR",
    "CXR_CACHE_DIR",
    "CXR_DATA_DIR",
    "CXR_QUEUE",
    "CXR_ALLOWED_DATA_ROOTS",
    "CXR_EXECUTOR",
    "CXR_SHARED",
    "CXR_OPERATORS",
    "RAY_ADDRESS",
    "CXR_RAY_NUM_CPUS",
    "CXR_RAY_NUM_GPUS",
    "CXR_KEEP_FREED_MEMORY",
    "CXR_CPU_BF16",
    "CXR_ENGINE",
)
"""Every deployment setting, read from the environment: declared here once, so the app
copies each from ``st.secrets`` and a test finds any other name used."""

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "synthetic:60"


def default_runs_dir() -> Path:
    """``$CXR_RUNS_DIR``, else ``runs/`` in the current folder."""
    return Path(os.environ.get("CXR_RUNS_DIR", "runs"))


def bundled_runs_dir() -> Path:
    """The read-only runs shipped in ``checkpoints/``."""
    return Path(os.environ.get("CXR_BUNDLED_DIR", PROJECT_ROOT / "checkpoints"))


def cache_dir() -> Path:
    """``$CXR_CACHE_DIR``, else ``~/.cache/cxr-lab``."""
    return Path(os.environ.get("CXR_CACHE_DIR", Path.home() / ".cache" / "cxr-lab"))


def default_data() -> str:
    """The data a new app session starts with: ``$CXR_DATA_DIR``, else the synthetic demo."""
    return os.environ.get("CXR_DATA_DIR") or DEFAULT_DATA


def queue_limit() -> int:
    """How many runs may train at once: ``$CXR_QUEUE``, else 1 (on a CPU two would only
    share the cores)."""
    value = os.environ.get("CXR_QUEUE", "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"CXR_QUEUE must be a whole number >= 1, not {value!r}")
    return int(value)


def _switch(name: str) -> bool | None:
    """A 0/1 setting: False for ``0``, True for ``1``, None (the machine decides) else."""
    return {"0": False, "1": True}.get(os.environ.get(name, ""))


def keep_freed_memory_setting() -> bool | None:
    """``$CXR_KEEP_FREED_MEMORY``: 0 never keeps freed memory for reuse, 1 always does;
    unset, it is kept with 8 GiB of memory or more (``execution.allocator``)."""
    return _switch("CXR_KEEP_FREED_MEMORY")


def cpu_bf16_setting() -> bool | None:
    """``$CXR_CPU_BF16``: 0 keeps CPUs in fp32; else bf16 where the CPU has native units
    (``training.runtime``)."""
    return _switch("CXR_CPU_BF16")


def engine_setting() -> str:
    """``$CXR_ENGINE``: ``onnx`` scores with ONNX Runtime on a run's exported graph (2-4x
    PyTorch's speed on a CPU), ``torch`` with PyTorch; unset, onnx where onnxruntime is
    installed (``predict.graphs``)."""
    return (os.environ.get("CXR_ENGINE") or "onnx").strip().lower()


def shared_setting() -> bool | None:
    """``$CXR_SHARED``: 1 says the app is served to others, 0 that it runs for its one
    user; unset, the app tells by where the browser connects from."""
    return _switch("CXR_SHARED")


def operators() -> list[str]:
    """``$CXR_OPERATORS``: the signed-in e-mails that may change any run (comma-separated;
    empty: any signed-in user)."""
    return [e.strip() for e in os.environ.get("CXR_OPERATORS", "").split(",") if e.strip()]


def allowed_data_roots_setting() -> list[str] | None:
    """``$CXR_ALLOWED_DATA_ROOTS``: the folders a deployed app may read data from
    (separated by ``os.pathsep``); None when unset (local use: any folder)."""
    raw = os.environ.get("CXR_ALLOWED_DATA_ROOTS")
    return None if raw is None else [p.strip() for p in raw.split(os.pathsep) if p.strip()]


def executor_setting() -> str:
    """``$CXR_EXECUTOR``: where runs train by default (``local`` when unset)."""
    return (os.environ.get("CXR_EXECUTOR") or "local").strip().lower()


def ray_address() -> str:
    """``$RAY_ADDRESS``: the Ray cluster's ``HOST:PORT`` ("" when unset)."""
    return os.environ.get("RAY_ADDRESS", "")


def ray_resources() -> tuple[float, float]:
    """``$CXR_RAY_NUM_CPUS`` and ``$CXR_RAY_NUM_GPUS``: what each Ray task asks for
    (default 1 CPU, no GPU)."""
    try:
        return (
            float(os.environ.get("CXR_RAY_NUM_CPUS") or 1),
            float(os.environ.get("CXR_RAY_NUM_GPUS") or 0),
        )
    except ValueError:
        raise UserError("CXR_RAY_NUM_CPUS and CXR_RAY_NUM_GPUS must be numbers") from None
