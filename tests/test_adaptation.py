"""Label-free site adaptation: AdaBN on a BatchNorm network and a shifted synthetic site,
its refusals, EM's prevalence on scores of known prevalence, the adapted run beside its
source on Compare with a paired test, and the ``shift`` and ``adapt`` verbs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.data.folders import UNLABELLED, labelled_images, site_images
from cxr_core.data.synthetic import make_synthetic_dataset
from cxr_core.errors import UserError
from cxr_core.models.batchnorm import batchnorm_layers
from cxr_core.predict import adaptation, adaptation_catalogue, evalsets
from cxr_core.predict.inference import load_model
from cxr_core.scoring.prior_shift import em_prevalence, reweighted, shifted_threshold
from cxr_core.store.runs import RunStore
from pages.common import runview

CHECKPOINTS = ROOT / "checkpoints"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Another site's labelled films: synthetic radiographs at half the contrast, brighter."""
    base = tmp_path_factory.mktemp("site")
    source = make_synthetic_dataset(base / "source", per_class=24, size=96, seed=5)
    out = base / "site"
    for cls in ("NORMAL", "PNEUMONIA"):
        (out / cls).mkdir(parents=True)
        for file in sorted((source / "train" / cls).glob("*.png")):
            pixels = np.asarray(Image.open(file), dtype=float)
            Image.fromarray(np.clip(0.5 * pixels + 110, 0, 255).astype(np.uint8)).save(
                out / cls / file.name
            )
    return out


@pytest.fixture
def tiny(tiny_run_dir) -> str:
    """The session's tiny small_cnn run, copied into this test's store."""
    shutil.copytree(tiny_run_dir, RunStore().root / "tiny")
    return "tiny"


def test_a_sites_films_are_read_without_their_labels(site, tmp_path):
    _, labelled, _ = labelled_images(site)
    base, films, name = site_images(site)
    assert base == site and [s.path for s in films] == [s.path for s in labelled]
    assert {s.label for s in films} == {UNLABELLED} and "48 images" in name
    flat = tmp_path / "flat"
    shutil.copytree(site, flat / "day1")  # any sub-folders, no class folders at the top
    base, films, _ = site_images(flat)
    assert len(films) == 48 and all(s.path.startswith("day1/") for s in films)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        site_images(tmp_path / "empty")


def _digest(folder: Path) -> dict[str, str]:
    """Every file of a run folder (its derived graphs/ included) by its SHA-256."""
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_adabn_changes_a_batchnorm_networks_predictions_and_leaves_its_source_alone(tiny, site):
    source = RunStore().get(tiny)
    before = _digest(source.path)
    run = adaptation.adapt(load_model(source.path), str(site), "bn")
    assert _digest(source.path) == before

    original, adapted = load_model(source.path), load_model(run.path)
    before_set, after_set = (evalsets.score_folder(m, site) for m in (original, adapted))
    assert np.abs(after_set.probs - before_set.probs).max() > 0.01
    for name, layer in batchnorm_layers(adapted.network.model).items():
        learned = batchnorm_layers(original.network.model)[name]
        assert not torch.allclose(layer.running_mean, learned.running_mean)

    record = run.adaptation()
    assert record["method"] == "bn" and record["source_run"] == tiny
    assert record["bn_layers"] == len(batchnorm_layers(original.network.model)) > 0
    assert record["threshold_after"] == record["threshold_before"] == adapted.threshold
    key = after_set.key  # the labelled set is the very films it was adapted on
    assert record["site"]["fingerprint"] == key
    assert adaptation_catalogue.figures_label(run, key) == adaptation_catalogue.ON_THESE_FILMS
    assert adaptation_catalogue.figures_label(source, key) == adaptation_catalogue.INDUCTIVE
    assert run.status()["status"] == "completed" and run.meta()["tags"] == ["adapted"]
    with pytest.raises(UserError, match="already exists"):
        adaptation.adapt(load_model(source.path), str(site), "bn")


