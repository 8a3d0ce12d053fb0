"""The model versions: status, quality, why, and each version's training report (the k
selection, the training sample's feature distributions and correlations)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from segmentation.explain import label
from segmentation.features import FEATURES
from streamlit_app import data
from streamlit_app.common import app_url, get_engine, summary, times


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
    if versions.empty:
        return
    listed = list(versions["version"])
    champion = versions[versions["status"] == "champion"]["version"]
    chosen = st.selectbox("Training report of", listed, key="model_pick",
                          index=listed.index(champion.iloc[0]) if len(champion) else 0)
    report = data.model_exploration(get_engine(url), chosen)
    k_selection(report["k_report"])
    training_sample(report["exploration"])


def k_selection(report: list[dict]) -> None:
    """Inertia (the elbow) and silhouette for each k tried."""
    import altair as alt

    if not report:
        st.caption("k was given, not chosen: no k selection to show.")
        return
    st.subheader("How k was chosen")
    frame = pd.DataFrame(report)
    base = alt.Chart(frame).encode(x=alt.X("k:O"))
    st.altair_chart(alt.hconcat(
        base.mark_line(point=True).encode(y=alt.Y("inertia:Q", title="inertia (elbow)")),
        base.mark_line(point=True).encode(y=alt.Y("silhouette:Q", title="silhouette"))))


def training_sample(exploration: dict) -> None:
    """Each feature's distribution in the training sample, and their correlations."""
    import altair as alt

    histograms = exploration.get("histograms", {})
    if not histograms:
        st.caption("This version was trained before training reports kept its sample's "
                   "distributions.")
        return
    st.subheader("The training sample: each feature's distribution")
    rows = [{"feature": label(f), "lower": h["edges"][i], "upper": h["edges"][i + 1],
             "customers": c} for f, h in histograms.items() for i, c in enumerate(h["counts"])]
    bars = alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        x=alt.X("lower:Q", title=None), x2="upper:Q", y=alt.Y("customers:Q", title=None),
        tooltip=[alt.Tooltip("lower:Q", format=",.2f"), alt.Tooltip("upper:Q", format=",.2f"),
                 alt.Tooltip("customers:Q", format=",d")]
    ).properties(width=220, height=110).facet(
        facet=alt.Facet("feature:N", title=None, sort=[label(f) for f in FEATURES]),
        columns=4).resolve_scale(x="independent", y="independent")
    st.altair_chart(bars)
    correlation = exploration.get("correlation") or []
    if correlation:
        st.subheader("The training sample: how the features move together")
        names = [label(f) for f in FEATURES]
        cells = pd.DataFrame([{"a": names[i], "b": names[j], "r": v}
                              for i, row in enumerate(correlation) for j, v in enumerate(row)])
        base = alt.Chart(cells).encode(x=alt.X("a:N", title=None, sort=names),
                                       y=alt.Y("b:N", title=None, sort=names))
        heat = base.mark_rect().encode(color=alt.Color(
            "r:Q", title="correlation", scale=alt.Scale(scheme="redblue", domain=[-1, 1])),
            tooltip=["a:N", "b:N", alt.Tooltip("r:Q", format="+.2f")])
        text = base.mark_text(fontSize=9).encode(
            text=alt.Text("r:Q", format=".1f"),
            color=alt.condition("abs(datum.r) > 0.55", alt.value("white"), alt.value("black")))
        st.altair_chart((heat + text).properties(height=28 * len(names)), width="stretch")


models_page(app_url())
