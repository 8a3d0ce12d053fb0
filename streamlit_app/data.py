"""The app's data layer: parameterised reads on one pooled engine; no Streamlit here."""

from __future__ import annotations

from typing import Any

import pandas as pd
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, event, text

from segmentation.db import conninfo, sa_engine, set_role
from segmentation.features import FEATURES


def app_engine(url: str, role: str | None = None) -> Engine:
    """The app's engine: pre-pinged, pooled for many concurrent sessions (a lookup holds a
    connection for a few milliseconds); every session switched to `role` first."""
    engine = sa_engine(url, pool_size=10, max_overflow=40)
    if role:
        @event.listens_for(engine, "connect")
        def _switch(dbapi_connection: psycopg.Connection, _record: object) -> None:
            set_role(dbapi_connection, role)
    return engine


LATEST = "(SELECT run_id FROM run_summaries ORDER BY written_at DESC LIMIT 1)"


def published_segments(engine: Engine) -> pd.DataFrame:
    """The segments as the latest run published them (its summary: no scan of the published
    table), named by the model that published them (version), with whether a newer champion
    has yet to rescore them (pending, and the champion's version); the champion's segments
    with no customers before any run."""
    df = pd.read_sql(text(
        "WITH latest AS (SELECT run_id, model_version FROM run_summaries"
        "  ORDER BY written_at DESC LIMIT 1),"
        " champion AS (SELECT version FROM model_versions WHERE status = 'champion'),"
        " model AS (SELECT coalesce((SELECT model_version FROM latest),"
        "  (SELECT version FROM champion)) AS version)"
        " SELECT n.segment_id, n.segment_name AS name, n.profile,"
        " coalesce(z.customers, 0) AS customers, m.version,"
        " m.version IS DISTINCT FROM (SELECT version FROM champion) AS pending,"
        " (SELECT version FROM champion) AS champion"
        " FROM model m JOIN segment_names n ON n.model_version = m.version"
        " LEFT JOIN run_segment_sizes z ON z.run_id = (SELECT run_id FROM latest)"
        "  AND z.segment_id = n.segment_id ORDER BY n.segment_id"), engine)
    total = df["customers"].sum()
    df["share"] = df["customers"] / total if total else 0.0
    return df


def summary_state(engine: Engine) -> str:
    """'ready', 'missing' (customers are published but no run has summarised them yet: a
    database from before summaries) or 'empty'."""
    with engine.connect() as conn:
        return str(conn.execute(text(
            "SELECT CASE WHEN EXISTS (SELECT FROM run_summaries) THEN 'ready'"
            " WHEN EXISTS (SELECT FROM segment_assignments) THEN 'missing' ELSE 'empty'"
            " END")).scalar())


def freshness(engine: Engine) -> str:
    """What the cached reads depend on: champion, renames, champion log, latest runs."""
    with engine.connect() as conn:
        return str(conn.execute(text(
            "SELECT concat_ws('|', (SELECT version FROM model_versions WHERE status ="
            " 'champion'), (SELECT max(updated_at)::text || count(*) FROM"
            " segment_name_overrides), (SELECT max(id) FROM champion_log),"
            " (SELECT max(finished_at)::text FROM scoring_runs),"
            " (SELECT max(finished_at)::text FROM validation_runs),"
            " (SELECT max(written_at)::text FROM run_summaries))")).scalar())


def segment_names(engine: Engine, version: str) -> dict[int, tuple[str, str]]:
    """A version's segments: id -> (name, profile) as readers see them (renames applied)."""
    with engine.connect() as conn:
        return {int(seg): (str(name), str(profile)) for seg, name, profile in conn.execute(text(
            "SELECT segment_id, segment_name, profile FROM segment_names"
            " WHERE model_version = :v"), {"v": version})}


def summary_sample_rows(engine: Engine) -> int:
    """How many published customers the latest summary sampled."""
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT coalesce((SELECT sample_rows FROM run_summaries"
                                     " ORDER BY written_at DESC LIMIT 1), 0)")).scalar() or 0)


def segment_sizes_by_run(engine: Engine, runs: int = 10) -> pd.DataFrame:
    """Customers per segment after each of the last summarised runs."""
    return pd.read_sql(text(
        "SELECT r.started_at, z.segment_id, z.customers FROM (SELECT run_id FROM run_summaries"
        " ORDER BY written_at DESC LIMIT :runs) last JOIN run_segment_sizes z USING (run_id)"
        " JOIN scoring_runs r USING (run_id) ORDER BY r.started_at, z.segment_id"),
        engine, params={"runs": runs})


