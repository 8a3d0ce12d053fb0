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
from segmentation.db import merge_joins, partitions
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
        attached = attach_first_load(conn, batch_id)
        inserted = insert_all(conn, batch_id) if attached is None else attached
        updated = 0
    drop_landed(conn, batch_id)  # the landed rows are done with
    # fresh statistics: tonight's incremental run plans "loaded since" as an index range
    conn.execute("ANALYZE customers")
    conn.execute("UPDATE ingest_batches SET rows_inserted = %s, rows_updated = %s"
                 " WHERE batch_id = %s", (inserted, updated, batch_id))
    return inserted, updated


def attach_first_load(conn: psycopg.Connection, batch_id: str) -> int | None:
    """The first load: the batch's tables become customers' partitions (one per slice, each
    keyed already), so its rows are written once. Returns the rows accepted, or None when
    the batch must be copied instead (insert_all): slices whose id ranges overlap, nothing
    left to attach, or a scoring run that may have read customers after the rows were
    stamped."""
    table = landing_name(batch_id)
    slices = partitions(conn, table) or [table]
    marked = conn.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'one_batch'"
                          " AND conrelid = ANY (%s::regclass[])", (slices,)).fetchone()
    if not marked or marked[0] != len(slices):  # landed before sql/018: copied
        return None
    if not stamped_before_every_run(conn, slices):
        return None
    conn.execute("LOCK TABLE customers_incoming IN ACCESS EXCLUSIVE MODE")  # as drop_landed
    conn.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    conn.execute("DELETE FROM customers_incoming i USING customers_quarantine q"
                 " WHERE i.batch_id = %(batch)s AND q.batch_id = %(batch)s"
                 " AND q.customer_id = i.customer_id", {"batch": batch_id})
    ranges = slice_ranges(conn, slices)
    if not ranges or not all(apart for _, _, _, apart in ranges):
        return None
    counted = conn.execute("SELECT count(*) FROM customers_incoming WHERE batch_id = %s",
                           (batch_id,)).fetchone()
    conn.execute(sql.SQL("ALTER TABLE customers_incoming DETACH PARTITION {}")
                 .format(sql.Identifier(table)))
    if slices != [table]:
        for name in slices:
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                sql.Identifier(table), sql.Identifier(name)))
    drop_partitions(conn)
    for name in set(slices) - {name for name, _, _, _ in ranges}:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))  # left empty
    for part, (name, low, high, _) in enumerate(ranges):
        partition = f"customers_{table.removeprefix('landing_')}_{part}"
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT one_batch, DROP COLUMN slice,"
                             " ALTER COLUMN batch_id DROP DEFAULT").format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            sql.Identifier(name), sql.Identifier(partition)))
        attach_range(conn, partition, None if part == 0 else low, high)
    return int(counted[0]) if counted else 0


def slice_ranges(conn: psycopg.Connection, slices: list[str]
                 ) -> list[tuple[str, str, str | None, bool]]:
    """Each slice holding rows, in key order: its name, its lowest id, the next slice's
    lowest id (None for the last), and whether all its ids are below that. Ordered by
    the database, in the collation its key and partitions use."""
    each = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS name, min(customer_id) AS low, max(customer_id) AS high"
                " FROM {}").format(sql.Literal(name), sql.Identifier(name)) for name in slices)
    return [(str(name), str(low), nxt, bool(apart)) for name, low, nxt, apart in conn.execute(
        sql.SQL("SELECT name, low, next_low, coalesce(high < next_low, true) FROM ("
                " SELECT name, low, high, lead(low) OVER (ORDER BY low) AS next_low"
                " FROM ({}) r WHERE low IS NOT NULL) o ORDER BY low").format(each))]


def stamped_before_every_run(conn: psycopg.Connection, slices: list[str]) -> bool:
    """Whether no scoring run is in flight, nor started since the batch's rows were stamped.
    Attached, the rows keep the loaded_at of their COPY, earlier than this accept: a run
    that started after it but read customers before this commit would set the next
    incremental run's watermark above rows it never saw. (A slice's rows are stamped by
    their column default in the one transaction that filled it: one row tells.)"""
    from segmentation.runs import LOCK_HOLDERS, SCORE_LOCK  # runs imports validation, this

    row = conn.execute("SELECT EXISTS (SELECT " + LOCK_HOLDERS + ")", (SCORE_LOCK,)).fetchone()
    if not row or row[0]:
        return False
    stamped = sql.SQL(" UNION ALL ").join(
        sql.SQL("(SELECT loaded_at FROM {} LIMIT 1)").format(sql.Identifier(name))
        for name in slices)
    row = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM scoring_runs WHERE started_at"
                               " >= (SELECT min(loaded_at) FROM ({}) s))").format(stamped)
                       ).fetchone()
    return bool(row and row[0])


