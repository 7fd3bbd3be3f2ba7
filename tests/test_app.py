"""The Streamlit app through streamlit.testing's AppTest: every page renders, the Train
page launches a real background run that the Runs page then plots, the Predict page
takes uploads, Compare renders for two runs. Runs live in tmp folders only."""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import imported_by
from PIL import Image
from streamlit.testing.v1 import AppTest

from cxr_core.analysis import plots
from cxr_core.data.synthetic import radiograph
from cxr_core.errors import UserError
from cxr_core.scoring import metrics
from cxr_core.scoring.metrics import MetricInfo
from cxr_core.store.runs import ACTIVE, RunStore
from cxr_core.training.config import TrainConfig, options
from cxr_core.training.presets import PRESETS
from pages.common import forms, runview, uploads

ROOT = Path(__file__).resolve().parents[1]
PAGES = re.findall(r'st\.Page\(\s*"pages/(\w+)\.py"', (ROOT / "app.py").read_text())
"""Every page app.py navigates to, in its order: a new page is tested with no edit here."""
TIMEOUT = 120


@pytest.fixture
def bundled(tmp_path, monkeypatch, tiny_run_dir) -> Path:
    """A bundled-runs folder holding a copy of the session's tiny run."""
    folder = tmp_path / "bundled"
    shutil.copytree(tiny_run_dir, folder / "bundled-tiny")
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(folder))
    return folder


