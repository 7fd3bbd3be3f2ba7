"""Ensembles as runs: made from the bundled runs (referenced, never copied), threshold and
validation metrics from the members' stored validation probabilities, scored on a
test-only folder, compared and explained like any run; members validated on different
images are refused with nothing created."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA
from PIL import Image

from cxr_core import cli
from cxr_core.analysis.comparison import run_facts
from cxr_core.data.synthetic import radiograph
from cxr_core.predict import evalsets
from cxr_core.predict.ensembles import Ensemble, load_any
from cxr_core.predict.inference import load_model
from cxr_core.scoring.metrics import choose_threshold, summary, threshold_choice
from cxr_core.store.bundle import results_markdown
from cxr_core.store.runs import Run, RunStore
from pages.common import runview

CHECKPOINTS = ROOT / "checkpoints"
BUNDLED = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "model.safetensors").is_file())
"""The bundled runs with weights of their own (a bundled ensemble is not a member)."""
WEIGHTS = [float(i + 1) for i in range(len(BUNDLED))]
"""Unequal, so the test sees the weighting."""


@pytest.fixture(autouse=True)
def real_bundled_dir(monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(CHECKPOINTS))


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(f): (f.stat().st_size, f.stat().st_mtime) for f in folder.rglob("*")}


def outside_folder(root: Path, per_class: int = 3) -> Path:
    """test/NORMAL and test/PNEUMONIA only: a few of ../shared's val/ films when present,
    else synthetic radiographs."""
    rng = np.random.default_rng(0)
    for i, cls in enumerate(("NORMAL", "PNEUMONIA")):
        (root / "test" / cls).mkdir(parents=True)
        films = sorted((SHARED_DATA / "val" / cls).glob("*.jpeg"))[:per_class]
        for film in films:
            shutil.copy(film, root / "test" / cls / film.name)
        for k in range(per_class - len(films)):
            image = radiograph(rng, 256, pneumonia=bool(i))[0]
            Image.fromarray(image).save(root / "test" / cls / f"synthetic-{k}.png")
    return root


def stored(run_id: str, split: str) -> dict:
    return json.loads((CHECKPOINTS / run_id / "evaluation.json").read_text())["splits"][split]


def expected_combination(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The weighted mean of the members' stored probabilities, aligned by image."""
    first = stored(BUNDLED[0], split)
    paths, labels = first["paths"], np.asarray(first["labels"])
    probs = np.zeros(len(paths))
    for run_id, weight in zip(BUNDLED, WEIGHTS):
        report = stored(run_id, split)
        by_path = dict(zip(report["paths"], report["probs"]))
        probs += weight / sum(WEIGHTS) * np.asarray([by_path[p] for p in paths])
    return labels, probs, paths


def make(*args: str) -> int:
    return cli.main(["ensemble", *args])


