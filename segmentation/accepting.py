"""After validation: the broken rows go to the quarantine with every rule they broke, the
rest are accepted into `customers` (only the new and changed ones are written), all under
the accept lock that erasures and scoring snapshots respect; erased customers' rows are
dropped on the way, whichever step meets them first."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.contract import describe
from segmentation.db import merge_joins
from segmentation.features import FEATURES

if TYPE_CHECKING:
    from segmentation.validation import RuleOutcome

ACCEPT_LOCK = 7_421_003  # advisory lock: accepting rows into customers vs scoring snapshots


def lock_accepts(conn: psycopg.Connection) -> None:
    """Hold off every accept into customers until this transaction ends (an erasure, and a
    validation from its quarantine to its accept; scoring snapshots wait for it too)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ACCEPT_LOCK,))


def landing_name(batch_id: str) -> str:
    """The batch's own table (a partition of customers_incoming once landed): one name per
    batch, a plain identifier whatever the batch id (sql/018 names earlier batches alike)."""
    return "landing_" + hashlib.md5(batch_id.encode()).hexdigest()[:16]


def drop_landed(conn: psycopg.Connection, batch_id: str) -> None:
    """The batch's landed rows, gone with their table (accepted, or discarded)."""
    # dropping a partition changes its parent: the lock first, so no other batch attaches
    # or leaves in between
    conn.execute("LOCK TABLE customers_incoming IN ACCESS EXCLUSIVE MODE")
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(landing_name(batch_id))))


def drop_erased(conn: psycopg.Connection, table: str, batch_id: str | None = None) -> int:
    """Delete the rows of erased customers from a landing table, or from one batch of
    customers_incoming; returns how many. Free while nobody was ever erased."""
    row = conn.execute("SELECT EXISTS (SELECT FROM erased_customers)").fetchone()
    if not row or not row[0]:
        return 0
    batch = sql.SQL(" AND t.batch_id = %(batch)s") if batch_id else sql.SQL("")
    # erased_id_hash() spelled out as a join: the function, called once a row, would look
    # the key up once a row (it cannot be inlined), and a landing has millions of rows
    return conn.execute(sql.SQL(
        "DELETE FROM {} t USING erasure_key k, erased_customers e"
        " WHERE e.id_hash = sha256(k.key || convert_to(t.customer_id, 'UTF8')){}").format(
        sql.Identifier(table), batch), {"batch": batch_id}).rowcount


def accept_batch(conn: psycopg.Connection, batch_id: str) -> tuple[int, int]:
    """Move a validated batch's non-quarantined rows into customers (changed rows only).

    Returns (inserted, updated); unchanged rows keep their earlier batch and loaded_at.
    """
    # Scoring takes its snapshot holding ACCEPT_LOCK (shared): rows stamped after this
    # lock are newer than any run that could not see them (the incremental watermark).
    lock_accepts(conn)
    row = conn.execute("SELECT EXISTS (SELECT FROM customers)").fetchone()
    if row and row[0]:
        inserted, updated = merge_changes(conn, batch_id)
    else:
        inserted, updated = insert_all(conn, batch_id), 0
    drop_landed(conn, batch_id)  # the landed rows are done with
    # fresh statistics: tonight's incremental run plans "loaded since" as an index range
    conn.execute("ANALYZE customers")
    conn.execute("UPDATE ingest_batches SET rows_inserted = %s, rows_updated = %s"
                 " WHERE batch_id = %s", (inserted, updated, batch_id))
    return inserted, updated


