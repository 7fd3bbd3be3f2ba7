"""Every verb of ``python -m cxr_core``, and a user's mistakes: exit 2, one line, no traceback.

Verbs run in-process through ``cli.main`` (a subprocess costs seconds of imports); a few
mistakes also run as real subprocesses, to prove what a user's terminal shows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_main, run_cli
from PIL import Image

from cxr_core import cli
from cxr_core.cli.train import config_from_args
from cxr_core.data.folders import scan
from cxr_core.data.synthetic import MARKER
from cxr_core.models.catalogue import REGISTRY
from cxr_core.predict.evalsets import run_sets
from cxr_core.scoring.metrics import threshold_choice
from cxr_core.store.runs import RunStore
from cxr_core.training.config import options

EVALUATE_KEYS = (
    "accuracy",
    "roc_auc",
    "pr_auc",
    "f1",
    "sensitivity",
    "specificity",
    "threshold",
    "confusion_matrix",
    "n",
)


def _json(capsys, *argv: str):
    code, out, err = cli_main(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def store(isolated_store, tiny_run_dir, tmp_path, monkeypatch) -> Path:
    """The tiny run copied twice into this test's runs folder; no bundled runs in sight."""
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled-runs"))
    for name in ("tiny", "tiny2"):
        shutil.copytree(tiny_run_dir, isolated_store / name)
    return isolated_store


def _evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluation.json").read_text())


def _data_root(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "split.json").read_text())["root"])


def test_train_wrote_a_complete_run_folder(tiny_run_dir):
    for name in ("config.json", "env.json", "split.json", "status.json", "history.jsonl"):
        assert (tiny_run_dir / name).is_file(), name
    for name in ("model.safetensors", "last.safetensors", "last.json", "evaluation.json"):
        assert (tiny_run_dir / name).is_file(), name
    status = json.loads((tiny_run_dir / "status.json").read_text())
    assert status["status"] == "completed"
    config = json.loads((tiny_run_dir / "config.json").read_text())
    assert config["arch"] == "small_cnn" and config["img_size"] == 64
    assert config["command"].startswith("python -m cxr_core train")
    records = [json.loads(line) for line in (tiny_run_dir / "history.jsonl").open()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]
    assert any(r["type"] == "step" for r in records)
    evaluation = _evaluation(tiny_run_dir)
    assert evaluation["synthetic"] is True
    assert evaluation["test_split"] == "internal_test"
    assert set(evaluation["splits"]) == {"val", "internal_test", "official_val"}
    val = evaluation["splits"]["val"]
    for key in (*EVALUATE_KEYS, "roc", "pr", "classification_report", "probs", "labels", "paths"):
        assert key in val, key
    assert sum(map(sum, val["confusion_matrix"])) == val["n"] == len(val["paths"])
    # The threshold (the default plateau rule) and its plateau, as chosen on val.
    choice = threshold_choice(val["labels"], val["probs"], config["threshold_method"])
    assert config["threshold_method"] == "plateau"
    assert (evaluation["threshold"], evaluation["threshold_low"], evaluation["threshold_high"]) == (
        pytest.approx((choice.threshold, choice.low, choice.high))
    )


@pytest.mark.parametrize("opt", options(), ids=lambda o: o.name)
def test_every_training_option_is_a_train_flag(opt):
    """The train flags come from TrainConfig's fields: each one parses into the field."""
    parser = cli.build_parser()
    if opt.choices:
        value = str(opt.choices[-1])
    elif opt.low is not None:
        value = str(opt.type((opt.low + opt.high) / 2))
    else:
        value = "cpu"
    base = ["train", "--arch", "mlp", "--data", "synthetic:4"]
    flag = [f"--no-{opt.flag}"] if opt.type is bool else [f"--{opt.flag}", value]
    args = parser.parse_args(base + ([] if opt.name in ("arch", "data") else flag))
    cfg = config_from_args(args)
    if opt.name not in ("arch", "data"):
        expected = False if opt.type is bool else opt.type(value)
        assert opt.get(cfg) == expected


