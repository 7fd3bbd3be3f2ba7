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
)
"""Every deployment setting, read from the environment."""

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
