"""``predict``: classify images with a run or an ensemble, optionally with CAM overlays."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from cxr_core.cli._verbs import EXIT_USAGE, print_json, register_verb
from cxr_core.errors import UserError
from cxr_core.predict.cam_catalogue import CAM_METHODS


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:60] or "image"


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    p.add_argument("images", nargs="+")
    p.add_argument("--cam", choices=list(CAM_METHODS))
    p.add_argument("--out", help="folder for overlay PNGs")
    p.add_argument("--opacity", type=float, default=0.45)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")


@register_verb(
    "predict",
    "classify images, optionally with CAM overlays",
    order=80,
    arguments=_predict_arguments,
)
def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from cxr_core.predict.ensembles import EnsemblePrediction, load_any, overlays, predict_any
    from cxr_core.predict.input_guard import guard

    model = load_any(args.checkpoint, args.device)
    if args.cam and not args.out:
        raise UserError("--cam needs --out DIR for the overlay images")
    results, failed = [], 0
    for i, image in enumerate(args.images):
        try:
            (prediction,) = predict_any(model, [image])
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        row = {
            "image": image,
            "probability": round(prediction.probability, 6),
            "label": prediction.label,
            "threshold": round(prediction.threshold, 6),
            "input_guard": guard(model, image).to_json(),  # does it look like its films?
        }
        if isinstance(prediction, EnsemblePrediction):  # each member's own say too
            row["members"] = {i: round(p.probability, 6) for i, p in prediction.members.items()}
        if args.cam:  # one overlay, or one per member of an ensemble
            written = {}
            for member, rgb in overlays(model, prediction, args.cam, args.opacity).items():
                stem = _safe_stem(image) + (f"-{member}" if member else "")
                out = Path(args.out) / f"{i:03d}-{stem}-{args.cam}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(out)
                written[member] = str(out)
            if None in written:
                row["overlay"] = written[None]
            else:
                row["overlays"] = written
        results.append(row)
        if not args.json:
            shown = [row["overlay"]] if "overlay" in row else list(row.get("overlays", {}).values())
            extra = f"  overlay {', '.join(shown)}" if shown else ""
            print(
                f"{image}: {row['label']}  p(pneumonia)={row['probability']:.4f}  "
                f"(threshold {row['threshold']:.3f}){extra}"
            )
            if row["input_guard"]["message"]:
                print(f"  warning: {row['input_guard']['message']}")
    if args.json:
        print_json(results)
    return EXIT_USAGE if failed else 0