def test_archs_lists_every_architecture(capsys):
    code, out, _ = cli_main(capsys, "archs")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed == list(REGISTRY)


def test_synth_writes_the_kaggle_layout_with_masks(capsys, tmp_path):
    out_dir = tmp_path / "synth"
    code, out, _ = cli_main(
        capsys, "synth", "--out", str(out_dir), "--per-class", "4", "--size", "64", "--seed", "3"
    )
    assert code == 0 and out.strip() == str(out_dir)
    assert (out_dir / MARKER).is_file()
    index = scan(out_dir)
    labels = [s.label for s in index.samples["train"]]
    assert labels.count(0) == labels.count(1) == 4
    masks = sorted((out_dir / "masks" / "train" / "PNEUMONIA").glob("*.png"))
    assert len(masks) == 4
    with Image.open(masks[0]) as mask:
        assert mask.size == (64, 64)
    assert any(np.asarray(Image.open(m)).max() == 255 for m in masks)


def test_runs_list_text_and_json(capsys, store):
    (store / "tiny2" / "status.json").write_text(
        json.dumps({"status": "failed", "message": "boom", "created": 1.0})
    )
    code, out, _ = cli_main(capsys, "runs", "list")
    assert code == 0
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"tiny", "tiny2"}
    rows = {r["id"]: r for r in _json(capsys, "runs", "list")}
    assert rows["tiny"]["status"] == "completed" and rows["tiny2"]["status"] == "failed"
    assert rows["tiny"]["val_auc"] == _evaluation(store / "tiny")["splits"]["val"]["roc_auc"]
    assert rows["tiny"]["bundled"] is False
    only_failed = _json(capsys, "runs", "list", "--status", "failed")
    assert [r["id"] for r in only_failed] == ["tiny2"]
    assert _json(capsys, "runs", "list", "--arch", "resnet18") == []


PAIRED_KEYS = {
    "a",
    "b",
    "n",
    "accuracy_diff",
    "mcnemar_p",
    "roc_auc_diff",
    "roc_auc_diff_ci95",
    "delong_p",
}


def test_compare_json_on_the_set_the_runs_share(capsys, store):
    out = _json(capsys, "compare", "tiny", "tiny2")
    assert out["set"].startswith("internal_test")
    assert [r["run"] for r in out["runs"]] == ["tiny", "tiny2"]
    recorded = _evaluation(store / "tiny")["splits"]["internal_test"]
    row = out["runs"][0]
    assert row["arch"] == "small_cnn" and row["n"] == recorded["n"]
    for metric in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "pr_auc"):
        assert row[metric] == pytest.approx(recorded[metric], abs=1e-6), metric
        lo, hi = row["ci95"][metric]
        assert lo <= row[metric] <= hi, metric
    (pair,) = out["paired"]
    assert set(pair) >= PAIRED_KEYS
    # The same weights twice: no difference, and no evidence of one.
    assert pair["accuracy_diff"] == 0 and pair["roc_auc_diff"] == 0
    assert pair["mcnemar_p"] == 1 and pair["delong_p"] == 1
    code, _, err = cli_main(capsys, "compare", "tiny", "nope")
    assert code == 2 and "no run 'nope'" in err


def test_compare_split_without_data_picks_a_recorded_set(capsys, store):
    """``--split`` without ``--data`` was ignored: the first shared set was shown instead."""
    out = _json(capsys, "compare", "tiny", "tiny2", "--split", "val")
    assert (
        out["set"].startswith("val")
        and out["runs"][0]["n"] == (_evaluation(store / "tiny")["splits"]["val"]["n"])
    )
    code, _, err = cli_main(capsys, "compare", "tiny", "tiny2", "--split", "test")
    assert code == 2 and "share no recorded test set; give --data" in err


