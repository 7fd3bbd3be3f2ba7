"""A run's weights exported as an ONNX graph, scored by ONNX Runtime on CPUs.

On 2 CPU cores ONNX Runtime ran the bundled EfficientNet-Lite0 about 4x faster than
PyTorch's eager forward (depthwise convolutions) and small_cnn about 2x, with the same
probabilities. The graph is the network alone, from its normalised input to its logit and
its head's input (the input guard's features): films are normalised and the sigmoid taken
in numpy, so scoring needs no torch once it exists, and Score-CAM's masked inputs (which
are no films) run on the same graph.

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

    from cxr_core.models.zoo import Network
    from cxr_core.training.config import TrainConfig

ENGINES = ("onnx", "torch")
FORMAT = 2
OUTPUTS = ("logit", "features")
"""The graph's interface, part of its file's name: 2, the normalised input ``[B, 1, H, W]``
to the logit ``[B]`` and the head's input ``[B, D]``; 1 (earlier graphs, never read again)
took uint8 films to probabilities."""
BATCH = 32
"""Films per ONNX Runtime call: on 2 cores 16-64 ran within 5% of each other (see
benchmarks/speed.py); 32 keeps a 224 px batch's activations small."""
ATOL = 1e-4
"""How far the graph's probabilities may be from PyTorch's when it is made."""

MAX_SESSIONS = 16
"""Open sessions kept (least recently used dropped): a Compare page of ten runs plus a few."""
_SESSIONS: OrderedDict[Path, onnxruntime.InferenceSession] = OrderedDict()
_REFUSED: set[Path] = set()
"""Graphs that could not be exported or disagreed with PyTorch, not tried again."""


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


def network_input(pixels: np.ndarray, config: TrainConfig) -> np.ndarray:
    """uint8 films ``[N, H, W]`` -> the network's float32 input ``[N, 1, H, W]``, normalised
    as :func:`cxr_core.training.runtime.to_input` does."""
    x = pixels[:, None].astype(np.float32) / 255
    return (x - np.float32(config.norm_mean)) / np.float32(config.norm_std)


def export(network: Network, config: TrainConfig, n: int = 2) -> bytes:
    """``network`` (in eval mode) as an ONNX graph from its normalised input
    ``[B, 1, H, W]`` to its logit ``[B]`` and its head's input ``[B, D]``, with a dynamic
    batch."""
    import torch

    class _Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = network.model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            seen: list[torch.Tensor] = []
            hook = network.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            try:
                logit = self.net(x).squeeze(1)
            finally:
                hook.remove()
            return logit, seen[0].flatten(1)

    size = config.img_size
    example = torch.zeros((n, 1, size, size))
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # ViT's fused attention kernel has no ONNX form; the plain path computes the same.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                _Outputs().eval(),
                (example,),
                buffer,
                input_names=["input"],
                output_names=list(OUTPUTS),
                dynamic_axes={
                    "input": {0: "batch"},
                    "logit": {0: "batch"},
                    "features": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


def _session(graph: bytes | str) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def outputs(session: onnxruntime.InferenceSession, inputs: np.ndarray, name: str) -> np.ndarray:
    """The graph's float32 output ``name`` (``logit`` or ``features``) for the network's
    inputs ``[N, 1, H, W]``, one call per :data:`BATCH`."""
    out = [
        session.run([name], {"input": np.ascontiguousarray(inputs[i : i + BATCH])})[0]
        for i in range(0, len(inputs), BATCH)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def run(
    session: onnxruntime.InferenceSession, pixels: np.ndarray, config: TrainConfig
) -> np.ndarray:
    """Probabilities for uint8 films ``[N, H, W]``, normalised a batch at a time."""
    z = [
        outputs(session, network_input(pixels[i : i + BATCH], config), "logit")
        for i in range(0, len(pixels), BATCH)
    ]
    z64 = np.concatenate(z).astype(np.float64) if z else np.zeros(0)
    return 1 / (1 + np.exp(-z64))


def _agrees(graph: onnxruntime.InferenceSession, torch_probs, config: TrainConfig) -> bool:
    """Whether ``graph`` gives PyTorch's probabilities on a few films (random, flat,
    bright), within :data:`ATOL`."""
    rng = np.random.default_rng(0)
    size = config.img_size
    films = np.concatenate(
        [
            rng.integers(0, 256, (2, size, size), dtype=np.uint8),
            np.full((1, size, size), 128, np.uint8),
            np.full((1, size, size), 250, np.uint8),
        ]
    )
    return bool(np.allclose(run(graph, films, config), torch_probs(films), atol=ATOL, rtol=0))


def graph_file(weights: Path, config: TrainConfig) -> Path:
    """Where the graph of ``weights`` is kept: named by the tensors' digest and the config it
    was built from (the architecture, size and normalisation), so either changed is a new
    graph."""
    built_from = json.dumps(config.to_dict(), sort_keys=True)
    named = f"{FORMAT}\n{weights_digest(weights)}\n{built_from}"
    key = hashlib.sha256(named.encode()).hexdigest()
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
        session = _session(str(file))
    except Exception:  # a damaged graph: made() makes it again
        return None
    if [o.name for o in session.get_outputs()] != list(OUTPUTS):  # not this format's
        return None
    return _kept(file, session)


def _kept(file: Path, session: onnxruntime.InferenceSession) -> onnxruntime.InferenceSession:
    """``session`` kept as the most recently used, dropping the least recent beyond
    :data:`MAX_SESSIONS`."""
    _SESSIONS[file] = session
    _SESSIONS.move_to_end(file)
    while len(_SESSIONS) > MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return session


def made(
    weights: Path, network: Network, config: TrainConfig, torch_probs
) -> onnxruntime.InferenceSession | None:
    """``network`` exported, checked against ``torch_probs`` (uint8 films -> probabilities) and
    kept as ``weights``' graph; None where ONNX Runtime is not used or the graph disagrees."""
    if not available():
        return None
    file = graph_file(weights, config)
    if file in _REFUSED:
        return None
    try:
        graph = export(network, config)
    except Exception as exc:  # an operator the exporter cannot write (VGG's pool under 224 px)
        _REFUSED.add(file)
        warnings.warn(f"{weights}: no ONNX graph ({exc}); scored by PyTorch", stacklevel=2)
        return None
    session = _session(graph)
    if not _agrees(session, torch_probs, config):
        _REFUSED.add(file)
        warnings.warn(f"{weights}: the ONNX graph disagrees with PyTorch", stacklevel=2)
        return None
    for stale in file.parent.glob("*.onnx"):
        stale.unlink(missing_ok=True)
    with contextlib.suppress(UserError, OSError):  # a read-only folder: kept in memory
        atomic_write_bytes(file, graph)
    return _kept(file, session)
