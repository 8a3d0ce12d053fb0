"""The Streamlit app (run with `segmentation app`)."""
