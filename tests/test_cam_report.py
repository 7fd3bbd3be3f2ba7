"""A run's CAM checks on an evaluation set (cxr_core.analysis.cam_report): the ``cam-check`` verb on
the tiny synthetic run, its record kept beside the run and read back rather than computed
again, one line and exit 2 on a user's mistake, the class-balanced sample, and the view
Compare shows them in (pages/views/cam_report.py) through AppTest."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_main
from streamlit.testing.v1 import AppTest

from cxr_core.analysis import cam_report
from cxr_core.errors import UserError
from cxr_core.predict import cam_checks
from cxr_core.predict.evalsets import EvalSet, run_sets
from cxr_core.store.runs import RunStore

pytestmark = pytest.mark.numeric  # run again on the AVX2/fp32 path by .ci/run

TIMEOUT = 300


def _data_root(run_dir: Path) -> str:
    return json.loads((run_dir / "split.json").read_text())["root"]


@pytest.fixture
def tiny(isolated_store, tiny_run_dir) -> Path:
    """The tiny run copied into this test's store as ``tiny``."""
    return Path(shutil.copytree(tiny_run_dir, isolated_store / "tiny"))


def _args(run_dir: Path, *more: str) -> list[str]:
    data = ["--data", _data_root(run_dir), "--split", "internal_test"]
    return ["cam-check", "--run", "tiny", *data, *more]


def test_cam_check_keeps_its_record_and_reads_it_back(capsys, tiny):
    code, out, err = cli_main(capsys, *_args(tiny, "--images", "4", "--json"))
    assert code == 0, err
    first = json.loads(out)
    assert first["computed"] is True
    file = Path(first["file"])
    assert file.is_file() and file.parent.parent == tiny  # beside the run's evaluations
    assert file.name == f"{first['fingerprint']}-gradcam-4.json"
    assert first["labels"] == [0, 0, 1, 1]  # half of each class
    check = first["check"]
    assert check["images"] == 4 == len(check["per_image"])
    for share in check["shares"].values():
        assert 0 <= share <= 1
    assert all(math.isfinite(v) for v in check["road"].values())
    assert all(math.isfinite(v) for v in check["road_random"].values())
    flags = cam_checks.shortcut_flags(cam_checks.ShortcutShares(**check["shares"]))
    assert check["flags"] == flags
    opacity = first["opacity"]  # a synthetic set: the overlap with the true opacities
    assert opacity["images"] == 2 and "NaN" not in out
    share = opacity["opacity_share"]  # not defined (None) when every map was empty
    assert 0 <= share <= 1 if share is not None else opacity["flat_maps"] == 2
    assert 0 < opacity["opacity_area"] < 1 and opacity["hit_rate"] in (0, 0.5, 1)

    stamp = file.stat().st_mtime_ns
    code, out, err = cli_main(capsys, *_args(tiny, "--images", "4", "--json"))
    assert code == 0, err
    again = json.loads(out)
    assert again["computed"] is False and file.stat().st_mtime_ns == stamp
    assert again["check"] == check and again["created"] == first["created"]
    # Without ROAD the kept record (which has it) serves too.
    code, out, err = cli_main(capsys, *_args(tiny, "--images", "4", "--no-road"))
    assert code == 0, err
    assert file.stat().st_mtime_ns == stamp
    lines = out.splitlines()
    assert lines[-1].startswith(f"read back from {file}")
    assert "ROAD combined" in out and "synthetic opacities" in out
    assert sum(line.startswith("  flag: ") for line in lines) == len(flags)
    assert (len(flags) == 0) == ("  no shortcut flag" in lines)


def test_a_record_without_road_is_computed_again_when_road_is_asked_for(capsys, tiny):
    code, out, err = cli_main(capsys, *_args(tiny, "--images", "2", "--no-road", "--json"))
    assert code == 0, err
    plain = json.loads(out)
    assert plain["computed"] is True and plain["check"]["road"] is None
    code, out, err = cli_main(capsys, *_args(tiny, "--images", "2", "--json"))
    assert code == 0, err
    full = json.loads(out)
    assert full["computed"] is True and full["check"]["road"] is not None
    assert full["file"] == plain["file"]
    assert full["check"]["shares"] == plain["check"]["shares"]  # the same maps
    run = RunStore().get("tiny")
    assert cam_report.saved(run, full["fingerprint"], "gradcam", 2, with_road=True) is not None