def test_compare_with_data_scores_every_run_on_the_same_images(capsys, store):
    root = _data_root(store / "tiny")
    out = _json(capsys, "compare", "tiny", "tiny2", "--data", str(root), "--split", "official_val")
    assert out["set"].startswith("val/ of ")
    assert out["runs"][0]["n"] == _evaluation(store / "tiny")["splits"]["official_val"]["n"]
    assert set(out["paired"][0]) >= PAIRED_KEYS


def _evaluate_json(capsys, run_dir: Path, data: Path, *extra: str) -> dict:
    return _json(capsys, "evaluate", "--checkpoint", str(run_dir), "--data", str(data), *extra)


def test_evaluate_any_labelled_folder(capsys, tiny_run_dir, tmp_path):
    """A Kaggle root with only test/, the zip's nested layout, and class folders alone
    (in any case) all score the same images the same way."""
    images = _data_root(tiny_run_dir) / "val"
    test_only = tmp_path / "test-only"
    shutil.copytree(images, test_only / "test")
    nested = tmp_path / "zip"
    shutil.copytree(images, nested / "chest_xray" / "chest_xray" / "test")
    classes = tmp_path / "classes"
    for cls in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(images / cls, classes / cls.lower())
    results = [_evaluate_json(capsys, tiny_run_dir, folder) for folder in (test_only, nested)]
    results.append(_evaluate_json(capsys, tiny_run_dir, classes))
    reference = _evaluation(tiny_run_dir)["splits"]["official_val"]
    for out in results:
        assert out["n"] == reference["n"]
        assert out["accuracy"] == pytest.approx(reference["accuracy"])
        assert out["roc_auc"] == pytest.approx(reference["roc_auc"], abs=1e-6)
        assert set(out["ci95"]) >= {"accuracy", "sensitivity", "specificity", "roc_auc"}
    assert results[0]["fingerprint"] == results[1]["fingerprint"]  # same relative paths
    (tmp_path / "empty").mkdir()
    code, _, err = cli_main(
        capsys, "evaluate", "--checkpoint", str(tiny_run_dir), "--data", str(tmp_path / "empty")
    )
    assert code == 2 and err.count("\n") == 1 and "no labelled images" in err


def test_evaluate_save_keeps_a_set_for_compare(capsys, store, tmp_path, monkeypatch):
    images = _data_root(store / "tiny") / "val"
    outside = tmp_path / "outside"
    shutil.copytree(images, outside / "test")
    bundled = tmp_path / "bundled"
    shutil.copytree(store / "tiny2", bundled / "shipped")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(bundled))
    before = sorted(p.name for p in (bundled / "shipped").iterdir())
    for run in ("tiny", "shipped"):
        out = _json(capsys, "evaluate", "--run", run, "--data", str(outside), "--save")
        assert Path(out["saved"]).is_file()
    assert (store / "tiny" / "evaluations").is_dir()
    assert sorted(p.name for p in (bundled / "shipped").iterdir()) == before  # untouched
    (overlay,) = (store / ".bundled").glob("shipped-*")  # keyed by the shipped record
    assert (overlay / "evaluations").is_dir()
    compared = _json(capsys, "compare", "tiny", "shipped")
    assert compared["set"] == f"test/ of {outside} ({out['n']} images)"  # outside sets first
    # A bundle update replacing the shipped run under the same id: the old model's scores
    # on the outside set are not shown as the new one's.
    record = bundled / "shipped" / "evaluation.json"
    record.write_text(record.read_text().replace('"threshold"', '"threshold" ', 1))
    shipped = RunStore(store).get("shipped")
    assert shipped.overlay != overlay
    assert not [s for s in run_sets(shipped).values() if s.split == "test"]
    code, _, err = cli_main(
        capsys, "evaluate", "--checkpoint", str(store / "tiny"), "--data", str(outside), "--save"
    )
    assert code == 2 and "--save needs --run" in err


