"""Overview: the published segments, how they differ, their sizes over the runs, the
movement, the scatter."""

from __future__ import annotations

import streamlit as st

from streamlit_app.common import (
    app_url,
    export_picker,
    profile_heatmap,
    published_names,
    scatter,
    sizes_chart,
    summary,
    summary_state,
)


def overview(url: str) -> None:
    st.header("Segments")
    segments = summary("published_segments", url)
    if segments.empty or segments["customers"].sum() == 0:
        if summary_state(url) == "missing":  # published before runs wrote summaries
            st.info("Customers are published, but no scoring run has summarised them for "
                    "the app yet: the next `segmentation score` does.")
        else:
            st.info("No scored customers yet: run `segmentation score`.")
        return
    names = published_names(segments)
    published, champion = str(segments["version"].iloc[0]), segments["champion"].iloc[0]
    if bool(segments["pending"].iloc[0]):  # a new champion, not yet scored anyone
        st.info(f"Published by model {published}. A new champion, {champion}, has not scored "
                "the customers yet: the next nightly run rescores everyone with it.")
    else:
        st.caption(f"published by model {published} (the champion)")
    st.dataframe(segments[["name", "segment_id", "customers", "share", "profile"]],
                 hide_index=True, width="stretch",
                 column_config={"name": "segment", "segment_id": st.column_config.NumberColumn(
                                    "id", format="%d", width="small"),
                                "customers": st.column_config.NumberColumn(format="localized"),
                                "share": st.column_config.NumberColumn(format="percent")})
    st.subheader("How each segment differs from the average customer")
    st.caption("standard deviations above (blue) or below (red) the average customer")
    profile_heatmap(summary("centroids_z", url), names)
    moves = summary("segment_sizes_by_run", url)
    if not moves.empty:
        st.subheader("Segment sizes over the last scoring runs")
        sizes_chart(moves, names)
    movement = summary("movement_last_run", url)
    if not movement.empty:
        st.subheader("Movement in the latest run (rows: from, columns: to)")
        table = movement.pivot_table(index="from_segment", columns="to_segment",
                                     values="customers", fill_value=0)
        table.index.name, table.columns.name = "from", "to"
        st.dataframe(table, width="stretch")
    st.subheader("Customers on the first two principal axes")
    scatter(summary("scatter_points", url), names)
    export_picker(url, names, key="export_overview")


overview(app_url())
