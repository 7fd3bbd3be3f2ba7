"""The CAM methods by name, and the CAM check's sample size: what the CLI's choices and the
pages' selectors need, without importing pytorch-grad-cam (which pulls torch._dynamo in)."""

from __future__ import annotations

CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "TopChannelScoreCAM",
}
"""Each method's name and its class: pytorch-grad-cam's, or
:class:`cxr_core.predict.score_cam.TopChannelScoreCAM`."""

SAMPLE = 16
"""Images per run and set of a CAM check: about a minute per run at 224 px with ROAD on 2
cores."""
