"""The resume checkpoint of a run (``last.safetensors`` + ``last.json``): model and optimizer
tensors in safetensors, everything else as JSON, written together or not at all, so a run
resumed after a kill replays its interrupted epoch from exactly where it was."""

from __future__ import annotations

import json

import torch

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_files, read_json
from cxr_core.models import weights_file
from cxr_core.store.runs import Run


def save_resume_state(run: Run, network, optimizer, scheduler, scaler, state: dict) -> None:
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
    weights_path, state_path = run.checkpoint
    atomic_write_files(
        {
            weights_path: blob,
            state_path: json.dumps(resume, indent=1, allow_nan=True).encode(),
        }
    )


def load_resume_state(run: Run, network, optimizer, scheduler, scaler) -> dict:
    path, state_path = run.checkpoint
    if not run.has_checkpoint():
        raise UserError(f"run {run.id} has no checkpoint to resume from (no epoch finished)")
    tensors, _ = weights_file.read_safetensors(path)
    state = read_json(state_path)
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    weights_file.load_state_into(network.model, model_state, run.config().get("arch", "?"), path)
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