@pytest.mark.parametrize(
    ("checkpoint", "why"),
    [
        ("efficientnet_lite0-frozen-224", "frozen ImageNet backbone: its BatchNorm layers keep"),
        ("mlp-scratch-64", "has no BatchNorm layer"),
    ],
)
def test_adabn_is_refused_where_no_batchnorm_statistics_were_learned(site, checkpoint, why):
    result = run_cli("adapt", "--checkpoint", str(CHECKPOINTS / checkpoint), "--data", str(site))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and why in result.stderr
    assert not any(RunStore().root.glob("*adapted*"))


@pytest.mark.parametrize("prevalence", [0.1, 0.3, 0.75])
@pytest.mark.parametrize("learned", [0.5, 0.74])
def test_em_recovers_a_known_prevalence(prevalence, learned):
    """Calibrated scores under the learned prior (two unit Gaussians two apart), on films
    of another prevalence: EM finds it within 0.05."""
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < prevalence
    x = rng.normal(np.where(labels, 1.0, -1.0), 1.0)
    probs = 1 / (1 + np.exp(-(2 * x + np.log(learned / (1 - learned)))))
    estimate = em_prevalence(probs, learned)
    assert abs(estimate - prevalence) < 0.05
    # The moved threshold decides on the model's probabilities as the original one does
    # on the posteriors re-weighted to the estimated prevalence.
    moved = shifted_threshold(0.5, learned, estimate)
    assert np.array_equal(probs >= moved, reweighted(probs, learned, estimate) >= 0.5)
    assert (moved > 0.5) == (estimate < learned)


def test_an_adapted_run_stands_beside_its_source_on_compare_with_a_paired_test(tiny, site):
    store = RunStore()
    run = adaptation.adapt(load_model(store.get(tiny).path), str(site), "bn")
    for ident in (tiny, run.id):
        evalsets.save(
            store.get(ident), evalsets.score_folder(load_model(store.get(ident).path), site)
        )
    key = run.adaptation()["site"]["fingerprint"]

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.query_params["runs"] = [tiny, run.id]
    at.query_params["set"] = key
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="compare_set").value == key
    summary = at.dataframe[0].value
    figures = dict(zip(summary["run"], summary["figures"]))
    assert figures == {
        tiny: adaptation_catalogue.INDUCTIVE,
        run.id: adaptation_catalogue.ON_THESE_FILMS,
    }
    assert any("Adapted without labels" in w.value for w in at.warning)
    (verdict,) = [i.value for i in at.info if "Paired test" in i.value]
    assert "McNemar" in verdict
    # On Runs, the run's label in every picker and its row say it was adapted.
    assert runview.run_label(run).endswith("adapted without labels)")
    rows = runview.runs_table([store.get(tiny), run]).set_index("run")["adapted"]
    assert rows[tiny] == "" and rows[run.id].startswith(f"adapted from {tiny} (bn) on ")


def test_the_shift_and_adapt_verbs(tiny, site):
    result = run_cli("shift", "--run", tiny, "--data", str(site), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 48 and 0 <= report["share_called"] <= 1
    assert report["training_prevalence"] == pytest.approx(0.5, abs=0.1)
    assert report["ks_statistic"] is not None and report["batchnorm_shift"] > 0
    assert report["batchnorm_shift_val"] is not None  # the synthetic training set is here
    assert len(report["reading"]) >= 3
    text = run_cli("shift", "--run", tiny, "--data", str(site))
    assert text.returncode == 0 and "labels not used" in text.stdout

    result = run_cli("adapt", "--run", tiny, "--data", str(site), "--method", "bn", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["figures"] == adaptation_catalogue.ON_THESE_FILMS and out["source_run"] == tiny
    assert load_model(RunStore().get(out["run"]).path).run_id == out["run"]

    for args in (
        ("adapt", "--run", tiny, "--data", str(site), "--method", "bn"),  # made already
        ("adapt", "--run", tiny, "--data", str(site / "nowhere")),
        ("adapt", "--run", tiny, "--data", str(site), "--method", "tta"),
        ("shift", "--data", str(site)),  # no run
        ("shift", "--run", tiny, "--data", "synthetic:40"),  # a Kaggle root without test/
    ):
        bad = run_cli(*args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, (args, bad.stderr)
        assert bad.stderr.startswith("error:")
