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


def published_segments(engine: Engine) -> pd.DataFrame:
    """The segments as published: one row per segment, named by the model that published
    them (version), with whether a newer champion has yet to rescore them (pending, and
    the champion's version)."""
    query = text(
        "SELECT s.segment_id, s.segment_name AS name, s.profile, s.customers,"
        " s.model_version AS version, s.rescore_pending AS pending,"
        " (SELECT version FROM model_versions WHERE status = 'champion') AS champion"
        " FROM segment_summary s ORDER BY s.segment_id")
    df = pd.read_sql(query, engine)
    total = df["customers"].sum()
    df["share"] = df["customers"] / total if total else 0.0
    return df


def freshness(engine: Engine) -> str:
    """What the cached reads depend on: champion, renames, champion log, latest runs."""
    with engine.connect() as conn:
        return str(conn.execute(text(
            "SELECT concat_ws('|', (SELECT version FROM model_versions WHERE status ="
            " 'champion'), (SELECT max(updated_at)::text || count(*) FROM"
            " segment_name_overrides), (SELECT max(id) FROM champion_log),"
            " (SELECT max(finished_at)::text FROM scoring_runs),"
            " (SELECT max(finished_at)::text FROM validation_runs))")).scalar())


def segment_names(engine: Engine, version: str) -> dict[int, tuple[str, str]]:
    """A version's segments: id -> (name, profile) as readers see them (renames applied)."""
    with engine.connect() as conn:
        return {int(seg): (str(name), str(profile)) for seg, name, profile in conn.execute(text(
            "SELECT segment_id, segment_name, profile FROM segment_names"
            " WHERE model_version = :v"), {"v": version})}


def segment_sizes_by_run(engine: Engine, runs: int = 10) -> pd.DataFrame:
    """Customers per segment after each of the last runs: the running sum of each run's
    arrivals (new customers) and moves in and out."""
    return pd.read_sql(text(
        "WITH moves AS ("
        " SELECT run_id, to_segment AS segment_id, customers AS delta FROM segment_movement"
        " UNION ALL SELECT run_id, from_segment, -customers FROM segment_movement"
        "  WHERE from_segment IS NOT NULL),"
        " net AS (SELECT r.started_at, m.segment_id, sum(m.delta) AS delta FROM moves m"
        "  JOIN scoring_runs r USING (run_id) WHERE r.status = 'succeeded' GROUP BY 1, 2),"
        " sized AS (SELECT started_at, segment_id, sum(delta) OVER (PARTITION BY segment_id"
        "  ORDER BY started_at) AS customers FROM net)"
        " SELECT * FROM sized WHERE started_at >= coalesce((SELECT min(started_at) FROM"
        "  (SELECT started_at FROM scoring_runs WHERE status = 'succeeded'"
        "   ORDER BY started_at DESC LIMIT :runs) last), '-infinity')"
        " ORDER BY started_at, segment_id"), engine, params={"runs": runs})


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
    (the last `runs` runs that moved anyone)."""
    return pd.read_sql(text(
        "SELECT started_at, from_segment_name, to_segment_name, customers,"
        " CASE WHEN to_segment = :s THEN 'in' ELSE 'out' END AS direction"
        " FROM segment_movement"
        " WHERE (to_segment = :s OR from_segment = :s)"
        " AND from_segment IS DISTINCT FROM to_segment"
        " AND run_id IN (SELECT run_id FROM segment_movement WHERE from_segment IS DISTINCT"
        "  FROM to_segment GROUP BY run_id, started_at ORDER BY started_at DESC LIMIT :runs)"
        " ORDER BY started_at DESC, direction, customers DESC"),
        engine, params={"s": segment_id, "runs": runs})


def segment_members(engine: Engine, segment_id: int, n: int = 2_000) -> pd.DataFrame:
    """A reproducible sample of one segment's customers with their features."""
    columns = ", ".join(f"c.{f}" for f in FEATURES)
    return pd.read_sql(text(
        f"SELECT s.customer_id, {columns} FROM customer_segments s JOIN customers c"
        " USING (customer_id) WHERE s.segment_id = :s ORDER BY md5(s.customer_id) LIMIT :n"),
        engine, params={"s": segment_id, "n": n})


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
    """From/to segment names and counts of the latest successful run."""
    return pd.read_sql(text(
        "SELECT from_segment_name AS from_segment, to_segment_name AS to_segment, customers"
        " FROM segment_movement WHERE run_id = (SELECT run_id FROM scoring_runs"
        "  WHERE status = 'succeeded' ORDER BY started_at DESC LIMIT 1)"
        " ORDER BY from_segment NULLS FIRST, to_segment"), engine)


def sample_customers(engine: Engine, n: int = 2_000) -> pd.DataFrame:
    """A reproducible sample of scored customers with their features (for the scatter)."""
    columns = ", ".join(f"c.{f}" for f in FEATURES)
    return pd.read_sql(text(
        f"SELECT s.segment_id, {columns} FROM customer_segments s JOIN customers c"
        " USING (customer_id) ORDER BY md5(s.customer_id) LIMIT :n"), engine, params={"n": n})


def validation_runs(engine: Engine, limit: int = 20) -> pd.DataFrame:
    """Recent validation runs."""
    return pd.read_sql(text(
        "SELECT batch_id, started_at, success, rows_in, rows_accepted, rows_quarantined,"
        " failures, warnings FROM validation_runs ORDER BY started_at DESC LIMIT :n"),
        engine, params={"n": limit})
