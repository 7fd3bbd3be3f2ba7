"""CXR Lab: ``streamlit run app.py``. The entry point only sets up and navigates; each
page in pages/ is a thin view over cxr_core (see ``pages.ensure_app_shell`` for why
every page first checks that it runs under this script)."""

from __future__ import annotations

import os

import streamlit as st

from cxr_core import settings
from cxr_core.store.runs import RunStore
from pages import APP_SHELL, freeze_loaded_modules

st.set_page_config(page_title="CXR Lab", page_icon=":material/radiology:", layout="wide")

# Deployments may set CXR_* in st.secrets instead of the environment; the environment
# wins, and training processes inherit whatever is chosen here.
if st.secrets.load_if_toml_exists():
    for name in settings.SETTINGS:
        if name in st.secrets and name not in os.environ:
            os.environ[name] = str(st.secrets[name])

st.session_state[APP_SHELL] = True
page = st.navigation(
    {
        "Start": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
        "Work": [
            st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
            st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:"),
            st.Page("pages/sweeps.py", title="Sweeps", icon=":material/grid_on:"),
            st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
            st.Page("pages/predict.py", title="Predict & explain", icon=":material/search:"),
        ],
        "Help": [
            st.Page("pages/lesson.py", title="Distribution shift", icon=":material/school:"),
            st.Page("pages/about.py", title="About", icon=":material/info:"),
        ],
    }
)
freeze_loaded_modules()  # what the last run imported: before this run's garbage exists
with st.sidebar:
    st.caption(f"Runs folder: `{RunStore().root}`")
    st.caption("For learning and research. **Not a medical device.**")
page.run()
