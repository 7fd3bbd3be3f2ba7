"""``synth``, ``download`` and ``archs``: the data and the architectures to train on."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr_core.cli._verbs import register_verb


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)


@register_verb(
    "synth",
    "write the synthetic demo data set (Kaggle layout)",
    order=140,
    arguments=_synth_arguments,
)
def cmd_synth(args: argparse.Namespace) -> int:
    from cxr_core.data.synthetic import make_synthetic_dataset

    out = make_synthetic_dataset(Path(args.out), args.per_class, args.size, args.seed)
    print(out)
    return 0


def _download_arguments(p: argparse.ArgumentParser) -> None:
    from cxr_core.data.downloads import DEFAULT_SIZE, SOURCES

    p.add_argument("source", choices=list(SOURCES))
    p.add_argument("--out", default="data/pneumoniamnist")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)


@register_verb(
    "download",
    "download the real data (needs a network)",
    order=150,
    arguments=_download_arguments,
)
def cmd_download(args: argparse.Namespace) -> int:
    from cxr_core.data.downloads import SOURCES

    print(SOURCES[args.source].download(Path(args.out), args.size))
    return 0


@register_verb("archs", "list the architectures", order=160)
def cmd_archs(args: argparse.Namespace) -> int:
    from cxr_core.models.catalogue import REGISTRY

    for spec in REGISTRY.values():
        weights = f"pretrained: {spec.pretrained_source}" if spec.pretrained_source else "scratch"
        print(f"{spec.name:20s} {spec.default_img_size:4d}px  {weights:22s} {spec.description}")
    return 0
