"""Where work runs: a training job in its own process (``jobs``), executors (local
processes or a Ray cluster), background scoring jobs and sweeps over a grid of options."""
