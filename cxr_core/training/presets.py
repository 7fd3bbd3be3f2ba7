"""Named starting points for the Train page and the CLI's ``--preset``.

Each preset gives some training options, named as :func:`cxr_core.training.config.options` names
them (``augment.enabled``); anything the user sets explicitly wins over it.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    "quick on CPU": {
        # A frozen ImageNet backbone (weights ship with pip) and a trained head: the
        # engine computes the backbone's features once (cxr_core.training.features), so epochs
        # are nearly free. 128 px reached the validation AUC of 224 px (0.992 on the
        # Kermany split) at a third of the cost: see benchmarks/tune_quick_preset.py.
        "arch": "efficientnet_lite0",
        "pretrained": True,
        "unfreeze_last": 0,
        "img_size": 128,
        "epochs": 10,
        "batch_size": 64,
        "lr": 3e-3,
        "scheduler": "cosine",
        "augment.enabled": False,
    },
    "fine-tune (best)": {
        "arch": "efficientnet_lite0",
        "pretrained": True,
        "unfreeze_last": -1,
        "img_size": 224,
        "epochs": 8,
        "batch_size": 32,
        "lr": 5e-4,
        "scheduler": "cosine",
    },
    "seed-style comparison": {
        # The student-notebook setup, done properly: same split, seed and budget for all.
        "img_size": 128,
        "epochs": 10,
        "batch_size": 32,
        "lr": 1e-3,
        "optimizer": "adam",
        "scheduler": "cosine",
        "seed": 0,
    },
    "tiny demo (synthetic)": {
        # Learns visibly in seconds: 200 drawn films, 64 px, no augmentation (random crops
        # and contrast jitter hide the small synthetic opacities from a net this short-
        # trained: with them the loss sat near 0.7). small_cnn and mlp reach validation
        # AUC 1.0 in 2-3 epochs here (tests/test_presets.py).
        "arch": "small_cnn",
        "data": "synthetic:100",
        "img_size": 64,
        "epochs": 4,
        "batch_size": 16,
        "lr": 1e-3,
        "augment.enabled": False,
    },
}


def preset_changes(name: str, current: dict) -> dict[str, tuple]:
    """What choosing preset ``name`` changes in a form holding ``current`` (option names as
    in :func:`~cxr_core.training.config.options`, plus ``arch`` and ``data``): every option
    the preset names takes its value, every other one goes back to its default (a preset is a
    whole starting point, not a patch over the last one), ``arch`` and ``data`` only when the
    preset names them. ``{name: (old, new)}`` for the values that differ."""
    from cxr_core.training.config import options

    values = apply_preset(name, {})
    target = {o.name: values.get(o.name, o.default) for o in options() if o.name not in PAGE_SET}
    target |= {k: values[k] for k in PAGE_SET if k in values}
    return {k: (current.get(k), v) for k, v in target.items() if current.get(k) != v}


PAGE_SET = ("arch", "data")
"""Options a preset may name that a page sets elsewhere (the architecture picker, the data)."""


def apply_preset(name: str, overrides: dict) -> dict:
    """The preset's option values (names as in :func:`cxr_core.training.config.options`), then
    ``overrides`` on top."""
    from cxr_core.errors import UserError

    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}
