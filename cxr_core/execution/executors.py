"""Where runs train: ``local`` processes on this machine, or tasks on a ``ray`` cluster.

``local`` is the default and all a Streamlit Community Cloud app has: one detached
process per run, queued through the run store's file lock (:mod:`cxr_core.execution.jobs`).
``ray`` hands each run to a Ray cluster as one task with ``num_cpus``/``num_gpus``
(:mod:`cxr_core.execution.ray_runs`); Ray does the queueing and placement, and a detached driver
on this machine streams every run back into the run store. Choose with ``--executor`` or
``CXR_EXECUTOR=ray`` (with ``RAY_ADDRESS`` naming the cluster). Ray is optional: nothing
here imports it.

The executors are one registry: the CLI's ``--executor`` choices and the Train page offer
every registered one. Adding one is a class here plus its test::

    @register_executor("mine", label="my cluster")
    class MyExecutor:  # with a docstring: what it is, in one line
        @classmethod
        def from_environment(cls, queue: int) -> MyExecutor: ...
        def launch(self, jobs, runs_dir) -> Launched: ...
        def resume(self, run_id, runs_dir) -> Launched: ...
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from cxr_core.errors import UserError
from cxr_core.execution.jobs import Job, launch_local, logs_dir, spawn, tail
from cxr_core.fileio import atomic_write_json
from cxr_core.settings import executor_setting, ray_address, ray_resources
from cxr_core.store import records
from cxr_core.store.runs import ACTIVE, Run, RunStore

RAY_INSTALL = "pip install -r requirements-ray.txt"


@dataclass
class Launched:
    """The runs one launch started, and the local processes that carry them."""

    run_ids: list[str]
    processes: list[subprocess.Popen]
    logs: dict[str, Path]
    """Per run, the log of the process that carries it."""
    since: float
    """When the launch began: a status older than that is a resumed run's last end."""

    def wait(
        self,
        store: RunStore,
        poll_s: float = 1.0,
        on_change: Callable[[str, dict], None] = lambda run_id, status: None,
    ) -> dict[str, dict]:
        """Block until every run has ended; each run's last status, by id.

        A run whose folder never appeared by the time its processes exited is reported
        ``failed`` with the end of their output. A status older than the launch (a resumed
        run's last end) is not this launch's word: the run counts as starting.
        """
        seen: dict[str, str | None] = {}
        while True:
            finished = all(p.poll() is not None for p in self.processes)  # reaps them too
            statuses = {}
            for run_id in self.run_ids:
                status = {}
                if records.is_run(store.root / run_id):
                    status = Run(store.root / run_id).status()
                if status.get("heartbeat", 0) >= self.since or (status and finished):
                    statuses[run_id] = status
                elif finished:
                    output = tail(self.logs[run_id], lines=3)
                    statuses[run_id] = {"status": "failed", "message": f"never started: {output}"}
                else:
                    statuses[run_id] = {"status": "queued", "message": "starting"}
            for run_id, status in statuses.items():
                if seen.get(run_id) != status.get("status"):
                    seen[run_id] = status.get("status")
                    on_change(run_id, status)
            if all(s.get("status") not in ACTIVE for s in statuses.values()):
                return statuses
            time.sleep(poll_s)


class Executor(Protocol):
    name: str
    label: str

    @classmethod
    def from_environment(cls, queue: int) -> Executor:
        """The executor as the environment configures it, ``queue`` local runs at once."""

    def launch(self, jobs: Sequence[Job], runs_dir: Path) -> Launched:
        """Start ``jobs``; their run folders appear in ``runs_dir`` as they start."""

    def resume(self, run_id: str, runs_dir: Path) -> Launched:
        """Continue an interrupted or cancelled run from its last checkpoint."""


EXECUTORS: dict[str, type[Executor]] = {}
"""Every executor by name, in the order the CLI and the Train page offer them."""

_E = TypeVar("_E", bound=type)


def register_executor(name: str, *, label: str) -> Callable[[_E], _E]:
    """Register the decorated class as the executor ``name`` (``label``: how the Train page
    names it; its docstring describes it)."""
    if name in EXECUTORS:
        raise ValueError(f"executor {name!r} is registered twice")

    def decorator(cls: _E) -> _E:
        cls.name, cls.label = name, label
        EXECUTORS[name] = cls
        return cls

    return decorator


def resumable(store: RunStore, run_id: str) -> Run:
    """The run, if it can be resumed (not bundled, not active, one epoch checkpointed)."""
    run = store.get(run_id)
    if run.bundled:
        raise UserError(f"{run.id} is a bundled run; it cannot be resumed in place")
    status = run.status().get("status")
    if status in ACTIVE:
        raise UserError(f"run {run.id} is still {status}")
    if not run.has_checkpoint():
        raise UserError(f"run {run.id} has no checkpoint to resume from (no epoch finished)")
    return run


