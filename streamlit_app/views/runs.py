"""The scoring and validation runs, as an ops log."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from streamlit_app.common import app_url, summary, times


def runs_page(url: str) -> None:
    """The runs as an ops log: what ran, when, on what, how many rows, how it ended."""
    st.header("Scoring runs")
    runs = summary("scoring_runs", url)
    if runs.empty:
        st.info("No scoring run yet: run `segmentation score`.")
    else:
        count = "{:,}".format
        log = pd.DataFrame({
            "started (UTC)": times(runs["started_at"]), "status": runs["status"],
            "mode": runs["mode"], "model": runs["model_version"],
            "rows in": runs["rows_in"].map(count), "scored": runs["rows_scored"].map(count),
            "quarantined": runs["rows_quarantined"].map(count),
            "moved": runs["moved"].map(count), "new": runs["new_customers"].map(count),
            "published by": runs["published_by"].fillna("-"),
            "duration": [f"{s:.1f} s" if s == s else "-" for s in runs["seconds"].astype(float)],
            "run id": runs["run_id"].str[:8]})
        # a plain table: every row readable at once, no scrolling box, fits the page
        st.table(log, hide_index=True)
        for _, failed in runs[runs["status"] == "failed"].iterrows():
            with st.expander(f"run {failed['run_id']} failed at "
                             f"{failed['started_at']:%Y-%m-%d %H:%M:%S}: why"):
                st.text(str(failed["error"] or "no reason recorded"))
    st.header("Validation runs")
    checks = summary("validation_runs", url)
    if not checks.empty:
        checks = checks.assign(started=times(checks["started_at"]))
        st.dataframe(checks[["started", "batch_id", "success", "rows_in", "rows_accepted",
                             "rows_quarantined"]],
            hide_index=True, width="stretch",
            column_config={"started": "started (UTC)", "batch_id": "batch",
                           **{c: st.column_config.NumberColumn(c.replace("_", " "),
                                                               format="localized")
                              for c in ("rows_in", "rows_accepted", "rows_quarantined")}})
        for _, failed in checks[~checks["success"].astype(bool)].iterrows():
            with st.expander(f"batch {failed['batch_id']} failed validation: why"):
                for line in failed["failures"] or []:
                    st.text(str(line))


runs_page(app_url())
