"""The download sources are one registry, and none ever downloads in a test: without its
package, or without a network (simulated in-process), each fails in one line."""

from __future__ import annotations

import sys
import types
import urllib.error

import pytest
from conftest import ROOT, cli_main

from cxr_core.data.downloads import SOURCES, register_source
from cxr_core.errors import UserError

NAMES = list(SOURCES)


class _Offline(types.ModuleType):
    """A package whose every function fails as it would without a network."""

    def __getattr__(self, name: str):
        def offline(*args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

        return offline


@pytest.mark.parametrize("name", NAMES)
def test_every_source_is_described(name):
    source = SOURCES[name]
    assert source.name == name and source.description and source.package


@pytest.mark.parametrize("name", NAMES)
def test_without_its_package_a_source_says_what_to_install(name, monkeypatch, tmp_path):
    source = SOURCES[name]
    monkeypatch.setitem(sys.modules, source.package, None)  # import fails, as if missing
    with pytest.raises(UserError) as caught:
        source.download(tmp_path / name, 224)
    assert "\n" not in str(caught.value) and f"pip install {source.package}" in str(caught.value)


@pytest.mark.parametrize("name", NAMES)
def test_offline_a_source_fails_in_one_line(name, monkeypatch, tmp_path):
    source = SOURCES[name]
    monkeypatch.setitem(sys.modules, source.package, _Offline(source.package))
    with pytest.raises(UserError) as caught:
        source.download(tmp_path / name, 224)
    assert "\n" not in str(caught.value) and "offline?" in str(caught.value)


def test_the_cli_offers_every_source(capsys):
    _, out, _ = cli_main(capsys, "download", "--help")
    assert "{" + ",".join(SOURCES) + "}" in out


def test_a_source_is_registered_once():
    with pytest.raises(ValueError, match="download source 'kaggle' is registered twice"):
        register_source("kaggle", description="again", package="kagglehub")


def test_the_data_page_offers_every_source(monkeypatch, tmp_path):
    """One button per source, labelled with its description; nothing is clicked."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CXR_BUNDLED_DIR", str(tmp_path / "no-bundled-runs"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/data.py").run()
    at.radio(key="data_kind").set_value("Download (online)").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [b.label for b in at.button]
    assert labels[: len(SOURCES)] == [s.description for s in SOURCES.values()], labels
    packages = " / ".join(s.package for s in SOURCES.values())
    assert any(f"optional packages ({packages})" in c.value for c in at.caption)
