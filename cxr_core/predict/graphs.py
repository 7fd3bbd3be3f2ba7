"""A run's weights exported as an ONNX graph, scored by ONNX Runtime on CPUs.

On 2 CPU cores ONNX Runtime ran the bundled EfficientNet-Lite0 about 4x faster than
PyTorch's eager forward (depthwise convolutions) and small_cnn about 2x, with the same
probabilities. The graph takes the preprocessed uint8 films and returns probabilities
(normalisation and sigmoid inside), so scoring needs no torch once it exists.

The graph is a derived record (:data:`cxr_core.store.records.GRAPHS`) named by the digest of
the weights it was exported from: weights that change make a new name, and the old graph
is removed. It is checked against PyTorch when made and used only if it agrees; without
onnxruntime, with ``CXR_ENGINE=torch`` or on a GPU, scoring stays in PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.models.weights_file import weights_digest
from cxr_core.settings import engine_setting
from cxr_core.store import records
from cxr_core.store.runs import run_of_weights

if TYPE_CHECKING:
    import onnxruntime
    import torch

    from cxr_core.training.config import TrainConfig

ENGINES = ("onnx", "torch")
BATCH = 32
"""Films per ONNX Runtime call: on 2 cores 16-64 ran within 5% of each other (see
benchmarks/speed.py); 32 keeps a 224 px batch's activations small."""
ATOL = 1e-4
"""How far the graph's probabilities may be from PyTorch's when it is made."""

MAX_SESSIONS = 16
"""Open sessions kept (least recently used dropped): a Compare page of ten runs plus a few."""
_SESSIONS: OrderedDict[Path, onnxruntime.InferenceSession] = OrderedDict()


def available() -> bool:
    """Whether scoring goes through ONNX Runtime: asked for (``CXR_ENGINE``) and installed."""
    engine = engine_setting()
    if engine not in ENGINES:
        raise UserError(f"CXR_ENGINE must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "torch":
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export(net: torch.nn.Module, config: TrainConfig, n: int = 2) -> bytes:
    """``net`` (in eval mode) as an ONNX graph from uint8 films ``[B, H, W]`` to
    probabilities ``[B]``, with the run's normalisation and a dynamic batch."""
    import torch

    class _Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.unsqueeze(1).float() / 255 - config.norm_mean) / config.norm_std
            return torch.sigmoid(self.net(x)).squeeze(1)

    size = config.img_size
    example = torch.zeros((n, size, size), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            _Scorer().eval(),
            (example,),
            buffer,
            input_names=["pixels"],
            output_names=["probability"],
            dynamic_axes={"pixels": {0: "batch"}, "probability": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def _session(graph: bytes | str) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def run(session: onnxruntime.InferenceSession, pixels: np.ndarray) -> np.ndarray:
    """Probabilities for uint8 films ``[N, H, W]``, :data:`BATCH` at a time."""
    out = [
        session.run(None, {"pixels": np.ascontiguousarray(pixels[i : i + BATCH])})[0]
        for i in range(0, len(pixels), BATCH)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _agrees(graph: onnxruntime.InferenceSession, torch_probs, size: int) -> bool:
    """Whether ``graph`` gives PyTorch's probabilities on a few films (random, flat,
    bright), within :data:`ATOL`."""
    rng = np.random.default_rng(0)
    films = np.concatenate(
        [
            rng.integers(0, 256, (2, size, size), dtype=np.uint8),
            np.full((1, size, size), 128, np.uint8),
            np.full((1, size, size), 250, np.uint8),
        ]
    )
    return bool(np.allclose(run(graph, films), torch_probs(films), atol=ATOL, rtol=0))


def graph_file(weights: Path, config: TrainConfig) -> Path:
    """Where the graph of ``weights`` is kept: named by the tensors' digest and the config it
    was built from (the architecture, size and normalisation), so either changed is a new
    graph."""
    built_from = json.dumps(config.to_dict(), sort_keys=True)
    key = hashlib.sha256(f"{weights_digest(weights)}\n{built_from}".encode()).hexdigest()
    return records.graph_file(run_of_weights(weights).added, key)


def stored(weights: Path, config: TrainConfig) -> onnxruntime.InferenceSession | None:
    """The session of the graph kept for ``weights`` and ``config``; None where there is
    none (or a damaged one), or ONNX Runtime is not used. Needs no torch."""
    if not available():
        return None
    file = graph_file(weights, config)
    if file in _SESSIONS:
        return _kept(file, _SESSIONS[file])
    if not file.is_file():
        return None
    try:
        return _kept(file, _session(str(file)))
    except Exception:  # a damaged graph: made() makes it again
        return None


def _kept(file: Path, session: onnxruntime.InferenceSession) -> onnxruntime.InferenceSession:
    """``session`` kept as the most recently used, dropping the least recent beyond
    :data:`MAX_SESSIONS`."""
    _SESSIONS[file] = session
    _SESSIONS.move_to_end(file)
    while len(_SESSIONS) > MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session


def made(
    weights: Path, net: torch.nn.Module, config: TrainConfig, torch_probs
) -> onnxruntime.InferenceSession | None:
    """``net`` exported, checked against ``torch_probs`` (uint8 films -> probabilities) and
    kept as ``weights``' graph; None where ONNX Runtime is not used or the graph disagrees."""
    if not available():
        return None
    file = graph_file(weights, config)
    graph = export(net, config)
    session = _session(graph)
    if not _agrees(session, torch_probs, config.img_size):
        warnings.warn(f"{weights}: the ONNX graph disagrees with PyTorch", stacklevel=2)
        return None
    for stale in file.parent.glob("*.onnx"):
        stale.unlink(missing_ok=True)
    with contextlib.suppress(UserError, OSError):  # a read-only folder: kept in memory
        atomic_write_bytes(file, graph)
    return _kept(file, session)
