"""``threshold``: a trained run's threshold chosen again on its recorded validation scores,
its weights untouched, its reports and prediction following the new threshold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import cli_main

from cxr_core.models import weights_file
from cxr_core.predict.inference import load_model
from cxr_core.scoring.metrics import summary, threshold_choice
from cxr_core.store.runs import RunStore


@pytest.fixture
def tiny(isolated_store, tiny_run_dir):
    shutil.copytree(tiny_run_dir, isolated_store / "tiny")
    return RunStore().get("tiny")


def test_a_run_is_thresholded_again_from_its_record(tiny, capsys):
    tensors_before, header_before = weights_file.read_safetensors(tiny.weights)
    for rule in ("fixed", "specificity", "plateau"):
        code, out, err = cli_main(capsys, "threshold", "tiny", "--threshold-method", rule, "--json")
        assert code == 0, err
        shown = json.loads(out)
        evaluation = tiny.evaluation()
        val = evaluation["splits"]["val"]
        wanted = threshold_choice(np.array(val["labels"]), np.array(val["probs"]), rule, 0.95, 0.90)
        assert evaluation["threshold"] == shown["threshold"] == wanted.threshold
        assert evaluation["threshold_method"] == rule
        assert (evaluation.get("threshold_low"), evaluation.get("threshold_high")) == (
            wanted.low,
            wanted.high,
        )
        for report in evaluation["splits"].values():
            assert report["threshold"] == wanted.threshold
            at = summary(np.array(report["labels"]), np.array(report["probs"]), wanted.threshold)
            assert report["accuracy"] == pytest.approx(at["accuracy"])
        assert load_model(tiny.path).threshold == pytest.approx(wanted.threshold)
    tensors, header = weights_file.read_safetensors(tiny.weights)
    assert header["sha256"] == header_before["sha256"]
    assert all(tensors[k].equal(v) for k, v in tensors_before.items())
    assert tiny.config()["command"].count(" && python -m cxr_core ") == 3  # how it came to be


def test_what_cannot_be_thresholded_again_is_refused_in_one_line(tiny, capsys):
    shutil.copytree(tiny.path, tiny.path.parent / "tiny2")
    code, _, err = cli_main(capsys, "ensemble", "tiny", "tiny2", "--run-id", "pair")
    assert code == 0, err
    code, _, err = cli_main(capsys, "threshold", "pair")
    assert code == 2 and "is an ensemble" in err and len(err.strip().splitlines()) == 1
    evaluation = tiny.evaluation()
    del evaluation["splits"]["val"]
    tiny.save_evaluation(evaluation)
    code, _, err = cli_main(capsys, "threshold", "tiny")
    assert code == 2 and "no recorded validation scores" in err