def centroids_z(engine: Engine) -> pd.DataFrame:
    """The published model's centroids as z-scores, one row per segment (the champion's
    until a first run has published)."""
    df = pd.read_sql(text(
        "SELECT p.segment_id, p.centroid_z FROM segment_profiles p"
        " WHERE p.version = coalesce((SELECT model_version FROM scoring_runs"
        "  WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1),"
        " (SELECT version FROM model_versions WHERE status = 'champion'))"
        " ORDER BY p.segment_id"), engine)
    if df.empty:
        return df
    return pd.DataFrame(list(df["centroid_z"]), index=df["segment_id"])[list(FEATURES)]


LOOKUP = ("SELECT s.segment_id, s.segment_name, s.model_version, s.scored_at, c.*"
          " FROM customer_segments s JOIN customers c USING (customer_id)"
          " WHERE s.customer_id = %s")


def lookup_pool(url: str, max_size: int = 50, role: str | None = None) -> ConnectionPool:
    """Autocommit connections for one-row lookups: a prepared statement, and no reset or
    ping round trip per call (after a server restart the dead connections are swept out
    and the lookup retried once); each switched to `role` when it opens."""
    return ConnectionPool(conninfo(url), min_size=4, max_size=max_size, open=True,
                          kwargs={"autocommit": True, "prepare_threshold": 0,
                                  "row_factory": dict_row},
                          configure=(lambda conn: set_role(conn, role)) if role else None,
                          name="lookups")


def lookup_customer(pool: ConnectionPool, customer_id: str) -> dict[str, Any] | None:
    """A customer's segment and features, or None (one indexed row, no DataFrame)."""
    if "\x00" in customer_id:  # PostgreSQL text cannot hold NUL: no such customer exists
        return None
    for attempt in (1, 2):
        try:
            with pool.connection() as conn:
                row: dict[str, Any] | None = conn.execute(LOOKUP, (customer_id,)).fetchone()
                return row
        except psycopg.OperationalError:  # the server restarted since this connection opened
            if attempt == 2:
                raise
            pool.check()  # drop every other dead idle connection too, then retry once
    return None


def segment_profile(engine: Engine, version: str, segment_id: int) -> dict[str, dict[str, float]]:
    """A segment's centre in original units and in standard deviations, and the average
    customer (the training means), as the registry stored them: no model file to load."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT p.centroid, p.centroid_z, m.metrics->'imputation_means' FROM"
            " segment_profiles p JOIN model_versions m ON m.version = p.version"
            " WHERE p.version = :v AND p.segment_id = :s"), {"v": version, "s": segment_id}
        ).first()
    if row is None:
        return {}
    return {"centre": dict(row[0]), "z": dict(row[1]), "average": dict(row[2] or {})}


def segment_centroid(engine: Engine, version: str, segment_id: int) -> dict[str, float]:
    """A segment's centroid in original units."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT centroid FROM segment_profiles WHERE version = :v"
                                " AND segment_id = :s"), {"v": version, "s": segment_id}).first()
    return dict(row[0]) if row else {}


def model_versions(engine: Engine) -> pd.DataFrame:
    """Registry rows with headline metrics."""
    return pd.read_sql(text(
        "SELECT version, status, k, created_at, (metrics->'tree'->>'agreement')::float"
        " AS agreement, (metrics->>'silhouette')::float AS silhouette, status_reason"
        " FROM model_versions ORDER BY created_at DESC"), engine)


