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
from segmentation.config import load_settings, mask_secrets, mask_url, user_allowed
from segmentation.contract import CASH_ADVANCE_FREQUENCY_MAX
from segmentation.db import app_database, connection, set_role
from segmentation.errors import ModelError, SegmentationError
from segmentation.explain import in_units, label
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


PALETTE = "tableau10"  # ten distinct hues: no two segments share a colour


def times(series: pd.Series, fmt: str = "%Y-%m-%d %H:%M:%S") -> pd.Series:
    """Timestamps as text in one format (an empty column included)."""
    return pd.to_datetime(series, utc=True).dt.strftime(fmt)


def champion_names(segments: pd.DataFrame) -> dict[int, str]:
    """The champion's segment id -> name (a champion_segments read: renames applied)."""
    return {int(i): str(n) for i, n in zip(segments["segment_id"], segments["name"],
                                           strict=True)}


def named(segment_id: int, names: dict[int, str]) -> str:
    """A segment as marketing reads it."""
    return names.get(int(segment_id), f"segment {segment_id}")


@st.cache_data(ttl=SUMMARY_TTL_S, show_spinner=False)
def projected_sample(url: str, version: str, stamp: str) -> pd.DataFrame:
    """A sample of scored customers projected on the model's two PCA axes, with their
    segment ids (named by the caller: a rename needs no new projection)."""
    sample = data.sample_customers(get_engine(url))
    model = get_model(url, version)
    points = model.pca.transform(model.standardize(sample))
    return pd.DataFrame({"pc1": points[:, 0], "pc2": points[:, 1],
                         "segment_id": sample["segment_id"].to_numpy()})


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
    if here is not None:
        chart += alt.Chart(here).mark_point(shape="diamond", size=400, filled=True,
                                            color="black", stroke="white",
                                            strokeWidth=2).encode(x=x, y=y, tooltip=["label:N"])
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
    cells = base.mark_rect().encode(color=alt.Color(
        "z:Q", title="std. dev.", scale=alt.Scale(scheme="redblue", domainMid=0)))
    text = base.mark_text(fontSize=12).encode(text=alt.Text("z:Q", format="+.1f"))
    st.altair_chart((cells + text).properties(height=34 * len(FEATURES)),
                    width="stretch")


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


def overview(url: str) -> None:
    st.header("Segments")
    segments = summary("champion_segments", url)
    if segments.empty or segments["customers"].sum() == 0:
        st.info("No scored customers yet: run `segmentation score`.")
        return
    names = champion_names(segments)
    st.caption(f"champion model {segments['version'].iloc[0]}")
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
    version = str(segments["version"].iloc[0])
    scatter(projected_sample(url, version, data.freshness(get_engine(url))), names)
    export_picker(url, names, key="export_overview")


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


def segment_page(url: str) -> None:
    """One segment: who they are, how many over the runs, who comes and goes, examples."""
    st.header("A segment")
    segments = summary("champion_segments", url)
    if segments.empty:
        st.info("No champion model yet: run `segmentation train`.")
        return
    names = champion_names(segments)
    chosen = st.selectbox("Segment", [named(i, names) for i in names], key="segment_pick")
    segment = next(i for i in names if named(i, names) == chosen)
    row = segments[segments["segment_id"] == segment].iloc[0]
    version = str(row["version"])
    model = get_model(url, version)
    total = int(segments["customers"].sum())
    left, right = st.columns(2)
    left.metric("customers", f"{int(row['customers']):,}")
    right.metric("share of all customers", f"{row['customers'] / total:.1%}" if total else "-")
    st.caption(str(row["profile"]))
    st.subheader("Who they are")
    scaler = model.pipeline.named_steps["scale"]
    centre = model.centroids_original()[segment]
    profile = pd.DataFrame({
        "feature": [label(f) for f in FEATURES],
        "typical in this segment": [in_units(f, float(centre[i]))
                                    for i, f in enumerate(FEATURES)],
        "average customer": [in_units(f, float(scaler.mean_[i]))
                             for i, f in enumerate(FEATURES)],
        "difference (std. dev.)": [round(float((centre[i] - scaler.mean_[i]) / scaler.scale_[i]),
                                         2) for i in range(len(FEATURES))]})
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
    moves = data.segment_movement(get_engine(url), segment)
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
    st.subheader("Typical customers")
    members = data.segment_members(get_engine(url), segment)
    if not members.empty:
        z = model.standardize(members)
        own = model.pipeline[-1].cluster_centers_[
            list(model.label_to_segment).index(segment)]
        members["distance"] = ((z - own) ** 2).sum(axis=1)
        typical = members.nsmallest(10, "distance")
        shown = pd.DataFrame({"customer": typical["customer_id"].astype(str)})
        for f in ("balance", "purchases", "cash_advance", "credit_limit", "payments",
                  "purchases_frequency", "prc_full_payment", "tenure"):
            shown[label(f)] = [in_units(f, v) for v in typical[f]]
        st.caption("the customers closest to the segment's centre, from a sample of its "
                   f"{len(members):,} members")
        st.dataframe(shown, hide_index=True, width="stretch")
    export_picker(url, names, key=f"export_segment_{segment}", preset=[segment])


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
    model = get_model(url, found["model_version"])
    row = pd.DataFrame([{f: found[f] for f in FEATURES}])
    explain(url, model, row, int(found["segment_id"]))
    centroid = data.segment_centroid(engine, found["model_version"], int(found["segment_id"]))
    st.dataframe(pd.DataFrame({"feature": [label(f) for f in FEATURES],
                               "this customer": [in_units(f, found[f]) for f in FEATURES],
                               "typical in the segment": [in_units(f, centroid.get(f))
                                                          for f in FEATURES]}),
                 hide_index=True, width="stretch", height=35 * 18 + 3)


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
                f"{label(feature)} ({low:g} to {high:g})" if high is not None
                else f"{label(feature)} (>= 0)",
                value=default, step=step, key=f"f_{feature}", help=f"column {feature}",
                format="%.0f" if whole else "%.2f")
        submitted = st.form_submit_button("Predict")
    if submitted:
        from segmentation.contract import check_values

        problems = check_values(values)
        if problems:  # the same row rules as the nightly batch: no prediction
            for feature, message in problems.items():
                st.error(f"{feature} {message}")
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
        scatter(projected_sample(url, model.version, data.freshness(get_engine(url))),
                {i: n for i, (n, _) in names.items()}, here)


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


def signed_in() -> bool:
    """With an [auth] section in .streamlit/secrets.toml (OIDC), only a signed-in user on
    SEGMENTATION_APP_ALLOWED_USERS sees anything; without one the app relies on where it
    listens (127.0.0.1 unless `segmentation app --no-login`)."""
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
    email = st.user.get("email")
    if not user_allowed(str(email) if email else None, load_settings().app_allowed_users):
        # the provider proves who signed in, not that they may see customers
        st.error("This account may not use the app; ops can add it to "
                 "SEGMENTATION_APP_ALLOWED_USERS.")
        st.text(f"signed in as {email or 'an account without an e-mail address'}")
        return False
    return True


def main() -> None:
    st.title("Customer segments")
    if not signed_in():
        return
    try:
        url = app_database(load_settings())[0]
        engine = get_engine(url)
        tabs = st.tabs(["Overview", "Segments", "Lookup", "Predict", "Runs", "Models"])
        with tabs[0]:
            overview(url)
        with tabs[1]:
            segment_page(url)
        with tabs[2]:
            lookup(engine, url)
        with tabs[3]:
            predict(url)
        with tabs[4]:
            runs_page(url)
        with tabs[5]:
            models_page(url)
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
