"""Runs on a Ray cluster: one streaming task per run, and the local driver that writes
what the tasks stream into the run store.

No filesystem is shared with the workers. A task trains with :func:`engine.fit` into a
temporary run folder on its worker, exactly as a local run does, and yields what changes
there as small events: the status (with its heartbeat), new history and log lines, and
whole files when they are rewritten (each epoch's resume checkpoint as one pair, the best
weights, the evaluation). The driver, a detached process on the app's machine
(``python -m cxr_core.execution.ray_runs SPEC``, one per launch), writes them into the app's run
store as they come, so the store holds every finished epoch's checkpoint and a run
resumes on either executor.

Cancel: the app raises the run's ``cancel`` flag as for a local run; the driver passes it
to the task through a mailbox actor and the task raises the flag in its own folder, so
the run ends as a local one does (best epoch so far evaluated). A task still waiting in
Ray's queue is cancelled there. A worker that dies mid-run leaves the run "interrupted";
a driver that dies takes its tasks with it (Ray's owner fate-sharing), and the store's
liveness check marks its runs interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import ray

from cxr_core.errors import UserError
from cxr_core.execution.jobs import fit_recorded, logs_dir
from cxr_core.fileio import atomic_write_files, read_json
from cxr_core.store import records
from cxr_core.store.runs import ACTIVE, Run, RunStore

POLL_S = 0.5
"""How often a task looks at its run folder (and its mailbox)."""
HEARTBEAT_S = 10.0
CONNECT_TIMEOUT_S = 120.0
WHOLE_FILES = (records.SPLIT, records.ENVIRONMENT, records.WEIGHTS, records.EVALUATION)
CHECKPOINT = records.CHECKPOINT
"""Written together by the engine; streamed together, never one without the other."""
WORKER_LOG = "worker.log"
"""The task's output, streamed into the driver's log of the run (not a run record)."""
APPENDED = {records.HISTORY: "history", WORKER_LOG: "log"}
RESUME_FILES = (records.CONFIG, records.SPLIT, records.HISTORY, records.WEIGHTS, *CHECKPOINT)
WORKER_ONLY = ("pid", "host", "heartbeat", "created", "started", "ended")
"""Status fields that describe the worker's process; the driver writes its own."""


# --------------------------------------------------------------------------- worker


