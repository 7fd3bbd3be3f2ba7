"""The least a Streamlit page can do for issue 20's browser steps, with the app's settings:
show an uploaded film, draw ten Plotly charts, rerun on a click. What these take on a
machine is the floor under the app's own steps there (``python -m benchmarks.floor``)."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

st.title("Floor")
upload = st.file_uploader("Film")
if upload is not None:
    st.image(upload.getvalue(), caption="as uploaded", width=320)
st.button("Rerun")
st.caption(f"runs: {st.session_state.setdefault('runs', 0)}")
st.session_state["runs"] += 1
if st.toggle("Ten charts"):
    x = np.linspace(0, 1, 200)
    for i in range(10):
        st.plotly_chart(go.Figure(go.Scatter(x=x, y=x ** (i + 1))), key=f"chart{i}")
