"""Adapting a run to another site's films without their labels, recorded as a new run.

Two levers, either or both (``--method bn|prior|both``):

- **bn**: AdaBN (Li et al. 2016). The running statistics of the BatchNorm layers whose
  statistics were learned on the training films are re-estimated on the site's films, so
  each layer normalises the site's inputs as it normalised the training ones. Refused for
  a frozen ImageNet backbone (its BatchNorm layers hold ImageNet's statistics, and its head
  was trained on the features those make: re-estimating them moves the features under the
  head) and for networks without BatchNorm.
- **prior**: the site's prevalence estimated by EM (Saerens et al. 2002) from the run's
  probabilities, and the threshold moved by the ratio of the priors in log-odds
  (:mod:`cxr_core.scoring.prior_shift`).

The adapted model is a new run (``adaptation.json`` says what, on which films by
fingerprint, from which run); the source run is never written to. Its weights file holds
its threshold and config as any run's does, so it loads, predicts and is scored like one.
Its figures on the films it was adapted on are transductive: they are labelled
:data:`~cxr_core.predict.adaptation_catalogue.ON_THESE_FILMS` wherever they are shown,
never mixed with inductive ones.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from cxr_core.data.synthetic import is_synthetic
from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.models.batchnorm import batchnorm_layers, reestimate_statistics
from cxr_core.models.zoo import set_trainable
from cxr_core.predict.adaptation_catalogue import METHODS
from cxr_core.predict.ensembles import load_chosen
from cxr_core.predict.inference import LoadedModel, torch_probabilities
from cxr_core.predict.site_shift import (
    SiteFilms,
    learned_prior,
    site_films,
    trained_config,
    training_prevalence,
)
from cxr_core.scoring.prior_shift import EDGE, em_prevalence, shifted_threshold
from cxr_core.store import records
from cxr_core.store.records import Adaptation
from cxr_core.store.runs import Run, RunStore, run_of_weights
from cxr_core.training.config import TrainConfig
from cxr_core.training.runtime import to_input

MIN_FILMS_BN = 16
"""Fewer films estimate a layer's statistics too noisily to replace the learned ones."""
TAG = "adapted"

_CARRIED = ("best_epoch", "epochs_run", "train_time_s", "latency_ms", "params")
_CARRIED += ("trainable_params", "size_mb", "weights_precision", "threshold_method")


def load_single(
    runs_dir: str | Path | None, run_id: str | None, checkpoint: str | None, device: str
) -> tuple[Run | None, LoadedModel]:
    """``--run ID | --checkpoint PATH`` as a single network (an ensemble is refused)."""
    run, model = load_chosen(runs_dir, run_id, checkpoint, device)
    if not isinstance(model, LoadedModel):
        raise UserError(
            "an ensemble has no network of its own: adapt each member, then make an "
            "ensemble of the adapted runs' members"
        )
    return run, model


def learned_batchnorm(model: LoadedModel) -> list[str]:
    """The BatchNorm layers whose statistics were learned on the training films; a
    UserError says why AdaBN does not apply when there are none."""
    config = trained_config(model)
    arch = config.get("arch", "this network")
    layers = batchnorm_layers(model.network.model)
    if not layers:
        raise UserError(
            f"{arch} has no BatchNorm layer (an MLP keeps no input statistics; a ViT's "
            "LayerNorm normalises each image by its own): AdaBN has nothing to re-estimate; "
            "use --method prior"
        )
    unfreeze = int(config.get("unfreeze_last", -1))
    if not config.get("pretrained") or unfreeze < 0:
        return list(layers)
    set_trainable(model.network, unfreeze)
    try:
        learned = [n for n, m in layers.items() if any(p.requires_grad for p in m.parameters())]
    finally:
        model.network.model.requires_grad_(False)
    if not learned:
        raise UserError(
            f"{arch} has a frozen ImageNet backbone: its BatchNorm layers keep ImageNet's "
            "statistics, which its head was trained on, so re-estimating them on these films "
            "would change the features under the head; use --method prior"
        )
    return learned


