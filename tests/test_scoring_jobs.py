"""A scoring job scores its runs in its own one process: each run's set saved as
``evaluate --save`` saves it, a run that fails recorded with its error while the others are
scored, and the films decoded once into the decode cache the training path uses."""

from __future__ import annotations

import shutil
import time

from cxr_core.execution import scoring_jobs
from cxr_core.predict.evalsets import run_sets
from cxr_core.settings import cache_dir
from cxr_core.store.runs import RunStore


def test_a_job_scores_each_run_in_one_process_and_keeps_going_past_a_failure(
    tmp_path, tiny_run_dir, kaggle_tree
):
    store = RunStore()
    for name in ("tiny", "tiny2"):
        shutil.copytree(tiny_run_dir, store.root / name)
    folder = kaggle_tree(tmp_path / "outside", 4, 5, split="test")
    wanted = scoring_jobs.target(str(folder), "test")
    before = set(cache_dir().glob("*.npy"))
    job = scoring_jobs.EvalJob(
        "score-test", ("tiny", "missing", "tiny2"), str(folder), "test", store.root, time.time()
    )
    progress = scoring_jobs.run_job(job)
    assert progress.finished and set(progress.done) == {"tiny", "tiny2"}
    assert progress.done["tiny"] == wanted.key
    assert "no run 'missing'" in progress.failed["missing"]
    assert "no run 'missing'" in job.log("missing").read_text()
    for name in ("tiny", "tiny2"):
        assert wanted.key in run_sets(store.get(name))
    # Both runs read the same films at the same size: decoded once, into the shared cache.
    assert len(set(cache_dir().glob("*.npy")) - before) == 1