def insert_all(conn: psycopg.Connection, batch_id: str) -> int:
    """The first load: every row is new, so nothing is compared. customers is empty, so its
    indexes are dropped and built again once the rows are in: one sort each instead of an
    insertion per row into each (nobody reads customers meanwhile: dropping an index locks
    the table until the commit)."""
    indexes = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname,"
        " pg_get_constraintdef(c.oid) FROM pg_index i LEFT JOIN pg_constraint c"
        " ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid"
        " WHERE i.indrelid = 'customers'::regclass ORDER BY 1").fetchall()
    for index, _, constraint, _ in indexes:
        conn.execute(sql.SQL("ALTER TABLE customers DROP CONSTRAINT {}").format(
            sql.Identifier(constraint)) if constraint else
            sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    inserted = conn.execute(sql.SQL(
        "INSERT INTO customers (customer_id, {features}, batch_id, loaded_at)"
        " SELECT i.customer_id, {features}, %(batch)s, statement_timestamp()"
        " FROM customers_incoming i WHERE i.batch_id = %(batch)s AND NOT EXISTS ("
        "  SELECT FROM customers_quarantine q"
        "  WHERE q.batch_id = %(batch)s AND q.customer_id = i.customer_id)").format(
            features=features), {"batch": batch_id}).rowcount
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # the key's sort in memory
    for _, definition, constraint, constraint_definition in indexes:
        # the definitions as the catalogue states them (not values: no parameters to bind)
        conn.execute(sql.SQL("ALTER TABLE customers ADD CONSTRAINT {} {}").format(
            sql.Identifier(constraint), sql.SQL(constraint_definition)) if constraint else
            sql.SQL(definition))
    return int(inserted)


def merge_changes(conn: psycopg.Connection, batch_id: str) -> tuple[int, int]:
    """Insert the batch's new customers and update its changed ones; (inserted, updated)."""
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    incoming = sql.SQL(", ").join(sql.SQL("i.{}").format(sql.Identifier(n)) for n in FEATURES)
    current = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(n)) for n in FEATURES)
    # One join finds the new and the changed rows; then plain UPDATE and INSERT of just
    # those, so an unchanged row is compared once and never written. Both sides are
    # indexed by customer_id, so the join is a merge in key order: a hash join spills once
    # customers outgrows work_mem. Sorts off too: the planner prices the batch's index
    # scan above a sort of the whole batch, which spills to disk and takes longer than the
    # join itself. The quarantine (at most the allowed share of the batch) is taken out of
    # the changes afterwards, not probed once per incoming row.
    conn.execute("SET LOCAL work_mem = '256MB'")
    conn.execute("SET LOCAL enable_sort = off")
    with merge_joins(conn):
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE accept_changes ON COMMIT DROP AS"
            " SELECT i.customer_id, {incoming}, c.customer_id IS NULL AS is_new"
            " FROM customers_incoming i LEFT JOIN customers c ON c.customer_id = i.customer_id"
            " WHERE i.batch_id = %(batch)s"
            " AND (c.customer_id IS NULL OR ({current}) IS DISTINCT FROM ({incoming}))").format(
                incoming=incoming, current=current), {"batch": batch_id})
    conn.execute("SET LOCAL enable_sort TO DEFAULT")
    conn.execute("DELETE FROM accept_changes a USING customers_quarantine q"
                 " WHERE q.batch_id = %s AND q.customer_id = a.customer_id", (batch_id,))
    conn.execute("ANALYZE accept_changes")  # few changes: index probes, not a hash join
    updated = conn.execute(sql.SQL(
        "UPDATE customers c SET ({features}, batch_id, loaded_at) = ({incoming}, %(batch)s,"
        " statement_timestamp()) FROM accept_changes i"
        " WHERE NOT i.is_new AND i.customer_id = c.customer_id").format(
            features=features, incoming=incoming), {"batch": batch_id}).rowcount
    inserted = conn.execute(sql.SQL(
        "INSERT INTO customers (customer_id, {features}, batch_id, loaded_at)"
        " SELECT i.customer_id, {incoming}, %(batch)s, statement_timestamp()"
        " FROM accept_changes i WHERE i.is_new").format(
            features=features, incoming=incoming), {"batch": batch_id}).rowcount
    return inserted, updated


def quarantine_rows(conn: psycopg.Connection, batch_id: str, outcomes: list[RuleOutcome]) -> int:
    """Insert each broken row once, with every row rule it broke; returns the count."""
    broken: dict[str, list[str]] = {}
    for outcome in outcomes:
        if outcome.rule.tier == "row" and not outcome.success:
            for cid in outcome.ids:
                broken.setdefault(cid, []).append(describe(outcome.rule))
    if not broken:
        return 0
    return conn.execute(  # the rows still landed: an erased customer's are gone
        "INSERT INTO customers_quarantine (customer_id, batch_id, raw, rules)"
        " SELECT i.customer_id, i.batch_id, to_jsonb(i) - 'batch_id' - 'loaded_at' - 'slice',"
        "  ARRAY(SELECT jsonb_array_elements_text(r.value))"
        " FROM jsonb_each(%s::jsonb) r JOIN customers_incoming i"
        "  ON i.customer_id = r.key AND i.batch_id = %s",
        (Json(broken), batch_id)).rowcount
