"""What the app's pages share: settings, the engine and model caches, names, charts."""

from __future__ import annotations

import threading

import pandas as pd
import streamlit as st
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine

from segmentation.clustering import SegmentationModel
from segmentation.config import load_settings
from segmentation.contract import CASH_ADVANCE_FREQUENCY_MAX
from segmentation.db import app_database, connection, set_role
from segmentation.explain import SHARES, label
from segmentation.features import FEATURES, FREQUENCIES
from streamlit_app import data


def app_url() -> str:
    """The database the app reads (its own login, or the owner's URL switched to the app's
    role)."""
    return app_database(load_settings())[0]


def app_role() -> str | None:
    """The role every session switches to: None when the app logs in as segmentation_app
    (SEGMENTATION_APP_DATABASE_URL), segmentation_app when it was given the owner's URL."""
    return app_database(load_settings())[1]


@st.cache_resource
def get_engine(url: str) -> Engine:
    """One pooled engine per database URL, built from the same settings as the CLI."""
    return data.app_engine(url, app_role())


_MODELS: dict[tuple[str, str], SegmentationModel] = {}
_LOADING = threading.Lock()


def get_model(url: str, version: str) -> SegmentationModel:
    """A model version (sha256-checked by the registry), loaded once per process: a version
    never changes, so every session shares it."""
    from segmentation.registry import load_version

    loaded = _MODELS.get((url, version))
    if loaded is not None:  # the usual case: no lock to wait for
        return loaded
    with _LOADING:  # one load at a time: a second asker waits for the first's result
        if (url, version) not in _MODELS:
            with connection(url) as conn:
                set_role(conn, app_role())
                _MODELS[(url, version)] = load_version(conn, version)
        return _MODELS[(url, version)]


@st.cache_resource
def warm_champion(url: str) -> threading.Thread:
    """Load the champion in the background when the app starts serving (once per process),
    so the first page that needs it (Predict, a lookup) does not wait for skops."""
    from segmentation.registry import champion_version

    def load() -> None:
        try:
            with connection(url) as conn:
                set_role(conn, app_role())
                version = champion_version(conn)
            if version is not None:
                get_model(url, version)
        except Exception:  # the page that needs the model says what is wrong
            pass

    thread = threading.Thread(target=load, name="warm-champion", daemon=True)
    thread.start()
    return thread


SUMMARY_TTL_S = 120  # the tables change once a night; lookups below are always live


@st.cache_data(ttl=SUMMARY_TTL_S, show_spinner=False)
def _cached(name: str, url: str, stamp: str) -> pd.DataFrame:
    """A read of streamlit_app.data, cached per state of the database (stamp)."""
    return getattr(data, name)(get_engine(url))


def summary(name: str, url: str) -> pd.DataFrame:
    """An overview/registry read (a function of streamlit_app.data): cached, since every
    interaction reruns the whole script and these scan the scored table, but never past a
    rename, a champion change or a run (one tiny query says which state is current)."""
    return _cached(name, url, data.freshness(get_engine(url)))


@st.cache_data(ttl=SUMMARY_TTL_S, show_spinner=False)
def _cached_of(name: str, url: str, segment: int, stamp: str) -> pd.DataFrame:
    """A per-segment read of streamlit_app.data, cached per state of the database."""
    return getattr(data, name)(get_engine(url), segment)


def summary_of(name: str, url: str, segment: int) -> pd.DataFrame:
    """A per-segment read of the latest run's summary (see summary)."""
    return _cached_of(name, url, segment, data.freshness(get_engine(url)))


def summary_state(url: str) -> str:
    """Whether the latest run's summary is there (streamlit_app.data.summary_state)."""
    return data.summary_state(get_engine(url))


def sample_size(url: str) -> int:
    """How many published customers the latest summary's sampled parts were drawn from."""
    return data.summary_sample_rows(get_engine(url))


def bounds(feature: str) -> tuple[float, float | None]:
    """Input bounds that match the data contract."""
    if feature == "cash_advance_frequency":
        return 0.0, CASH_ADVANCE_FREQUENCY_MAX
    if feature in FREQUENCIES or feature == "prc_full_payment":
        return 0.0, 1.0
    if feature == "tenure":
        return 6.0, 12.0
    return 0.0, None


PALETTE = "tableau10"  # ten distinct hues: no two segments share a colour


def times(series: pd.Series, fmt: str = "%Y-%m-%d %H:%M:%S") -> pd.Series:
    """Timestamps as text in one format (an empty column included)."""
    return pd.to_datetime(series, utc=True).dt.strftime(fmt)


def published_names(segments: pd.DataFrame) -> dict[int, str]:
    """The published segment id -> name (a published_segments read: renames applied)."""
    return {int(i): str(n) for i, n in zip(segments["segment_id"], segments["name"],
                                           strict=True)}


