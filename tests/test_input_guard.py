"""The input guard: what is plainly not a chest film is flagged, real films are not, and
a reference is never used for weights it was not computed from."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA
from PIL import Image

from cxr_core.data.decode_cache import decode_images
from cxr_core.data.folders import SplitManifest
from cxr_core.data.imaging import colour_saturation, load_gray
from cxr_core.models import weights_file
from cxr_core.predict import input_guard
from cxr_core.predict.ensembles import load_any
from cxr_core.predict.inference import load_model
from cxr_core.store import records
from cxr_core.store.bundle import export_run
from cxr_core.store.runs import Run, RunStore

BUNDLED = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file())


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour_scene() -> bytes:
    """A photo-like scene in saturated colours."""
    y, x = np.mgrid[0:300, 0:400]
    scene = np.zeros((300, 400, 3), np.uint8)
    scene[..., 0] = 40 + 200 * (y < 150)  # a red sky,
    scene[..., 1] = 60 + 180 * ((x - 200) ** 2 + (y - 200) ** 2 < 60**2)  # a green disc,
    scene[..., 2] = (255 * x / 400).astype(np.uint8)  # a blue gradient
    return _png(scene)


def _probes(film: Path) -> dict[str, bytes]:
    """A uniform image, noise, a saturated colour scene and ``film`` turned 90 degrees."""
    rng = np.random.default_rng(0)
    return {
        "uniform": _png(np.full((900, 700), 128, np.uint8)),
        "noise": _png(rng.integers(0, 256, (300, 300), dtype=np.uint8)),
        "colour": _colour_scene(),
        "rotated": _png(np.rot90(np.asarray(Image.open(film).convert("L"))).copy()),
    }


def _val_film(run: Run) -> Path:
    split = run.split()
    return Path(split["root"]) / split["splits"]["val"][0]["path"]


@pytest.fixture
def tiny(tmp_path, tiny_run_dir) -> Run:
    shutil.copytree(tiny_run_dir, tmp_path / "tiny")
    return Run(tmp_path / "tiny")


def test_the_tiny_run_flags_each_probe_and_passes_its_own_films(tiny):
    # made when the run completed, from its validation films, and kept beside its weights
    assert (tiny.path / records.GUARD).is_file()
    model = load_model(tiny.path)
    for name, data in _probes(_val_film(tiny)).items():
        verdict = input_guard.guard(model, data)
        assert not verdict.in_distribution, name
        assert verdict.message.startswith(input_guard.MESSAGE) and verdict.reasons, name
    assert input_guard.guard(tiny, _val_film(tiny).read_bytes()).in_distribution


def test_an_upload_stream_is_left_where_it_was(tiny):
    stream = io.BytesIO(_val_film(tiny).read_bytes())
    (verdict,) = input_guard.check_upload(load_model(tiny.path), [stream])
    assert verdict.in_distribution and stream.tell() == 0


def test_a_stale_reference_is_not_used(tiny):
    model = load_model(tiny.path)
    input_guard.guard(model, _val_film(tiny).read_bytes())
    file = tiny.path / records.GUARD
    old = input_guard.weights_digest(tiny.weights)
    assert input_guard.Reference.from_file(file, old) is not None
    state, meta = weights_file.load_weights(tiny.weights)
    changed = {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}
    model.network.model.load_state_dict(changed)
    weights_file.save_weights(tiny.weights, model.network.model, meta)
    new = input_guard.weights_digest(tiny.weights)
    assert new != old
    assert input_guard.Reference.from_file(file, new) is None
    input_guard.guard(load_model(tiny.path), _val_film(tiny).read_bytes())
    assert input_guard.Reference.from_file(file, new) is not None  # recomputed for them


def test_without_data_or_reference_only_the_image_statistics_run(tiny):
    (tiny.path / records.GUARD).unlink(missing_ok=True)  # as a run of an earlier release
    film = _val_film(tiny).read_bytes()
    split = tiny.split()
    split["root"] = str(tiny.path / "gone")
    (tiny.path / "split.json").write_text(json.dumps(split))
    model = load_model(tiny.path)
    verdict = input_guard.guard(model, film)
    assert verdict.in_distribution and verdict.score is None
    assert "feature check unavailable" in verdict.notes[0]
    flagged = input_guard.guard(model, _png(np.zeros((64, 64), np.uint8)))
    assert not flagged.in_distribution and "near-constant" in flagged.reasons[0]


def _bundled(run_id: str) -> Run:
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip("../shared/data/chest_xray is not present")
    return Run(ROOT / "checkpoints" / run_id)


@pytest.mark.slow
@pytest.mark.parametrize("run_id", BUNDLED)
def test_bundled_runs_flag_the_probes_and_pass_real_films(run_id):
    run = _bundled(run_id)
    model = load_any(run.path)
    members = getattr(model, "members", {run_id: model})
    for member in members.values():  # the shipped reference fits the shipped weights
        file = member.source.parent / records.GUARD
        assert file.stat().st_size < 2 * 2**20
        assert input_guard.Reference.from_file(file, input_guard.weights_digest(member.source))
    film = sorted((SHARED_DATA / "val" / "NORMAL").glob("*.jpeg"))[0]
    for name, data in _probes(film).items():
        assert not input_guard.guard(model, data).in_distribution, name
    for path in sorted((SHARED_DATA / "val").glob("*/*.jpeg")):  # the 16 official films
        verdict = input_guard.guard(model, path)
        assert verdict.in_distribution, (path.name, verdict.reasons)
    split = SplitManifest.from_dict(run.split())
    for member in members.values():
        cfg = member.config
        images = decode_images(SHARED_DATA, split.splits["internal_test"], cfg.img_size, cfg.clahe)
        verdicts = input_guard.guard_pixels(member, images.pixels)
        flagged = sum(not v.in_distribution for v in verdicts)
        assert flagged <= 0.01 * len(verdicts), flagged


def test_the_reference_travels_with_an_exported_run(tiny, tmp_path):
    input_guard.guard(tiny, _val_film(tiny).read_bytes())  # computed and kept
    exported = export_run(tiny, tmp_path / "export")
    assert (exported / records.GUARD).read_bytes() == (tiny.path / records.GUARD).read_bytes()


def test_colour_is_measured_before_the_image_is_made_grey():
    grey = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    as_rgb = _png(np.repeat(grey[..., None], 3, axis=2))  # a film saved in RGB mode
    assert colour_saturation(as_rgb) == 0 and colour_saturation(_png(grey)) == 0
    assert np.array_equal(load_gray(as_rgb), grey)
    assert colour_saturation(_colour_scene()) > input_guard.MAX_SATURATION


def test_a_bundled_run_keeps_its_computed_reference_in_its_overlay(
    tmp_path, tiny_run_dir, monkeypatch
):
    shutil.copytree(
        tiny_run_dir, tmp_path / "bundled" / "tiny", ignore=shutil.ignore_patterns(records.GUARD)
    )  # a bundled run shipped without its reference
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "bundled"))
    run = RunStore().get("tiny")
    assert run.bundled and input_guard.guard(run, _val_film(run).read_bytes()).in_distribution
    assert not (run.path / records.GUARD).exists()  # checkpoints/ is never written
    assert (run.overlay / records.GUARD).is_file()
