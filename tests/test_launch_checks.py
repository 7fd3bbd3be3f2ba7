"""Combinations no run should start with are refused by TrainConfig's own check, in one
line and before anything is made, for the CLI's train and sweep alike (the Train page's
form calls the same check: tests/test_app.py)."""

from __future__ import annotations

import pytest
from conftest import cli_main

from cxr_core.errors import UserError
from cxr_core.training.config import TrainConfig

REFUSED = {
    "frozen stages on a scratch network": (
        ["--arch", "small_cnn", "--unfreeze-last", "0"],
        "from scratch has no learned backbone to freeze",
    ),
    "two trainable stages on a scratch network": (
        ["--arch", "resnet18", "--unfreeze-last", "2"],
        "from scratch has no learned backbone to freeze",
    ),
    "pretrained without weights": (["--arch", "small_cnn", "--pretrained"], "no pretrained"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_train_refuses_an_impossible_combination_in_one_line(capsys, tmp_path, case):
    flags, message = REFUSED[case]
    runs = tmp_path / "runs"
    code, _, err = cli_main(
        capsys, "--runs-dir", str(runs), "train", *flags, "--data", "synthetic:10"
    )
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert not runs.exists() or not any(runs.iterdir())  # nothing half-made


def test_a_sweep_refuses_the_point_that_cannot_start(capsys, tmp_path):
    runs = tmp_path / "runs"
    code, _, err = cli_main(
        capsys, "--runs-dir", str(runs), "sweep", "--arch", "small_cnn",
        "--data", "synthetic:10", "--grid", "unfreeze_last=-1,0",
    )  # fmt: skip
    assert code == 2 and "unfreeze_last=0" in err and "no learned backbone" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_the_check_passes_what_can_start_and_saved_configs_still_load():
    TrainConfig(arch="efficientnet_lite0", data="synthetic", pretrained=True, unfreeze_last=0)
    TrainConfig(arch="small_cnn", data="synthetic").check_launch()
    old = TrainConfig.from_dict({"arch": "small_cnn", "data": "x", "unfreeze_last": 0})
    with pytest.raises(UserError, match="no learned backbone"):
        old.check_launch()  # loads (a run made before the check), but would not start
