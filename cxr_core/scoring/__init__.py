"""Numbers from labels and probabilities: the metric catalogue and the threshold rules
(``metrics``), patient-bootstrap intervals and paired tests (``stats``), calibration. Pure
numpy and scipy: no runs, no files, no torch."""