@pytest.fixture
def no_bundled(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled-runs"))


def open_app(page: str = "data") -> AppTest:
    """The app as a browser would open it, on ``page`` (a deep link: app.py runs first)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom(pixels: np.ndarray) -> bytes:
    """A minimal 12-bit MONOCHROME2 DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def wait_for_run(run_id: str, timeout: float = 600) -> dict:
    """Poll the run store until the launched process has finished the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = RunStore().get(run_id).status()
        except UserError:  # the process has not created its folder yet
            status = {}
        if status.get("status") and status["status"] not in ACTIVE:
            return status
        time.sleep(1)
    RunStore().get(run_id).request_cancel()  # leave no training process behind
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


# --------------------------------------------------------------------------- pages


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(bundled, page):
    at = open_app(page)
    assert at.title[0].value
    if page in ("predict", "about"):
        assert any("Not a medical device" in w.value for w in at.warning)


@pytest.mark.parametrize("page", ["app", *PAGES])
def test_no_page_imports_torch_or_scipy_to_draw_itself(page):
    """What a page imports at its top is light: torch, pytorch-grad-cam, scikit-learn,
    scipy and statsmodels cost a fresh server seconds on two cores, and are imported where
    a CAM, a training or a fit needs them (issue 20's first page and page switches)."""
    path = ROOT / ("app.py" if page == "app" else f"pages/{page}.py")
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    heavy = ("torch", "pytorch_grad_cam", "sklearn", "scipy", "statsmodels")
    assert imported_by(f"import {', '.join(sorted(imported))}", heavy) == [], page


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_fresh_machine(no_bundled, page):
    """No runs at all, no dataset: every page still works (synthetic demo data)."""
    at = open_app(page)
    if page in ("runs", "compare", "predict"):
        assert at.info, "an empty store should say what to do"


def test_data_page_counts_and_labels_synthetic(no_bundled):
    at = open_app("data")
    folders = at.dataframe[0].value
    assert set(folders["split"]) == {"train", "val"}
    assert folders.loc[folders["split"] == "train", "NORMAL"].item() == 60
    assert any("synthetic" in m.value for m in at.markdown)
    assert len(at.image) >= 4  # two sample rows, real and augmented previews
    next(b for b in at.button if b.label == "Check every file").click().run()
    assert not at.exception
    assert at.success[0].value == "Every image file can be read."


def test_data_page_bad_folder_is_one_error(no_bundled, tmp_path):
    at = open_app("data")
    at.radio(key="data_kind").set_value("Local folder").run()
    at.text_input[0].set_value(str(tmp_path / "missing"))
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    assert [e.value for e in at.error] == [f"{tmp_path / 'missing'}: no such folder"]

    at.text_input[0].set_value(str(tmp_path))
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1 and "no train/ folder" in at.error[0].value


def test_data_page_refuses_a_test_only_folder_and_points_to_scoring(no_bundled, tmp_path):
    """A folder with only test/ cannot be trained on: one line, nothing chosen, and the way
    to score runs on it instead."""
    for cls in ("NORMAL", "PNEUMONIA"):
        folder = tmp_path / "test-only" / "test" / cls
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(radiograph(np.random.default_rng(i), 64, cls != "NORMAL")[0]).save(
                folder / f"{cls}-{i}.png"
            )
    at = open_app("data")
    before = at.session_state["data_spec"]
    at.radio(key="data_kind").set_value("Local folder").run()
    at.text_input[0].set_value(str(tmp_path / "test-only"))
    at.button[0].click().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "has no train/ to train on" in error and "evaluate --run RUN" in error
    assert at.session_state["data_spec"] == before
    assert not RunStore().root.exists() or not any(RunStore().root.iterdir())


# --------------------------------------------------------------------------- train + runs


def test_train_launches_a_run_and_runs_page_plots_it(no_bundled):
    at = open_app("data")
    at.slider(key="data_synthetic_n").set_value(40).run()
    at.switch_page("pages/train.py").run()
    assert any("synthetic:40" in m.value for m in at.markdown)
    at.multiselect(key="opt_archs").set_value(["small_cnn"])
    at.number_input(key="opt_img_size").set_value(64)
    at.number_input(key="opt_epochs").set_value(2)
    at.number_input(key="opt_batch_size").set_value(16)
    launch = next(b for b in at.run().button if b.label == "Launch run")
    launch.click().run()
    assert not at.exception, [e.value for e in at.exception]
    (run_id,) = at.session_state["launched"]
    # A double click: the same button clicked again from the page before the rerun.
    launch.click().run()
    assert not at.exception
    assert launch.key not in [b.key for b in at.button]
    assert at.session_state["launched"] == [run_id]
    assert len(list((RunStore().root / ".logs").glob("*.json"))) == 1

    assert wait_for_run(run_id)["status"] == "completed"
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table.loc[table["run"] == run_id, "data"].item() == "synthetic"
    (curves,) = chart_specs(at)
    val = [t for t in curves["data"] if t.get("name") == f"{run_id} · val"]
    assert len(val) == 4 and all(len(t["x"]) == 2 for t in val)  # loss, acc, F1, AUC
    final = at.dataframe[1].value  # the run's scores per evaluation set, with 95% CIs
    assert set(final.columns) >= {"evaluated on", "accuracy", "sensitivity", "specificity", "AUC"}
    assert final["accuracy"].str.fullmatch(r"\d+\.\d% \(\d+\.\d-\d+\.\d\)").all()


def test_runs_page_shows_progress_and_cancels(no_bundled):
    """A run whose owner is alive (this process) is active: progress, ETA, a Cancel button."""
    run = RunStore().create({"arch": "small_cnn", "epochs": 3, "data": "synthetic:40"})
    run.set_status("running", phase="training", epoch=2, step=1, steps=4, eta_s=90)
    at = open_app("runs")
    (bar,) = [p for p in at.get("progress") if run.id in p.proto.text]
    assert "epoch 2/3" in bar.proto.text and "ETA 1 min 30 s" in bar.proto.text
    assert at.dataframe[0].value.loc[0, "progress"] == pytest.approx(5 / 12)
    next(b for b in at.button if b.key == f"cancel_{run.id}").click().run()
    assert not at.exception
    assert run.cancel_requested()
    assert any(c.value == "cancelling ..." for c in at.caption)


def test_a_run_training_now_is_drawn_whatever_the_picker_holds(no_bundled):
    """Also a run the page first saw inactive, or one the picker lost: the live chart must
    not depend on when the page looked or on the picker's state."""
    store = RunStore()
    store.create({"arch": "small_cnn", "epochs": 1}, "a-old").set_status("completed")
    at = open_app("runs")
    assert at.multiselect(key="runs_selected").value == ["a-old"]
    late = store.create({"arch": "small_cnn", "epochs": 1}, "b-late")
    late.set_status("interrupted")
    at.run()
    late.set_status("running", phase="training", epoch=1, step=1, steps=2)
    late.append_history({"type": "step", "epoch": 1, "step": 1, "global_step": 1, "loss": 0.7})
    at.multiselect(key="runs_selected").set_value(["a-old"]).run()
    assert not at.exception, [e.value for e in at.exception]
    names = {t.get("name", "") for spec in chart_specs(at) for t in spec["data"]}
    assert any(n.startswith("b-late") for n in names), names


def _finished(store: RunStore, run_id: str, owner: str | None = None):
    run = store.create({"arch": "small_cnn", "epochs": 1, "meta": {"owner": owner}}, run_id)
    run.set_status("completed")
    return run


def _manage(at: AppTest, run_id: str) -> AppTest:
    at.selectbox(key="manage_run").set_value(run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_on_a_shared_deployment_a_visitor_changes_only_its_own_runs(no_bundled, monkeypatch):
    monkeypatch.setenv("CXR_SHARED", "1")
    store = RunStore()
    _finished(store, "theirs", owner="someone-else")
    at = open_app("runs")
    _manage(at, "theirs")
    assert all(t.disabled for t in at.text_input if t.label in ("Name", "Tags"))
    assert next(b for b in at.button if b.label.startswith("Delete")).disabled
    # A run this browser session launched is its own to rename and delete.
    _finished(store, "mine", owner=at.session_state["_owner"])
    at.run()
    _manage(at, "mine")
    next(t for t in at.text_input if t.label == "Name").set_value("my first run")
    next(t for t in at.text_input if t.label == "Tags").set_value("demo")
    next(b for b in at.button if b.label == "Save").click().run()
    assert store.get("mine").meta()["name"] == "my first run"
    assert store.get("mine").meta()["tags"] == ["demo"]
    next(b for b in at.button if b.label.startswith("Delete this run")).click().run()
    next(b for b in at.button if b.label == "Delete for good").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [r.id for r in store.list()] == ["theirs"]


def test_at_the_machine_itself_the_user_is_an_operator(no_bundled):
    store = RunStore()
    _finished(store, "theirs", owner="someone-else")
    at = _manage(open_app("runs"), "theirs")
    assert not any(t.disabled for t in at.text_input if t.label in ("Name", "Tags"))
    assert not next(b for b in at.button if b.label.startswith("Delete")).disabled


def test_train_page_says_the_expected_duration_before_the_click(no_bundled):
    at = open_app("train")
    at.number_input(key="opt_img_size").set_value(64).run()
    assert any("No earlier run of small_cnn" in c.value for c in at.caption)
    next(b for b in at.button if b.key == "measure_costs").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (line,) = [c.value for c in at.caption if c.value.startswith("Expected on this machine")]
    assert re.search(r"small_cnn at 64 px: about .+ on a quiet CPU.* \(\d+ img/s measured", line)
    assert "at most" not in line  # a measured rate is no upper bound on a shared CPU


def test_train_rejects_a_bad_combination_without_launching(no_bundled):
    at = open_app("train")
    at.toggle(key="opt_pretrained").set_value(True)
    at.multiselect(key="opt_archs").set_value(["small_cnn"]).run()
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception
    assert "no pretrained weights" in at.error[0].value
    assert not (RunStore().root / ".logs").exists()


def test_preset_fills_the_form(no_bundled):
    at = open_app("train")
    at.selectbox(key="opt_preset").set_value("tiny demo (synthetic)").run()
    assert not at.exception
    assert at.multiselect(key="opt_archs").value == ["small_cnn"]
    assert at.number_input(key="opt_epochs").value == 4
    assert at.session_state["data_spec"] == "synthetic:100"


def _form(at: AppTest) -> dict:
    """The Train page's options as the form holds them, by option name."""
    return {
        o.name: at.session_state[
            f"aug_{o.name[8:]}" if o.name.startswith("augment.") else f"opt_{o.name}"
        ]
        for o in options()
        if o.name not in ("arch", "data")
    }


@pytest.mark.parametrize("first", list(PRESETS))
def test_every_preset_after_every_other_sets_the_whole_form_and_says_so(no_bundled, first):
    """A preset is a whole starting point: after any other one, the form holds exactly what
    it names and the defaults for the rest ("tiny demo" after "quick on CPU" kept
    pretrained and frozen stages, and the launch failed); it says what it changed, the data
    included, offers the data it replaced, and the form it leaves can be launched."""
    at = open_app("train")
    for second in [p for p in PRESETS if p != first]:
        at.selectbox(key="opt_preset").set_value(first).run()
        at.selectbox(key="opt_preset").set_value(second).run()
        assert not at.exception, (first, second)
        want = {o.name: o.default for o in options() if o.name not in ("arch", "data")}
        want |= {k: v for k, v in PRESETS[second].items() if k not in ("arch", "data")}
        assert _form(at) == want, (first, second)
        if "arch" in PRESETS[second]:
            assert at.multiselect(key="opt_archs").value == [PRESETS[second]["arch"]]
        said = next(i.value for i in at.info if i.value.startswith(f"Preset *{second}*"))
        if "data" in PRESETS[second] and PRESETS[first].get("data") != PRESETS[second]["data"]:
            assert f"Data `{PRESETS[second]['data']}`" in said
        for arch in at.multiselect(key="opt_archs").value:
            values = {**want, "arch": arch, "data": at.session_state["data_spec"]}
            TrainConfig.from_options(values).check_launch()


def test_a_preset_that_changes_the_data_offers_the_folder_back(no_bundled, tmp_path):
    at = open_app("train")
    at.session_state["data_spec"] = str(tmp_path)
    at.selectbox(key="opt_preset").set_value("tiny demo (synthetic)").run()
    assert at.session_state["data_spec"] == "synthetic:100"
    keep = next(b for b in at.button if b.label == f"Keep my data ({tmp_path})")
    keep.click().run()
    assert at.session_state["data_spec"] == str(tmp_path)
    assert not at.exception


def test_every_training_option_has_a_widget_on_the_train_page(no_bundled):
    """The Train page's widgets come from TrainConfig's fields: an option added there
    shows up here with its default, with no edit to the page."""
    at = open_app("train")
    for opt in options():
        if opt.name in ("arch", "data"):
            continue  # the architecture picker and the Data page
        key = f"aug_{opt.name.split('.', 1)[1]}" if opt.name.startswith("augment.") else None
        key = key or f"opt_{opt.name}"
        assert at.session_state[key] == opt.default, opt.name


def test_augmentation_toggle_is_the_same_on_the_data_and_train_pages(no_bundled):
    at = open_app("data")
    data_toggle = next(t for t in at.toggle if t.label == "Augment training images")
    at.switch_page("pages/train.py").run()
    train_toggle = next(t for t in at.toggle if t.label == "Augment training images")
    assert data_toggle.value is True and train_toggle.value is True
    train_toggle.set_value(False).run()
    at.switch_page("pages/data.py").run()
    assert next(t for t in at.toggle if t.label == "Augment training images").value is False


# --------------------------------------------------------------------------- predict


def test_predict_uploads_show_probability_and_overlay(bundled):
    at = open_app("predict")
    assert at.multiselect(key="predict_models").value == ["bundled-tiny"]
    rng = np.random.default_rng(0)
    image, _ = radiograph(rng, 256, pneumonia=True)
    uploads = [
        ("chest.png", png(image), "image/png"),
        ("chest16.png", png(image.astype(np.uint16) * 257), "image/png"),
        ("../../etc/chest.dcm", dicom(image[:200, :180]), "application/dicom"),
        ("broken.png", b"\x89PNG not really", "image/png"),
    ]
    at.file_uploader[0].set_value(uploads).run()
    assert not at.exception, [e.value for e in at.exception]
    probabilities = [m.value for m in at.metric if m.label == "P(pneumonia)"]
    assert len(probabilities) == 3 and all(p.endswith("%") for p in probabilities)
    overlays = [c for img in at.image for c in img.captions if c.startswith("gradcam")]
    assert len(overlays) == 3
    assert [e.value for e in at.error] == [
        "broken.png: not an image PIL can read (JPEG, PNG) or a DICOM file"
    ]
    assert any(s.value == "chest.dcm" for s in at.subheader)  # shown, never a path

    at.selectbox(key="predict_method").set_value("eigencam")
    at.slider(key="predict_opacity").set_value(0.8).run()
    assert not at.exception
    assert sum(c.startswith("eigencam") for img in at.image for c in img.captions) == 3
    assert len(at.get("download_button")) == 3


def test_predict_warns_beside_the_probability_when_an_upload_is_not_a_chest_film(bundled):
    """The input guard on Predict: a uniform grey image and a colour scene get the warning
    beside their probability; a film like the run's own gets none."""
    film = next(iter(uploads.demo_images().values()))
    grey = png(np.full((700, 900), 128, np.uint8))
    colour = np.zeros((300, 400, 3), np.uint8)
    colour[..., 0], colour[:150, :, 1] = 230, 200
    at = open_app("predict")
    at.file_uploader[0].set_value(
        [("film.png", film, "image/png"), ("grey.png", grey, "image/png"),
         ("scene.png", png(colour), "image/png")]
    ).run()  # fmt: skip
    assert not at.exception, [e.value for e in at.exception]
    warned = [w.value for w in at.warning if "does not look like a chest radiograph" in w.value]
    assert len(warned) == 2
    assert len([m for m in at.metric if m.label == "P(pneumonia)"]) == 3


def test_predict_with_synthetic_samples_and_two_models(bundled, tiny_run_dir):
    shutil.copytree(tiny_run_dir, RunStore().root / "second")
    at = open_app("predict")
    at.multiselect(key="predict_models").set_value(["second", "bundled-tiny"])
    at.multiselect(key="predict_samples").set_value(list(uploads.demo_images())).run()
    assert not at.exception
    assert len([m for m in at.metric if m.label == "P(pneumonia)"]) == 4  # 2 images x 2 models


# --------------------------------------------------------------------------- compare


def test_a_metric_added_to_the_catalogue_shows_on_compare_for_the_bundled_runs(monkeypatch):
    """Adding a metric is one catalogue entry: it is computed from the probabilities every
    evaluation stores, so the bundled runs show it, with its CI, without re-running."""

    def balanced_accuracy(labels, probs, threshold):
        pred = probs >= threshold
        return (pred[labels == 1].mean() + (~pred[labels == 0]).mean()) / 2

    info = MetricInfo("balanced_accuracy", "balanced accuracy", balanced_accuracy, "(sens+spec)/2")
    monkeypatch.setitem(metrics.CATALOGUE, info.key, info)
    at = open_app("compare")
    at.session_state["compare_tab"] = "Metrics & tests"  # every metric, one column per run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    every = at.dataframe[1].value.set_index("metric")
    assert "balanced accuracy" in every.index, list(every.index)
    shown = every.loc["balanced accuracy"]
    assert shown.str.fullmatch(r"\d+\.\d% \(\d+\.\d-\d+\.\d\)").all(), shown


def test_compare_two_runs(bundled, tiny_run_dir):
    """Two runs whose internal test splits differ are compared on a set they share, with
    the synthetic and internal-split warnings, no published reference on the ROC chart
    (it was drawn on synthetic films), and both downloads."""
    other = RunStore().root / "tiny-b"
    shutil.copytree(tiny_run_dir, other)
    evaluation = json.loads((other / "evaluation.json").read_text())
    test = evaluation["test_split"]
    evaluation["splits"][test]["paths"] = evaluation["splits"][test]["paths"][1:]
    (other / "evaluation.json").write_text(json.dumps(evaluation))

    at = open_app("compare")
    assert at.multiselect(key="compare_runs").value == ["tiny-b", "bundled-tiny"]
    summary = at.dataframe[0].value
    assert list(summary["run"]) == ["tiny-b", "bundled-tiny"]
    chosen = at.selectbox(key="compare_set")
    assert test not in chosen.value and len(chosen.options) == 2  # val and official_val only
    assert any("synthetic" in w.value for w in at.warning)
    assert any("carved from the training folder" in w.value for w in at.warning)
    names = [t.get("name", "") for spec in chart_specs(at) for t in spec["data"]]
    assert not any(n.startswith("Kermany et al. 2018") for n in names)
    assert any("not real chest films" in c.value for c in at.caption)
    assert any(n.startswith("tiny-b") for n in names)
    assert any(n.startswith("bundled-tiny") for n in names)
    assert len(at.get("download_button")) == 2  # the table and the HTML report


def test_compare_builds_only_the_open_tab(bundled, tiny_run_dir):
    """Hidden tabs build nothing; each tab shows its own content when opened, and the open
    tab stays open across pages."""
    shutil.copytree(tiny_run_dir, RunStore().root / "tiny-b")
    at = open_app("compare")
    labels = [t.label for t in at.tabs]
    assert labels[0] == "ROC & PR" and {"Learning curves", "Cost"} <= set(labels)
    built = {}
    for label in labels:
        at.session_state["compare_tab"] = label
        at.run()
        assert not at.exception, label
        built[label] = len(at.get("plotly_chart"))
    assert built["ROC & PR"] == 1 and built["Learning curves"] == 1
    assert max(built.values()) < sum(built.values())  # never every tab's charts at once
    at.session_state["compare_tab"] = "Cost"
    at.run()
    at.switch_page("pages/about.py").run()
    at.switch_page("pages/compare.py").run()
    assert at.session_state["compare_tab"] == "Cost"
    assert len(at.get("plotly_chart")) == built["Cost"]


# --------------------------------------------------------------------------- helpers


def test_smoothing_is_a_debiased_moving_average():
    assert np.allclose(plots.smooth([1.0, 1.0, 1.0], 0.9), 1.0)
    assert np.array_equal(plots.smooth([3.0, 1.0], 0.0), [3.0, 1.0])
    smoothed = plots.smooth([0.0, 10.0], 0.5)
    assert smoothed[0] == 0.0 and 0.0 < smoothed[1] < 10.0


def test_sweep_points_read_as_mean_and_sd_in_the_table_and_the_heat_map():
    point = {"point": {"lr": 0.001, "augment.crop": None}, "mean": 0.9123, "sd": 0.0131}
    assert plots.mean_sd(point, percent=True) == "91.2% ± 1.3"
    assert plots.mean_sd({**point, "sd": None}, percent=False) == "0.912 (1 seed)"
    assert plots.mean_sd({**point, "mean": None}, percent=False) == "-"
    assert (plots.grid_value(None), plots.grid_value(0.001)) == ("default", "0.001")
    summary = [{**point, "best": True}]
    grid = {"lr": [0.001, 0.01], "augment.crop": [None]}
    heat = plots.sweep_heatmap(summary, grid, ["lr", "augment.crop"], "roc_auc").data[0]
    assert [list(row) for row in heat.text] == [["0.912 ± 0.013 ★"], [""]]
    assert [list(row) for row in heat.z] == [[0.9123], [None]] and list(heat.x) == ["default"]


def test_the_normal_films_scores_are_on_a_log_odds_axis():
    sets = {"internal": ([0, 0, 1], [0.5, 0.01, 0.9]), "outside": ([0, 1], [0.9, 0.99])}
    fig = plots.normal_scores(sets, threshold=0.5)
    internal, outside = fig.data
    assert internal.name == "internal (2 normal films)" and outside.name.startswith("outside (1 ")
    assert np.allclose(internal.x, [0.0, np.log(0.01 / 0.99)])
    assert fig.layout.shapes[0].x0 == 0.0  # the threshold 0.5, at log-odds 0


def test_run_progress_while_computing_features_has_a_bar_and_an_eta():
    status = {"status": "running", "phase": "computing features 300/1200", "progress": 0.25}
    assert runview.run_progress({**status, "eta_s": 95}, epochs=10) == (
        0.25,
        "computing features 300/1200 · ETA 1 min 35 s",
    )


def test_run_progress_and_eta():
    status = {"status": "running", "phase": "training", "epoch": 2, "step": 5, "steps": 10}
    fraction, text = runview.run_progress({**status, "eta_s": 125}, epochs=4)
    assert fraction == pytest.approx(15 / 40)
    assert "epoch 2/4" in text and "ETA 2 min 05 s" in text
    assert runview.run_progress({"status": "completed"}, 4) == (1.0, "completed")


def test_upload_names_are_only_labels():
    assert uploads.display_name("../../etc/passwd") == "passwd"
    assert uploads.display_name("C:\\x\\scan<1>.dcm") == "scan_1_.dcm"
    assert uploads.upload_source("a/b.dcm", b"x").name == "b.dcm"


def test_build_configs_checks_before_launching():
    options = {"data": "synthetic:40", "img_size": 0, "pretrained": False}
    configs = forms.build_configs(["small_cnn", "mlp"], options)
    assert [(c.arch, c.img_size) for c in configs] == [("small_cnn", 128), ("mlp", 64)]
    with pytest.raises(UserError, match="pick at least one"):
        forms.build_configs([], options)
    with pytest.raises(UserError, match="needs image size 224"):
        forms.build_configs(["vit_b_16"], {**options, "pretrained": True, "img_size": 128})


def test_the_app_opens_on_home_with_three_first_steps_and_the_bundled_runs(bundled):
    """A newcomer lands on Home (the default page, first in the sidebar): what CXR Lab is,
    the bundled runs, and links to compare them, upload a film and train a quick model."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "CXR Lab"
    links = {link.proto.label: link.proto for link in at.get("page_link")}
    assert set(links) == {"Compare the bundled runs", "Upload a film", "Train a quick model"}
    assert links["Compare the bundled runs"].page.endswith("compare")
    assert "runs=bundled-tiny" in links["Compare the bundled runs"].query_string
    assert not links["Compare the bundled runs"].disabled
    table = at.dataframe[0].value
    assert list(table["run"]) == ["bundled-tiny"] and table["val AUC"].notna().all()


def test_home_on_a_fresh_machine_says_what_to_do(no_bundled):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No bundled runs" in i.value for i in at.info)
    links = {link.proto.label: link.proto for link in at.get("page_link")}
    assert links["Compare the bundled runs"].disabled


def test_the_url_restores_predicts_models_and_method(bundled, tiny_run_dir):
    """Predict's choice of models, method and target lives in the URL (uploads do not);
    a method that is not one is ignored."""
    shutil.copytree(tiny_run_dir, RunStore().root / "second")
    models = ["bundled-tiny", "second"]
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for name, value in {"models": models, "method": "layercam", "target": "NORMAL"}.items():
        at.query_params[name] = value
    at.switch_page("pages/predict.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key="predict_models").value == models
    assert at.selectbox(key="predict_method").value == "layercam"
    assert at.selectbox(key="predict_target").value == "NORMAL"
    at.selectbox(key="predict_method").set_value("gradcam++").run()
    assert _param(at, "method") == ["gradcam++"] and _param(at, "models") == models

    bad = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    bad.query_params["method"] = "no-such-method"
    bad.switch_page("pages/predict.py").run()
    assert not bad.exception and bad.selectbox(key="predict_method").value == "gradcam"


def _param(at: AppTest, name: str) -> list[str]:
    value = at.query_params.get(name, [])
    return [value] if isinstance(value, str) else list(value)
