"""``python -m cxr_core`` / ``cxr-lab``: train, evaluate, predict, list and compare runs.

A user's mistake prints one line (``error: ...``) and exits 2, never a traceback. The verbs
live in this package's modules, one per group, each registered with
:func:`cxr_core.cli._verbs.register_verb`; :func:`build_parser` finds them all.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from typing import NoReturn

from cxr_core.cli._verbs import EXIT_USAGE, VERBS, Verb
from cxr_core.errors import UserError


class _Parser(argparse.ArgumentParser):
    """A usage mistake is a user error too: one line and exit 2, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _VerbParsers(argparse._SubParsersAction):
    """The verbs' subparsers, each given its flags only when its verb is parsed: the flags
    of some verbs need torch (the architectures, the training options) to be built."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._unbuilt: dict[str, tuple[Verb, argparse.ArgumentParser]] = {}

    def add_verb(self, verb: Verb) -> None:
        p = self.add_parser(
            verb.name,
            help=verb.help,
            description=verb.description,
            conflict_handler=verb.conflict_handler,
        )
        p.set_defaults(func=verb.run)
        if verb.arguments:
            self._unbuilt[verb.name] = (verb, p)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values and values[0] in self._unbuilt:
            verb, p = self._unbuilt.pop(values[0])
            verb.arguments(p)
        super().__call__(parser, namespace, values, option_string)


def verbs() -> list[Verb]:
    """Every verb of this package's modules, in their ``--help`` order."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return sorted(VERBS.values(), key=lambda verb: verb.order)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cxr-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", help="where runs live (default: $CXR_RUNS_DIR or ./runs)")
    parser.register("action", "parsers", _VerbParsers)
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in verbs():
        sub.add_verb(verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"interrupted after {time.time() - started:.0f}s", file=sys.stderr)
        return 130