def named(segment_id: int, names: dict[int, str]) -> str:
    """A segment as marketing reads it."""
    return names.get(int(segment_id), f"segment {segment_id}")


def scatter(points: pd.DataFrame, names: dict[int, str],
            here: pd.DataFrame | None = None) -> None:
    """Customers on the two principal axes, one distinct colour per segment, the axes cut
    at the 1st and 99th percentiles (a few outliers would squash the rest), and a what-if
    customer drawn large on top."""
    import altair as alt

    points = points.drop(columns="segment_id").assign(
        segment=[named(i, names) for i in points["segment_id"]])

    def domain(column: str) -> list[float]:
        low, high = points[column].quantile([0.01, 0.99])
        if here is not None:  # the what-if customer is always in view
            low, high = min(low, here[column].min()), max(high, here[column].max())
        return [float(low), float(high)]

    x = alt.X("pc1:Q", title="first principal axis", scale=alt.Scale(domain=domain("pc1"),
                                                                        clamp=True))
    y = alt.Y("pc2:Q", title="second principal axis", scale=alt.Scale(domain=domain("pc2"),
                                                                         clamp=True))
    chart = alt.Chart(points).mark_circle(size=18, opacity=0.5).encode(
        x=x, y=y, color=alt.Color("segment:N", scale=alt.Scale(scheme=PALETTE),
                                  legend=alt.Legend(title="segment", labelLimit=320)))
    if here is not None:  # its own legend entry: the diamond says what it is
        chart += alt.Chart(here).mark_point(size=400, filled=True, color="black",
                                            stroke="white", strokeWidth=2).encode(
            x=x, y=y, tooltip=["label:N"],
            shape=alt.Shape("label:N", scale=alt.Scale(range=["diamond"]),
                            legend=alt.Legend(title=None)))
        chart = chart.resolve_legend(color="independent", shape="independent")
    st.altair_chart(chart, width="stretch")


def profile_heatmap(centroids: pd.DataFrame, names: dict[int, str]) -> None:
    """Segments x features, coloured by how far each segment's centre is from the average."""
    import altair as alt

    long = centroids.rename(index=lambda i: named(i, names)).rename(columns=label) \
        .reset_index(names="segment").melt(id_vars="segment", var_name="feature",
                                           value_name="z")
    base = alt.Chart(long).encode(
        x=alt.X("segment:N", title=None, sort=[named(i, names) for i in sorted(names)],
                axis=alt.Axis(labelAngle=0, labelLimit=220)),
        y=alt.Y("feature:N", title=None, sort=[label(f) for f in FEATURES],
                axis=alt.Axis(labelLimit=260)))
    # symmetric about zero: equally far above and below the average look equally strong
    extent = max(float(long["z"].abs().max()), 0.5)
    cells = base.mark_rect().encode(color=alt.Color(
        "z:Q", title="std. dev.", scale=alt.Scale(scheme="redblue", domain=[-extent, extent])))
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text("z:Q", format="+.1f"),
        color=alt.condition(f"abs(datum.z) > {0.55 * extent:.3f}", alt.value("white"),
                            alt.value("black")))  # readable on the dark cells
    st.altair_chart((cells + text).properties(height=34 * len(FEATURES)),
                    width="stretch")


def distributions(bins: pd.DataFrame, name: str) -> None:
    """Each feature's distribution in the segment against everyone's (shares of customers
    per bin, from the latest run's sample), a small chart per feature."""
    import altair as alt

    if bins.empty:
        st.caption("No distribution yet: the next scoring run writes them.")
        return
    shown = bins.assign(
        who=["this segment" if s else "everyone" for s in bins["in_segment"]],
        feature=[label(f) for f in bins["feature"]],
        middle=(bins["lower"] + bins["upper"]) / 2)
    chart = alt.Chart(shown).mark_line(interpolate="step-after").encode(
        x=alt.X("middle:Q", title=None),
        y=alt.Y("share:Q", title=None, axis=alt.Axis(format="%")),
        color=alt.Color("who:N", title=None, scale=alt.Scale(
            domain=["this segment", "everyone"], range=["#d62728", "#7f7f7f"])),
        tooltip=[alt.Tooltip("lower:Q", format=",.2f"), alt.Tooltip("upper:Q", format=",.2f"),
                 alt.Tooltip("share:Q", format=".1%"), "who:N"]
    ).properties(width=220, height=120).facet(
        facet=alt.Facet("feature:N", title=None, sort=[label(f) for f in FEATURES]),
        columns=4).resolve_scale(x="independent", y="independent")
    st.caption(f"share of customers per range of each feature: {name} (red) against "
               "everyone (grey)")
    st.altair_chart(chart)


