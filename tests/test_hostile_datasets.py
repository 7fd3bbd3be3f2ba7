"""Data folders that are empty, half made, booby-trapped with links, or not ours to read.

Basic layout errors of ``scan`` are in test_datasets.py; here they go through the CLI as a
user meets them, and the allowed-data-roots setting is enforced with symlinks resolved.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from cxr_core import cli
from cxr_core.data.allowed_roots import ENV, check_data_root
from cxr_core.data.folders import scan
from cxr_core.data.synthetic import make_synthetic_dataset
from cxr_core.errors import UserError
from cxr_core.store.runs import RunStore
from cxr_core.training.config import TrainConfig
from cxr_core.training.inputs import load_data


def train_cli(capsys, data: Path | str, *extra: str) -> tuple[int, str]:
    """``cxr-lab train`` in this process (the store is the test's own); exit code, stderr."""
    code = cli.main(
        ["train", "--arch", "small_cnn", "--data", str(data), "--img-size", "32",
         "--epochs", "1", "--batch-size", "8", *extra]
    )  # fmt: skip
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A 20-per-class synthetic set at 48 px; tests copy it before changing it."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "set", 20, 48)


def copy_set(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


# ----------------------------------------------------------------- unusable layouts


@pytest.mark.parametrize("layout", ["empty", "one-class", "flat", "classes-at-root"])
def test_unusable_layouts_fail_in_one_line_and_the_run_says_why(
    layout, small_set, tmp_path, capsys
):
    root = tmp_path / "data"
    root.mkdir()
    image = next((small_set / "train" / "NORMAL").glob("*.png")).read_bytes()
    if layout == "one-class":
        for i in range(5):
            (root / "train" / "NORMAL").mkdir(parents=True, exist_ok=True)
            (root / "train" / "NORMAL" / f"IM-{i:04d}-0001.png").write_bytes(image)
    elif layout == "flat":  # images straight in train/, no class folders
        (root / "train").mkdir()
        for i in range(5):
            (root / "train" / f"IM-{i:04d}-0001.png").write_bytes(image)
    elif layout == "classes-at-root":  # NORMAL/ and PNEUMONIA/ without train/
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / cls).mkdir()
            (root / cls / "a.png").write_bytes(image)
    line = assert_one_line_refusal(*train_cli(capsys, root))
    expected = {
        "empty": "no train/ folder",
        "one-class": "train/PNEUMONIA/ is missing",
        "flat": "train/NORMAL/ is missing",
        "classes-at-root": "no train/ folder",
    }[layout]
    assert expected in line
    (run,) = RunStore(include_bundled=False).list()
    assert run.status()["status"] == "failed" and expected in run.status()["message"]


# ----------------------------------------------------------------- corrupt files and links


def test_corrupt_files_and_link_traps_are_skipped_reported_and_training_completes(
    small_set, tmp_path, capsys
):
    root = copy_set(small_set, tmp_path / "data")
    normal, pneumonia = root / "train" / "NORMAL", root / "train" / "PNEUMONIA"
    good = sorted(normal.glob("*.png"))[0].read_bytes()
    (normal / "synth-09001-0.png").write_bytes(good[: len(good) // 3])  # truncated
    (pneumonia / "synth-09002-0.jpeg").write_text("a text file with an image name")
    (pneumonia / "synth-09003-0.png").write_bytes(b"")
    (normal / "loop.png").symlink_to("loop.png")  # a link to itself
    (normal / "dangling.jpeg").symlink_to(tmp_path / "gone.jpeg")
    (normal / "again").symlink_to(normal, target_is_directory=True)  # a folder loop
    (root / "val" / "PNEUMONIA" / "up").symlink_to(root, target_is_directory=True)

    started = time.perf_counter()
    index = scan(root)
    assert time.perf_counter() - started < 5
    assert any("ignored 2 broken or looping link(s)" in note for note in index.notes)
    assert not any("again" in s.path or "up/" in s.path for s in index.all_samples())

    code, err = train_cli(capsys, root, "--run-id", "mixed")
    assert code == 0, err
    assert "Traceback" not in err
    run = RunStore(include_bundled=False).get("mixed")
    assert run.status()["status"] == "completed"
    split = run.split()
    assert set(split["skipped"]) == {
        "train/NORMAL/synth-09001-0.png",
        "train/PNEUMONIA/synth-09002-0.jpeg",
        "train/PNEUMONIA/synth-09003-0.png",
    }
    assert any("skipped 3 unreadable file(s)" in note for note in split["notes"])
    assert any("ignored 2 broken or looping link(s)" in note for note in split["notes"])
    used = {s["path"] for rows in split["splits"].values() for s in rows}
    assert not used & set(split["skipped"])


def test_a_looping_class_or_split_folder_is_a_missing_folder_not_a_crash(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "NORMAL").symlink_to("NORMAL")
    (tmp_path / "train" / "PNEUMONIA").symlink_to("../train/PNEUMONIA")
    with pytest.raises(UserError, match="train/NORMAL/ is missing"):
        scan(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(UserError, match="symlink loop"):
        scan(tmp_path / "loop")


# ----------------------------------------------------------------- allowed data roots


@pytest.fixture
def deployed(tmp_path, small_set, monkeypatch):
    """An allowed root holding a good data set, and a folder outside it with another."""
    allowed = tmp_path / "allowed"
    inside = copy_set(small_set, allowed / "chest")
    outside = copy_set(small_set, tmp_path / "private" / "chest")
    monkeypatch.setenv(ENV, os.pathsep.join([str(allowed), str(tmp_path / "also-allowed")]))
    return inside, outside


def test_unset_setting_allows_the_users_own_folders(small_set, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert scan(small_set).root == small_set.resolve()


def test_a_folder_outside_the_allowed_roots_is_refused_in_the_library_and_cli(deployed, capsys):
    inside, outside = deployed
    assert len(scan(inside).all_samples()) == 56
    with pytest.raises(UserError, match="outside the folders this deployment may read"):
        scan(outside)
    line = assert_one_line_refusal(*train_cli(capsys, outside))
    assert "outside the folders" in line and ENV in line
    # Refused before anything is looked at: a missing folder gives the same answer.
    missing = outside.parent / "no-such-folder"
    with pytest.raises(UserError, match="outside the folders") as info:
        scan(missing)
    assert "no such folder" not in str(info.value)


def test_links_and_dot_dot_cannot_lead_out_of_an_allowed_root(deployed):
    inside, outside = deployed
    allowed = inside.parent
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    for sneaky in (allowed / "link", allowed / ".." / "private" / "chest", f"{allowed}/../private"):
        with pytest.raises(UserError, match="outside the folders"):
            check_data_root(sneaky)
    # Inside an allowed data set, links to outside files or folders are ignored, not read.
    secret = sorted((outside / "train" / "NORMAL").glob("*.png"))[0]
    (inside / "train" / "NORMAL" / "IM-0666-0001.png").symlink_to(secret)
    (inside / "val" / "NORMAL").rename(inside / "val" / "NORMAL-real")
    (inside / "val" / "NORMAL").symlink_to(outside / "val" / "NORMAL")
    index = scan(inside)
    paths = {s.path for s in index.all_samples()}
    assert "train/NORMAL/IM-0666-0001.png" not in paths
    assert not any(p.startswith("val/NORMAL/") for p in paths)
    assert any("links leading outside the allowed data folders" in n for n in index.notes)


def test_a_link_inside_the_allowed_roots_is_fine(deployed):
    inside, _ = deployed
    (inside.parent / "alias").symlink_to(inside, target_is_directory=True)
    assert len(scan(inside.parent / "alias").all_samples()) == 56


def test_synthetic_data_stays_usable_when_roots_are_restricted(deployed, monkeypatch):
    cfg = TrainConfig(arch="small_cnn", data="synthetic:20", img_size=32)
    data = load_data(cfg)
    assert data.synthetic and len(data.pixels) > 0


def test_the_setting_reaches_training_processes(deployed, tmp_path):
    """The CLI in a fresh process (as the app's launcher starts it) enforces it too."""
    from conftest import run_cli

    _, outside = deployed
    result = run_cli("train", "--arch", "small_cnn", "--data", str(outside), "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "outside the folders" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    statuses = [
        json.loads(p.read_text())["status"]
        for p in Path(os.environ["CXR_RUNS_DIR"]).glob("*/status.json")
    ]
    assert statuses == ["failed"]


# ----------------------------------------------------------------- the app's Data and Train pages


def open_app(page: str = "data", secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets.update(secrets or {})
    at.run()  # Home, the default page, with the secrets applied
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def use_folder(at: AppTest, folder: Path | str) -> list[str]:
    at.text_input[0].set_value(str(folder))
    at.button[0].click().run()  # the folder form's submit button
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def test_data_page_refuses_folders_outside_the_allowed_roots(deployed, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "none"))
    inside, outside = deployed
    at = open_app("data")
    at.radio(key="data_kind").set_value("Local folder").run()
    for folder in (outside, outside.parent / "missing", f"{inside}/../../private/chest"):
        (error,) = use_folder(at, folder)
        assert "outside the folders this deployment may read" in error and "\n" not in error
        assert at.session_state["data_spec"] != str(Path(folder).resolve())
    assert use_folder(at, inside) == []
    assert any(f"`{inside.resolve()}`" in m.value for m in at.markdown)


def test_allowed_roots_can_come_from_st_secrets(tmp_path, small_set, monkeypatch):
    # The app copies secrets into os.environ: set-then-delete makes monkeypatch restore the
    # variable's absence afterwards (a bare delenv of an unset variable records nothing).
    monkeypatch.setenv(ENV, "")
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "none"))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    at = open_app("data", secrets={ENV: str(allowed)})
    at.radio(key="data_kind").set_value("Local folder").run()
    (error,) = use_folder(at, small_set)
    assert "outside the folders" in error and str(allowed.resolve()) in error


def test_train_page_will_not_launch_on_a_folder_outside_the_roots(deployed, tmp_path, monkeypatch):
    """A data folder that reached the session another way (CXR_DATA_DIR, a preset)."""
    _, outside = deployed
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("CXR_DATA_DIR", str(outside))
    at = open_app("train")
    at.multiselect(key="opt_archs").set_value(["small_cnn"]).run()
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "outside the folders" in error
    assert not (RunStore().root / ".logs").exists()