def attach_range(conn: psycopg.Connection, name: str, low: str | None,
                 high: str | None) -> None:
    """A table of customers' columns as its partition for ids in [low, high) (None:
    unbounded). A CHECK of the same bounds, proven by one scan of the table, spares ATTACH
    its own scan under the lock of customers."""
    bounds = [sql.SQL("customer_id >= {}").format(sql.Literal(low)) if low is not None else None,
              sql.SQL("customer_id < {}").format(sql.Literal(high)) if high is not None else None]
    check = [b for b in bounds if b is not None]
    if check:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT in_range CHECK ({})").format(
            sql.Identifier(name), sql.SQL(" AND ").join(check)))
    conn.execute(sql.SQL("ALTER TABLE customers ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})")
                 .format(sql.Identifier(name),
                         sql.SQL("MINVALUE") if low is None else sql.Literal(low),
                         sql.SQL("MAXVALUE") if high is None else sql.Literal(high)))
    if check:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT in_range").format(
            sql.Identifier(name)))
    # a duplicate id then names customers' key, whichever partition holds it
    key = conn.execute("SELECT indexrelid::regclass::text FROM pg_index"
                       " WHERE indrelid = %s::regclass AND indisprimary", (name,)).fetchone()
    if key:
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(key[0]), sql.Identifier(name.replace("customers_", "customers_pkey_",
                                                                1))))


def insert_all(conn: psycopg.Connection, batch_id: str) -> int:
    """The first load, copied (its tables could not be attached): into a table of its own,
    unindexed while the rows go in, then attached as customers' one partition, which builds
    its indexes (one sort each, not an insertion per row into each)."""
    name = f"customers_{landing_name(batch_id).removeprefix('landing_')}_0"
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE customers INCLUDING DEFAULTS)")
                 .format(sql.Identifier(name)))
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    inserted = conn.execute(sql.SQL(
        "INSERT INTO {table} (customer_id, {features}, batch_id, loaded_at)"
        " SELECT i.customer_id, {features}, %(batch)s, statement_timestamp()"
        " FROM customers_incoming i WHERE i.batch_id = %(batch)s AND NOT EXISTS ("
        "  SELECT FROM customers_quarantine q"
        "  WHERE q.batch_id = %(batch)s AND q.customer_id = i.customer_id)").format(
            table=sql.Identifier(name), features=features), {"batch": batch_id}).rowcount
    conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # the key's sort in memory
    conn.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    drop_partitions(conn)
    attach_range(conn, name, None, None)
    conn.execute("RESET maintenance_work_mem")
    return int(inserted)


def drop_partitions(conn: psycopg.Connection) -> None:
    """customers' partitions, gone: it is empty, and a first load brings its own."""
    for old in partitions(conn, "customers"):
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(old)))


def merge_changes(conn: psycopg.Connection, batch_id: str) -> tuple[int, int]:
    """Insert the batch's new customers and update its changed ones; (inserted, updated)."""
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    incoming = sql.SQL(", ").join(sql.SQL("i.{}").format(sql.Identifier(n)) for n in FEATURES)
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
        conn.execute(sql.SQL("CREATE TEMP TABLE accept_changes ON COMMIT DROP AS {}")
                     .format(select_changes(conn)), {"batch": batch_id})
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


def select_changes(conn: psycopg.Connection) -> sql.Composed:
    """The batch's (%(batch)s) new and changed rows, with is_new: one merge join per
    partition of customers, of the batch's rows in its key range. The partition is a plain
    table, whose key scan a merge join can step back in; over the parent, it would first
    copy every row of one side into a tuplestore."""
    incoming = sql.SQL(", ").join(sql.SQL("i.{}").format(sql.Identifier(n)) for n in FEATURES)
    current = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(n)) for n in FEATURES)
    return sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT i.customer_id, {incoming}, c.customer_id IS NULL AS is_new"
                " FROM (SELECT * FROM customers_incoming WHERE batch_id = %(batch)s AND {range})"
                " i LEFT JOIN {part} c ON c.customer_id = i.customer_id"
                " WHERE c.customer_id IS NULL OR ({current}) IS DISTINCT FROM ({incoming})"
                ).format(incoming=incoming, current=current, part=sql.Identifier(part),
                         range=sql.SQL(bounds))  # the catalogue's own SQL (no values bound)
        for part, bounds in conn.execute(
            "SELECT c.relname::text, pg_get_partition_constraintdef(c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'customers'::regclass"
            " ORDER BY 1").fetchall())


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
