"""Scanning Kaggle-layout folders and patient-grouped, stratified, seeded splits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, write_kaggle_tree

from cxr_core.data.folders import SplitManifest, make_splits, patient_id, scan
from cxr_core.errors import UserError
from cxr_core.training.config import TrainConfig
from cxr_core.training.inputs import load_data


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1946_bacteria_4874.jpeg", "P1946"),
        ("person1946_virus_4875.jpeg", "P1946"),
        ("PERSON0007_BACTERIA_1.JPEG", "P7"),
        ("IM-0115-0001.jpeg", "N115"),
        ("NORMAL2-IM-1427-0001.jpeg", "N1427"),
        ("NORMAL2-IM-0115-0002.jpeg", "N115"),  # merged with IM-0115: stricter, never leakier
        ("synth-00042-1.png", "S42"),
        ("scan_001.png", "F:scan_001"),
        ("IM-abc-0001.jpeg", "F:IM-abc-0001"),
        ("person_bacteria.jpeg", "F:person_bacteria"),
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """150 normal and 150 pneumonia patients with 1-3 images each (about 600 images)."""
    return write_kaggle_tree(tmp_path_factory.mktemp("cohort"), 150, 150)


def _patients(samples) -> set[str]:
    return {s.patient for s in samples}


def test_no_patient_is_in_two_splits_and_no_image_is_lost(cohort):
    index = scan(cohort)
    manifest = make_splits(index, seed=3)
    assert set(manifest.splits) == {"train", "val", "internal_test"}
    names = list(manifest.splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not _patients(manifest.splits[a]) & _patients(manifest.splits[b]), (a, b)
    paths = [s.path for split in manifest.splits.values() for s in split]
    assert sorted(paths) == sorted(s.path for s in index.samples["train"])
    assert manifest.test_split == "internal_test"


def test_split_fractions_are_stratified_and_close_to_the_asked_ones(cohort):
    index = scan(cohort)
    manifest = make_splits(index, seed=0, val_fraction=0.2, test_fraction=0.1)
    total = {label: sum(s.label == label for s in index.samples["train"]) for label in (0, 1)}
    for split, fraction in (("val", 0.2), ("internal_test", 0.1)):
        for label in (0, 1):
            share = sum(s.label == label for s in manifest.splits[split]) / total[label]
            # Whole patients move (up to 3 images each), so allow a few images of slack.
            assert abs(share - fraction) < 0.03, (split, label, share)


def test_same_files_and_seed_give_the_same_manifest_in_any_order_and_process(cohort, tmp_path):
    first = make_splits(scan(cohort), seed=7).to_dict()
    assert make_splits(scan(cohort), seed=7).to_dict() == first

    # The same files written in the reverse order in another folder.
    copy = tmp_path / "copy"
    for path in sorted(cohort.rglob("*.jpeg"), reverse=True):
        target = copy / path.relative_to(cohort)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert make_splits(scan(copy), seed=7).to_dict() == first

    # Another interpreter, with its own hash seed.
    code = (
        "import json, sys; from cxr_core.data.folders import make_splits, scan; "
        "print(json.dumps(make_splits(scan(sys.argv[1]), seed=7).to_dict()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(cohort)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)},
    )
    assert json.loads(result.stdout) == json.loads(json.dumps(first))


def test_a_different_seed_gives_a_different_split(cohort):
    index = scan(cohort)
    a, b = make_splits(index, seed=0), make_splits(index, seed=1)
    assert _patients(a.splits["val"]) != _patients(b.splits["val"])
    assert _patients(a.splits["internal_test"]) != _patients(b.splits["internal_test"])


def test_a_split_seed_keeps_the_split_across_seeds(tmp_path, kaggle_tree, monkeypatch):
    """Seeds on one split share validation films, the condition to pair and ensemble them."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    root = str(kaggle_tree(tmp_path / "data", 30, 30))

    def val(**kw) -> set[str]:
        cfg = TrainConfig(arch="small_cnn", data=root, img_size=32, **kw)
        return {s.path for s in load_data(cfg).manifest.splits["val"]}

    assert val(seed=1, split_seed=0) == val(seed=2, split_seed=0) == val(seed=0)
    assert val(seed=1) != val(seed=0)


def test_manifest_round_trips_through_json(cohort):
    manifest = make_splits(scan(cohort), seed=0, max_images=200)
    again = SplitManifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.splits == manifest.splits
    assert again.counts() == manifest.counts()
    assert again.derived == manifest.derived


