"""A real run on a patient-grouped subset of the Kermany images in ../shared: it learns.

About a minute on two cores (600 images at 64 px, small_cnn, 2 epochs); skipped where
the data is absent.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from cxr_core.data.folders import make_splits, scan


@pytest.mark.slow
def test_small_cnn_learns_on_a_real_patient_grouped_subset(real_data, isolated_store):
    result = run_cli(
        *("train", "--arch", "small_cnn", "--data", str(real_data), "--max-images", "600"),
        *("--img-size", "64", "--epochs", "2", "--batch-size", "16", "--run-id", "real"),
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = isolated_store / "real"

    split = json.loads((run_dir / "split.json").read_text())
    assert split["synthetic"] is False
    parts = {name: {s["patient"] for s in items} for name, items in split["splits"].items()}
    for a in ("train", "val", "internal_test"):
        for b in ("train", "val", "internal_test"):
            assert a == b or not parts[a] & parts[b], (a, b)
    carved = sum(len(split["splits"][k]) for k in ("train", "val", "internal_test"))
    assert 600 <= carved <= 620
    # The saved manifest is the one make_splits gives for the same files and seed.
    expected = make_splits(scan(real_data), seed=0, max_images=600).to_dict()
    assert split["splits"] == expected["splits"]

    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["synthetic"] is False
    val, test = evaluation["splits"]["val"], evaluation["splits"]["internal_test"]
    # Chance is 0.5; the held-out internal test, never used for selection, must agree.
    assert val["roc_auc"] > 0.85, val["roc_auc"]
    assert test["roc_auc"] > 0.85, test["roc_auc"]
    assert test["accuracy"] > 0.75, test["accuracy"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
