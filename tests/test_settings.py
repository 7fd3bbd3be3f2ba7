"""Deployment settings: every ``CXR_*`` name the code uses is declared once in
``settings.SETTINGS`` (so the app copies it from ``st.secrets``), and the 0/1 switches read
as the modules that use them expect."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxr_core import settings

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("cxr_core/**/*.py"), *ROOT.glob("pages/**/*.py"), ROOT / "app.py"])
NAME = re.compile(r"\bCXR_[A-Z0-9_]+\b")
ENV_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")


def _named() -> dict[str, str]:
    """Every CXR_* name in the code, and every RAY_* name read from the environment, with
    the first file that names it."""
    found: dict[str, str] = {}
    for path in SOURCES:
        text = path.read_text()
        names = set(NAME.findall(text)) | {
            n for n in ENV_READ.findall(text) if n.startswith(("CXR_", "RAY_"))
        }
        for name in names:
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_setting_the_code_names_is_declared_in_settings():
    named = _named()
    assert {"CXR_KEEP_FREED_MEMORY", "CXR_CPU_BF16", "RAY_ADDRESS"} <= set(named)
    missing = {n: where for n, where in named.items() if n not in settings.SETTINGS}
    assert not missing, f"not in settings.SETTINGS: {missing}"
    assert len(set(settings.SETTINGS)) == len(settings.SETTINGS)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("0", False), ("1", True), ("yes", None)]
)
def test_switches_are_0_1_or_left_to_the_machine(monkeypatch, value, expected):
    accessors = {
        "CXR_KEEP_FREED_MEMORY": settings.keep_freed_memory_setting,
        "CXR_CPU_BF16": settings.cpu_bf16_setting,
        "CXR_SHARED": settings.shared_setting,
    }
    for name, read in accessors.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        assert read() is expected, name


def test_operators_are_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("CXR_OPERATORS", " a@x.org, ,b@y.org ")
    assert settings.operators() == ["a@x.org", "b@y.org"]
    monkeypatch.delenv("CXR_OPERATORS")
    assert settings.operators() == []


def test_the_app_copies_the_runtime_switches_from_its_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "none"))
    for name in ("CXR_KEEP_FREED_MEMORY", "CXR_CPU_BF16"):
        # set-then-delete: monkeypatch then restores the variable's absence afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.secrets.update({"CXR_KEEP_FREED_MEMORY": "0", "CXR_CPU_BF16": "0"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert os.environ["CXR_KEEP_FREED_MEMORY"] == "0" and os.environ["CXR_CPU_BF16"] == "0"
    assert settings.keep_freed_memory_setting() is False and settings.cpu_bf16_setting() is False