def _signature(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file version: the engine replaces files whole (a new inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class FolderStream:
    """What changed in a run folder since the last look, as events for the driver."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        names = (records.STATUS, *WHOLE_FILES, *CHECKPOINT)
        self.sent = {name: _signature(folder / name) for name in names}  # shipped files
        self.offsets = {name: self._size(name) for name in APPENDED}

    def _size(self, name: str) -> int:
        signature = _signature(self.folder / name)
        return signature[2] if signature else 0

    def _read_if_changed(self, name: str) -> bytes | None:
        signature = _signature(self.folder / name)
        if signature is None or signature == self.sent[name]:
            return None
        try:
            data = (self.folder / name).read_bytes()
        except FileNotFoundError:
            return None
        if _signature(self.folder / name) != signature:
            return None  # replaced while read: next time
        self.sent[name] = signature
        return data

    def _checkpoint(self) -> dict[str, bytes] | None:
        """Both checkpoint files once both are new and of one save: stable while read,
        and the weights written before the state (a save writes both, then renames both;
        weights newer than the state are the next save caught half renamed)."""
        paths = [self.folder / name for name in CHECKPOINT]
        before = [_signature(p) for p in paths]
        if None in before or any(s == self.sent[n] for s, n in zip(before, CHECKPOINT)):
            return None
        if before[0][1] > before[1][1]:
            return None
        try:
            data = {n: p.read_bytes() for n, p in zip(CHECKPOINT, paths)}
        except FileNotFoundError:
            return None
        if [_signature(p) for p in paths] != before:
            return None
        self.sent.update(zip(CHECKPOINT, before))
        return data

    def _appended(self, name: str) -> dict | None:
        """New complete lines; the whole file again when it was rewritten (a resume
        truncates its history)."""
        path = self.folder / name
        size = self._size(name)
        if size == self.offsets[name]:
            return None
        if size < self.offsets[name]:
            text = path.read_text(errors="replace")
            cut = text.rfind("\n") + 1
            self.offsets[name] = len(text[:cut].encode())
            return {"append": APPENDED[name], "text": text[:cut], "replace": True}
        with open(path, "rb") as f:
            f.seek(self.offsets[name])
            chunk = f.read()
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            return None
        self.offsets[name] += cut
        return {"append": APPENDED[name], "text": chunk[:cut].decode(errors="replace")}

    def changes(self) -> list[dict]:
        """Files first, then history, then the status read before them all: the driver
        never records a status ahead of the files it speaks of (completed before the
        evaluation)."""
        status = self._read_if_changed(records.STATUS)
        events = [{"files": {n: d}} for n in WHOLE_FILES if (d := self._read_if_changed(n))]
        if checkpoint := self._checkpoint():
            events.append({"files": checkpoint})
        events += [e for name in APPENDED if (e := self._appended(name))]
        if status is not None:
            events.append({"status": json.loads(status)})
        return events


class Mailbox:
    """The runs the app asked to cancel (a Ray actor; tasks poll it)."""

    def __init__(self) -> None:
        self.cancelled: set[str] = set()

    def cancel(self, run_id: str) -> None:
        self.cancelled.add(run_id)

    def is_cancelled(self, run_id: str) -> bool:
        return run_id in self.cancelled


def _train(run: Run, record: dict, resume: bool) -> None:
    try:
        fit_recorded(run, record, resume)
    except UserError:
        pass  # recorded in the run's status
    except Exception:
        traceback.print_exc()  # recorded too; the traceback goes to the run's log


def train_task(
    run_id: str, record: dict, files: dict[str, bytes], resume: bool, mailbox
) -> Iterator[dict]:
    """A Ray task: train one run in a temporary folder and stream the folder back.

    ``files`` seed the folder (``config.json``, and for a resume the last checkpoint,
    best weights, split and history); they are not streamed back.
    """
    if record.get("device") == "auto" and not ray.get_gpu_ids():
        # Ray leaves a node's GPUs visible to tasks that reserved none: use none.
        record = {**record, "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="cxr-ray-") as tmp:
        run = Run(Path(tmp) / run_id)
        run.path.mkdir()
        for name, data in files.items():
            (run.path / name).write_bytes(data)
        stream = FolderStream(run.path)
        node = ray.get_runtime_context().get_node_id()
        where = {"worker_host": socket.gethostname(), "worker_pid": os.getpid()}
        yield {"started": {**where, "worker_node": node}}
        thread = threading.Thread(target=_train, args=(run, record, resume), daemon=True)
        # One task at a time per worker process: its output is this run's log.
        with (
            open(run.path / WORKER_LOG, "a", buffering=1) as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            thread.start()
            cancelled = False
            while thread.is_alive():
                thread.join(POLL_S)
                if not cancelled and ray.get(mailbox.is_cancelled.remote(run_id)):
                    run.request_cancel()
                    cancelled = True
                for event in stream.changes():  # not `yield from`: Ray sends into the task
                    yield event
        for event in stream.changes():
            yield event


# --------------------------------------------------------------------------- driver


class _Stream:
    """One run's task as the driver sees it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started = False
        self.cancel_sent = False
        self.log = logs_dir(run.path.parent) / f"{run.id}.log"

    def apply(self, event: dict) -> None:
        if "started" in event:
            self.started = True
            self.run.set_status("running", phase="starting on a Ray worker", **event["started"])
            print(f"run {self.run.id}: started on {event['started']}", flush=True)
        elif "files" in event:
            names = set(event["files"])
            if not names <= {*WHOLE_FILES, *CHECKPOINT}:
                raise ValueError(f"a task sent files it may not write: {sorted(names)}")
            atomic_write_files({self.run.path / n: d for n, d in event["files"].items()})
        elif "append" in event:
            target = self.log if event["append"] == "log" else self.run.history_file
            with open(target, "w" if event.get("replace") else "a") as f:
                f.write(event["text"])
        elif "status" in event:
            status = event["status"]
            fields = {k: v for k, v in status.items() if k not in (*WORKER_ONLY, "status")}
            self.run.set_status(status["status"], **fields)

    def end(self, exc: BaseException | None = None) -> None:
        """The stream is over: normally, or with the error Ray raised for the task."""
        self._end(exc)
        status = self.run.status()
        print(f"run {self.run.id}: {status.get('status')} {status.get('message') or ''}")

    def _end(self, exc: BaseException | None) -> None:
        if exc is None:
            if self.run.status().get("status") in ACTIVE:
                self.run.set_status("failed", message="the Ray task ended without a result")
        elif isinstance(exc, ray.exceptions.TaskCancelledError):
            self.run.set_status("cancelled", message="cancelled while queued")
        elif isinstance(exc, ray.exceptions.RayTaskError):
            cause = exc.cause if exc.cause is not None else exc
            self.run.set_status("failed", message=f"{type(cause).__name__}: {cause}")
        else:  # the worker, its node or the object store went away
            message = f"the Ray worker stopped ({type(exc).__name__}); resume the run"
            self.run.set_status("interrupted", message=message)


def _shipped(run: Run, resume: bool) -> dict[str, bytes]:
    """The files a task starts from. A resume's history is cut back to its checkpoint
    here, so the engine's own cut changes nothing and the task streams only new lines."""
    if resume:
        run.truncate_history(read_json(run.checkpoint[1])["epoch"])
    names = RESUME_FILES if resume else (records.CONFIG,)
    return {n: (run.path / n).read_bytes() for n in names if (run.path / n).is_file()}


def _connect(address: str, runs: list[Run]) -> bool:
    """Join the cluster as its driver, shipping this cxr_core to the workers (they need
    its dependencies installed, not the code); a failure fails the runs, in one line.

    Ray retries an unanswering head for many minutes: past ``CONNECT_TIMEOUT_S`` the
    runs fail rather than wait, queued, for ever.
    """

    def fail(message: str) -> None:
        for run in runs:
            run.set_status("failed", message=message.splitlines()[0])
        print(f"error: {message}", file=sys.stderr, flush=True)

    def give_up() -> None:
        fail(f"the Ray cluster at {address} did not answer within {CONNECT_TIMEOUT_S:.0f} s")
        os._exit(1)  # the main thread is stuck inside Ray's connect loop

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        ray.init(
            address=address,
            runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]},
            logging_level=logging.WARNING,
        )
    except Exception as exc:  # a version mismatch, a refused connection, ...
        fail(f"cannot use the Ray cluster at {address}: {exc}")
        return False
    finally:
        watchdog.cancel()
    return True


