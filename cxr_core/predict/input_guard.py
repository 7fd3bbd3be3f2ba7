"""Does an upload look like the chest films a run was trained on? Checked before a
prediction is shown, since a model gives a confident probability for anything (a uniform
grey PNG was called PNEUMONIA at 88-100% by every bundled model).

Three kinds of check, each with a number a reader can verify:

- **image statistics** (no reference needed), on the image as the model sees it: a
  near-constant image (pixel spread under :data:`MIN_STD` grey levels; the validation
  films' lowest is 20), no edges (under :data:`MIN_EDGES` of pixels differ from their
  neighbours by more than 4 levels; validation films: 20-80%), and, before conversion to
  grey, colour (mean chroma over :data:`MAX_SATURATION`; every Kermany film: 0);
- **layout**: the correlation of the 16x16 thumbnail with the run's mean validation film,
  below the lowest of any validation film (rotated films, noise, scenes);
- **feature distance** (Sun et al. 2022, "Out-of-distribution detection with deep nearest
  neighbors"): the distance of the image's L2-normalised penultimate-layer features (the
  input of ``Network.head``) to its :data:`K`-th nearest validation film, above the largest
  leave-one-out distance of any validation film.

Both thresholds are set on the run's carved validation films only, at the most lenient
value that keeps every one of them: the guard is for inputs that are plainly not chest
films, and a false alarm on a real film would teach users to ignore it. At the 99.5th
percentile of the leave-one-out scores instead, the feature distance alone flagged
0.4-1.7% of internal_test (ResNet-18: 1.3-1.7% for k = 1..20), over the 1% allowed.

Measured on the bundled runs (783 validation films each): films flagged among the 784 of
internal_test and the 16 official val/ films, and the probes the feature distance caught
by itself (U uniform, N noise, C colour scene, R a val/ film turned 90 degrees). Every
probe was flagged by every run: all by the layout check, U and C also by their statistic.

    run                                 internal_test   val/   feature distance caught
    small_cnn-scratch-128               0               0      N
    mlp-scratch-64                      1 (0.13%)       0      U N R
    resnet18-strongaug-128-s0           0               0      C
    lite0-strongaug-224-s0              0               0      -
    efficientnet_lite0-frozen-224       0               0      U N C
    efficientnet_lite0-pretrained-224   0               0      U N C

kNN was chosen over a Mahalanobis distance (Lee et al. 2018) in a PCA subspace after
measuring both on these runs: at equal false alarms it caught as many probes or more, and
it assumes no Gaussian class clusters, which 783 films in up to 1280 dimensions estimate
poorly. The features alone do not suffice: global pooling makes a CNN's features nearly
blind to a 90-degree rotation, and a strongly augmented network places noise and a
uniform image among the films; the layout and image statistics catch those.

The reference (validation features, mean thumbnail, thresholds) is a derived record of
the run, ``input_guard.safetensors`` beside the weights (a bundled run's ships in
checkpoints/, one computed later goes to its writable overlay), keyed by the weights'
SHA-256 so that it is never used once the weights change.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save as save_tensors

from cxr_core.data.decode_cache import decode_images
from cxr_core.data.folders import SplitManifest
from cxr_core.data.imaging import ImageSource, colour_saturation, load_and_preprocess
from cxr_core.errors import UserError
from cxr_core.fileio import atomic_write_bytes
from cxr_core.models import weights_file
from cxr_core.models.weights_file import weights_digest
from cxr_core.predict import graphs
from cxr_core.predict.ensembles import Ensemble, load_any
from cxr_core.predict.inference import LoadedModel, graph_session
from cxr_core.store import records
from cxr_core.store.runs import Run, run_of_weights
from cxr_core.training.runtime import to_input

FORMAT = "cxr-lab-guard/1"
K = 5
"""Neighbours: the 5th-nearest validation film, so one odd validation film near an input
does not vouch for it (k = 1 flagged 2x more internal_test films on the MLP: 0.26%)."""
THUMB = 16
MAX_DIMS = 256
"""Features wider than this are stored projected on their top singular directions (the
reference of a 1280-wide EfficientNet stays under 1 MB)."""
MIN_STD = 4.0
MIN_EDGES = 0.02
MAX_SATURATION = 0.08
MESSAGE = "this does not look like a chest radiograph this model has seen; its output means nothing"


@dataclass
class GuardVerdict:
    """Whether an image passed the guard, why not, and the feature distance it measured."""

    in_distribution: bool
    reasons: list[str] = field(default_factory=list)
    score: float | None = None
    """Distance to the K-th nearest validation film (None: no reference)."""
    threshold: float | None = None
    notes: list[str] = field(default_factory=list)
    """What could not be checked, and why (e.g. no reference and no data to compute one)."""
    members: dict[str, GuardVerdict] = field(default_factory=dict)

    @property
    def message(self) -> str:
        """The warning to show beside the probability ("" when the image passed)."""
        return "" if self.in_distribution else f"{MESSAGE} ({'; '.join(self.reasons)})"

    def to_json(self) -> dict:
        return {
            "in_distribution": self.in_distribution,
            "reasons": self.reasons,
            "score": self.score,
            "threshold": self.threshold,
            "notes": self.notes,
            "message": self.message,
            **(
                {"members": {k: v.to_json() for k, v in self.members.items()}}
                if self.members
                else {}
            ),
        }


def image_reasons(pixels: np.ndarray, saturation: float | None = None) -> list[str]:
    """The cheap checks on one preprocessed uint8 image (and its colour, when known)."""
    reasons = []
    spread = float(pixels.std())
    if spread < MIN_STD:
        reasons.append(f"near-constant image (pixel spread {spread:.1f} of 255)")
    p = pixels.astype(np.int16)
    steps = np.abs(np.diff(p, axis=1))[:-1, :] + np.abs(np.diff(p, axis=0))[:, :-1]
    edges = float((steps > 4).mean())
    if spread >= MIN_STD and edges < MIN_EDGES:
        reasons.append(f"no edges ({edges:.1%} of pixels; chest films have 20% or more)")
    if saturation is not None and saturation > MAX_SATURATION:
        reasons.append(f"a colour image (mean saturation {saturation:.0%}; radiographs 0%)")
    return reasons


def thumbnails(pixels: np.ndarray) -> np.ndarray:
    """``[N, THUMB**2]`` centred unit-norm thumbnails: correlations are dot products."""
    small = np.stack(
        [np.asarray(Image.fromarray(p).resize((THUMB, THUMB), Image.BILINEAR)) for p in pixels]
    ).reshape(len(pixels), -1)
    small = small.astype(np.float32) - small.mean(axis=1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)


def penultimate_features(model: LoadedModel, pixels: np.ndarray, batch: int = 64) -> np.ndarray:
    """``[N, D]`` L2-normalised inputs of the network's head for preprocessed images: by
    ONNX Runtime on the run's graph on a CPU (a single film's features in a tenth of
    PyTorch's time for EfficientNet-Lite0), else PyTorch."""
    session = graph_session(model)
    if session is not None:
        features = graphs.outputs(session, graphs.network_input(pixels, model.config), "features")
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    captured: list[torch.Tensor] = []
    hook = model.network.head.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().flatten(1).float().cpu())
    )
    try:
        with model.lock, torch.inference_mode():
            model.network.model.eval()
            for start in range(0, len(pixels), batch):
                chunk = torch.from_numpy(np.array(pixels[start : start + batch]))
                model.network.model(to_input(chunk, model.config, model.device))
    finally:
        hook.remove()
    features = torch.cat(captured).numpy()
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _kth_distance(
    reference: np.ndarray, queries: np.ndarray, k: int, leave_one_out: bool
) -> np.ndarray:
    squared = (
        (queries**2).sum(1)[:, None] + (reference**2).sum(1)[None, :] - 2 * queries @ reference.T
    )
    distance = np.sqrt(np.maximum(squared, 0))
    if leave_one_out:
        np.fill_diagonal(distance, np.inf)
    return np.partition(distance, k - 1, axis=1)[:, k - 1]


