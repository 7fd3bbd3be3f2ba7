"""Using a trained model: load it from a run or a checkpoint, predict, explain with CAMs.

Predictions go through the same preprocessing as training (``load_and_preprocess``
with the run's size, CLAHE and normalisation) and use the threshold the run chose on
validation data.
"""

from __future__ import annotations

import functools
import platform
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.data.imaging import ImageSource, load_and_preprocess
from cxr_core.errors import UserError
from cxr_core.models import weights_file
from cxr_core.predict import graphs
from cxr_core.predict.cam_catalogue import CAM_METHODS
from cxr_core.scoring.metrics import decide, decided_class
from cxr_core.settings import CLASSES
from cxr_core.store import records
from cxr_core.training.config import TrainConfig

if TYPE_CHECKING:  # pytorch-grad-cam is imported when a CAM is asked for: it takes seconds
    from collections.abc import Callable

    import onnxruntime
    import torch
    from pytorch_grad_cam.base_cam import BaseCAM

    from cxr_core.training.runtime import Network


def cam_class(method: str) -> type[BaseCAM]:
    """The class that computes the CAM method named ``method``."""
    import pytorch_grad_cam

    from cxr_core.predict.score_cam import TopChannelScoreCAM

    try:
        name = CAM_METHODS[method]
    except KeyError:
        raise UserError(
            f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}"
        ) from None
    return (
        TopChannelScoreCAM
        if name == TopChannelScoreCAM.__name__
        else getattr(pytorch_grad_cam, name)
    )


def _may_have_gpu() -> bool:
    """Whether torch's ``auto`` might pick a GPU here: an NVIDIA or ROCm driver, or Apple
    silicon. Without one, ``auto`` is the CPU, known without importing torch."""
    return (
        Path("/proc/driver/nvidia").exists()
        or Path("/dev/kfd").exists()
        or shutil.which("nvidia-smi") is not None
        or (sys.platform == "darwin" and platform.machine() == "arm64")
    )


@dataclass(eq=False)
class LoadedModel:
    """A ready-to-use model with its run's preprocessing and threshold.

    The PyTorch module is built from the weights when first needed (a CAM, the input
    guard, exporting the graph): scoring on a CPU through the weights' exported graph
    (:mod:`cxr_core.predict.graphs`) needs no torch.

    ``lock`` serialises every forward pass: CAM hooks live on the shared module while a
    CAM is computed, so another session's prediction or CAM running at the same time
    would feed its activations into that CAM.
    """

    config: TrainConfig
    threshold: float
    source: Path
    run_id: str | None = None
    device_name: str = "auto"
    built: Network | None = field(default=None, repr=False)
    """The PyTorch module, once :attr:`network` has built it (or given when made)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _building: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def device(self) -> torch.device:
        from cxr_core.training.runtime import select_device

        return select_device(self.device_name)

    @property
    def on_cpu(self) -> bool:
        """Whether the model runs on the CPU, told without importing torch where it can be."""
        if self.device_name == "cpu" or (
            self.device_name == "auto" and "torch" not in sys.modules and not _may_have_gpu()
        ):
            return True
        return self.device.type == "cpu"

    @property
    def network(self) -> Network:
        """The PyTorch module with the checkpoint's weights, built on first use."""
        with self._building:
            if self.built is None:
                self.built = _build(self.source, self.config, self.device)
        return self.built

    def input_for(self, pixels: np.ndarray) -> torch.Tensor:
        """The network's input (a batch of one) for one preprocessed uint8 image."""
        import torch

        from cxr_core.training.runtime import to_input

        return to_input(torch.from_numpy(pixels[None].copy()), self.config, self.device)


@dataclass
class Prediction:
    probability: float
    label: str
    threshold: float
    pixels: np.ndarray
    """The preprocessed uint8 image the model saw."""

    @property
    def predicted(self) -> int:
        """The predicted class as a CAM target: 1 PNEUMONIA, 0 NORMAL."""
        return CLASSES.index(self.label)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder or a ``.safetensors`` file -> the weights file."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / records.WEIGHTS
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint (a run folder or its {records.WEIGHTS})")
    return path


def _build(weights: Path, config: TrainConfig, device: torch.device) -> Network:
    """The architecture of ``config`` on ``device`` with the weights of ``weights``."""
    import torch

    from cxr_core.training.runtime import build_network

    # Normal tensors even when first asked for inside an inference_mode block: a CAM's
    # backward later runs through these weights.
    with torch.inference_mode(False):
        state, _ = weights_file.load_weights(weights)
        network = build_network(config, device)
        # Inference only: explain() starts the CAM's graph at the CAM layer, so no backward
        # ever computes weight gradients.
        network.model.requires_grad_(False)
        weights_file.load_state_into(network.model, state, config.arch, weights)
    network.model.eval()
    return network


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """The checkpoint's own config, threshold and weights (checked against their checksum).

    The module is built now, refusing weights that do not fit their architecture, unless
    the graph exported from these very weights and config is kept: it was built from them
    and checked when the graph was made.
    """
    weights = resolve_checkpoint(path)
    meta = weights_file.read_metadata(weights)
    if "config" not in meta:
        raise UserError(f"{weights}: checkpoint has no training config in its header")
    try:
        config = TrainConfig.from_dict({**meta["config"], "pretrained": False})
    except TypeError as exc:
        raise UserError(f"{weights}: checkpoint config is invalid ({exc})") from None
    threshold = float(meta.get("threshold", 0.5))
    model = LoadedModel(config, threshold, weights, meta.get("run_id"), device)
    if not (model.on_cpu and graphs.stored(weights, config)):
        model.network  # noqa: B018 (built now: a mismatch or a missing GPU is told here)
    return model


