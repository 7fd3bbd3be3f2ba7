"""Classroom presets that learn: the tiny demo must show a model learning, for every
architecture a class is likely to launch with it."""

from __future__ import annotations

import pytest

from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import fit
from cxr_core.training.presets import apply_preset


@pytest.mark.parametrize("arch", ["small_cnn", "mlp"])
def test_tiny_demo_learns_visibly(arch):
    cfg = TrainConfig.from_options(apply_preset("tiny demo (synthetic)", {"arch": arch}))
    run = RunStore().create(cfg.to_dict(), f"tiny-demo-{arch}")
    evaluation = fit(run, cfg)
    assert evaluation["splits"]["val"]["roc_auc"] >= 0.9
    epochs = [r for r in run.history() if r["type"] == "epoch"]
    assert len(epochs) == cfg.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # the curve falls
    assert max(r["val_roc_auc"] for r in epochs) >= 0.9