@dataclass
class Reference:
    """What the guard compares an image with: the run's validation films, summarised."""

    features: np.ndarray
    """``[N, p]`` the validation films' normalised features (projected if ``basis``)."""
    basis: np.ndarray | None
    k: int
    threshold: float
    template: np.ndarray
    """The validation films' mean thumbnail (unit norm)."""
    layout_floor: float
    digest: str

    @classmethod
    def build(cls, features: np.ndarray, pixels: np.ndarray, digest: str) -> Reference:
        """Thresholds at the largest leave-one-out score of any validation film."""
        basis = None
        if features.shape[1] > MAX_DIMS:
            basis = np.linalg.svd(features, full_matrices=False)[2][:MAX_DIMS]
            basis = basis.astype(np.float16).astype(np.float32)  # as it will be stored
            features = features @ basis.T
        features = features.astype(np.float16).astype(np.float32)  # as it will be stored
        k = max(1, min(K, len(features) - 1))
        loo = _kth_distance(features, features, k, leave_one_out=True)
        small = thumbnails(pixels)
        template = small.mean(axis=0)
        template /= max(float(np.linalg.norm(template)), 1e-6)
        layout = float((small @ template).min())
        return cls(features, basis, k, float(loo.max()), template, layout, digest)

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.basis is not None:
            features = features @ self.basis.T
        return _kth_distance(self.features, features, self.k, leave_one_out=False)

    def to_bytes(self) -> bytes:
        tensors = {"features": self.features.astype(np.float16), "template": self.template}
        if self.basis is not None:
            tensors["basis"] = self.basis.astype(np.float16)
        header = {
            "k": self.k,
            "threshold": self.threshold,
            "layout_threshold": self.layout_floor,  # the stored key, as shipped,
        }
        header = {k: json.dumps(v) for k, v in header.items()}
        return save_tensors(
            tensors, metadata={"format": FORMAT, "weights_sha256": self.digest, **header}
        )

    @classmethod
    def from_file(cls, path: Path, digest: str) -> Reference | None:
        """The stored reference, or None if absent, unreadable or for other weights."""
        if not path.is_file():
            return None
        try:
            stored, meta = weights_file.read_safetensors(path)
        except UserError:  # damaged: computed again where the data allows
            return None
        if meta.get("format") != FORMAT or meta.get("weights_sha256") != digest:
            return None
        tensors = {name: t.float().numpy() for name, t in stored.items()}
        return cls(
            tensors["features"],
            tensors.get("basis"),
            int(meta["k"]),
            float(meta["threshold"]),
            tensors["template"],
            float(meta["layout_threshold"]),
            digest,
        )


