"""Ensembles in the app, through AppTest on two tiny synthetic runs that share one
validation split: made on the Compare page in one click (a shared deployment's visitor
owns it; runs on different splits are refused with nothing made), offered on Predict
with its probability against its threshold and a CAM per member, a member's CAMs in the
error gallery, and a member that cannot be deleted while its ensemble exists."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import _session_cache, run_cli
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.data.synthetic import radiograph
from cxr_core.errors import UserError
from cxr_core.predict import ensembles, evalsets
from cxr_core.predict.inference import explain, load_model, predict, prepare
from cxr_core.store.runs import RunStore, may_change
from pages.common import gallery, runview
from pages.views import cam

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
MAKE = "Make an ensemble of these runs"


@pytest.fixture(scope="module")
def other_tiny(tiny_run_dir, tmp_path_factory) -> Path:
    """A second tiny run on the same data and seed (so the same split), another learning
    rate and one epoch: other weights, other probabilities."""
    runs = tmp_path_factory.mktemp("other-tiny")
    args = ["--data", "synthetic:40", "--img-size", "64", "--batch-size", "16"]
    result = run_cli(
        "train",
        "--arch",
        "small_cnn",
        *args,
        "--epochs",
        "1",
        "--lr",
        "3e-3",
        "--run-id",
        "other",
        env={"CXR_RUNS_DIR": str(runs), "CXR_CACHE_DIR": str(_session_cache(tmp_path_factory))},
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr
    return runs / "other"


@pytest.fixture
def store(isolated_store, tiny_run_dir, other_tiny, tmp_path, monkeypatch) -> RunStore:
    """The two tiny runs, ``tiny`` and ``other``, in this test's store; no bundled runs."""
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled-runs"))
    shutil.copytree(tiny_run_dir, isolated_store / "tiny")
    shutil.copytree(other_tiny, isolated_store / "other")
    return RunStore()