def test_bundled_ensemble_reproduces_its_members_and_scores_a_test_only_folder(
    isolated_store, tmp_path, capsys
):
    before = snapshot(CHECKPOINTS)
    weights = [str(w) for w in WEIGHTS]
    assert make(*BUNDLED, "--weights", *weights, "--name", "five", "--run-id", "ens") == 0
    printed = capsys.readouterr().out
    assert "internal_test" in printed and "95% CIs by patient" in printed

    run = RunStore().get("ens")
    assert run.config()["members"] == BUNDLED and run.meta()["name"] == "five"
    assert run.config()["weights"] == pytest.approx([w / sum(WEIGHTS) for w in WEIGHTS])
    assert run.status()["status"] == "completed"
    assert not list(run.path.rglob("*.safetensors"))  # members referenced, not copied
    evaluation = run.evaluation()
    assert set(evaluation["splits"]) == {"val", "internal_test", "official_val"}

    # Threshold and every split's metrics: the combination of the stored probabilities.
    labels, probs, _ = expected_combination("val")
    choice = threshold_choice(labels, probs, "plateau")  # the default rule
    threshold = choice.threshold
    assert evaluation["threshold"] == pytest.approx(threshold, abs=1e-9)
    assert evaluation["threshold_low"] < threshold < evaluation["threshold_high"]
    assert (evaluation["threshold_low"], evaluation["threshold_high"]) == pytest.approx(
        (choice.low, choice.high)
    )
    for split in evaluation["splits"]:
        labels, probs, paths = expected_combination(split)
        report = evaluation["splits"][split]
        assert report["paths"] == paths and report["labels"] == labels.tolist()
        assert report["probs"] == pytest.approx(probs, abs=2e-6)
        for key, value in summary(labels, probs, threshold).items():
            assert report[key] == pytest.approx(value, nan_ok=True), (split, key)

    # A test-only folder: the ensemble's scores are the weighted mean of its members'.
    data = outside_folder(tmp_path / "outside")
    assert cli.main(["evaluate", "--run", "ens", "--data", str(data), "--save", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and out["threshold"] == pytest.approx(threshold)
    assert set(out["ci95"]) >= {"accuracy", "roc_auc"}
    (saved,) = [s for s in evalsets.run_sets(run).values() if s.key == out["fingerprint"]]
    members = [evalsets.score_folder(load_model(CHECKPOINTS / i), data) for i in BUNDLED]
    assert all(m.paths == saved.paths for m in members)
    mean = sum(w / sum(WEIGHTS) * m.probs for w, m in zip(WEIGHTS, members))
    assert saved.probs == pytest.approx(mean, abs=2e-6)
    assert out["accuracy"] == pytest.approx(np.mean((mean >= threshold) == saved.labels))

    # compare (scoring both on the folder) and predict (a CAM per member) take it as a run.
    assert cli.main(["compare", "ens", BUNDLED[0], "--data", str(data), "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    assert compared["fingerprint"] == out["fingerprint"]
    assert compared["runs"][0]["arch"] == "ensemble"
    assert compared["runs"][0]["roc_auc"] == pytest.approx(out["roc_auc"])
    image = str(data / saved.paths[-1])
    cams = tmp_path / "cams"
    argv = ["predict", "--checkpoint", str(run.path), image, "--cam", "gradcam"]
    assert cli.main([*argv, "--out", str(cams), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row["members"]) == set(BUNDLED) == set(row["overlays"])
    assert row["probability"] == pytest.approx(saved.probs[-1], abs=1e-5)
    assert sorted(Path(p) for p in row["overlays"].values()) == sorted(cams.glob("*.png"))

    assert snapshot(CHECKPOINTS) == before  # the bundled runs were only read


def test_threshold_rule_of_an_ensemble(isolated_store, capsys):
    """A target specificity instead of Youden's J: chosen on the combined validation
    probabilities, recorded, and checked like TrainConfig's (a bad target makes nothing)."""
    rule = ("--threshold-method", "specificity", "--target-specificity", "0.99")
    assert make(*BUNDLED[:2], *rule, "--run-id", "strict") == 0
    assert "specificity rule" in capsys.readouterr().out
    run = RunStore().get("strict")
    evaluation = run.evaluation()
    assert evaluation["threshold_method"] == run.config()["threshold_method"] == "specificity"
    assert evaluation["target_specificity"] == 0.99
    val = evaluation["splits"]["val"]
    labels, probs = np.asarray(val["labels"]), np.asarray(val["probs"])
    assert evaluation["threshold"] == choose_threshold(labels, probs, "specificity", 0.95, 0.99)
    assert val["specificity"] >= 0.99
    assert make(*BUNDLED[:2], "--target-specificity", "1.5", "--run-id", "bad") == 2
    assert "Target specificity" in capsys.readouterr().err
    assert [r.id for r in RunStore().list(arch="ensemble") if not r.bundled] == ["strict"]


def test_readers_of_run_configs_take_an_ensemble(isolated_store):
    assert make(*BUNDLED[:2], "--run-id", "pair") == 0
    run = RunStore().get("pair")
    assert isinstance(load_any(run.path), Ensemble)
    assert run.summary()["arch"] == "ensemble" and run.summary()["val_auc"] > 0.9
    assert runview.run_label(run) == "pair (ensemble)"
    table = runview.runs_table([run])
    assert table.loc[0, "status"] == "completed" and table.loc[0, "progress"] == 1.0
    assert run_facts(run)["params_M"] > 0
    assert "`pair`" in results_markdown([run])
    assert [s.split for s in evalsets.shared_sets([run, RunStore().get(BUNDLED[0])])] == [
        "internal_test",
        "val",
        "official_val",
    ]


def copy_record(source: str, target: Path) -> Run:
    """A member's record without its weights (enough to make an ensemble from)."""
    target.mkdir(parents=True)
    for name in ("config.json", "status.json", "evaluation.json", "split.json"):
        shutil.copy(CHECKPOINTS / source / name, target / name)
    return Run(target)


def test_members_validated_on_different_images_are_refused_and_nothing_is_made(
    isolated_store, capsys
):
    copy_record(BUNDLED[0], isolated_store / "same")
    other = copy_record(BUNDLED[1], isolated_store / "other")
    evaluation = other.evaluation()
    val = evaluation["splits"]["val"]
    for key in ("paths", "probs", "labels"):
        val[key] = val[key][1:]  # one validation image fewer: another split
    (other.path / "evaluation.json").write_text(json.dumps(evaluation))
    listing = sorted(p.name for p in isolated_store.iterdir())

    assert make("same", "other") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: the members were validated on different")
    assert make("same", BUNDLED[0]) == 0  # the same split, from another store: fine
    capsys.readouterr()
    (ensemble,) = [r.id for r in RunStore().list(arch="ensemble") if not r.bundled]
    for args, message in [
        (["same"], "at least two runs"),
        (["same", "same"], "name each member once"),
        (["same", BUNDLED[0], "--weights", "1"], "one weight per run"),
        (["same", BUNDLED[0], "--weights", "1", "-1"], "non-negative"),
        (["same", ensemble], "is an ensemble itself"),
        (["same", "missing"], "no run 'missing'"),
    ]:
        assert make(*args) == 2, args
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in isolated_store.iterdir()) == sorted([*listing, ensemble])

    shutil.rmtree(RunStore().get("same").path)  # a member removed by hand: one line, no traceback
    assert cli.main(["evaluate", "--run", ensemble, "--data", "synthetic:20"]) == 2
    assert f"ensemble {ensemble}: a member is gone (no run 'same'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("members", "tied", "chosen"),
    [
        # The bundled ensemble's members: 0.9997 against 0.9996 on validation.
        (["lite0-strongaug-224-s0", "resnet18-strongaug-128-s0"], True, "lite0-strongaug-224-s0"),
        # A weak member drags the mean down, by more than validation's noise.
        (["mlp-scratch-64", "resnet18-strongaug-128-s0"], False, "resnet18-strongaug-128-s0"),
    ],
)
def test_an_ensemble_says_whether_validation_tells_it_from_its_best_member(
    isolated_store, capsys, members, tied, chosen
):
    assert make(*members, "--run-id", "pair") == 0
    printed = capsys.readouterr().out
    selection = RunStore().get("pair").evaluation()["selection"]
    assert selection["chosen"] == chosen
    if tied:
        assert f"Validation cannot tell the ensemble from {chosen} (AUC difference" in printed
        assert (
            f"(the simpler one: fewer parameters, then fewer training epochs), {chosen}" in printed
        )
    else:
        assert f"{chosen} is better than the ensemble on validation (AUC difference" in printed
        assert "cannot tell" not in printed