def validation_pixels(run: Run, model: LoadedModel) -> tuple[np.ndarray | None, str]:
    """The run's carved validation films as the model sees them, or None and why not."""
    split = run.split()
    if not split or "val" not in split.get("splits", {}):
        return None, "the run records no validation split"
    root = Path(split.get("root") or run.config().get("data") or "")
    samples = SplitManifest.from_dict(split).splits["val"]
    samples = [s for s in samples if (root / s.path).is_file()]
    if len(samples) <= K:
        return None, f"the run's validation films are not on this machine ({root})"
    images = decode_images(root, samples, model.config.img_size, model.config.clahe)
    return images.pixels, ""


_REFERENCES: dict[tuple[str, str], Reference] = {}


def reference_for(model: LoadedModel) -> tuple[Reference | None, str]:
    """The stored reference for these very weights; else computed from the run's
    validation films (about a minute on a CPU) and kept; else None and why."""
    digest = weights_digest(model.source)
    key = (str(model.source.resolve()), digest)
    if key in _REFERENCES:
        return _REFERENCES[key], ""
    run = run_of_weights(model.source)
    target = run.added / records.GUARD  # a bundled run's: in its overlay
    for file in dict.fromkeys([run.path / records.GUARD, target]):
        if (reference := Reference.from_file(file, digest)) is not None:
            _REFERENCES[key] = reference
            return reference, ""
    pixels, why = validation_pixels(run, model)
    if pixels is None:
        return None, f"feature check unavailable: no reference stored and {why}"
    reference = Reference.build(penultimate_features(model, pixels), pixels, digest)
    with contextlib.suppress(UserError, OSError):  # a read-only folder costs the record only
        atomic_write_bytes(target, reference.to_bytes())
    _REFERENCES[key] = reference
    return reference, ""


