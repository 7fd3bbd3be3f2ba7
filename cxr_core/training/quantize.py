"""Storing a completed run's weights at a lower precision (fp16, int8) and scoring what is
stored, as the ``quantize`` verb does."""

from __future__ import annotations

from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.models import weights_file
from cxr_core.models.zoo import count_parameters
from cxr_core.store.runs import Run
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import final_evaluation
from cxr_core.training.inputs import load_data
from cxr_core.training.runtime import build_network, select_device


def store_weights_as(run: Run, precision: str) -> dict:
    """Store a completed run's best weights at ``precision`` and score what is stored:
    the threshold chosen again on val, every split reported again, records derived from the
    old weights removed. On any failure the run is left as it was."""
    evaluation = run.evaluation()
    if run.status().get("status") != "completed" or not evaluation:
        raise UserError(f"run {run.id} is not completed; quantize completed runs")
    cfg = TrainConfig.from_dict(run.config())
    device = select_device(cfg.device)
    before = run.weights.read_bytes(), run.evaluation_file.read_bytes()
    state_dict, meta = weights_file.load_weights(run.weights)
    network = build_network(cfg, device)
    weights_file.load_state_into(network.model, state_dict, cfg.arch, run.weights)
    manifest = run.manifest()
    if manifest is None:
        raise UserError(f"run {run.id} kept no split; it cannot be evaluated again")
    data = load_data(cfg, manifest)
    state = {"epoch": evaluation["epochs_run"], "train_time_s": evaluation["train_time_s"]}
    try:
        weights_file.save_weights(run.weights, network.model, meta, precision)
        evaluation = final_evaluation(
            run, data, device, cfg, state, count_parameters(network.model), precision
        )
    except BaseException:
        atomic_write_bytes(run.weights, before[0])
        atomic_write_bytes(run.evaluation_file, before[1])
        raise
    run.forget_derived()  # scores and CAM checks of the weights it had
    return evaluation