def test_a_checkpoint_is_checked_but_not_kept(capsys, tiny):
    data = ["--data", _data_root(tiny), "--split", "official_val"]
    code, out, err = cli_main(
        capsys, "cam-check", "--checkpoint", str(tiny), *data, "--images", "2", "--no-road"
    )
    assert code == 0, err
    assert "at 64 px on 2 images (1 NORMAL, 1 PNEUMONIA)" in out
    assert "not kept (give --run ID to keep it)" in out
    assert not (tiny / "cam_checks").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("both", "give exactly one of --run ID or --checkpoint PATH"),
        ("neither", "give exactly one of --run ID or --checkpoint PATH"),
        ("no images", "--images must be at least 1, not 0"),
        ("unknown run", "no run 'no-such-run'"),
        ("missing folder", "no such folder"),
        ("bad method", "invalid choice"),
        ("bad count", "invalid int value"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tiny, tmp_path, case, message):
    data = ["--data", _data_root(tiny)]
    argv = {
        "both": ["--run", "tiny", "--checkpoint", str(tiny), *data],
        "neither": data,
        "no images": ["--run", "tiny", *data, "--images", "0"],
        "unknown run": ["--run", "no-such-run", *data],
        "missing folder": ["--run", "tiny", "--data", str(tmp_path / "nope")],
        "bad method": ["--run", "tiny", *data, "--method", "saliency"],
        "bad count": ["--run", "tiny", *data, "--images", "many"],
    }[case]
    code, out, err = cli_main(capsys, "cam-check", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tiny / "cam_checks").exists()


# --------------------------------------------------------------------------- the sample


def _set(normal: int, pneumonia: int, root: str | None = None, seed: int = 0) -> EvalSet:
    """A hand-made set, listed in a shuffled order."""
    paths = [f"test/NORMAL/IM-{i:04d}-0001.jpeg" for i in range(normal)]
    paths += [f"test/PNEUMONIA/person{i}_bacteria_{i}.jpeg" for i in range(pneumonia)]
    labels = [0] * normal + [1] * pneumonia
    order = np.random.default_rng(seed).permutation(len(paths))
    return EvalSet(
        "k",
        "hand-made",
        "test",
        np.asarray(labels)[order],
        np.full(len(paths), 0.5),
        0.5,
        [paths[i] for i in order],
        root,
    )


def test_the_sample_is_balanced_where_it_can_be_and_the_same_in_any_order():
    balanced = _set(20, 30)
    rows = cam_report.sample(balanced, 16)
    assert sorted(balanced.labels[rows].tolist()) == [0] * 8 + [1] * 8
    picked = [balanced.paths[i] for i in rows]
    assert picked == sorted(picked)
    reordered = _set(20, 30, seed=1)
    assert [reordered.paths[i] for i in cam_report.sample(reordered, 16)] == picked
    assert [balanced.paths[i] for i in cam_report.sample(balanced, 16, seed=1)] != picked

    few_normals = _set(3, 30)
    assert sorted(few_normals.labels[cam_report.sample(few_normals, 16)]) == [0] * 3 + [1] * 13
    small = _set(2, 3)
    assert len(cam_report.sample(small, 16)) == 5
    with pytest.raises(UserError, match="at least 1 image"):
        cam_report.sample(small, 0)


def test_sampled_images_that_are_gone_are_one_error(tmp_path):
    evalset = _set(2, 2, root=str(tmp_path))
    with pytest.raises(UserError, match=r"4 of the 4 sampled images are not in .*moved"):
        cam_report.image_files(evalset, evalset.paths)
    outside = EvalSet(
        "k", "x", "test", np.array([0]), np.array([0.5]), 0.5, ["../a.png"], str(tmp_path / "set")
    )
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="outside the set's folder"):
        cam_report.image_files(outside, outside.paths)


# --------------------------------------------------------------------------- the view


def _view(run_id: str) -> None:
    """A script showing the view for one run on its internal test split (AppTest runs it)."""
    from cxr_core.predict.evalsets import run_sets
    from cxr_core.store.runs import RunStore
    from pages.views.cam_report import run_cam_checks

    run = RunStore().get(run_id)
    evalset = next(s for s in run_sets(run).values() if s.split == "internal_test")
    run_cam_checks({run.id: run}, {run.id: evalset})


def test_the_view_computes_a_missing_run_on_request_then_shows_it(tiny):
    at = AppTest.from_function(_view, args=("tiny",), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.dataframe  # nothing kept yet: nothing to show
    assert any("Not checked yet on these images: tiny" in c.value for c in at.caption)
    at.toggle(key="camrep_road").set_value(False)
    at.selectbox(key="camrep_n").set_value(8)
    at.button(key="camrep_compute").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error

    run = RunStore().get("tiny")
    evalset = next(s for s in run_sets(run).values() if s.split == "internal_test")
    report = cam_report.saved(run, evalset.key, "gradcam", 8)
    assert report is not None and report.check.images == 8
    (table,) = at.dataframe
    row = table.value.iloc[0]
    assert row["run"] == "tiny" and row["images"] == 8
    assert row["border"] == pytest.approx(report.check.shares.border)
    assert row["empty maps"] == report.check.flat_maps
    if report.opacity.opacity_share is None:  # every pneumonia map empty: not defined
        assert math.isnan(row["in opacity"])
    else:
        assert row["in opacity"] == pytest.approx(report.opacity.opacity_share)
    assert math.isnan(row["ROAD CAM"])
    warnings = [w.value for w in at.warning]
    assert len(warnings) == len(report.check.flags)
    assert all(w.startswith("**tiny**: ") for w in warnings)
    assert any("not a segmentation" in c.value for c in at.caption)

    at.run()  # kept now: read back, no button
    assert not at.button and len(at.dataframe) == 1
