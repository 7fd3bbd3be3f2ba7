"""What a training run tells the world while it trains (status with heartbeat, progress
and ETA, history records, printed lines), and where a cancel request is noticed."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from cxr_core.store.runs import Run
from cxr_core.training.config import TrainConfig


class Cancelled(Exception):
    """The user asked the run to stop (the run folder's ``cancel`` flag)."""


@dataclass
class StepReport:
    epoch: int
    step: int
    steps: int
    loss: float
    images_per_s: float


class Reporter:
    """What a run tells the world while it trains: status with heartbeat, progress and
    ETA (what the Runs page and the CLI show), history records, and printed lines.

    Every call is also where a cancel request is noticed: it raises :class:`Cancelled`.
    """

    def __init__(self, run: Run, cfg: TrainConfig, every_s: float = 1.0) -> None:
        self.run, self.cfg, self.every_s = run, cfg, every_s
        self._last = 0.0
        self._phase_started = time.perf_counter()
        self._phase = ""

    def status(self, force: bool = False, **fields) -> None:
        if self.run.cancel_requested():
            raise Cancelled()
        if force or time.time() - self._last > self.every_s:
            self.run.set_status("running", **fields)
            self._last = time.time()

    def progress(self, phase: str, done: int, total: int) -> None:
        """A preparation phase (decoding, features): fraction done and its ETA."""
        if phase != self._phase:
            self._phase, self._phase_started = phase, time.perf_counter()
        elapsed = time.perf_counter() - self._phase_started
        eta = elapsed / done * (total - done) if done else None
        self.status(
            force=done == total,  # the last one: a throttled end would read as "5056/5232"
            phase=f"{phase} {done}/{total}",
            progress=round(done / max(total, 1), 4),
            eta_s=round(eta) if eta is not None else None,
        )

    def step(self, report: StepReport) -> None:
        done = (report.epoch - 1) * report.steps + report.step
        total = self.cfg.epochs * report.steps
        eta = (total - done) * self.cfg.batch_size / max(report.images_per_s, 1e-9)
        self.run.append_history(
            {
                "type": "step",
                "epoch": report.epoch,
                "step": report.step,
                "global_step": done,
                "loss": report.loss,
            }
        )
        self.status(
            phase="training",
            epoch=report.epoch,
            step=report.step,
            steps=report.steps,
            progress=round(done / total, 4),
            images_per_s=round(report.images_per_s, 1),
            eta_s=round(eta),
        )

    def epoch(self, record: dict) -> None:
        """An epoch's record: history first, then a status written at once, so a page
        polling the run sees every epoch even when epochs take milliseconds."""
        self.run.append_history(record)
        self.status(force=True, phase="validated", epoch=record["epoch"])
        print(
            f"epoch {record['epoch']}/{self.cfg.epochs}  loss {record['train_loss']:.4f}  "
            f"val_loss {record['val_loss']:.4f}  val_auc {record['val_roc_auc']:.4f}  "
            f"val_f1 {record['val_f1']:.4f}  {record['seconds']:.0f}s",
            file=sys.stderr,
            flush=True,
        )
