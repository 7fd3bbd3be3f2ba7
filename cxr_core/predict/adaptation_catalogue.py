"""The label-free adaptation methods by name: what the CLI's choices need, without the
torch that :mod:`cxr_core.predict.adaptation` imports to carry them out."""

from __future__ import annotations

METHODS = ("bn", "prior", "both")
"""bn: AdaBN, BatchNorm statistics re-estimated on the site's films; prior: the threshold
moved by the site's prevalence, estimated by EM; both: the two, in that order."""
