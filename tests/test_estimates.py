"""The Train page's expected duration: measured on this machine, before the click."""

from __future__ import annotations

import json
import platform

import pytest

from cxr_core.store.runs import RunStore
from cxr_core.training import estimates
from cxr_core.training.config import TrainConfig


def _cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{"arch": "small_cnn", "data": "synthetic:4", "img_size": 64, **overrides})


def _finished(store: RunStore, run_id: str, cfg: TrainConfig, rates, where: str) -> None:
    run = store.create(cfg.to_dict(), run_id)
    (run.path / "env.json").write_text(json.dumps({"platform": where}))
    for epoch, rate in enumerate(rates, 1):
        run.append_history({"type": "epoch", "epoch": epoch, "images_per_s": rate})
    run.set_status("completed")


def test_rate_comes_from_earlier_runs_of_the_same_kind_on_this_host():
    store, cfg = RunStore(), _cfg()
    assert estimates.measured_rate(store, cfg) is None
    _finished(store, "here", cfg, [10.0, 12.0, 14.0], platform.platform())
    _finished(store, "elsewhere", cfg, [100.0], "another machine")
    _finished(store, "bigger", _cfg(img_size=128), [3.0], platform.platform())
    assert estimates.measured_rate(store, cfg) == 12.0


def test_probe_times_real_steps_and_the_estimate_scales_with_epochs():
    cfg = _cfg(batch_size=4)
    rate = estimates.probe_rate(TrainConfig.from_dict(estimates.probe_key(cfg)), steps=2)
    assert rate > 0
    ten = estimates.expected_seconds(_cfg(epochs=10), 1000, 1400, rate)
    twenty = estimates.expected_seconds(_cfg(epochs=20), 1000, 1400, rate)
    assert twenty == pytest.approx(2 * ten - 1400 / (3 * rate))
    frozen = _cfg(arch="efficientnet_lite0", unfreeze_last=0, augment={"enabled": False})
    assert estimates.expected_seconds(frozen, 1000, 1400, rate) == pytest.approx(1400 / rate)


@pytest.mark.parametrize("load, share", [(0.3, 1.0), (4.0, 0.5), (8.0, 0.25)])
def test_a_busy_cpu_lengthens_the_estimate(monkeypatch, load, share):
    """On 2 cores a load of 4 leaves a new run about half the CPU (the estimate that
    said 'at most 11 min' and took 18.7 beside other work)."""
    monkeypatch.setattr(estimates.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(estimates.os, "cpu_count", lambda: 2)
    assert estimates.cpu_share() == pytest.approx(share)
