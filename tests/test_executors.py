"""The executors are one registry: each registered one has a name, a label and a
description, is what ``get_executor`` returns for its name, and is offered by the CLI.
(The Ray executor's runs on a real cluster: tests/test_ray.py.)"""

from __future__ import annotations

import pytest
from conftest import cli_main

from cxr_core.errors import UserError
from cxr_core.execution.executors import EXECUTORS, get_executor, register_executor


@pytest.mark.parametrize("name", list(EXECUTORS))
def test_every_executor_is_described_and_reachable(name, monkeypatch):
    cls = EXECUTORS[name]
    assert cls.name == name and cls.label and (cls.__doc__ or "").strip()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # what a cluster's head prints
    try:
        executor = get_executor(name, queue=2)
    except UserError as exc:  # its optional package is missing: it says so in one line
        assert "\n" not in str(exc) and "install" in str(exc)
        pytest.skip(str(exc))
    assert isinstance(executor, cls) and executor.name == name


@pytest.mark.parametrize("verb", ["resume", "sweep"])
def test_the_cli_offers_every_executor(capsys, verb):
    _, out, _ = cli_main(capsys, verb, "--help")
    assert "{" + ",".join(EXECUTORS) + "}" in out


def test_an_executor_is_registered_once():
    before = dict(EXECUTORS)
    with pytest.raises(ValueError, match="executor 'local' is registered twice"):
        register_executor("local", label="again")
    assert before == EXECUTORS