def model_exploration(engine: Engine, version: str) -> dict[str, Any]:
    """A version's training report as the registry keeps it: the k selection, and the
    training sample's feature distributions and correlations."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT metrics->'k_report', metrics->'exploration' FROM model_versions"
            " WHERE version = :v"), {"v": version}).first()
    return {"k_report": (row[0] or []) if row else [], "exploration": (row[1] or {}) if row
            else {}}


def scoring_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    """Recent scoring runs, as an ops log: run ids as text, rows in / scored / quarantined /
    moved (segment changed) / new, how it published, how long it took, why it failed."""
    return pd.read_sql(text(
        "WITH recent AS (SELECT * FROM scoring_runs ORDER BY started_at DESC LIMIT :n)"
        " SELECT r.run_id::text AS run_id, r.started_at, r.model_version, r.mode, r.status,"
        " r.rows_in, r.rows_scored, r.rows_quarantined,"
        " r.rows_moved AS moved, r.rows_new AS new_customers, r.published_by,"
        " round(extract(epoch FROM r.finished_at - r.started_at)::numeric, 1) AS seconds,"
        " r.error"
        " FROM recent r ORDER BY r.started_at DESC"), engine, params={"n": limit})


def segment_movement(engine: Engine, segment_id: int, runs: int = 10) -> pd.DataFrame:
    """Customers moving into and out of one segment, per run, with the other segment's name
    (new customers as 'new customer'), over the last `runs` summarised runs."""
    return pd.read_sql(text(
        "SELECT r.started_at,"
        " CASE WHEN m.from_segment IS NULL THEN 'new customer'"
        "  ELSE coalesce(f.segment_name, 'segment ' || m.from_segment) END AS from_segment_name,"
        " coalesce(t.segment_name, 'segment ' || m.to_segment) AS to_segment_name, m.customers,"
        " CASE WHEN m.to_segment = :s THEN 'in' ELSE 'out' END AS direction"
        " FROM (SELECT run_id FROM run_summaries ORDER BY written_at DESC LIMIT :runs) last"
        " JOIN run_segment_moves m USING (run_id) JOIN scoring_runs r USING (run_id)"
        " LEFT JOIN champion_segment_names f ON f.segment_id = m.from_segment"
        " LEFT JOIN champion_segment_names t ON t.segment_id = m.to_segment"
        " WHERE (m.to_segment = :s OR m.from_segment = :s)"
        " ORDER BY r.started_at DESC, direction, m.customers DESC"),
        engine, params={"s": segment_id, "runs": runs})


def typical_customers(engine: Engine, segment_id: int) -> pd.DataFrame:
    """The customers nearest the segment's centre in the latest summary, with their features
    (each by its key)."""
    columns = ", ".join(f"c.{f}" for f in FEATURES)  # FEATURES: fixed column names
    return pd.read_sql(text(
        f"SELECT t.customer_id, t.distance, {columns} FROM run_typical_customers t"
        f" JOIN customers c USING (customer_id) WHERE t.run_id = {LATEST}"
        " AND t.segment_id = :s ORDER BY t.rank"), engine, params={"s": segment_id})


def feature_bins(engine: Engine, segment_id: int) -> pd.DataFrame:
    """Each feature's distribution in the latest summary: the segment's and everyone's
    share of customers per bin."""
    return pd.read_sql(text(
        "SELECT feature, bin, lower, upper, coalesce(segment_id = :s, false) AS in_segment,"
        " customers::float / nullif(sum(customers) OVER (PARTITION BY feature, segment_id), 0)"
        " AS share FROM run_feature_bins WHERE run_id = " + LATEST +
        " AND (segment_id = :s OR segment_id IS NULL) ORDER BY feature, in_segment, bin"),
        engine, params={"s": segment_id})


def export_segments(engine: Engine, segment_ids: list[int], who: str) -> pd.DataFrame:
    """Current segment of the customers in the chosen segments (for CSV download, with the
    segment's name), recorded
    in export_log (who, which segments, how many rows; not the rows) in the same
    transaction: no export without its record."""
    with engine.begin() as conn:
        frame = pd.read_sql(text(
            "SELECT customer_id, segment_id, segment_name, model_version, scored_at"
            " FROM customer_segments WHERE segment_id = ANY(:ids) ORDER BY customer_id"),
            conn, params={"ids": segment_ids})
        conn.execute(text("SELECT record_export(:who, CAST(:ids AS smallint[]), :n)"),
                     {"who": who, "ids": segment_ids, "n": len(frame)})
    return frame


def movement_last_run(engine: Engine) -> pd.DataFrame:
    """From/to segment names and counts of the latest summarised run."""
    return pd.read_sql(text(
        "SELECT CASE WHEN m.from_segment IS NULL THEN 'new customer'"
        "  ELSE coalesce(f.segment_name, 'segment ' || m.from_segment) END AS from_segment,"
        " coalesce(t.segment_name, 'segment ' || m.to_segment) AS to_segment, m.customers"
        " FROM run_segment_moves m"
        " LEFT JOIN champion_segment_names f ON f.segment_id = m.from_segment"
        " LEFT JOIN champion_segment_names t ON t.segment_id = m.to_segment"
        " WHERE m.run_id = " + LATEST + " ORDER BY m.from_segment NULLS FIRST, m.to_segment"),
        engine)


def scatter_points(engine: Engine) -> pd.DataFrame:
    """The latest summary's scatter: a sample of published customers on the model's two
    principal axes."""
    return pd.read_sql(text(
        "SELECT pc1, pc2, segment_id FROM run_scatter_points WHERE run_id = " + LATEST),
        engine)


def validation_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    """Recent validation runs."""
    return pd.read_sql(text(
        "SELECT batch_id, started_at, success, rows_in, rows_accepted, rows_quarantined,"
        " failures, warnings FROM validation_runs ORDER BY started_at DESC LIMIT :n"),
        engine, params={"n": limit})
