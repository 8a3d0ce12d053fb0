"""One segment: who they are, how many over the runs, who comes and goes, typical customers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from segmentation.explain import in_units, label
from segmentation.features import FEATURES
from streamlit_app import data
from streamlit_app.common import (
    app_url,
    distributions,
    export_picker,
    get_engine,
    named,
    published_names,
    sample_size,
    summary,
    summary_of,
    times,
)


def segment_page(url: str) -> None:
    """One segment: who they are, how many over the runs, who comes and goes, examples."""
    segments = summary("published_segments", url)
    if segments.empty:
        st.header("Segments")
        st.info("No champion model yet: run `segmentation train`.")
        return
    names = published_names(segments)
    chosen = st.selectbox("Segment", [named(i, names) for i in names], key="segment_pick")
    segment = next(i for i in names if named(i, names) == chosen)
    st.header(chosen)
    row = segments[segments["segment_id"] == segment].iloc[0]
    version = str(row["version"])
    total = int(segments["customers"].sum())
    left, right = st.columns(2)
    left.metric("customers", f"{int(row['customers']):,}")
    right.metric("share of all customers", f"{row['customers'] / total:.1%}" if total else "-")
    st.caption(str(row["profile"]))
    st.subheader("Who they are")
    # as the registry stored the segment (by its id: ids need not be 0..k-1), no model file
    stored = data.segment_profile(get_engine(url), version, segment)
    centre, z, average = stored["centre"], stored["z"], stored["average"]
    profile = pd.DataFrame({
        "feature": [label(f) for f in FEATURES],
        "typical in this segment": [in_units(f, centre.get(f)) for f in FEATURES],
        "average customer": [in_units(f, average.get(f)) for f in FEATURES],
        "difference (std. dev.)": [round(float(z[f]), 2) for f in FEATURES]})
    st.dataframe(profile, hide_index=True, width="stretch", height=35 * 18 + 3)
    every = summary("segment_sizes_by_run", url)
    sizes = every[every["segment_id"] == segment]
    if not sizes.empty:
        st.subheader("Size and share over the last scoring runs")
        totals = every.groupby("started_at")["customers"].sum()
        table = pd.DataFrame({
            "run started (UTC)": times(sizes["started_at"]),
            "customers": sizes["customers"].astype(int).map("{:,}".format),
            "share": [f"{n / totals[t]:.1%}" for t, n in zip(sizes["started_at"],
                                                               sizes["customers"],
                                                               strict=True)]})
        st.table(table.iloc[::-1], hide_index=True)
    st.subheader("Moving in and out, per run")
    moves = summary_of("segment_movement", url, segment)
    if moves.empty:
        st.caption("No customer has moved into or out of this segment yet.")
    else:
        moves["when"] = times(moves["started_at"])
        moves["other segment"] = [t if d == "out" else f for f, t, d in zip(
            moves["from_segment_name"], moves["to_segment_name"], moves["direction"],
            strict=True)]
        st.dataframe(moves[["when", "direction", "other segment", "customers"]],
                     hide_index=True, width="stretch",
                     column_config={"when": "run started (UTC)", "customers":
                                    st.column_config.NumberColumn(format="localized")})
    st.subheader("How its customers spread, against everyone")
    distributions(summary_of("feature_bins", url, segment), chosen)
    st.subheader("Typical customers")
    typical = summary_of("typical_customers", url, segment)
    if not typical.empty:
        shown = pd.DataFrame({"customer": typical["customer_id"].astype(str)})
        for f in ("balance", "purchases", "cash_advance", "credit_limit", "payments",
                  "purchases_frequency", "prc_full_payment", "tenure"):
            shown[label(f)] = [in_units(f, v) for v in typical[f]]
        size, sampled = int(row["customers"]), sample_size(url)
        among = (f"all its {size:,} members" if sampled >= total else
                 f"a random sample of {sampled:,} of all {total:,} customers")
        st.caption(f"the customers closest to the segment's centre, among {among}")
        st.dataframe(shown, hide_index=True, width="stretch")
    export_picker(url, names, key=f"export_segment_{segment}", preset=[segment])


segment_page(app_url())
