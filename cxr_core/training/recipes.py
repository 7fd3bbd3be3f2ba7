"""Training recipes that hold up better on other sites' films, as TrainConfig options.

- LP-FT (Kumar et al. 2022): the head is fitted on the frozen pretrained backbone first
  (``probe_epochs``), then every trainable layer is fine-tuned from there.
- SWA (Izmailov et al. 2018): the shipped weights are the average of the fine-tuning
  epochs' weights from its second half.
- WiSE-FT (Wortsman et al. 2022): the shipped weights are the average of the probed and
  the fine-tuned (best epoch's) weights.
- ``freeze_bn_stats``: the pretrained BatchNorm statistics are kept while fine-tuning.

What an interrupted run needs to go on (the probed weights, the running average and the
epochs it holds) is a file of the run folder, so a resumed run continues each recipe.
"""

from __future__ import annotations

import torch

from cxr_core.fileio import atomic_write_files
from cxr_core.models import weights_file
from cxr_core.models.batchnorm import keep_statistics, reestimate_statistics
from cxr_core.models.zoo import Network, set_trainable
from cxr_core.store import records
from cxr_core.store.runs import Run
from cxr_core.training.config import TrainConfig
from cxr_core.training.inputs import Data
from cxr_core.training.runtime import to_input

BN_FILMS = 2048
"""Training films the statistics of averaged weights are estimated on (a seeded sample)."""


def start_epoch(network: Network, cfg: TrainConfig, epoch: int) -> None:
    """Put ``network`` in training mode with this epoch's trainable layers: the head alone
    while probing, then the configured stages. Frozen stages keep their BatchNorm
    statistics, and every layer does when ``freeze_bn_stats`` asks."""
    if cfg.probe_epochs:
        set_trainable(network, 0 if epoch <= cfg.probe_epochs else cfg.unfreeze_last)
    network.model.train()
    keep_statistics(network.model, every=cfg.freeze_bn_stats)


def averaged_from(cfg: TrainConfig) -> int:
    """The first epoch SWA averages: the second half of the fine-tuning epochs."""
    tuned = cfg.epochs - cfg.probe_epochs
    return cfg.probe_epochs + tuned // 2 + 1


def end_epoch(run: Run, network: Network, cfg: TrainConfig, epoch: int) -> None:
    """Keep what the recipe needs from this epoch: the probed weights at the end of the
    probe, each averaged epoch's weights in the running average (once, also on resume)."""
    if cfg.probe_epochs and epoch == cfg.probe_epochs:
        weights_file.save_weights(run.path / records.PROBE_WEIGHTS, network.model, {"epoch": epoch})
    if cfg.weight_averaging == "swa" and epoch >= averaged_from(cfg):
        _add_to_average(run, network.model, epoch)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def _add_to_average(run: Run, model: torch.nn.Module, epoch: int) -> None:
    from safetensors.torch import save

    path = run.path / records.AVERAGE_WEIGHTS
    current = _state(model)
    epochs: list[int] = []
    if path.exists():
        average, header = weights_file.read_safetensors(path)
        epochs = [int(e) for e in header["epochs"].split(",")]
        if epoch in epochs:
            return  # a resumed run replays an epoch it had already averaged
        n = len(epochs)
        current = {k: average[k] + (v - average[k]) / (n + 1) for k, v in current.items()}
    epochs.append(epoch)
    blob = save(current, metadata={"epochs": ",".join(map(str, epochs))})
    atomic_write_files({path: blob})


def ship_average(
    run: Run, network: Network, cfg: TrainConfig, images: Data, precision: str = "fp32"
) -> str | None:
    """Replace the run's best weights by the recipe's average, with BatchNorm statistics
    estimated on training films (unless they are kept pretrained). Returns what was
    averaged, in words; None when the recipe averages nothing (or nothing to average yet:
    a run stopped early, before SWA's epochs)."""
    if cfg.weight_averaging == "none":
        return None
    state, meta = weights_file.load_weights(run.weights)
    if "averaged" in meta:  # a resumed run that had averaged already
        return meta["averaged"]
    if cfg.weight_averaging == "swa":
        path = run.path / records.AVERAGE_WEIGHTS
        if not path.exists():
            return None
        average, header = weights_file.read_safetensors(path)
        words = f"SWA: the average of epochs {header['epochs'].replace(',', ', ')}"
    else:
        probed, probe_meta = weights_file.load_weights(run.path / records.PROBE_WEIGHTS)
        average = {k: (v.float() + probed[k].float()) / 2 for k, v in state.items()}
        words = (
            f"WiSE-FT: the average of the probe (epoch {probe_meta['epoch']}) and the best "
            f"fine-tuned epoch ({meta.get('epoch')})"
        )
    model = network.model
    weights_file.load_state_into(
        model, {k: v.to(state[k].dtype) for k, v in average.items()}, cfg.arch, run.weights
    )
    if not cfg.freeze_bn_stats:
        reestimate_statistics(model, _training_batches(images, cfg, next(model.parameters())))
    model.eval()
    weights_file.save_weights(run.weights, model, {**meta, "averaged": words}, precision)
    return words


def _training_batches(images: Data, cfg: TrainConfig, like: torch.Tensor):
    rows = images.rows["train"]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
    chosen = rows[order[:BN_FILMS]]
    for start in range(0, len(chosen), cfg.batch_size):
        yield to_input(images.pixels[chosen[start : start + cfg.batch_size]], cfg, like.device)