def guard_pixels(
    model: LoadedModel, pixels: np.ndarray, saturations: list[float | None] | None = None
) -> list[GuardVerdict]:
    """The guard for preprocessed images ``[N, size, size]`` as the model sees them (and
    their colour saturation, when known), in batches: whole image sets are checked too."""
    saturations = saturations or [None] * len(pixels)
    all_reasons = [image_reasons(p, s) for p, s in zip(pixels, saturations)]
    reference, note = reference_for(model)
    if reference is None:
        return [GuardVerdict(not r, r, notes=[note]) for r in all_reasons]
    layouts = thumbnails(pixels) @ reference.template
    scores = reference.score(penultimate_features(model, pixels))
    for reasons, layout, score in zip(all_reasons, layouts, scores):
        if layout < reference.layout_floor:
            reasons.append(
                f"not laid out like a chest film (correlation {layout:.2f} with the mean "
                f"validation film; every validation film {reference.layout_floor:.2f} "
                "or more)"
            )
        if score > reference.threshold:
            reasons.append(
                f"unlike every validation film to the model (feature distance {score:.3g}; "
                f"validation films {reference.threshold:.3g} at most)"
            )
    return [
        GuardVerdict(not r, r, float(score), reference.threshold)
        for r, score in zip(all_reasons, scores)
    ]


def _guard_model(model: LoadedModel, image: np.ndarray | ImageSource) -> GuardVerdict:
    size = model.config.img_size
    if isinstance(image, np.ndarray):  # the preprocessed image a prediction saw
        if image.shape != (size, size):
            raise UserError(f"the guard takes the {size}x{size} image the model saw")
        return guard_pixels(model, image[None])[0]
    pixels = load_and_preprocess(image, size, model.config.clahe)
    return guard_pixels(model, pixels[None], [colour_saturation(image)])[0]


def _combined(verdicts: dict[str, GuardVerdict]) -> GuardVerdict:
    """An ensemble's verdict: flagged when any member's is; the score of the member
    nearest its threshold's limit."""
    reasons = [f"{i}: {r}" for i, v in verdicts.items() for r in v.reasons]
    notes = [f"{i}: {n}" for i, v in verdicts.items() for n in v.notes]
    scored = [v for v in verdicts.values() if v.score is not None and v.threshold]
    worst = max(scored, key=lambda v: v.score / v.threshold, default=GuardVerdict(True))
    ok = all(v.in_distribution for v in verdicts.values())
    return GuardVerdict(ok, reasons, worst.score, worst.threshold, notes, verdicts)


def guard(
    model_or_run: LoadedModel | Ensemble | Run, image: np.ndarray | ImageSource
) -> GuardVerdict:
    """Whether ``image`` (a file, bytes or upload; or the preprocessed array a single
    model saw) looks like the films the model was validated on. An ensemble's members
    are each guarded; any member's flag flags the whole."""
    model = load_any(model_or_run.path) if isinstance(model_or_run, Run) else model_or_run
    if isinstance(model, Ensemble):
        if isinstance(image, np.ndarray):
            raise UserError("an ensemble's guard takes the image file: its members' sizes differ")
        data = _read(image) if hasattr(image, "read") else image
        return _combined({i: _guard_model(m, data) for i, m in model.members.items()})
    if hasattr(image, "read"):
        image = _read(image)
    return _guard_model(model, image)


def _read(stream: BinaryIO) -> bytes:
    """An upload's bytes, the stream left where it was, so the prediction reads it too."""
    start = stream.tell()
    data = stream.read()
    stream.seek(start)
    return data


def check_upload(model: LoadedModel | Ensemble, sources: list[ImageSource]) -> list[GuardVerdict]:
    """:func:`guard` for each image of a prediction (as ``predict_any`` takes them)."""
    return [guard(model, source) for source in sources]
