"""The Ray executor on a real two-node Ray cluster on 127.0.0.1, started and stopped here.

The head and a second node each offer one CPU and a custom resource, so a run can be
pinned to either node: the runs prove tasks land on both. Nothing is shared between the
"app" (this test's run store) and the workers except through Ray: each run trains in a
temporary folder on its worker and streams back. Skipped when Ray is not installed,
unless CXR_REQUIRE_RAY=1 (CI installs it), then it fails.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import run_cli, wait_until
from raycluster import ray_cluster

from cxr_core.execution.executors import RayExecutor
from cxr_core.execution.jobs import Job
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig

if os.environ.get("CXR_REQUIRE_RAY") != "1":
    pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-ray.txt)")

HEAD, SECOND = {"head_node": 1}, {"second_node": 1}
RUN_FILES = ("config.json", "split.json", "env.json", "history.jsonl", "model.safetensors")
RESUME_FILES = ("last.safetensors", "last.json")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """Two nodes, one CPU each; their workers make the synthetic data in their own cache
    (this test's cache is the app's: the workers never see it)."""
    worker_cache = tmp_path_factory.mktemp("worker-cache")
    nodes = [{"num_cpus": 1, "resources": HEAD}, {"num_cpus": 1, "resources": SECOND}]
    with ray_cluster(nodes, env={"CXR_CACHE_DIR": str(worker_cache)}) as address:
        yield address


@pytest.fixture
def no_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled"))


def read(run_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((run_dir / name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def history(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "history.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines]


def node_ids(address: str) -> dict[str, str]:
    """Custom resource -> the id of the node that offers it, as Ray's GCS reports."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return {
            name: node["NodeID"]
            for node in ray.nodes()
            if node["Alive"]
            for name in node["Resources"]
            if name in (*HEAD, *SECOND)
        }
    finally:
        ray.shutdown()


