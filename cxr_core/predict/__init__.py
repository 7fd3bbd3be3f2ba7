"""Using trained runs: loading weights and predicting (``inference``), CAMs and the checks
of whether they can be trusted (``cam_checks``), runs scored on image sets
(``evalsets``) and ensembles of runs."""
