"""The CLI's verbs are one registry: each registered verb has a parser and a ``--help``, a
name is registered once, and building the parser stays light (no torch)."""

from __future__ import annotations

import pytest
from conftest import cli_main, imported_by

from cxr_core import cli
from cxr_core.cli._verbs import VERBS, register_verb

VERB_LIST = cli.verbs()


@pytest.mark.parametrize("verb", VERB_LIST, ids=lambda v: v.name)
def test_every_verb_has_a_parser_and_a_help(capsys, verb):
    code, out, err = cli_main(capsys, verb.name, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: cxr-lab {verb.name} ")
    assert verb.run.__module__.startswith("cxr_core.cli.")


def test_the_top_level_help_lists_every_verb_in_order(capsys):
    code, out, _ = cli_main(capsys, "--help")
    assert code == 0
    listed = out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed == [verb.name for verb in VERB_LIST]
    assert len({verb.order for verb in VERB_LIST}) == len(VERB_LIST)


def test_a_verb_is_registered_once():
    before = dict(VERBS)
    with pytest.raises(ValueError, match="verb 'train' is registered twice"):
        register_verb("train", "another train", order=999)
    assert before == VERBS


def test_every_cam_method_name_has_its_class():
    from cxr_core.predict.cam_catalogue import CAM_METHODS
    from cxr_core.predict.inference import cam_class

    assert [cam_class(name).__name__ for name in CAM_METHODS] == list(CAM_METHODS.values())


@pytest.mark.parametrize("argv", [[], ["runs", "list"], ["archs"]], ids=" ".join)
def test_building_the_parser_imports_no_torch(argv):
    """Nor torchvision or pytorch-grad-cam: every verb's flags (architectures, training
    options, CAM methods) are built from names, and listing runs or architectures needs no
    model either."""
    code = (
        "import contextlib, io; from cxr_core import cli\n"
        "for verb in [v.name for v in cli.verbs()]:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.build_parser().parse_args([verb, '--help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    cli.main({argv!r}) if {argv!r} else None"
    )
    assert imported_by(code, ("pytorch_grad_cam", "torch", "torchvision")) == []