def test_max_images_draws_a_patient_grouped_stratified_subset(cohort):
    index = scan(cohort)
    manifest = make_splits(index, seed=0, max_images=120)
    used = [s for split in manifest.splits.values() for s in split]
    assert 120 <= len(used) <= 130
    assert "subset" in manifest.derived
    # Whole patients: every image of a chosen patient comes along.
    chosen = _patients(used)
    assert {s.path for s in used} == {s.path for s in index.samples["train"] if s.patient in chosen}
    share = sum(s.label for s in used) / len(used)
    assert abs(share - 0.5) < 0.1


def test_official_folders_are_kept_apart(tmp_path, kaggle_tree):
    kaggle_tree(tmp_path, 30, 30)
    kaggle_tree(tmp_path, 4, 4, split="val")
    kaggle_tree(tmp_path, 10, 10, split="test")
    index = scan(tmp_path)
    manifest = make_splits(index, seed=0)
    assert set(manifest.splits) == {"train", "val", "test", "official_val"}
    assert manifest.test_split == "test"
    assert manifest.splits["test"] == index.samples["test"]
    assert manifest.splits["official_val"] == index.samples["val"]
    # The selection set is carved from train, never the official 16-image val/.
    assert {s.path for s in manifest.splits["val"]} <= {s.path for s in index.samples["train"]}


def test_doubly_nested_zip_layout_and_folder_names_in_any_case(tmp_path, kaggle_tree):
    inner = tmp_path / "chest_xray" / "chest_xray"
    kaggle_tree(inner, 5, 5)
    (inner / "train" / "NORMAL").rename(inner / "train" / "normal")
    (inner / "train" / "PNEUMONIA").rename(inner / "train" / "Pneumonia")
    (inner / "train").rename(inner / "Train")
    index = scan(tmp_path)
    assert index.root == inner.resolve()
    labels = {s.label for s in index.samples["train"]}
    assert labels == {0, 1}
    assert all(s.path.startswith("Train/") for s in index.samples["train"])
    assert scan(tmp_path / "chest_xray").root == index.root


def test_missing_or_empty_class_is_a_user_error(tmp_path, kaggle_tree):
    kaggle_tree(tmp_path, 5, 0)
    with pytest.raises(UserError, match=r"train/PNEUMONIA/ is missing"):
        scan(tmp_path)
    (tmp_path / "train" / "PNEUMONIA").mkdir()
    (tmp_path / "train" / "PNEUMONIA" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"train/PNEUMONIA/ is missing or holds no"):
        scan(tmp_path)


def test_unusable_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        scan(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        scan(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/ folder"):
        scan(tmp_path / "empty")


def test_file_names_without_a_patient_id_are_noted(tmp_path, kaggle_tree):
    kaggle_tree(tmp_path, 5, 5)
    shutil.copyfile(
        next((tmp_path / "train" / "NORMAL").iterdir()), tmp_path / "train" / "NORMAL" / "a.jpg"
    )
    index = scan(tmp_path)
    assert any("1 train file names carry no patient id" in note for note in index.notes)
    assert "F:a" in {s.patient for s in index.samples["train"]}


def test_corrupt_files_are_skipped_and_reported(tmp_path, kaggle_tree, monkeypatch):
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path / "cache"))
    root = kaggle_tree(tmp_path / "data", 20, 20)
    good = next((root / "train" / "PNEUMONIA").iterdir())
    (root / "train" / "PNEUMONIA" / "person999_bacteria_1.jpeg").write_bytes(
        good.read_bytes()[:200]
    )
    (root / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_text("not an image at all")
    cfg = TrainConfig(arch="small_cnn", data=str(root), img_size=32)
    data = load_data(cfg)
    bad = {"train/PNEUMONIA/person999_bacteria_1.jpeg", "train/NORMAL/IM-0999-0001.jpeg"}
    assert set(data.skipped) == bad
    assert "truncated or corrupt" in data.skipped["train/PNEUMONIA/person999_bacteria_1.jpeg"]
    assert "not an image" in data.skipped["train/NORMAL/IM-0999-0001.jpeg"]
    assert any(note.startswith("skipped 2 unreadable file(s)") for note in data.notes)
    used = {s.path for split in data.manifest.splits.values() for s in split}
    assert not used & bad
    assert sum(len(rows) for rows in data.rows.values()) == len(data.pixels)
