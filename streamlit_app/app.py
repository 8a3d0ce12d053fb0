"""Customer segments: overview, lookup, ad-hoc prediction, models and runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run` from a checkout

from segmentation.clustering import SegmentationModel
from segmentation.config import load_settings, mask_secrets, mask_url
from segmentation.contract import CASH_ADVANCE_FREQUENCY_MAX
from segmentation.db import app_database, connection, set_role
from segmentation.errors import ModelError, SegmentationError
from segmentation.features import COUNTS, FEATURES, FREQUENCIES
from streamlit_app import data

st.set_page_config(page_title="Customer segments", layout="wide")


def app_role() -> str | None:
    """The role every session switches to: None when the app logs in as segmentation_app
    (SEGMENTATION_APP_DATABASE_URL), segmentation_app when it was given the owner's URL."""
    return app_database(load_settings())[1]


@st.cache_resource
def get_engine(url: str) -> Engine:
    """One pooled engine per database URL, built from the same settings as the CLI."""
    return data.app_engine(url, app_role())


@st.cache_resource
def get_model(url: str, version: str) -> SegmentationModel:
    """A model version (sha256-checked by the registry), cached per version."""
    from segmentation.registry import load_version

    with connection(url) as conn:
        set_role(conn, app_role())
        return load_version(conn, version)


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


def bounds(feature: str) -> tuple[float, float | None]:
    """Input bounds that match the data contract."""
    if feature == "cash_advance_frequency":
        return 0.0, CASH_ADVANCE_FREQUENCY_MAX
    if feature in FREQUENCIES or feature == "prc_full_payment":
        return 0.0, 1.0
    if feature == "tenure":
        return 6.0, 12.0
    return 0.0, None


@st.cache_data(ttl=SUMMARY_TTL_S, show_spinner=False)
def projected_sample(url: str, version: str) -> pd.DataFrame:
    """A sample of scored customers projected on the model's two PCA axes."""
    sample = data.sample_customers(get_engine(url))
    model = get_model(url, version)
    points = model.pca.transform(model.standardize(sample))
    return pd.DataFrame({"pc1": points[:, 0], "pc2": points[:, 1],
                         "segment": sample["segment_id"].astype(str)})


def overview(url: str) -> None:
    st.header("Segments")
    segments = summary("champion_segments", url)
    if segments.empty or segments["customers"].sum() == 0:
        st.info("No scored customers yet: run `segmentation score`.")
        return
    st.caption(f"champion model {segments['version'].iloc[0]}")
    st.dataframe(segments[["segment_id", "name", "customers", "share", "profile"]]
                 .style.format({"share": "{:.1%}", "customers": "{:,}"}), hide_index=True)
    st.subheader("Centroid profiles (z-scores)")
    st.bar_chart(summary("centroids_z", url).T, stack=False)
    moves = summary("segment_sizes_by_run", url)
    if not moves.empty:
        st.subheader("Segment sizes over the last scoring runs")
        sizes = moves.pivot_table(index="started_at", columns="segment_id", values="customers")
        sizes.index = sizes.index.strftime("%Y-%m-%d %H:%M:%S")  # one bar group per run
        st.bar_chart(sizes.ffill(), stack=False)
    movement = summary("movement_last_run", url)
    if not movement.empty:
        st.subheader("Movement in the latest run (from -> to)")
        st.dataframe(movement.pivot_table(index="from_segment", columns="to_segment",
                                          values="customers", fill_value=0))
    st.subheader("Customers on the first two principal components")
    st.scatter_chart(projected_sample(url, str(segments["version"].iloc[0])),
                     x="pc1", y="pc2", color="segment")
    if not load_settings().app_allow_export:
        st.caption("Exporting customers is off (SEGMENTATION_APP_ALLOW_EXPORT).")
        return
    chosen = st.multiselect("Export the customers of segments", list(segments["segment_id"]))
    if chosen and st.button("Prepare the export (it is recorded)"):
        export = data.export_segments(get_engine(url), [int(s) for s in chosen], viewer())
        st.download_button("Download CSV", export.to_csv(index=False), "segments.csv",
                           "text/csv")


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


