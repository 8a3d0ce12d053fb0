"""Customer segmentation scored every night: the library (no Prefect, no Streamlit)."""

__version__ = "0.1.0"
