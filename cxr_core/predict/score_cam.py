"""Score-CAM as CXR Lab computes it: on the CAM layer's most varied channels, with signed
gains (one of :data:`cxr_core.predict.cam_catalogue.CAM_METHODS`, "scorecam")."""

from __future__ import annotations

import torch
from pytorch_grad_cam.base_cam import BaseCAM


class TopChannelScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020) on the CAM layer's ``channels`` most varied channels.

    Each channel's activation map, upsampled and scaled to 0..1, masks the input; the
    channel's weight is how much that masked input raises the explained class's logit
    above the mean over the chosen channels' masked inputs; the map is
    ReLU(sum of weight x mask).

    pytorch-grad-cam's ScoreCAM gave an all-zero map in ~37 s per image on the bundled
    EfficientNet-Lite0 at 224 px (2 cores). Its CAM layer is the last BatchNorm, before
    the ReLU6: 87% of its values are negative, and ScoreCAM's weights (a softmax over
    channels) are all positive, so the weighted sum of activations was negative
    everywhere and the final ReLU left zeros. And it masked the input with every one of
    the 1280 channels (1280 forward passes). Here:

    - the map sums the masks the network was shown (0..1), not raw activations, so it is
      defined at any layer, before or after a non-linearity, and for ViT tokens;
    - weights are signed gains (a mask that lowers the score counts against its region),
      not a softmax, whose weights are all positive and, on logits several units apart, go
      to one channel. They are taken against the mean masked score, which, like the
      softmax, does not depend on a baseline image: a blank (mean-gray) input was no
      neutral reference, since the bundled small_cnn calls it PNEUMONIA with 88%, so every
      masked film scored below it and the pneumonia map was flat on every film (a single
      channel, as the MLP's input layer, is its own map);
    - only the ``channels`` channels whose activations (scaled to 0..1) vary most over
      space are used (a flat mask says nothing about where): 32 forward passes instead
      of 1280.
    """

    channels = 32
    batch_size = 32

    def __init__(self, model, target_layers, reshape_transform=None, logits=None) -> None:
        """``logits``: what scores the masked inputs (by default ``model`` itself; the
        run's ONNX graph on a CPU, :func:`cxr_core.predict.inference.explain`)."""
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False)
        self.logits = logits or model

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        acts = torch.from_numpy(activations).to(input_tensor.device)
        cams = []
        with torch.no_grad():
            for x, target, image_acts in zip(input_tensor, targets, acts):
                # Channels ranked at the layer's own resolution: upsampling all of them
                # first (1280 x 224 x 224 floats for EfficientNet-Lite0) took 2 s on 2 cores.
                spread = _scaled(image_acts).flatten(1).std(dim=1)
                top = image_acts[spread.topk(min(self.channels, len(spread))).indices]
                chosen = _scaled(
                    torch.nn.functional.interpolate(
                        top[None], size=x.shape[-2:], mode="bilinear", align_corners=False
                    )[0]
                )
                scores = torch.cat(
                    [
                        target(self.logits(x[None] * batch[:, None])).flatten()
                        for batch in chosen.split(self.batch_size)
                    ]
                )
                # One channel (the MLP's CAM layer is its input) has nothing to be weighed
                # against: its mask is the map, as Score-CAM's softmax would make it.
                gains = scores - scores.mean() if len(scores) > 1 else torch.ones_like(scores)
                cams.append(torch.einsum("k,khw->hw", gains, chosen))
        return torch.stack(cams).cpu().numpy()


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``[K, H, W]`` scaled to 0..1."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low + 1e-8)