def lookup(engine: Engine, url: str) -> None:
    st.header("Customer lookup")
    customer_id = st.text_input("Customer id", key="lookup_id")
    if not customer_id:
        return
    found = data.lookup_customer(get_lookups(url), customer_id)
    if found is None:
        st.warning(f"No scored customer with id {customer_id!r}.")
        return
    st.text(f"customer {customer_id}")  # plain text: ids are never rendered as markdown
    st.markdown(f"**Segment {found['segment_id']}: {found['segment_name']}**  \n"
                f"model {found['model_version']}, scored {found['scored_at']:%Y-%m-%d %H:%M}")
    centroid = data.segment_centroid(engine, found["model_version"], int(found["segment_id"]))
    st.dataframe(pd.DataFrame({"customer": [found[f] for f in FEATURES],
                               "segment centroid": [centroid.get(f) for f in FEATURES]},
                              index=list(FEATURES)))
    from segmentation.tree import decision_path

    model = get_model(url, found["model_version"])
    _, steps = decision_path(model, pd.DataFrame([{f: found[f] for f in FEATURES}]))
    st.markdown("**Why (decision rules):** " + " and ".join(f"`{s}`" for s in steps))


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
        values = {}
        columns = st.columns(3)
        for i, feature in enumerate(FEATURES):
            low, high = bounds(feature)
            default = float(min(max(means.get(feature, low), low), high or float("inf")))
            whole = feature in COUNTS or feature == "tenure"
            default = float(round(default)) if whole else default
            step = 1.0 if whole else 0.01
            values[feature] = columns[i % 3].number_input(
                f"{feature} ({low:g} to {high:g})" if high is not None else f"{feature} (>= 0)",
                value=default, step=step, key=f"f_{feature}")
        submitted = st.form_submit_button("Predict")
    if submitted:
        from segmentation.contract import check_values
        from segmentation.tree import decision_path

        problems = check_values(values)
        if problems:  # the same row rules as the nightly batch: no prediction
            for feature, message in problems.items():
                st.error(f"{feature} {message}")
            return
        row = pd.DataFrame([values])
        segment = int(model.predict(row)[0])
        _, steps = decision_path(model, row)
        names = data.segment_names(get_engine(url), model.version)  # renames apply at once
        name, profile = names.get(segment, (model.names.get(segment, "?"), ""))
        st.success(f"Segment {segment}: {name}")
        st.caption(profile or model.profiles.get(segment, ""))
        st.markdown("**Decision path:** " + " and ".join(f"`{s}`" for s in steps))
        point = model.pca.transform(model.standardize(row))[0]
        scatter = projected_sample(url, model.version)
        here = pd.DataFrame({"pc1": [point[0]], "pc2": [point[1]], "segment": ["this customer"]})
        st.scatter_chart(pd.concat([scatter, here], ignore_index=True), x="pc1", y="pc2",
                         color="segment")


def models_and_runs(url: str) -> None:
    st.header("Models")
    st.dataframe(summary("model_versions", url), hide_index=True)
    st.header("Scoring runs")
    st.dataframe(summary("scoring_runs", url), hide_index=True)
    st.header("Validation runs")
    st.dataframe(summary("validation_runs", url), hide_index=True)


def signed_in() -> bool:
    """With an [auth] section in .streamlit/secrets.toml (OIDC), only a signed-in user sees
    anything; without one the app relies on where it listens (127.0.0.1 by default)."""
    try:
        configured = "auth" in st.secrets
    except Exception:  # no secrets file at all
        configured = False
    if not configured:
        return True
    if not st.user.get("is_logged_in"):  # (absent, not False, before any sign-in)
        st.info("Sign in to see the customer segments.")
        st.button("Log in", on_click=st.login)
        return False
    st.sidebar.button("Log out", on_click=st.logout)
    return True


def main() -> None:
    st.title("Customer segments")
    if not signed_in():
        return
    try:
        url = app_database(load_settings())[0]
        engine = get_engine(url)
        tabs = st.tabs(["Overview", "Lookup", "Predict", "Models and runs"])
        with tabs[0]:
            overview(url)
        with tabs[1]:
            lookup(engine, url)
        with tabs[2]:
            predict(url)
        with tabs[3]:
            models_and_runs(url)
        st.caption(f"database: {mask_url(url)}")
    except ModelError as exc:  # the data is there; the champion's file is not usable
        st.error(f"The champion model cannot be used: {exc}")
    except (SQLAlchemyError, SegmentationError) as exc:
        message = str(exc).splitlines()[0]
        if "does not exist" in message and "relation" in message:
            st.error("The database has no schema yet: run `segmentation db migrate`.")
        else:
            st.error(f"The database is not reachable or not ready: {mask_secrets(message)}")


main()
