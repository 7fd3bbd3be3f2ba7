"""Shared fixtures: isolated run/cache folders, the real data when present, tiny runs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "chest_xray"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real Kermany images in ../shared; tests using this skip on a user's machine."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip("../shared/data/chest_xray is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory, monkeypatch) -> Iterator[Path]:
    """Every test writes runs to its own folder; the decode cache is shared per session.

    CXR_* settings are restored afterwards even when the code under test set them
    directly (app.py copies st.secrets into the environment, as a deployment needs).
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("CXR_")}
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch.setenv("CXR_RUNS_DIR", str(runs))
    monkeypatch.setenv("CXR_CACHE_DIR", str(_session_cache(tmp_path_factory)))
    # The app as its one local user runs it (AppTest has no real client address);
    # tests of a shared deployment set CXR_SHARED=1 themselves.
    monkeypatch.setenv("CXR_SHARED", "0")
    yield runs
    for name in [k for k in os.environ if k.startswith("CXR_")]:
        del os.environ[name]
    os.environ.update(saved)


_CACHE: list[Path] = []


def _session_cache(factory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("cache"))
    return _CACHE[0]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, one per test module (tests/appserver.py drives it)."""
    from appserver import chromium

    with chromium() as browser:
        yield browser


def wait_until(predicate, timeout: float, what: str, poll: float = 0.02):
    """Poll ``predicate`` until it returns something true (returned), or fail after
    ``timeout`` seconds naming ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m cxr_core ARGS`` in a subprocess, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "cxr_core", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def imported_by(code: str, modules: tuple[str, ...], env: dict | None = None) -> list[str]:
    """Which of ``modules`` a fresh Python process has imported after running ``code`` in
    the repository root: what a user's command or page pays for in import time. The
    process must succeed (an ``assert`` in ``code`` fails it)."""
    script = f"{code}\nimport sys\nprint(sorted(set({modules!r}) & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.splitlines()[-1])  # the list printed last


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A completed small_cnn run on synthetic data (64 px, 2 epochs), trained once per
    session in its own runs folder; tests copy it rather than train again."""
    runs = tmp_path_factory.mktemp("tiny-runs")
    env = {
        "CXR_RUNS_DIR": str(runs),
        "CXR_CACHE_DIR": str(_session_cache(tmp_path_factory)),
    }
    result = run_cli(
        "train",
        "--arch",
        "small_cnn",
        "--data",
        "synthetic:40",
        "--img-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--run-id",
        "tiny",
        env=env,
        timeout=1800,  # a safety net only: the CPU may be shared with other training jobs
    )
    assert result.returncode == 0, result.stderr
    return runs / "tiny"


def _jpeg(shade: int, size: int = 40) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    gradient = np.add.outer(np.arange(size), np.arange(size)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gradient // 3 + shade).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_kaggle_tree(
    root: Path,
    normal_patients: int,
    pneumonia_patients: int,
    split: str = "train",
    seed: int = 0,
    max_per_patient: int = 3,
) -> Path:
    """A Kaggle-layout folder with Kermany file names, 1..max_per_patient small (40 px)
    JPEGs per patient; normal ids alternate the ``IM-`` and ``NORMAL2-IM-`` forms."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = {"NORMAL": _jpeg(40), "PNEUMONIA": _jpeg(120)}
    for p in range(1, normal_patients + 1):
        prefix = "NORMAL2-" if p % 2 else ""
        for k in range(1, int(rng.integers(1, max_per_patient + 1)) + 1):
            path = root / split / "NORMAL" / f"{prefix}IM-{p:04d}-{k:04d}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(images["NORMAL"])
    for p in range(1, pneumonia_patients + 1):
        for k in range(int(rng.integers(1, max_per_patient + 1))):
            kind = ("bacteria", "virus")[k % 2]
            path = root / split / "PNEUMONIA" / f"person{p}_{kind}_{p * 10 + k}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(images["PNEUMONIA"])
    return root


@pytest.fixture
def kaggle_tree():
    """``write_kaggle_tree`` as a fixture, for tests that build their own data folder."""
    return write_kaggle_tree


def cli_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m cxr_core ARGV`` in this process: exit code, stdout and stderr."""
    from cxr_core import cli

    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def film_with_a_map(model, make, seed: int, target: int | None = None) -> bytes:
    """The first film ``make(seed + 1000 k)`` on which ``model``'s Grad-CAM is not flat.

    A two-epoch model finds no evidence at all on some films (every gradient negative, so
    the CAM's ReLU leaves an empty map), and which films depends on the CPU path it was
    trained on; tests of the overlay need a film that has one.
    """
    import io

    from cxr_core.predict import cam_checks
    from cxr_core.predict.inference import explain, predict

    for k in range(50):
        data = make(seed + 1000 * k)
        (prediction,) = predict(model, [io.BytesIO(data)])
        heat = explain(model, prediction.pixels.copy(), "gradcam", target)
        if not cam_checks.is_flat(heat):
            return data
    raise AssertionError(f"no film with a Grad-CAM map among 50 from seed {seed}")
