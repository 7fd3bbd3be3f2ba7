"""What the pages compute without drawing (no Streamlit here), kept beside the pages
because only they use it; a sub-folder, so Streamlit never lists these modules as pages."""