@pytest.mark.parametrize(
    ("source", "split", "data"),
    [
        ("run", "val", "synthetic:40"),  # the run's own carved validation split
        ("checkpoint", "internal_test", "root"),
        ("checkpoint", "official_val", "root"),
    ],
)
def test_evaluate_reproduces_the_runs_evaluation(capsys, tiny_run_dir, source, split, data):
    data = str(_data_root(tiny_run_dir)) if data == "root" else data
    where = (
        ["--runs-dir", str(tiny_run_dir.parent), "--run", "tiny"]
        if source == "run"
        else ["--checkpoint", str(tiny_run_dir / "model.safetensors")]
    )
    # --runs-dir is a global option: it goes before the verb.
    global_args, verb_args = (where[:2], where[2:]) if source == "run" else ([], where)
    out = _json(capsys, *global_args, "evaluate", *verb_args, "--data", data, "--split", split)
    expected = _evaluation(tiny_run_dir)["splits"][split]
    for key in EVALUATE_KEYS:
        assert out[key] == expected[key], key
    assert out["skipped"] == 0


def test_evaluate_text_output_and_threshold_override(capsys, tiny_run_dir):
    code, out, _ = cli_main(
        capsys,
        "evaluate",
        "--checkpoint",
        str(tiny_run_dir),
        "--data",
        str(_data_root(tiny_run_dir)),
        "--split",
        "official_val",
        "--threshold",
        "0.999999",
    )
    assert code == 0
    assert "threshold 1.0000" in out.splitlines()[0]
    lines = dict(line.split(maxsplit=1) for line in out.splitlines()[1:])
    assert lines["sensitivity"] == "0.0%"  # nothing is called pneumonia at that threshold
    data = str(_data_root(tiny_run_dir))
    code, out, _ = cli_main(
        capsys, "evaluate", "--checkpoint", str(tiny_run_dir), "--data", data, "--split", "val"
    )
    assert re.search(r"accuracy +\d+\.\d% \(\d+\.\d-\d+\.\d\)", out)  # with its 95% CI


@pytest.mark.filterwarnings("error")  # nothing but results on a user's terminal
def test_predict_json_matches_the_evaluation_and_cam_writes_overlays(
    capsys, tiny_run_dir, tmp_path
):
    evaluation = _evaluation(tiny_run_dir)["splits"]["official_val"]
    root = _data_root(tiny_run_dir)
    chosen = [evaluation["paths"][0], evaluation["paths"][-1]]
    images = [str(root / p) for p in chosen]
    rows = _json(capsys, "predict", "--checkpoint", str(tiny_run_dir), *images)
    assert [r["image"] for r in rows] == images
    threshold = _evaluation(tiny_run_dir)["threshold"]
    for row, path in zip(rows, chosen):
        recorded = evaluation["probs"][evaluation["paths"].index(path)]
        assert row["probability"] == pytest.approx(recorded, abs=2e-6)
        assert row["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert row["label"] == ("PNEUMONIA" if row["probability"] >= threshold else "NORMAL")

    out_dir = tmp_path / "cams"
    rows = _json(
        capsys,
        "predict",
        "--checkpoint",
        str(tiny_run_dir / "model.safetensors"),
        *images,
        "--cam",
        "gradcam",
        "--out",
        str(out_dir),
    )
    overlays = [Path(r["overlay"]) for r in rows]
    assert sorted(overlays) == sorted(out_dir.glob("*.png")) and len(overlays) == 2
    for overlay in overlays:
        with Image.open(overlay) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)

    code, out, _ = cli_main(capsys, "predict", "--checkpoint", str(tiny_run_dir), images[0])
    assert code == 0 and "p(pneumonia)=" in out
    code, _, err = cli_main(
        capsys, "predict", "--checkpoint", str(tiny_run_dir), images[0], "--cam", "gradcam"
    )
    assert code == 2 and "--cam needs --out" in err


