"""Home: what CXR Lab is, what comes bundled, and three first things to do."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages import ensure_app_shell, medical_notice, store
from pages.common import runview

ensure_app_shell()

st.title("CXR Lab")
st.markdown(
    "Train, compare and explain classifiers that tell **NORMAL** from **PNEUMONIA** chest "
    "X-rays, on an ordinary CPU. Validation is carved from the training films by patient, "
    "thresholds are chosen on it alone, and every figure comes with its 95% interval."
)
medical_notice()

bundled = [run for run in store().list(status="completed") if run.bundled]
st.subheader("Start here")
# Cards of a fixed width in a row that wraps: three equal columns cut their titles at 800 px.
cards = st.container(horizontal=True)
with cards.container(border=True, width=250):
    st.page_link(
        "pages/compare.py",
        label="Compare the bundled runs",
        icon=":material/compare:",
        query_params={"runs": [run.id for run in bundled]} if bundled else None,
        disabled=not bundled,
    )
    st.caption("Every metric with its interval, paired tests, the operating point.")
with cards.container(border=True, width=250):
    st.page_link("pages/predict.py", label="Upload a film", icon=":material/search:")
    st.caption("Each model's probability at its own threshold, and where it looked (CAMs).")
with cards.container(border=True, width=250):
    st.page_link("pages/train.py", label="Train a quick model", icon=":material/model_training:")
    st.caption('Pick the preset "quick on CPU" (about a minute) or the offline tiny demo.')

st.subheader("Bundled runs")
if bundled:
    rows = [run.summary() for run in bundled]
    table = pd.DataFrame(
        {
            "run": [run.label for run in bundled],
            "data": ["synthetic" if runview.is_synthetic_run(run) else "real" for run in bundled],
            "architecture": [r["arch"] for r in rows],
            "weights": ["ImageNet" if r["pretrained"] else "scratch" for r in rows],
            "px": [r["img_size"] for r in rows],
            "val AUC": [r["val_auc"] for r in rows],
            "test set": [r["test_split"] or "" for r in rows],
            "test accuracy": [r["test_accuracy"] for r in rows],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "px": st.column_config.NumberColumn(format="%d"),
            "val AUC": st.column_config.NumberColumn(format="%.3f"),
            "test accuracy": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption(
        "Real runs were trained with the CLI on the Kermany et al. (2018) training films; "
        "their test set is an internal split carved from the same films, easier than another "
        "hospital's. Synthetic runs learned drawn images: their scores say nothing of patients."
    )
else:
    st.info("No bundled runs in this installation: train one on the Train page.")