def drive(spec: dict) -> int:
    """Create (or reopen, to resume) the spec's runs, submit one task each, and write
    their streams into the store until every task has ended."""
    store = RunStore(spec["runs_dir"], include_bundled=False)
    runs = {job["run_id"]: store.create(job["record"], job["run_id"]) for job in spec["jobs"]}
    for run_id in spec["resume"]:
        runs[run_id] = store.get(run_id)
        runs[run_id].clear_cancel()
    for run in runs.values():
        run.set_status("queued", phase="connecting to the Ray cluster", message=None)
    if not _connect(spec["address"], list(runs.values())):
        return 1
    mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
    task = ray.remote(train_task)
    options = {
        "num_cpus": spec["num_cpus"],
        "num_gpus": spec["num_gpus"],
        "resources": spec["resources"] or None,
        "max_retries": 0,  # a rerun would start over: the user resumes instead
    }
    streams = {}
    for run_id, run in runs.items():
        resume = run_id in spec["resume"]
        generator = task.options(**options, name=f"train {run_id}").remote(
            run_id, run.config(), _shipped(run, resume), resume, mailbox
        )
        streams[generator] = _Stream(run)
        run.set_status("queued", phase="waiting for a Ray worker")
    _pump(streams, mailbox)
    return 0


def _pump(streams: dict, mailbox) -> None:
    """Apply events as they arrive; pass cancel flags on; keep the runs' heartbeats."""
    looked = beat = time.monotonic()
    while streams:
        ready, _ = ray.wait(list(streams), num_returns=1, timeout=POLL_S)
        for generator in ready:
            stream = streams[generator]
            try:
                stream.apply(ray.get(next(generator)))
            except StopIteration:
                stream.end()
                del streams[generator]
            except ray.exceptions.RayError as exc:
                stream.end(exc)
                del streams[generator]
            except (UserError, OSError, ValueError) as exc:  # a full disk here, say
                ray.cancel(generator, force=True)
                stream.run.set_status("failed", message=str(exc))
                del streams[generator]
        if time.monotonic() - looked >= POLL_S:
            looked = time.monotonic()
            for generator, stream in list(streams.items()):
                if stream.cancel_sent or not stream.run.cancel_requested():
                    continue
                stream.cancel_sent = True
                if stream.started:
                    mailbox.cancel.remote(stream.run.id)
                else:
                    ray.cancel(generator)
        if time.monotonic() - beat >= HEARTBEAT_S:
            beat = time.monotonic()
            for stream in streams.values():
                stream.run.heartbeat()


def main(argv: list[str] | None = None) -> int:
    """``python -m cxr_core.execution.ray_runs SPEC``: drive the runs a :class:`RayExecutor` launch
    described in the JSON file ``SPEC``."""
    (spec_file,) = argv if argv is not None else sys.argv[1:]
    try:
        return drive(read_json(Path(spec_file)))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Through the importable module, not __main__: Ray finds the task and the actor
    # on the workers by their module's name.
    from cxr_core.execution import ray_runs

    sys.exit(ray_runs.main())
