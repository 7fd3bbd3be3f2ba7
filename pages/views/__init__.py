"""Streamlit views that pages compose: a sub-package, because Streamlit lists every
``*.py`` directly in pages/ as a page on a fresh server's first request."""