def test_a_sweep_through_the_ray_executor_lands_in_the_run_store(cluster, isolated_store):
    result = run_cli(
        "sweep", "--data", "synthetic:20", "--arch", "mlp", "--arch", "small_cnn",
        "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--grid", "lr=1e-3,3e-4",
        "--seeds", "0", "--executor", "ray", "--json",
        env={"RAY_ADDRESS": cluster}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    points = [(r["point"]["arch"], r["point"]["lr"]) for r in rows]
    assert points == [("mlp", 1e-3), ("mlp", 3e-4), ("small_cnn", 1e-3), ("small_cnn", 3e-4)]
    workers = set()
    for row in rows:
        assert row["status"] == "completed", row
        assert 0 <= row["val"]["roc_auc"] <= 1
        run_dir = isolated_store / row["id"]
        for name in (*RUN_FILES, *RESUME_FILES, "evaluation.json"):
            assert (run_dir / name).is_file(), name
        epochs = [r["epoch"] for r in history(run_dir) if r["type"] == "epoch"]
        assert epochs == [1, 2]
        assert any(r["type"] == "step" for r in history(run_dir))
        evaluation = read(run_dir, "evaluation.json")
        assert evaluation["splits"]["val"]["roc_auc"] == row["val"]["roc_auc"]
        assert read(run_dir, "last.json")["epoch"] == 2
        config = read(run_dir, "config.json")
        assert config["sweep"]["point"] == row["point"] and config["lr"] == row["point"]["lr"]
        status = read(run_dir, "status.json")
        assert status["pid"] != status["worker_pid"]  # the driver here, the worker there
        workers.add(status["worker_node"])
        log = (isolated_store / ".logs" / f"{row['id']}.log").read_text()
        assert "epoch 2/2" in log  # the worker's output, streamed back
    assert len(workers) == 2  # four one-CPU tasks on two one-CPU nodes


def long_run(seed: int) -> TrainConfig:
    """About 28 one-image steps an epoch, no early stop: a run to catch mid-epoch."""
    return TrainConfig(
        arch="small_cnn", data="synthetic:20", img_size=32, epochs=25, batch_size=1,
        log_every=1, patience=25, seed=seed,
    )  # fmt: skip


def test_cancel_and_a_killed_worker_on_either_node_then_resume(cluster, isolated_store, no_bundled):
    store = RunStore(isolated_store, include_bundled=False)
    cancelled = RayExecutor(cluster, resources=HEAD).launch([Job(long_run(0))], isolated_store)
    killed = RayExecutor(cluster, resources=SECOND).launch([Job(long_run(1))], isolated_store)
    (cancel_id,), (kill_id,) = cancelled.run_ids, killed.run_ids
    cancel_dir, kill_dir = isolated_store / cancel_id, isolated_store / kill_id

    # Cancel mid-run: the flag the app raises reaches the worker; the best epoch so far
    # is evaluated and comes back, as for a local run.
    wait_until(lambda: (read(cancel_dir, "last.json") or {}).get("epoch", 0) >= 1, 300, "epoch 1")
    store.get(cancel_id).request_cancel()

    # Kill the other run's worker process in the middle of an epoch after a checkpoint.
    def mid_epoch():
        done = (read(kill_dir, "last.json") or {}).get("epoch", 0)
        records = history(kill_dir)
        last = records[-1] if records else {}
        return done >= 1 and last.get("type") == "step" and last["epoch"] == done + 1 and done

    wait_until(mid_epoch, 300, "the second run to be mid-epoch after a checkpoint")
    pid = read(kill_dir, "status.json")["worker_pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")  # a Ray worker
    os.kill(pid, signal.SIGKILL)
    checkpoint = read(kill_dir, "last.json")["epoch"]

    finals = {**cancelled.wait(store, poll_s=0.2), **killed.wait(store, poll_s=0.2)}
    assert finals[cancel_id]["status"] == "cancelled", finals[cancel_id]
    assert finals[cancel_id]["message"] == "cancelled: evaluated the best epoch so far"
    evaluation = read(cancel_dir, "evaluation.json")
    assert 1 <= evaluation["epochs_run"] < 25 and "val" in evaluation["splits"]

    assert finals[kill_id]["status"] == "interrupted", finals[kill_id]
    assert "Ray worker stopped" in finals[kill_id]["message"]
    assert store.get(kill_id).status()["status"] == "interrupted"  # and stays so
    assert read(kill_dir, "last.json")["epoch"] >= checkpoint
    assert not (kill_dir / "evaluation.json").exists()

    nodes = node_ids(cluster)
    assert finals[cancel_id]["worker_node"] == nodes["head_node"]
    assert finals[kill_id]["worker_node"] == nodes["second_node"]

    # Resume on the cluster (on whichever node): it starts from the streamed checkpoint
    # and finishes with each epoch recorded once.
    resumed = RayExecutor(cluster).resume(kill_id, isolated_store).wait(store, poll_s=0.2)
    assert resumed[kill_id]["status"] == "completed", resumed[kill_id]
    epochs = [r["epoch"] for r in history(kill_dir) if r["type"] == "epoch"]
    assert epochs == list(range(1, 26))
    assert read(kill_dir, "evaluation.json")["epochs_run"] == 25


def test_a_run_waiting_for_a_worker_is_cancelled_in_rays_queue(cluster, isolated_store):
    """No node offers the resource it asks for: it waits in Ray's queue until cancelled."""
    store = RunStore(isolated_store, include_bundled=False)
    executor = RayExecutor(cluster, resources={"no_such_node": 1})
    launched = executor.launch([Job(long_run(2))], isolated_store)
    (run_id,) = launched.run_ids
    waiting = lambda: (read(isolated_store / run_id, "status.json") or {}).get("phase")  # noqa: E731
    wait_until(lambda: waiting() == "waiting for a Ray worker", 120, "the run to be queued")
    store.get(run_id).request_cancel()
    final = launched.wait(store, poll_s=0.2)[run_id]
    assert (final["status"], final["message"]) == ("cancelled", "cancelled while queued")
    assert "worker_pid" not in final and not history(isolated_store / run_id)
