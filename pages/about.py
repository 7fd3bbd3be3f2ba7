"""About: what CXR Lab is for, the words it uses, and what it is not."""

from __future__ import annotations

import streamlit as st

from cxr_core.analysis import plots
from pages import ensure_app_shell, medical_notice
from pages.common import texts

ensure_app_shell()

st.title("About CXR Lab")
medical_notice()
st.markdown(
    """
CXR Lab trains, compares and explains classifiers that tell **NORMAL** from
**PNEUMONIA** chest X-rays (the Kermany et al. pediatric data set), on an ordinary
laptop CPU. It is a teaching and research tool: it shows how data, splits,
architectures, transfer learning and augmentation change a model, and how to read
the results honestly.

**How to use it**

1. **Data**: pick the images: a folder in the Kaggle layout, a download, or the
   synthetic demo that works offline. Check class and patient counts and preview
   the augmentation.
2. **Train**: choose one or more architectures (or a preset) and launch. Every run
   is its own background process; closing the tab does not stop it.
3. **Runs**: follow progress, ETA and learning curves live; cancel a run.
4. **Compare**: confusion matrices, ROC/PR curves, per-class reports, model size,
   training time and latency, one table you can sort and download.
5. **Predict & explain**: upload radiographs (JPEG, PNG, DICOM) and see each model's
   probability, its label at the run's own threshold, and a Grad-CAM heat map.

**Honest evaluation.** Splits are grouped by patient (no patient on both sides),
the best epoch and the decision threshold are chosen on validation data only, and the
test split is touched once, at the end. Runs evaluated on different images are flagged
on the Compare page.

**Synthetic data.** Without a data set, CXR Lab draws radiograph-like images itself.
They are labelled *synthetic* everywhere; models trained on them say nothing about
real patients.
"""
)
ref = plots.KERMANY_2018
st.markdown(
    f"**Published reference.** Kermany et al. (Cell, 2018) report accuracy "
    f"{ref['accuracy']:.1%}, sensitivity {ref['sensitivity']:.1%}, specificity "
    f"{ref['specificity']:.1%} and AUC {ref['auc']} on the official test split. It is drawn "
    "on the Compare page's ROC chart as a point of orientation from another setup."
)

st.subheader("Glossary")
for term, text in texts.GLOSSARY.items():
    st.markdown(f"**{term}**: {text}")
