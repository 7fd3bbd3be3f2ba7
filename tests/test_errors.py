"""``python -m cxr_core errors``: the misclassified images of a run on a labelled folder.
Its count is the off-diagonal of ``evaluate``'s confusion matrix on the same set, in JSON
and in text; a user's mistake exits 2 with one line. Also the helpers the app's gallery
builds on (cells, discordant pairs) against hand-made sets."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_main, run_cli

from cxr_core.analysis import mistakes
from cxr_core.errors import UserError
from cxr_core.predict.evalsets import EvalSet
from cxr_core.scoring import stats
from pages.common import gallery


def _data_root(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "split.json").read_text())["root"])


@pytest.fixture
def mislabelled(tmp_path, tiny_run_dir) -> Path:
    """NORMAL/ and PNEUMONIA/ holding the synthetic val/ films under their own class and
    again under the other one: the tiny run must get the second copies wrong."""
    val = _data_root(tiny_run_dir) / "val"
    out = tmp_path / "mislabelled"
    for cls, other in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL")):
        shutil.copytree(val / cls, out / cls)
        for file in (val / other).iterdir():
            shutil.copy(file, out / cls / f"swapped-{file.name}")
    return out


def _off_diagonal(cm: list[list[int]]) -> int:
    return cm[0][1] + cm[1][0]


@pytest.mark.parametrize("where", ["official_val", "mislabelled"])
def test_errors_agree_with_evaluate_json_and_text(capsys, tiny_run_dir, mislabelled, where):
    data, split = (
        (str(_data_root(tiny_run_dir)), "official_val")
        if where == "official_val"
        else (str(mislabelled), "test")
    )
    args = ["--checkpoint", str(tiny_run_dir), "--data", data, "--split", split]
    code, out, err = cli_main(capsys, "evaluate", *args, "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    code, out, err = cli_main(capsys, "errors", *args, "--json")
    assert code == 0, err
    listed = json.loads(out)

    assert listed["fingerprint"] == evaluated["fingerprint"]
    assert listed["confusion_matrix"] == evaluated["confusion_matrix"]
    assert listed["count"] == len(listed["errors"]) == _off_diagonal(evaluated["confusion_matrix"])
    if where == "mislabelled":
        assert listed["count"] >= 8  # at least half the swapped copies are wrong
    threshold = evaluated["threshold"]
    for e in listed["errors"]:
        assert e["label"] != e["predicted"]
        # The JSON rounds to 6 decimals: a probability within rounding of the threshold may
        # print on either side of it (the tiny run's scores lie a few 1e-4 apart, where its
        # training put them: that differs between CPUs).
        on_threshold = abs(e["probability"] - threshold) <= 5e-7
        assert on_threshold or (e["predicted"] == "PNEUMONIA") == (e["probability"] >= threshold)
        assert Path(e["image"]).is_file() and e["image"].endswith(e["path"])
    margins = [e["margin"] for e in listed["errors"]]
    assert margins == sorted(margins, reverse=True)  # most confident first

    code, out, _ = cli_main(capsys, "errors", *args)
    assert code == 0
    head, *rows = out.splitlines()
    count, n = map(int, re.match(r"(\d+) of (\d+) images misclassified", head).groups())
    assert (count, n) == (listed["count"], evaluated["n"])
    assert [r.split()[-1] for r in rows[1:]] == [e["image"] for e in listed["errors"]]
    code, out, _ = cli_main(capsys, "evaluate", *args)
    cm = json.loads(re.search(r"confusion +(\[\[.*\]\])", out).group(1))
    assert _off_diagonal(cm) == count


def test_errors_by_run_id(capsys, isolated_store, tiny_run_dir):
    shutil.copytree(tiny_run_dir, isolated_store / "tiny")
    data = ["--data", str(_data_root(tiny_run_dir)), "--split", "internal_test"]
    code, out, err = cli_main(capsys, "errors", "--run", "tiny", *data, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["set"].startswith("internal_test")
    assert listed["count"] == _off_diagonal(listed["confusion_matrix"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("both", "give exactly one of --run ID or --checkpoint PATH"),
        ("neither", "give exactly one of --run ID or --checkpoint PATH"),
        ("missing folder", "no such folder"),
        ("unknown run", "no run 'no-such-run'"),
        ("bad split", "invalid choice"),
        ("no data", "--data"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, tiny_run_dir, tmp_path, case, message):
    ckpt, data = ["--checkpoint", str(tiny_run_dir)], ["--data", str(_data_root(tiny_run_dir))]
    argv = {
        "both": ["--run", "x", *ckpt, *data],
        "neither": data,
        "missing folder": [*ckpt, "--data", str(tmp_path / "nope")],
        "unknown run": ["--run", "no-such-run", *data],
        "bad split": [*ckpt, *data, "--split", "holdout"],
        "no data": ckpt,
    }[case]
    code, out, err = cli_main(capsys, "errors", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_a_mistake_in_a_real_terminal_shows_no_traceback(tiny_run_dir):
    result = run_cli("errors", "--data", str(_data_root(tiny_run_dir)), timeout=300)
    assert result.returncode == 2
    assert result.stderr == "error: give exactly one of --run ID or --checkpoint PATH\n"


# --------------------------------------------------------------------------- helpers


def _set(labels, probs, threshold=0.3, paths=None) -> EvalSet:
    paths = paths or [f"test/X/person{i}_bacteria_{i}.jpeg" for i in range(len(labels))]
    return EvalSet("k", "hand-made", "test", np.array(labels), np.array(probs), threshold, paths)


def test_confidence_is_measured_in_log_odds_from_the_threshold():
    # At a threshold of 0.08, a pneumonia film at 0.001 (0.079 below it) is a firmer call
    # than a normal film at 0.3 (0.22 above): 4.5 against 1.6 in log-odds.
    s = _set([0, 1, 1, 0], [0.3, 0.001, 0.9, 0.01], threshold=0.08)
    assert list(mistakes.misclassified(s)) == [1, 0]
    assert list(mistakes.decisions(s)) == [1, 0, 1, 0]
    assert mistakes.margin(np.array([0.001, 0.3]), 0.08) == pytest.approx([4.46, 1.60], abs=0.01)
    assert mistakes.margin(np.array([0.08]), 0.08)[0] == pytest.approx(0)


def test_cells_and_table_follow_the_threshold():
    s = _set([0, 0, 1, 1, 1], [0.3, 0.1, 0.29, 0.9, 0.5], threshold=0.3)
    table = gallery.image_table(s)
    assert list(table["cell"]) == ["FP", "TN", "FN", "TP", "TP"]  # 0.3 is on: PNEUMONIA
    assert list(table["patient"]) == ["P0", "P1", "P2", "P3", "P4"]
    assert list(gallery.cell_images(s, "TP").index) == [3, 4]
    assert list(gallery.cell_images(s, "TP", "borderline").index) == [4, 3]
    with pytest.raises(UserError, match="unknown confusion cell"):
        gallery.cell_images(s, "XX")


def test_discordant_pairs_match_mcnemar_in_any_order():
    a = _set([0, 0, 1, 1, 1, 0], [0.9, 0.1, 0.2, 0.8, 0.95, 0.05], threshold=0.5)
    probs_b = np.array([0.05, 0.1, 0.7, 0.2, 0.4, 0.6])  # per image, in a's order
    order = [5, 3, 1, 0, 4, 2]  # b scored the same images in another order
    b = _set(a.labels[order], probs_b[order], 0.5, [a.paths[i] for i in order])
    # a right, b wrong: 3, 4, 5 (b surest on 3; 4 and 5 tie); b right, a wrong: 0, 2
    pairs = mistakes.discordant(a, b)
    test = stats.mcnemar_exact(*mistakes.paired_correct(a, b))
    assert (test["n10"], test["n01"]) == (3, 2)
    assert list(pairs.loc[pairs["right"] == "A", "file"]) == [a.paths[i] for i in (3, 4, 5)]
    assert list(pairs.loc[pairs["right"] == "B", "file"]) == [a.paths[i] for i in (0, 2)]
    row = pairs.set_index("file").loc[a.paths[2]]
    assert (row["probability_a"], row["probability_b"]) == (0.2, 0.7)
    assert (row["decision_a"], row["decision_b"]) == ("NORMAL", "PNEUMONIA")
    other = EvalSet("other", "x", "test", np.array([0]), np.array([0.1]), 0.5, ["a.jpeg"])
    with pytest.raises(UserError, match="different images"):
        mistakes.discordant(a, other)