@register_executor("local", label="this machine")
class LocalExecutor:
    """Detached processes on this machine, ``queue`` of them training at once."""

    def __init__(self, queue: int = 1) -> None:
        self.queue = queue

    @classmethod
    def from_environment(cls, queue: int) -> LocalExecutor:
        return cls(queue)

    def launch(self, jobs: Sequence[Job], runs_dir: Path) -> Launched:
        since = time.time()
        processes = [launch_local(job, runs_dir, self.queue) for job in jobs]
        logs = {job.run_id: logs_dir(runs_dir) / f"{job.run_id}.log" for job in jobs}
        return Launched([job.run_id for job in jobs], processes, logs, since)

    def resume(self, run_id: str, runs_dir: Path) -> Launched:
        runs_dir = Path(runs_dir).resolve()
        resumable(RunStore(runs_dir, include_bundled=False), run_id)
        log = logs_dir(runs_dir) / f"{run_id}.log"
        since = time.time()
        process = spawn(["-m", "cxr_core", "--runs-dir", str(runs_dir), "resume", run_id], log)
        return Launched([run_id], [process], {run_id: log}, since)


def _require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise UserError(f"the ray executor needs Ray, which is not installed: {RAY_INSTALL}")


@register_executor("ray", label="Ray cluster")
class RayExecutor:
    """One Ray task per run on the cluster whose head is at ``address``
    (``HOST:PORT``, default ``$RAY_ADDRESS``; ``ray start --head`` prints it).

    Each task asks for ``num_cpus`` (``$CXR_RAY_NUM_CPUS``, default 1), ``num_gpus``
    (``$CXR_RAY_NUM_GPUS``, default 0) and any custom ``resources``; the runs' data must
    be readable at the same path on every worker (``synthetic`` data is made there).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        _require_ray()
        self.address = address or ray_address()
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit() or "://" in host:
            raise UserError(
                "the ray executor needs the cluster's address as RAY_ADDRESS=HOST:PORT "
                f"(what `ray start --head` prints), not {self.address!r}"
            )
        self._head = (host, int(port))
        cpus, gpus = ray_resources()
        self.num_cpus = float(num_cpus or cpus)
        self.num_gpus = float(num_gpus or gpus)
        self.resources = resources or {}

    @classmethod
    def from_environment(cls, queue: int) -> RayExecutor:
        """Ray places its tasks by their resources: ``queue`` does not apply."""
        return cls()

    def _check_reachable(self) -> None:
        """Fail here, in one line, rather than in a driver that Ray keeps retrying."""
        try:
            socket.create_connection(self._head, timeout=5).close()
        except OSError as exc:
            raise UserError(f"no Ray cluster answers at {self.address} ({exc})") from None

    def _drive(self, runs_dir: Path, jobs: list[dict], resume: list[str]) -> Launched:
        """Write the driver's spec and start it detached; its output is its own log."""
        self._check_reachable()
        runs_dir = Path(runs_dir).resolve()
        name = f"ray-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        spec = logs_dir(runs_dir) / f"{name}.json"
        atomic_write_json(
            spec,
            {
                "runs_dir": str(runs_dir),
                "address": self.address,
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                "resources": self.resources,
                "jobs": jobs,
                "resume": resume,
            },
        )
        log = logs_dir(runs_dir) / f"{name}.log"
        since = time.time()
        process = spawn(["-m", "cxr_core.execution.ray_runs", str(spec)], log)
        run_ids = [job["run_id"] for job in jobs] + resume
        return Launched(run_ids, [process], {run_id: log for run_id in run_ids}, since)

    def launch(self, jobs: Sequence[Job], runs_dir: Path) -> Launched:
        return self._drive(runs_dir, [{"run_id": j.run_id, "record": j.record()} for j in jobs], [])

    def resume(self, run_id: str, runs_dir: Path) -> Launched:
        resumable(RunStore(runs_dir, include_bundled=False), run_id)
        return self._drive(runs_dir, [], [run_id])


def get_executor(name: str | None = None, queue: int = 1) -> Executor:
    """The executor called ``name``, else ``$CXR_EXECUTOR``, else local; ``queue`` is how
    many local runs train at once (Ray places its tasks by their resources)."""
    name = (name or executor_setting()).strip().lower()
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; use one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name].from_environment(queue)


def launch_runs(
    jobs: Sequence[Job], runs_dir: Path, executor: str | None = None, queue: int = 1
) -> list[str]:
    """Start ``jobs`` on the chosen executor (see :func:`get_executor`); their run ids."""
    return get_executor(executor, queue).launch(jobs, runs_dir).run_ids