def test_export_copies_a_completed_run_without_resume_state(capsys, store, tmp_path):
    code, out, _ = cli_main(capsys, "export", "tiny", "--out", str(tmp_path / "shared"))
    exported = tmp_path / "shared" / "tiny"
    assert code == 0 and out.strip() == str(exported)
    assert (exported / "model.safetensors").read_bytes() == (
        store / "tiny" / "model.safetensors"
    ).read_bytes()
    assert not list(exported.glob("last.*"))
    code, _, err = cli_main(capsys, "export", "tiny", "--out", str(tmp_path / "shared"))
    assert code == 2 and "already exists" in err
    (store / "tiny2" / "status.json").write_text(json.dumps({"status": "failed"}))
    code, _, err = cli_main(capsys, "export", "tiny2", "--out", str(tmp_path / "shared"))
    assert code == 2 and "export completed runs" in err


def test_report_writes_the_results_table(capsys, store, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- runs:start -->\nold\n<!-- runs:end -->\noutro\n")
    code, _, err = cli_main(capsys, "--runs-dir", str(store), "report", "--readme", str(readme))
    assert code == 0, err
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    auc = _evaluation(store / "tiny")["splits"]["internal_test"]["roc_auc"]
    rows = [line for line in text.splitlines() if line.startswith("| `tiny` |")]
    assert len(rows) == 1 and f"| {auc:.3f} |" in rows[0]
    assert "`tiny`: `python -m cxr_core train --arch small_cnn" in text
    readme.write_text("no block here")
    code, _, err = cli_main(capsys, "--runs-dir", str(store), "report", "--readme", str(readme))
    assert code == 2 and "no <!-- runs:start -->" in err


def test_download_offline_is_one_line(capsys, monkeypatch, tmp_path):
    """With the packages installed but no network (simulated in-process: nothing is ever
    fetched), each source fails with one line naming the manual route."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    kagglehub = types.ModuleType("kagglehub")
    kagglehub.dataset_download = offline
    medmnist = types.ModuleType("medmnist")
    medmnist.PneumoniaMNIST = offline
    monkeypatch.setitem(sys.modules, "kagglehub", kagglehub)
    monkeypatch.setitem(sys.modules, "medmnist", medmnist)
    code, _, err = cli_main(capsys, "download", "kaggle")
    assert code == 2 and err.count("\n") == 1
    assert "could not download from Kaggle" in err and "--data" in err
    code, _, err = cli_main(capsys, "download", "pneumoniamnist", "--out", str(tmp_path / "m"))
    assert code == 2 and err.count("\n") == 1
    assert "could not download PneumoniaMNIST" in err and "medmnist.com" in err
    code, _, err = cli_main(capsys, "download", "pneumoniamnist", "--size", "100")
    assert code == 2 and "sizes 28, 64, 128, 224" in err


# --------------------------------------------------------------------------- user mistakes


def _mistakes(tmp_path: Path, tiny_run_dir: Path) -> dict[str, list[str]]:
    config = json.loads((tiny_run_dir / "config.json").read_text())
    (tmp_path / "bad-arch.json").write_text(json.dumps({**config, "arch": "resnet9"}))
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(300))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "pickled.pt")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    cases = {
        "missing data folder": ["train", "--arch", "small_cnn", "--data", str(tmp_path / "nope")],
        "data folder without train/": ["train", "--arch", "mlp", "--data", str(tmp_path / "empty")],
        "bad arch": ["train", "--arch", "resnet9", "--data", "synthetic"],
        "bad arch in a config file": ["train", "--config", str(tmp_path / "bad-arch.json")],
        "bad checkpoint file": [
            *("predict", "--checkpoint", str(tmp_path / "garbage.safetensors")),
            str(tmp_path / "notes.txt"),
        ],
        "pickle checkpoint": [
            *("evaluate", "--checkpoint", str(tmp_path / "pickled.pt")),
            *("--data", "synthetic:40"),
        ],
        "missing checkpoint": ["predict", "--checkpoint", str(tmp_path / "nope"), "x.png"],
        "non-image": ["predict", "--checkpoint", str(tiny_run_dir), str(tmp_path / "notes.txt")],
        "unknown run": ["resume", "no-such-run"],
    }
    # Without the optional packages the real CLI can be called: it never reaches a network.
    if importlib.util.find_spec("kagglehub") is None:
        cases["download kaggle (not installed)"] = ["download", "kaggle"]
    if importlib.util.find_spec("medmnist") is None:
        cases["download pneumoniamnist (not installed)"] = ["download", "pneumoniamnist"]
    return cases


@pytest.fixture
def mistakes(tmp_path, tiny_run_dir) -> dict[str, list[str]]:
    return _mistakes(tmp_path, tiny_run_dir)


MISTAKES = [
    "missing data folder",
    "data folder without train/",
    "bad arch",
    "bad arch in a config file",
    "bad checkpoint file",
    "pickle checkpoint",
    "missing checkpoint",
    "non-image",
    "unknown run",
    "download kaggle (not installed)",
    "download pneumoniamnist (not installed)",
]


@pytest.mark.parametrize("case", MISTAKES)
def test_user_mistake_exits_2_with_one_line(capsys, mistakes, case):
    """In-process: any exception other than UserError would escape ``main`` and fail here."""
    if case not in mistakes:
        pytest.skip("the package is installed; covered by test_download_offline_is_one_line")
    capsys.readouterr()
    try:
        code = cli.main(mistakes[case])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err


def test_user_mistakes_in_a_real_terminal_show_no_traceback(mistakes):
    """The real entry point, for one argparse mistake and one found while working."""
    for case in ("bad arch", "non-image"):
        result = run_cli(*mistakes[case], timeout=300)
        assert result.returncode == 2, (case, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert "Traceback" not in result.stderr


def test_edit_list_by_tag_and_delete(capsys, store):
    code, out, _ = cli_main(capsys, "edit", "tiny", "--name", "small one", "--tags", "demo,cpu")
    assert code == 0 and "small one" in out
    rows = _json(capsys, "runs", "list", "--tag", "demo")
    assert [(r["id"], r["name"], r["tags"]) for r in rows] == [
        ("tiny", "small one", ["cpu", "demo"])
    ]
    code, _, err = cli_main(capsys, "delete", "tiny")  # no terminal to ask in: refuse
    assert code == 2 and "--yes" in err and (store / "tiny").exists()
    code, out, _ = cli_main(capsys, "delete", "tiny", "--yes")
    assert code == 0 and not (store / "tiny").exists()
    code, _, err = cli_main(capsys, "edit", "tiny2", "--tags", "no spaces")
    assert code == 2 and err.count("\n") == 1


def test_predict_says_when_an_image_does_not_look_like_its_films(capsys, tiny_run_dir, tmp_path):
    """The input guard before any prediction: a uniform grey PNG (called PNEUMONIA by every
    bundled model) is flagged in --json and in words; a film like the run's passes."""
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run_dir, run)  # the guard's reference is computed and kept there
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((700, 900), 128, np.uint8)).save(grey)
    film = str(_data_root(run) / _evaluation(run)["splits"]["val"]["paths"][0])
    rows = _json(capsys, "predict", "--checkpoint", str(run), film, str(grey))
    assert rows[0]["input_guard"]["in_distribution"] is True
    flagged = rows[1]["input_guard"]
    assert flagged["in_distribution"] is False and flagged["reasons"]
    assert flagged["message"].startswith("this does not look like a chest radiograph")
    code, out, _ = cli_main(capsys, "predict", "--checkpoint", str(run), str(grey))
    assert code == 0 and "warning: this does not look like a chest radiograph" in out