def sizes_chart(moves: pd.DataFrame, names: dict[int, str]) -> None:
    """Customers per segment after each run, one distinct colour per segment."""
    import altair as alt

    shown = moves.assign(segment=[named(s, names) for s in moves["segment_id"]],
                         run=times(moves["started_at"], "%Y-%m-%d %H:%M:%S"))
    chart = alt.Chart(shown).mark_bar().encode(
        x=alt.X("run:N", title="scoring run", axis=alt.Axis(labelAngle=-30)),
        xOffset="segment:N",
        y=alt.Y("customers:Q", title="customers", axis=alt.Axis(format=",d")),
        color=alt.Color("segment:N", scale=alt.Scale(scheme=PALETTE),
                        legend=alt.Legend(labelLimit=320)),
        tooltip=["segment:N", "run:N", alt.Tooltip("customers:Q", format=",d")])
    st.altair_chart(chart, width="stretch")


def export_picker(url: str, names: dict[int, str], key: str,
                  preset: list[int] | None = None) -> None:
    """Export the customers of chosen segments (named), if the setting allows it."""
    if not load_settings().app_allow_export:
        st.caption("Exporting customers is off (SEGMENTATION_APP_ALLOW_EXPORT).")
        return
    by_name = {named(i, names): i for i in names}
    chosen = st.multiselect("Export the customers of segments", list(by_name), key=key,
                            default=[named(i, names) for i in preset or []])
    if chosen and st.button("Prepare the export (it is recorded)", key=f"{key}_go"):
        export = data.export_segments(get_engine(url), [by_name[c] for c in chosen], viewer())
        st.download_button("Download CSV", export.to_csv(index=False), "segments.csv",
                           "text/csv", key=f"{key}_download")


def viewer() -> str:
    """Who is looking: the signed-in user's e-mail, else that nobody signed in."""
    try:
        email = st.user.get("email") if st.user.get("is_logged_in") else None
    except Exception:  # no [auth] configured: st.user knows nobody
        email = None
    return str(email) if email else "anonymous (no login configured)"


@st.cache_resource
def get_lookups(url: str) -> ConnectionPool:
    """One small pool of autocommit connections for customer lookups."""
    return data.lookup_pool(url, role=app_role())


def explain(url: str, model: SegmentationModel, row: pd.DataFrame, segment: int) -> None:
    """Why this segment, in customer terms (exact), then the rules summary's reading."""
    from segmentation.explain import explain_segment
    from segmentation.tree import path_in_words

    names = data.segment_names(get_engine(url), model.version)  # renames apply at once
    name = names.get(segment, (model.names.get(segment, "?"), ""))[0]
    why = explain_segment(model, row)
    other = names.get(why.runner_up, (model.names.get(why.runner_up, "?"), ""))[0]
    st.markdown(f"**Why {name}:** what places this customer here rather than in the next "
                f"closest segment, {other}:")
    st.markdown("\n".join(f"- {r.sentence(name, other)}" for r in why.reasons))
    verdict, steps = path_in_words(model, row)
    agreement = model.info.get("metrics", {}).get("tree", {}).get("agreement")
    said = f" (they agree with the segments for {agreement:.0%} of customers)" \
        if agreement else ""
    with st.expander("How the decision rules read this customer" + said):
        st.markdown(" and ".join(steps) + " → " + (
            f"**{name}**, as above." if verdict == segment else
            f"**{names.get(verdict, ('?', ''))[0]}**: here the simplified rules differ from "
            f"the segment, which the explanation above gives exactly."))


def limits(feature: str) -> tuple[str, str | None, str]:
    """A field's allowed values in the units the form takes: low, high (None: no upper
    limit) and the unit."""
    low, high = bounds(feature)
    scale, unit = (100.0, " %") if feature in SHARES else (1.0, "")
    return f"{low * scale:g}", None if high is None else f"{high * scale:g}", unit


def field_label(feature: str) -> str:
    """'tenure (months, 6 to 12)', 'months with purchases (0 to 100 %)', 'balance (0 or
    more)': the label and its range in one pair of parentheses."""
    low, high, unit = limits(feature)
    span = f"{low} or more" if high is None else f"{low} to {high}{unit}"
    name = label(feature)
    return f"{name[:-1]}, {span})" if name.endswith(")") else f"{name} ({span})"


def plain_problem(feature: str, message: str) -> str:
    """A broken row rule as the form's user reads it (the field's name and range, not the
    column's and the rule's)."""
    name = label(feature)
    low, high, unit = limits(feature)
    if message.startswith("must be a whole number"):
        return f"{name} must be a whole number"
    if message.startswith("must satisfy"):
        return (f"{name} must be {low} or more" if high is None else
                f"{name} must be between {low} and {high}{unit}")
    return f"{name} {message}"
