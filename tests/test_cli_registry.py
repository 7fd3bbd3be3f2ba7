"""The CLI's verbs are one registry: each registered verb has a parser and a ``--help``, a
name is registered once, and building the parser stays light (no torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, cli_main

from cxr_core import cli
from cxr_core.cli._verbs import CAM_METHOD_NAMES, VERBS, register_verb

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


def test_the_cam_method_names_are_inferences():
    from cxr_core.predict.inference import CAM_METHODS

    assert tuple(CAM_METHODS) == CAM_METHOD_NAMES


def test_building_the_parser_imports_no_torch():
    """Nor torchvision or pytorch-grad-cam: every verb's flags but those that list
    architectures or training options are built without them (predict's CAM choices too)."""
    code = (
        "import sys; from cxr_core import cli; "
        "cli.build_parser().parse_args(['predict', '--checkpoint', 'x', 'a.png', '--cam', "
        "'gradcam']); "
        "print(sorted({'torch', 'torchvision', 'pytorch_grad_cam'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