def prepare(model: LoadedModel, source: ImageSource) -> np.ndarray:
    return load_and_preprocess(source, model.config.img_size, model.config.clahe)


def _torch_forward(model: LoadedModel, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    import torch

    from cxr_core.training.runtime import predict_pixels

    return predict_pixels(model.network.model, torch.as_tensor(pixels), model.config, model.device)


def torch_probabilities(model: LoadedModel, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Probabilities by the PyTorch module itself: the fallback of :func:`probabilities`,
    and the only path for a module changed in memory (AdaBN's statistics, hooks reading
    its layers), which the exported graph of its weights file does not hold."""
    with model.lock:  # a CAM of another session may have hooks on this very module now
        return _torch_forward(model, pixels)


def graph_session(model: LoadedModel) -> onnxruntime.InferenceSession | None:
    """The session of the run's exported graph (made now if need be) where the model runs
    on a CPU and ONNX Runtime is used; else None."""
    if not model.on_cpu:
        return None
    session = graphs.stored(model.source, model.config)
    if session is None:
        with model.lock:  # exporting traces the shared module
            session = graphs.made(
                model.source,
                model.network,
                model.config,
                lambda films: _torch_forward(model, films),
            )
    return session


def probabilities(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """Pneumonia probabilities for preprocessed uint8 films ``[N, H, W]``: by ONNX Runtime
    on the run's exported graph on a CPU (:mod:`cxr_core.predict.graphs`), else PyTorch."""
    session = graph_session(model)
    if session is None:
        return torch_probabilities(model, pixels)
    return graphs.run(session, pixels, model.config)


def predict(model: LoadedModel, sources: list[ImageSource]) -> list[Prediction]:
    """Probability of pneumonia and the label at the run's threshold, per image."""
    pixels = [prepare(model, s) for s in sources]
    probs = probabilities(model, np.stack(pixels))
    return [
        Prediction(float(p), decided_class(p, model.threshold), model.threshold, px)
        for p, px in zip(probs, pixels)
    ]


def predicted_class(model: LoadedModel, pixels: np.ndarray) -> int:
    """The class (1 PNEUMONIA, 0 NORMAL) the model predicts at its threshold for one
    preprocessed image: the CAM target when none is given."""
    import torch

    with model.lock, torch.inference_mode():
        prob = torch.sigmoid(model.network.model(model.input_for(pixels))).item()
    return int(decide(prob, model.threshold))


def explain(
    model: LoadedModel, pixels: np.ndarray, method: str = "gradcam", target: int | None = None
) -> np.ndarray:
    """A ``[H, W]`` heat map in 0..1 for the preprocessed image ``pixels``.

    ``target`` 1 explains the evidence for pneumonia, 0 for normal; by default the class
    the model predicts (pass :attr:`Prediction.predicted` to skip a forward pass). ViT
    models use their token-to-grid reshape.

    Gradients flow from the output back to the CAM layer and no further: its activation
    enters the graph as a fresh tensor, and the weights never require gradients. (For
    resnet18 at 224 px that backward is a 7x7 map's, not the whole network's.)
    """
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cam_type = cam_class(method)
    options = {}
    if method == "scorecam" and (session := graph_session(model)) is not None:
        options["logits"] = _graph_logits(session)
    net = model.network
    x = model.input_for(pixels)
    if target is None:
        target = predicted_class(model, pixels)
    with model.lock:
        # Registered before the CAM's own hooks, so they record this tensor and its
        # gradient. A clone, not a leaf: a later in-place op (DenseNet's ReLU) stays legal.
        start = net.cam_layer.register_forward_hook(
            lambda module, args, out: out.detach().requires_grad_(True).clone()
        )
        try:
            with cam_type(
                model=net.model,
                target_layers=[net.cam_layer],
                reshape_transform=net.reshape_transform,
                **options,
            ) as cam:
                heat = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(target)])[0]
        finally:
            start.remove()
    return np.nan_to_num(heat.astype(np.float32))


def _graph_logits(session: onnxruntime.InferenceSession) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network's logits by ONNX Runtime on its graph: Score-CAM's masked forwards, about
    4x faster than PyTorch's for EfficientNet-Lite0 on 2 cores."""
    import torch

    return lambda x: torch.from_numpy(graphs.outputs(session, x.detach().cpu().numpy(), "logit"))


def overlay(pixels: np.ndarray, heat: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """RGB uint8 image: the radiograph with the heat map blended on top."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(pixels[..., None], 3, axis=2).astype(np.float32) / 255
    return show_cam_on_image(rgb, heat, use_rgb=True, image_weight=1 - opacity)
