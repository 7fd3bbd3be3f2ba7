"""Weights as safetensors with the run's config in the header; never a pickle.

A ``model.safetensors`` file is self-contained: its metadata holds the training
config and the decision threshold, so ``predict --checkpoint FILE`` needs nothing else.
Loading parses tensors and JSON only, so a tampered file cannot run code; a SHA-256 of
the tensors in the header catches a file damaged on disk or in transfer.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes

if TYPE_CHECKING:  # torch is imported where tensors are made or read, not for the header
    import torch
    from torch import nn

FORMAT = "cxr-lab/1"
PRECISIONS = ("fp32", "fp16", "int8")
"""How weights are stored. int8 keeps a ResNet-18 (11.2M parameters, 22 MB in fp16)
under the bundle's 20 MB per file; the engine re-scores what is stored, so a run's figures
are those of its stored weights."""
SCALE = ".int8_scale"
"""Suffix of the per-channel scale stored beside an int8 tensor."""
_TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
"""safetensors' dtype names -> torch's, as :func:`tensor_digest` writes them."""


def _int8(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (as PyTorch's per-channel weight observers)."""
    import torch

    flat = tensor.float().reshape(tensor.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(tensor.shape), scale


def stored_tensors(model: nn.Module, precision: str = "fp32") -> dict[str, torch.Tensor]:
    """The state dict as stored at ``precision``: int8 for conv and linear weights (with
    their fp32 per-channel scales) and fp16 for the rest, or every float as fp16/fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"weights precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if precision == "int8" and tensor.is_floating_point() and tensor.dim() >= 2:
            tensors[name], tensors[name + SCALE] = _int8(tensor)
            continue
        if precision != "fp32" and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.clone()
    return tensors


def save_weights(
    path: Path, model: nn.Module, metadata: dict[str, Any], precision: str = "fp32"
) -> None:
    """Atomically write the model's state dict at ``precision`` (see :data:`PRECISIONS`)."""
    from safetensors.torch import save as save_bytes

    tensors = stored_tensors(model, precision)
    header = {
        "format": FORMAT,
        "sha256": tensor_digest(tensors),
        **{k: json.dumps(v) for k, v in {**metadata, "precision": precision}.items()},
    }
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def with_metadata(path: Path, changes: dict[str, Any]) -> bytes:
    """The checkpoint's bytes with its metadata changed (a new threshold) and its tensors
    as they are: the weights, their digest and what is keyed by it stay valid."""
    from safetensors.torch import save as save_bytes

    tensors, header = read_safetensors(path)
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: not a CXR Lab checkpoint (no {FORMAT} header)")
    changed = {k: json.dumps(v) for k, v in changes.items()}
    # A file written before checksums were kept gains one: its digest (what graphs and the
    # input guard's reference are keyed by) stays its tensors' from now on.
    return save_bytes(tensors, metadata={"sha256": tensor_digest(tensors), **header, **changed})


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _stored_digest(data: bytes, entries: dict[str, dict], offset: int) -> str:
    """:func:`tensor_digest` of the tensors as stored, from the file's bytes: no torch."""
    digest = hashlib.sha256()
    view = memoryview(data)
    for name in sorted(entries):
        entry = entries[name]
        dtype = _TORCH_DTYPES.get(entry["dtype"], entry["dtype"])
        digest.update(f"{name}|torch.{dtype}|{tuple(entry['shape'])}\n".encode())
        start, stop = entry["data_offsets"]
        digest.update(view[offset + start : offset + stop])
    return digest.hexdigest()


def _read(path: Path) -> bytes:
    """The file's bytes, or a :class:`UserError` (missing, a folder, a pickle)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise UserError(
            f"{path}: is a folder; pass a run folder with --run or its model.safetensors"
        ) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    # A safetensors file has its JSON header at byte 8; the first 8 bytes (the header
    # length) may happen to start like a pickle, so they are only judged without one.
    looks_pickled = data[:1] == b"\x80" or data[:2] == b"PK"  # pickle 2+, torch.save zip
    if looks_pickled and data[8:9] != b"{":
        raise UserError(
            f"{path}: is a pickle (torch.save) file; only safetensors are loaded, "
            "since unpickling can run code"
        )
    return data


def _layout(path: Path, data: bytes) -> tuple[dict[str, dict], dict[str, str], int]:
    """The tensors' entries (dtype, shape, byte range), the raw metadata and where the
    tensor bytes start, each range checked to lie inside the file."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        offset = 8 + header_len
        if len(data) < 8 or offset > len(data):
            raise ValueError("the header runs past the end of the file")
        entries = json.loads(data[8:offset])
        metadata = entries.pop("__metadata__", None) or {}
        for name, entry in entries.items():
            start, stop = entry["data_offsets"]
            if not 0 <= start <= stop <= len(data) - offset:
                raise ValueError(f"tensor {name} runs past the end of the file")
    except (
        ValueError,
        json.JSONDecodeError,
        OverflowError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:
        raise UserError(
            f"{path}: not a valid safetensors checkpoint (corrupt or truncated: {exc})"
        ) from None
    return entries, metadata, offset


def _tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file's bytes, or a :class:`UserError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        return load_bytes(data)
    except SafetensorError as exc:
        raise UserError(
            f"{path}: not a valid safetensors checkpoint (corrupt or truncated: {exc})"
        ) from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw header of a safetensors file, or a :class:`UserError`."""
    data = _read(path)
    _, header, _ = _layout(path, data)
    return _tensors(path, data), header


def _checked_metadata(path: Path, header: dict[str, str], digest: str) -> dict[str, Any]:
    """The decoded metadata of a CXR Lab checkpoint whose tensors have ``digest``."""
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: not a CXR Lab checkpoint (no {FORMAT} header)")
    if "sha256" in header and header["sha256"] != digest:
        raise UserError(f"{path}: weights do not match their checksum (the file is damaged)")
    try:
        metadata = {k: json.loads(v) for k, v in header.items() if k not in ("format", "sha256")}
    except json.JSONDecodeError:
        raise UserError(f"{path}: checkpoint metadata is corrupt") from None
    threshold = metadata.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise UserError(f"{path}: checkpoint threshold {threshold!r} is not a number")
    if not 0 <= threshold <= 1:  # also false for NaN
        raise UserError(f"{path}: checkpoint threshold {threshold!r} is not a probability")
    if not isinstance(metadata.get("config", {}), dict):
        raise UserError(f"{path}: checkpoint config is not a JSON object")
    return metadata


def _checked(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and decoded metadata, its tensors' bytes checked against the
    header's checksum (one check, whether the tensors are loaded or not)."""
    data = _read(path)
    entries, header, offset = _layout(path, data)
    return data, _checked_metadata(path, header, _stored_digest(data, entries, offset))


def read_metadata(path: Path) -> dict[str, Any]:
    """The decoded metadata of a CXR Lab checkpoint, its tensors checked against the
    header's checksum without loading them: all that scoring from the weights' exported
    graph needs, with no torch imported."""
    return _checked(path)[1]


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict (as fp32) and decoded metadata of a CXR Lab checkpoint."""
    data, metadata = _checked(path)
    tensors = _tensors(path, data)
    scales = {k[: -len(SCALE)]: v for k, v in tensors.items() if k.endswith(SCALE)}
    state = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE):
            continue
        if name in scales:
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            state[name] = tensor.float() * scales[name].float().reshape(shape)
        else:
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    return state, metadata


def load_state_into(
    model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path
) -> None:
    """``load_state_dict`` that reports a mismatch as the user's problem, in one line."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise UserError(f"{path}: weights do not fit architecture {arch} ({first[:160]})") from None


def weights_digest(weights: Path) -> str:
    """The SHA-256 of the tensors, from the checkpoint's header (of the file without one)."""
    stat = weights.stat()
    return _digest(weights, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _digest(weights: Path, mtime_ns: int, size: int) -> str:
    """Read once per version of the file: every prediction asks."""
    data = _read(weights)
    return _layout(weights, data)[1].get("sha256") or hashlib.sha256(data).hexdigest()
