"""Publishing a run's scores (the writer's `scored_stage`) into `segment_assignments`, with
its movers' history, in the caller's transaction: nothing is visible until it commits.

The publish upserts the changed rows, or, when they are a large share of the table, builds
the table anew and swaps it in as the parent's only partition (sql/006_swap_publish.sql).
Names are not published: `customer_segments` resolves them when read (sql/007_day2.sql).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from segmentation.db import merge_joins
from segmentation.rebuild import build_name, create_like, index_build, swap_in
from segmentation.runs import ScoreResult

# A run writing at least this share of the published table builds a new partition and
# swaps it in: an UPDATE through the indexes costs several times more per row written than
# building and indexing the whole table costs per row held. (Nights known in advance to
# rewrite every row skip the staging table altogether: segmentation.rebuild.)
SWAP_SHARE = 0.25


def publish(conn: psycopg.Connection, result: ScoreResult, scored_at: datetime) -> int:
    """scored_stage -> segment_assignments + segment_history, in the caller's transaction.

    One diff pass finds what changed; only those rows are written (a rerun writes nothing),
    and only movers get a history row (a new customer's first run is a fact of its
    published row). A run that rewrites at least SWAP_SHARE of the table builds a new
    partition and swaps it in; otherwise new customers are plain INSERTs and known ones
    UPDATEs (no ON CONFLICT). Returns the customers whose segment or model changed.
    """
    params = {"v": result.model_version, "ts": scored_at, "run": result.run_id,
              # incremental: every selected row is new or changed since it was scored
              "touch_all": result.mode == "incremental"}
    conn.execute("SET LOCAL work_mem = '256MB'")
    # A merge join in key order, whose result is sorted as the history inserts want it; a
    # hash join of millions of staged rows spills past work_mem.
    with merge_joins(conn):
        written = conn.execute(
            "CREATE TEMP TABLE segment_changes ON COMMIT DROP AS"
            " SELECT st.customer_id, st.segment_id,"
            " cs.customer_id IS NULL AS is_new, cs.segment_id AS old_segment_id,"
            " cs.model_version AS old_model_version, cs.first_run_id AS old_first_run_id,"
            " coalesce(cs.segment_id <> st.segment_id, false) AS moved,"
            " (cs.customer_id IS NULL OR cs.segment_id <> st.segment_id"
            "  OR cs.model_version <> %(v)s) AS changed"
            " FROM scored_stage st LEFT JOIN segment_assignments cs USING (customer_id)"
            " WHERE %(touch_all)s OR cs.customer_id IS NULL OR cs.segment_id <> st.segment_id"
            " OR cs.model_version <> %(v)s"
            # key order: the index inserts below append instead of scattering
            " ORDER BY st.customer_id", params).rowcount
    conn.execute("ANALYZE segment_changes")
    result.rows_moved = conn.execute(
        "INSERT INTO segment_history (customer_id, old_segment_id, new_segment_id,"
        " old_model_version, new_model_version, changed_at, run_id)"
        " SELECT customer_id, old_segment_id, segment_id, old_model_version, %(v)s, %(ts)s,"
        " %(run)s FROM segment_changes WHERE moved", params).rowcount
    row = conn.execute("SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE changed)"
                       " FROM segment_changes").fetchone()
    assert row is not None
    result.rows_new, changed = int(row[0]), int(row[1])
    if result.rows_new:
        result.new_by_segment = {int(s): int(n) for s, n in conn.execute(
            "SELECT segment_id, count(*) FROM segment_changes WHERE is_new GROUP BY 1"
            " ORDER BY 1")}
    swapped = bool(written) and written >= SWAP_SHARE * published_rows(conn) \
        and swap_partition(conn, result, params)
    if not swapped:
        upsert_changes(conn, params)
    result.published_by = "swap" if swapped else "upsert"
    return changed


def published_rows(conn: psycopg.Connection) -> float:
    """The planner's row count of segment_assignments (kept by the ANALYZE after each run)."""
    row = conn.execute("SELECT greatest(sum(c.reltuples), 0) FROM pg_inherits i"
                       " JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'segment_assignments'::regclass").fetchone()
    assert row is not None  # an aggregate: one row; greatest() ignores the NULL of no rows
    return float(row[0])


def upsert_changes(conn: psycopg.Connection, params: dict[str, Any]) -> None:
    """Write segment_changes into segment_assignments row by row: INSERT new, UPDATE known."""
    conn.execute(
        "INSERT INTO segment_assignments (customer_id, segment_id, model_version, scored_at,"
        " run_id, first_run_id) SELECT customer_id, segment_id, %(v)s, %(ts)s, %(run)s,"
        " %(run)s FROM segment_changes WHERE is_new", params)
    conn.execute(
        "UPDATE segment_assignments cs SET segment_id = ch.segment_id, model_version = %(v)s,"
        " scored_at = %(ts)s, run_id = %(run)s FROM segment_changes ch"
        " WHERE ch.customer_id = cs.customer_id AND NOT ch.is_new", params)


def swap_partition(conn: psycopg.Connection, result: ScoreResult,
                   params: dict[str, Any]) -> bool:
    """Build segment_assignments anew (unchanged rows + segment_changes), index it in bulk
    and swap it in for the old partitions (rebuild.swap_in). If readers hold the table
    longer than its lock timeout, drop the build and return False."""
    table = build_name(result.run_id)
    create_like(conn, table)
    with merge_joins(conn):  # the anti join
        conn.execute(sql.SQL(
            "INSERT INTO {} (customer_id, segment_id, model_version, scored_at, run_id,"
            " first_run_id) SELECT customer_id, segment_id, %(v)s, %(ts)s, %(run)s,"
            " coalesce(old_first_run_id, %(run)s) FROM segment_changes"
            " UNION ALL SELECT cs.customer_id, cs.segment_id, cs.model_version, cs.scored_at,"
            " cs.run_id, cs.first_run_id FROM segment_assignments cs"
            " WHERE NOT EXISTS (SELECT FROM segment_changes ch"
            " WHERE ch.customer_id = cs.customer_id)").format(sql.Identifier(table)), params)
    index_build(conn, table)
    if swap_in(conn, [table], result.run_id):
        return True
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return False
