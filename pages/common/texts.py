"""The words the app shows in more than one place: the notice and the glossary."""

from __future__ import annotations

NOT_A_MEDICAL_DEVICE = (
    "**Not a medical device.** CXR Lab is for learning and research on public data. "
    "Its outputs are not a diagnosis and must not be used to make clinical decisions."
)

GLOSSARY = {
    "sensitivity": "Share of pneumonia images the model calls pneumonia (recall, true "
    "positive rate). Low sensitivity means missed cases.",
    "specificity": "Share of normal images the model calls normal (true negative rate). "
    "Low specificity means false alarms.",
    "AUC": "Area under the ROC curve: the chance that a random pneumonia image scores "
    "higher than a random normal one. 0.5 is guessing, 1.0 is perfect ranking; it does not "
    "depend on the decision threshold.",
    "overfitting": "The model learns its training images rather than the task: training "
    "metrics keep improving while validation metrics stall or get worse.",
    "transfer learning": "Starting from weights learned on another task (ImageNet photos) "
    "instead of random ones, then training only the head (frozen backbone) or fine-tuning "
    "some or all layers on the radiographs.",
    "threshold": "The probability above which an image is labelled PNEUMONIA. Each run "
    "chooses it on its validation split, never on the test split: by default the centre, "
    "in log-odds, of the thresholds whose Youden's J (sensitivity + specificity - 1) is "
    "within one standard error of the best.",
    "Grad-CAM": "A heat map of the image regions that raised the score of the explained "
    "class most, from the gradients at the model's last convolutional (or attention) layer.",
    "synthetic": "Procedurally drawn radiograph-like images made by CXR Lab for offline "
    "demos. Models trained on them say nothing about real patients.",
}

LUNG_FIELDS_HELP = (
    "Energy: the share of the map's total. The lung fields are two fixed ellipses where the "
    "lungs lie on a centred frontal film (fitted to the mean Kermany training film), not a "
    "segmentation of this film: they are wrong for rotated or off-centre patients, films "
    "showing much of the abdomen, lateral views and adults. Energy on the border or below "
    "the diaphragm hints at a shortcut (text markers, collimation edges, the abdomen)."
)
"""How the CAM checks find the lung fields, and where that fails (Predict and Compare)."""


def help_text(term: str) -> str:
    """The glossary entry for ``term``, for ``help=`` tooltips."""
    return f"{term}: {GLOSSARY[term]}"
