"""The model versions: status, quality, why."""

from __future__ import annotations

import streamlit as st

from streamlit_app.common import app_url, summary, times


def models_page(url: str) -> None:
    st.header("Models")
    versions = summary("model_versions", url)
    versions = versions.assign(created=times(versions["created_at"], "%Y-%m-%d %H:%M"),
                               status_reason=versions["status_reason"].fillna(""))
    st.dataframe(versions[["version", "status", "k", "created", "agreement", "silhouette",
                           "status_reason"]],
        hide_index=True, width="stretch",
        column_config={"agreement": st.column_config.NumberColumn(
                           "rules agree", format="percent",
                           help="held-out customers the decision rules put in their segment"),
                       "silhouette": st.column_config.NumberColumn(format="%.3f"),
                       "status_reason": "note"})


models_page(app_url())
