"""Training runs as real processes: kill -9 and resume ends bit-identical to an
uninterrupted run, and the cancel flag ends a run as "cancelled"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

from cxr_core import cli
from cxr_core.models.weights_file import read_safetensors
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig
from cxr_core.training.engine import fit

# 80 synthetic images -> about 56 in train -> 7 steps of 8 per epoch, each step logged, so
# there is time to see a step of epoch 2 and kill the process before epoch 2 ends.
TRAIN = [
    *("train", "--arch", "small_cnn", "--data", "synthetic:40", "--img-size", "64"),
    *("--batch-size", "8", "--log-every", "1", "--seed", "11"),
]
TIMING_KEYS = {"seconds", "images_per_s"}


def _start(runs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cxr_core", "--runs-dir", str(runs), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _history(run_dir: Path) -> list[dict]:
    file = run_dir / "history.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.endswith("}")]


def _checkpoint_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "last.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            err = proc.communicate()[1]
            pytest.fail(f"training ended (rc {proc.returncode}) before {what}:\n{err[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _evaluation_without_timings(run_dir: Path) -> dict:
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    for key in ("train_time_s", "latency_ms"):
        evaluation.pop(key)
    return evaluation


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    epochs = ["--epochs", "3"]
    reference = _start(runs, *TRAIN, *epochs, "--run-id", "straight")
    victim = _start(runs, *TRAIN, *epochs, "--run-id", "killed")
    run_dir = runs / "killed"

    # Kill -9 once a checkpoint exists and the next epoch has taken steps.
    def mid_epoch() -> bool:
        done = _checkpoint_epoch(run_dir)
        return done >= 1 and any(
            r["type"] == "step" and r["epoch"] == done + 1 for r in _history(run_dir)
        )

    _wait_for(mid_epoch, victim, "a step after the first checkpoint")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()  # reaped: no zombie left to look alive
    assert victim.returncode == -signal.SIGKILL

    # The checkpoint survived the kill whole, and the kill did land mid-epoch.
    done = _checkpoint_epoch(run_dir)
    assert 1 <= done < 3
    tensors, _ = read_safetensors(run_dir / "last.safetensors")
    assert any(k.startswith("model.") for k in tensors)
    assert any(k.startswith("optim.") for k in tensors)
    assert any(r["type"] == "step" and r["epoch"] == done + 1 for r in _history(run_dir))
    assert not any(r["type"] == "epoch" and r["epoch"] == done + 1 for r in _history(run_dir))

    # runs list sees a dead process, not a running run.
    rows = _runs_list(runs, capsys)
    assert rows["killed"]["status"] == "interrupted"

    resumed = run_cli("--runs-dir", str(runs), "resume", "killed", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=900) == 0, reference.stderr.read()
    rows = _runs_list(runs, capsys)
    assert rows["killed"]["status"] == rows["straight"]["status"] == "completed"

    # Bit-identical: best weights, resume state (optimizer moments included), history, metrics.
    straight = runs / "straight"
    for name in ("model.safetensors", "last.safetensors"):
        a, b = load_file(run_dir / name), load_file(straight / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"
    assert _untimed(_history(run_dir)) == _untimed(_history(straight))
    assert _evaluation_without_timings(run_dir) == _evaluation_without_timings(straight)


def _runs_list(runs: Path, capsys) -> dict[str, dict]:
    """``runs list --json``, keyed by run id."""
    capsys.readouterr()
    assert cli.main(["--runs-dir", str(runs), "runs", "list", "--json"]) == 0
    return {row["id"]: row for row in json.loads(capsys.readouterr().out)}


def test_cancel_flag_ends_a_training_process_as_cancelled(tmp_path):
    runs = tmp_path / "runs"
    proc = _start(runs, *TRAIN, "--epochs", "30", "--run-id", "stopme")
    run_dir = runs / "stopme"
    _wait_for(lambda: _checkpoint_epoch(run_dir) >= 1, proc, "the first checkpoint")
    assert cli.main(["--runs-dir", str(runs), "cancel", "stopme"]) == 0
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "cancelled"
    assert "best epoch so far" in status["message"]
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert 1 <= evaluation["epochs_run"] < 30
    assert "run stopme: cancelled" in out


def test_cancel_before_training_starts_is_cancelled_not_failed(monkeypatch):
    cfg = TrainConfig(arch="small_cnn", data="synthetic:40", img_size=64, epochs=2)
    run = RunStore().create(cfg.to_dict(), "early")
    run.request_cancel()
    assert fit(run, cfg) == {}
    status = run.status()
    assert status["status"] == "cancelled"
    assert not run.weights.exists()