def adapt_batchnorm(model: LoadedModel, pixels: torch.Tensor, layers: list[str]) -> None:
    """AdaBN: the running statistics of ``layers`` replaced by their cumulative average over
    ``pixels`` (shuffled batches of about 64, none of a single film); every other layer as
    it was."""
    # Shuffled (seeded): a batch of one class would normalise its class away for the
    # layers after it, and give each layer a variance without the other's.
    order = np.random.default_rng(0).permutation(len(pixels))
    batches = (
        to_input(pixels[rows], model.config, model.device)
        for rows in np.array_split(order, -(-len(pixels) // 64))
    )
    with model.lock:
        reestimate_statistics(model.network.model, batches, layers)
    model.network.model.eval()


def _prior(model: LoadedModel, source: Run, films: SiteFilms) -> dict:
    """The site's prevalence by EM and the threshold it moves to."""
    prior = learned_prior(source.path, model.config.imbalance)
    site = em_prevalence(torch_probabilities(model, films.pixels), prior)
    if not EDGE < site < 1 - EDGE:
        raise UserError(
            f"EM put the share of pneumonia in these films at {site:.1%}: the run's "
            "probabilities are not calibrated enough on them to move the threshold by it "
            "(try --method bn alone, and check it on labelled films of the site)"
        )
    return {
        "training_prevalence": training_prevalence(source.path),
        "learned_prior": prior,
        "site_prevalence": site,
        "threshold_after": shifted_threshold(model.threshold, prior, site),
    }


def _evaluation(source: Run, run: Run, threshold: float, synthetic: bool) -> dict:
    """The adapted run's evaluation.json: its threshold and the source's costs; no split
    is reported (its figures are computed when it is scored on a labelled set)."""
    before = source.evaluation() or {}
    return {
        **{k: before[k] for k in _CARRIED if k in before},
        "threshold": threshold,
        "file_mb": round(run.weights.stat().st_size / 2**20, 2),
        "synthetic": synthetic,
        "test_split": None,
        "splits": {},
    }


def adapt(
    model: LoadedModel,
    data: str,
    method: str = "both",
    split: str = "test",
    store: RunStore | None = None,
    run_id: str | None = None,
    command: str | None = None,
    owner: str | None = None,
) -> Run:
    """A new completed run: ``model`` adapted by ``method`` to the films of ``data`` (a
    folder of images, or a labelled one whose labels are not used). ``model`` is changed
    in place (load a copy of its own); its run is never written to. Everything is checked
    and computed before the folder is made; a failure while writing removes it."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    source = run_of_weights(model.source)
    if not records.is_run(source.path):
        raise UserError(f"{model.source}: not in a run folder; adapt a run's weights")
    layers = learned_batchnorm(model) if method in ("bn", "both") else []
    films = site_films(model, data, split)
    if layers and films.n < MIN_FILMS_BN:
        raise UserError(
            f"{films.name}: AdaBN needs at least {MIN_FILMS_BN} films to re-estimate "
            "BatchNorm statistics"
        )
    adaptation: Adaptation = {
        "method": method,
        "source_run": source.id,
        "site": {"fingerprint": films.key, "name": films.name, "root": str(films.root)},
        "bn_layers": len(layers),
        "threshold_before": model.threshold,
        "threshold_after": model.threshold,
    }
    adaptation["site"]["n"] = films.n
    if layers:
        adapt_batchnorm(model, films.pixels, layers)
    if method in ("prior", "both"):
        adaptation |= _prior(model, source, films)
    return _record(source, model, films, adaptation, store, run_id, command, owner)


def _record(
    source: Run,
    model: LoadedModel,
    films: SiteFilms,
    adaptation: Adaptation,
    store: RunStore | None,
    run_id: str | None,
    command: str | None,
    owner: str | None,
) -> Run:
    store = store or RunStore()
    config = TrainConfig.from_dict(source.config()).to_dict()
    name = f"{source.label}, adapted ({adaptation['method']}) on {films.name}"
    meta = {"name": name[:80], "tags": [TAG], "owner": owner}
    run_id = run_id or f"{source.id}-adapted-{adaptation['method']}-{films.key[:6]}"
    run = store.create(
        {**config, "command": command, "meta": {k: v for k, v in meta.items() if v}}, run_id
    )
    try:
        split = source.split()
        if split is not None:
            run.save_split(split)
        _, header = weights_file.load_weights(model.source)
        header |= {"threshold": adaptation["threshold_after"], "run_id": run.id}
        header["adapted_from"] = source.id
        precision = header.pop("precision", "fp32")
        weights_file.save_weights(run.weights, model.network.model, header, precision)
        run.save_adaptation({**adaptation, "created": time.time()})
        synthetic = bool((source.evaluation() or {}).get("synthetic")) or is_synthetic(films.root)
        run.save_evaluation(_evaluation(source, run, adaptation["threshold_after"], synthetic))
        run.set_status("completed", phase="done", started=time.time(), message=None)
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    return run
