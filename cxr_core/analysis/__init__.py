"""Reading runs side by side: the comparison view-model the Compare page and the CLI
share (``comparison``), the self-contained HTML report, mistakes image by image, per-run
CAM reports and every plotly figure (``plots``)."""
