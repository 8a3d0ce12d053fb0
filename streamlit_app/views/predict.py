"""What if: the segment of a customer typed into a form, checked as the nightly batch is."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from segmentation.explain import SHARES
from segmentation.features import COUNTS, FEATURES
from streamlit_app import data
from streamlit_app.common import (
    app_url,
    bounds,
    explain,
    field_label,
    get_engine,
    get_model,
    plain_problem,
    scatter,
    summary,
)


def predict(url: str) -> None:
    st.header("Predict a segment")
    versions = summary("model_versions", url)
    champion = versions[versions["status"] == "champion"]
    if champion.empty:
        st.info("No champion model yet: run `segmentation train`.")
        return
    model = get_model(url, str(champion["version"].iloc[0]))
    metrics = model.info.get("metrics", {})
    means = metrics.get("medians") or metrics.get("imputation_means", {})  # training medians
    with st.form("predict"):
        shown = {}
        columns = st.columns(3)
        for i, feature in enumerate(FEATURES):
            low, high = bounds(feature)
            default = float(min(max(means.get(feature, low), low), high or float("inf")))
            scale = 100.0 if feature in SHARES else 1.0  # shares typed as Lookup shows them
            whole = feature in COUNTS or feature == "tenure" or feature in SHARES
            default = float(round(default * scale)) if whole else default
            shown[feature] = columns[i % 3].number_input(
                field_label(feature), value=default, step=1.0 if whole else 0.01,
                key=f"f_{feature}", help=f"column {feature}",
                format="%.0f" if whole else "%.2f")
        submitted = st.form_submit_button("Predict")
    if submitted:
        from segmentation.contract import check_values

        values = {f: v / 100.0 if f in SHARES else v for f, v in shown.items()}
        problems = check_values(values)
        if problems:  # the same row rules as the nightly batch: no prediction
            for feature, message in problems.items():
                st.error(plain_problem(feature, message))
            return
        row = pd.DataFrame([values])
        segment = int(model.predict(row)[0])
        names = data.segment_names(get_engine(url), model.version)  # renames apply at once
        name, profile = names.get(segment, (model.names.get(segment, "?"), ""))
        st.success(f"Segment {segment}: {name}")
        st.caption(profile or model.profiles.get(segment, ""))
        explain(url, model, row, segment)
        point = model.pca.transform(model.standardize(row))[0]
        here = pd.DataFrame({"pc1": [point[0]], "pc2": [point[1]],
                             "label": ["this customer"]})
        scatter(summary("scatter_points", url), {i: n for i, (n, _) in names.items()}, here)


predict(app_url())