def _listing(store: RunStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


def _open(page: str, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for name, value in (query or {}).items():
        at.query_params[name] = value
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _click_make(at: AppTest) -> AppTest:
    next(b for b in at.button if b.label == MAKE).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- Compare


def test_compare_makes_an_ensemble_of_the_chosen_runs_a_visitor_owns(store, monkeypatch):
    monkeypatch.setenv("CXR_SHARED", "1")  # served to others: this session is a visitor
    at = _open("pages/compare.py", {"runs": ["tiny", "other"]})
    assert at.multiselect(key="compare_runs").value == ["tiny", "other"]
    before = _listing(store)

    _click_make(at)
    (made,) = set(_listing(store)) - set(before)
    run = store.get(made)
    assert ensembles.is_ensemble(run) and run.config()["members"] == ["tiny", "other"]
    assert run.status()["status"] == "completed"
    # Owned by this browser session, as a run it launched from Train would be.
    owner = at.session_state["_owner"]
    assert run.meta()["owner"] == owner
    assert may_change(run, owner, operator=False)
    assert not may_change(run, "another-session", operator=False)
    # Added to the chosen runs (and the URL), and named in the success message.
    assert at.multiselect(key="compare_runs").value == ["tiny", "other", made]
    assert list(at.query_params["runs"]) == ["tiny", "other", made]
    (said,) = at.success
    assert f"**{made}**" in said.value
    summary = at.dataframe[0].value
    assert list(summary["run"]) == ["tiny", "other", made]

    # The three chosen now include an ensemble: refused in one line, nothing made.
    _click_make(at)
    (error,) = at.error
    assert f"{made} is an ensemble itself" in error.value and "\n" not in error.value
    assert _listing(store) == sorted([*before, made])


def test_compare_refuses_runs_validated_on_different_images(store):
    record = store.get("other")
    evaluation = record.evaluation()
    val = evaluation["splits"]["val"]
    for key in ("paths", "probs", "labels"):
        val[key] = val[key][1:]  # one validation image fewer: another split
    (record.path / "evaluation.json").write_text(json.dumps(evaluation))
    at = _open("pages/compare.py", {"runs": ["tiny", "other"]})
    before = _listing(store)

    _click_make(at)
    (error,) = at.error
    assert error.value.startswith("the members were validated on different images")
    assert "\n" not in error.value and not at.success
    assert _listing(store) == before
    assert at.multiselect(key="compare_runs").value == ["tiny", "other"]


# --------------------------------------------------------------------------- Predict


def _png(pneumonia: bool, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph(np.random.default_rng(seed), 256, pneumonia)[0]).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def test_predict_offers_ensembles_whose_members_have_weights(store):
    pair = ensembles.create(store, ["tiny", "other"], run_id="pair")
    shutil.copytree(store.get("other").path, store.root / "gone")
    broken = ensembles.create(store, ["tiny", "gone"], run_id="broken")
    assert {"pair", "broken"} <= {r.id for r in runview.model_runs(store)}
    (store.root / "gone" / "model.safetensors").unlink()
    offered = {r.id for r in runview.model_runs(store)}
    assert pair.id in offered and broken.id not in offered and "gone" not in offered


def test_predict_shows_the_ensemble_against_its_threshold_and_a_cam_per_member(store):
    run = ensembles.create(store, ["tiny", "other"], run_id="pair")
    chest = _png(True, 3)
    at = _open("pages/predict.py")
    at.multiselect(key="predict_models").set_value(["pair"]).run()
    at.file_uploader[0].set_value([("chest.png", chest, "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]

    model = ensembles.load_any(run.path)
    (pred,) = ensembles.predict_any(model, [io.BytesIO(chest)])
    assert pred.threshold == pytest.approx(run.evaluation()["threshold"])
    singles = {
        i: predict(load_model(store.get(i).path), [io.BytesIO(chest)])[0] for i in pred.members
    }
    assert len({round(p.probability, 6) for p in singles.values()}) == 2  # two other models
    assert pred.probability == pytest.approx(np.mean([p.probability for p in singles.values()]))

    (metric,) = [m for m in at.metric if m.label == "P(pneumonia)"]
    assert metric.value == f"{pred.probability:.1%}"
    bars = [h.proto.body for h in at.get("html") if "threshold" in h.proto.body]
    shown = [(pred, "the ensemble's"), *((singles[i], "its") for i in ("tiny", "other"))]
    assert len(bars) == len(shown)
    for bar, (p, whose) in zip(bars, shown):  # the ensemble's bar, then each member's
        assert f"width:{100 * p.probability:.2f}%" in bar
        assert f"left:{100 * p.threshold:.2f}%" in bar
        p_text, t_text = cam.percents(p.probability, p.threshold)
        side = "at or above" if p.label == "PNEUMONIA" else "below"
        assert any(f"{p_text} is {side} {whose} threshold {t_text}" in m.value for m in at.markdown)
    assert [m.value for m in at.markdown if m.value.startswith("**member")] == [
        "**member tiny**",
        "**member other**",
    ]
    # the upload, then per member an overlay, or why there is none (an empty map: the member
    # found no evidence for the ensemble's decision on this film)
    overlays = len(at.image) - 1
    empty = [i.value for i in at.info if "found no evidence" in i.value]
    assert overlays + len(empty) == 2
    assert sum("relevance, scaled per image" in h.proto.body for h in at.get("html")) == overlays
    assert [b.label for b in at.get("download_button")] == ["PNG"] * overlays


# --------------------------------------------------------------------------- gallery


def _gallery(run_id: str) -> None:
    """The confusion gallery of ``run_id`` on its internal test split (AppTest runs it)."""
    from cxr_core.predict.evalsets import run_sets
    from cxr_core.store.runs import RunStore
    from pages.views import mistakes

    run = RunStore().get(run_id)
    mistakes.confusion_gallery(
        run, next(s for s in run_sets(run).values() if s.split == "internal_test")
    )


def test_the_gallery_shows_each_members_cam_for_an_ensemble(store):
    run = ensembles.create(store, ["tiny", "other"], run_id="pair")
    evalset = next(s for s in evalsets.run_sets(run).values() if s.split == "internal_test")
    at = AppTest.from_function(_gallery, args=("pair",), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    cell = at.radio[0].value
    first = gallery.cell_images(evalset, cell).iloc[0]
    file = gallery.image_file(evalset, first["file"])
    assert at.image[0].proto.imgs[0].caption == file.name  # the film, before a CAM is asked

    at.toggle[0].set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [i.proto.imgs[0].caption for i in at.image]
    assert captions[:2] == [f"member tiny · {file.name}", f"member other · {file.name}"]

    # Each member's own CAM, for the class the ensemble decided on.
    target = ["NORMAL", "PNEUMONIA"].index(first["decision"])
    views = cam.file_views(run, file, "gradcam", target)
    assert list(views) == ["tiny", "other"]
    for member, (pixels, heat) in views.items():
        model = load_model(store.get(member).path)
        assert np.array_equal(pixels, prepare(model, file))
        assert np.allclose(heat, explain(model, pixels.copy(), "gradcam", target), atol=1e-6)


# --------------------------------------------------------------------------- deleting


def test_a_member_of_an_ensemble_cannot_be_deleted(store):
    ensembles.create(store, ["tiny", "other"], run_id="pair")
    ensembles.create(store, ["other", "tiny"], run_id="pair2")
    with pytest.raises(UserError) as refused:
        store.delete(store.get("tiny"))
    message = str(refused.value)
    assert "\n" not in message
    assert message == "run tiny is a member of the ensemble(s) pair, pair2: delete those first"
    assert store.get("tiny").weights.exists()
    store.delete(store.get("pair"))
    store.delete(store.get("pair2"))
    store.delete(store.get("tiny"))  # no ensemble uses it any more
    assert _listing(store) == ["other"]


def test_runs_page_says_an_ensemble_has_no_training_of_its_own(store):
    """The bundled ensemble read "best epoch None" and "No training step logged yet"."""
    ensembles.create(store, ["tiny", "other"], run_id="pair")
    at = _open("pages/runs.py")
    at.session_state["runs_selected"] = ["pair"]
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "None" not in text and "No training step logged yet" not in text
    assert "no training of its own" in text and "choose its members" in text


def test_a_cell_count_reads_as_words():
    assert gallery.counted(1, "missed pneumonias") == "1 missed pneumonia"
    assert gallery.counted(3, "missed pneumonias") == "3 missed pneumonias"
    assert gallery.counted(1, "false alarms") == "1 false alarm"
