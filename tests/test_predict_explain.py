"""Predict & explain through AppTest: the threshold on the probability bar and in words,
one copy of a file uploaded twice, the colour scale, and the CAM checks (where the map's
energy sits; ROAD on request) agreeing with cxr_core.predict.cam_checks on the same image."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import film_with_a_map
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.data.synthetic import radiograph
from cxr_core.predict import cam_checks
from cxr_core.predict.inference import explain, load_model, predict
from pages.views import cam

pytestmark = pytest.mark.numeric  # run again on the AVX2/fp32 path by .ci/run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path, monkeypatch, tiny_run_dir) -> Path:
    """The session's tiny run as the only (bundled) model."""
    shutil.copytree(tiny_run_dir, tmp_path / "bundled" / "bundled-tiny")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "bundled"))
    return tmp_path / "bundled" / "bundled-tiny"


def _png(pneumonia: bool, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(radiograph(np.random.default_rng(seed), 256, pneumonia)[0]).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def test_percents_tell_a_probability_from_its_threshold():
    assert cam.percents(0.086, 0.078) == ("8.6%", "7.8%")
    assert cam.percents(0.50312, 0.50291) == ("50.31%", "50.29%")
    assert cam.percents(0.5, 0.5) == ("50.0000%", "50.0000%")


def _predict_page(uploads: list[tuple[str, bytes, str]]) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/predict.py").run()
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_threshold_duplicates_and_cam_checks(tiny):
    model = load_model(tiny)
    chest = film_with_a_map(model, lambda seed: _png(True, seed), 3)
    other = film_with_a_map(model, lambda seed: _png(False, seed), 4)
    at = _predict_page(
        [
            ("chest.png", chest, "image/png"),
            ("copy of chest.png", chest, "image/png"),
            ("other.png", other, "image/png"),
        ]
    )
    assert [s.value for s in at.subheader] == ["chest.png", "other.png"]
    assert any(
        c.value.startswith("copy of chest.png: the same file as chest.png") for c in at.caption
    )
    assert len([m for m in at.metric if m.label == "P(pneumonia)"]) == 2

    (pred,) = predict(model, [io.BytesIO(chest)])
    bars = [h.proto.body for h in at.get("html") if "threshold" in h.proto.body]
    assert f"width:{100 * pred.probability:.2f}%" in bars[0]
    assert f"left:{100 * pred.threshold:.2f}%" in bars[0]  # the tick sits at the threshold
    side = "at or above" if pred.label == "PNEUMONIA" else "below"
    p_text, t_text = cam.percents(pred.probability, pred.threshold)
    assert p_text != t_text
    words = f"{p_text} is {side} the run's threshold {t_text}"
    assert any(words in m.value for m in at.markdown)
    assert sum("relevance, scaled per image" in h.proto.body for h in at.get("html")) == 2

    shares = cam_checks.shortcut_shares(explain(model, pred.pixels.copy(), "gradcam"))
    energy = [c.value for c in at.caption if c.value.startswith("CAM energy")]
    assert len(energy) == 2
    assert energy[0].startswith(
        f"CAM energy: {shares.border:.0%} in the border (outer 10%), "
        f"{shares.outside_lungs:.0%} outside the usual lung fields"
    )
    assert not any("ROAD" in c.value for c in at.caption)


def test_road_on_request(tiny):
    model = load_model(tiny)
    image = film_with_a_map(model, lambda seed: _png(True, seed), 5)
    at = _predict_page([("chest.png", image, "image/png")])
    at.toggle(key="predict_road").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    (pred,) = predict(model, [io.BytesIO(image)])
    heat = explain(model, pred.pixels.copy(), "gradcam", pred.predicted)
    scores = cam_checks.road(model, pred.pixels.copy(), heat, pred.predicted)
    baseline = cam_checks.road(
        model, pred.pixels.copy(), cam_checks.random_map(heat.shape[0], seed=0), pred.predicted
    )
    (road,) = [c.value for c in at.caption if c.value.startswith("ROAD")]
    assert road.startswith(
        f"ROAD faithfulness {scores.combined:+.3f} against {baseline.combined:+.3f}"
    )
