"""The colours every figure shares, so a run keeps its colour from chart to chart."""

from __future__ import annotations

from plotly.colors import qualitative

PALETTE = qualitative.D3 + qualitative.Set2


def color(i: int) -> str:
    """The ``i``-th colour of the palette, cycling."""
    return PALETTE[i % len(PALETTE)]
