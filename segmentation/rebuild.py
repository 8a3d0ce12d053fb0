"""A run that rewrites (nearly) every published row: the first night, the night after a
new champion, a full rescore. Scores are COPYed straight into a new table, compared with
the old rows while streaming, indexed in bulk once loaded, and swapped in for
`segment_assignments`' partitions in a short lock: every row is written once.

The single-process run builds its table inside its own transaction (a crash leaves
nothing). A partitioned run builds one table per hash partition of `segment_assignments`
in each partition task, committed but attached to nothing, so invisible to readers; the
publish attaches them all in one transaction, and a run that never publishes leaves
tables that the next run drops (`drop_orphans`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from segmentation.db import connection, merge_joins, unattached_tables
from segmentation.features import ID_COLUMN
from segmentation.reading import in_partition, packed_features
from segmentation.runs import ScoreResult, last_succeeded

BUILD_PREFIX = "segment_assignments_build_"
# Readers holding the published table longer than this at the swap: undo the swap and
# write the changed rows into the existing table instead.
SWAP_LOCK_TIMEOUT = "10s"


def build_name(run_id: str, part: int | None = None) -> str:
    """The build table of a run (and partition): named so orphans can be found."""
    suffix = run_id.replace("-", "")
    return f"{BUILD_PREFIX}{suffix}" + ("" if part is None else f"_{part}")


def wants_rebuild(conn: psycopg.Connection, model_version: str) -> bool:
    """Rebuild when every published row will be rewritten: the table is empty, or its rows
    were scored by another model (a new champion, or a rollback: everyone is rescored).
    Other nights, full or incremental, write only the rows that changed."""
    last = last_succeeded(conn)
    return is_empty(conn) or (last is not None and last.model_version != model_version)


def is_empty(conn: psycopg.Connection) -> bool:
    """No published row: the build needs no comparison with old rows."""
    row = conn.execute("SELECT NOT EXISTS (SELECT FROM segment_assignments)").fetchone()
    return bool(row and row[0])


def create_like(conn: psycopg.Connection, table: str) -> None:
    """An empty, unattached table with segment_assignments' columns and constraints."""
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE segment_assignments INCLUDING DEFAULTS"
                         " INCLUDING CONSTRAINTS)").format(sql.Identifier(table)))


def create_build(conn: psycopg.Connection, table: str, result: ScoreResult,
                 scored_at: datetime) -> None:
    """An empty table shaped like segment_assignments whose defaults are this run's
    constants (model, time, run, and first run for a customer new tonight), plus the old
    segment for finding movers: COPY then sends only (id, segment[, old segment, first
    run])."""
    name = sql.Identifier(table)
    create_like(conn, table)
    conn.execute(sql.SQL(
        "ALTER TABLE {} ALTER COLUMN model_version SET DEFAULT {},"
        " ALTER COLUMN scored_at SET DEFAULT {}, ALTER COLUMN run_id SET DEFAULT {},"
        " ALTER COLUMN first_run_id SET DEFAULT {}, ADD COLUMN old_segment_id smallint").format(
        name, sql.Literal(result.model_version), sql.Literal(scored_at),
        sql.Literal(result.run_id), sql.Literal(result.run_id)))


def copy_into(table: str, carry: bool) -> sql.Composed:
    """COPY into a build table created in this transaction (FREEZE: no hint-bit rewrite
    of every page later); with old rows to compare, their segment and first run too."""
    columns = "customer_id, segment_id, old_segment_id, first_run_id" if carry \
        else "customer_id, segment_id"
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, FREEZE)").format(
        sql.Identifier(table), sql.SQL(columns))


def select_for_build(model_version: str, carry: bool,
                     partition: tuple[int, int] | None = None,
                     published: str = "segment_assignments") -> sql.Composed:
    """Every customer, with their published segment, first run and whether the same model
    scored them (carry), or alone (nothing published yet); optionally only the customers
    of hash partition (i, n) of segment_assignments, whose published rows are all in
    `published` (the matching partition when the layout is already n partitions)."""
    columns = sql.SQL("c.{}, {}").format(sql.Identifier(ID_COLUMN), packed_features())
    if carry:
        query = sql.SQL(
            "SELECT {}, s.segment_id, s.first_run_id::text, s.model_version = {} FROM customers c"
            " LEFT JOIN {} s USING (customer_id)").format(
            columns, sql.Literal(model_version), sql.Identifier(published))
    else:
        query = sql.SQL("SELECT {} FROM customers c").format(columns)
    if partition is not None:
        query = sql.SQL("{} WHERE {}").format(query, in_partition(*partition))
    return query


def published_source(conn: psycopg.Connection, partition: tuple[int, int] | None) -> str:
    """Where the published rows of hash partition (i, n) are: partition i itself when
    segment_assignments is already n hash partitions (a partitioned run's reader and its
    history then read half the published rows each, not all), else the whole table."""
    if partition is None:
        return "segment_assignments"
    part, parts = partition
    bounds = published_partitions(conn)
    name = partition_name(part, parts)
    if len(bounds) == parts and bounds.get(name) == \
            f"FOR VALUES WITH (modulus {parts}, remainder {part})":
        return name
    return "segment_assignments"


def partition_name(part: int, parts: int) -> str:
    """What partition `part` of `parts` of segment_assignments is called once swapped in."""
    return "segment_assignments_p" if parts == 1 else f"segment_assignments_p{part}"


def index_build(conn: psycopg.Connection, table: str) -> None:
    """The primary key, built once over the loaded rows (a sort, on parallel maintenance
    workers where the server allows) instead of row by row."""
    conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY (customer_id)").format(
        sql.Identifier(table), sql.Identifier(f"{table}_pkey")))


def select_moves(table: str, published: str) -> sql.Composed:
    """The build's movers: (customer, old segment, new segment, old model), the old model
    from the published row (still attached, in `published`: see published_source)."""
    return sql.SQL(
        "SELECT b.customer_id, b.old_segment_id, b.segment_id, a.model_version"
        " FROM {} b JOIN {} a USING (customer_id) WHERE b.old_segment_id <> b.segment_id"
    ).format(sql.Identifier(table), sql.Identifier(published))


def record_moves(conn: psycopg.Connection, table: str, result: ScoreResult,
                 scored_at: datetime, published: str = "segment_assignments",
                 few: bool = False) -> int:
    """History rows for the build's movers; returns how many. With many movers both tables
    are read in key order (a merge join: after a retrain that moved many, a hash join of
    two 10 M-row tables spills). With few (the stream counted them: a retrain that keeps
    ids moves a few thousand), the build is scanned once and each mover's published row
    looked up by key; left to choose, the planner prices `old <> new` as nearly every row
    and reads both tables whole, or probes the build once per published row."""
    if few:
        return insert_history(conn, sql.SQL("({})").format(select_few_moves(table, published)),
                              result, scored_at)
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    with merge_joins(conn):
        return insert_history(conn, sql.SQL("({})").format(select_moves(table, published)),
                              result, scored_at)


def select_few_moves(table: str, published: str) -> sql.Composed:
    """select_moves as one scan of the build and a lookup by key per mover (a mover was
    published: its old segment came from there)."""
    return sql.SQL(
        "SELECT b.customer_id, b.old_segment_id, b.segment_id, (SELECT a.model_version"
        " FROM {} a WHERE a.customer_id = b.customer_id) FROM {} b"
        " WHERE b.old_segment_id <> b.segment_id"
    ).format(sql.Identifier(published), sql.Identifier(table))


def insert_history(conn: psycopg.Connection, moves: sql.Composable, result: ScoreResult,
                   scored_at: datetime) -> int:
    """segment_history rows from movers shaped like select_moves' (a query or a table),
    stamped with this run; returns how many."""
    return conn.execute(sql.SQL(
        "INSERT INTO segment_history (customer_id, old_segment_id, new_segment_id,"
        " old_model_version, new_model_version, changed_at, run_id)"
        " SELECT m.*, %s, %s, %s FROM {} m").format(moves),
        (result.model_version, scored_at, result.run_id)).rowcount


def moves_name(table: str) -> str:
    """Where a partition's build table keeps its movers until the publish (named after
    it: swept with it if the run never publishes)."""
    return f"{table}_moves"


def stage_moves(conn: psycopg.Connection, table: str, published: str) -> int:
    """A partition task finds its build's movers itself, in parallel with the other
    partitions, into a table beside its build; the publish only copies them into
    segment_history. Returns how many. No other run publishes in between (the run lock is
    held by the run's flow until its publish), so the moves are still true then."""
    conn.execute(sql.SQL("CREATE TABLE {} (customer_id text, old_segment_id smallint,"
                         " new_segment_id smallint, old_model_version text)").format(
        sql.Identifier(moves_name(table))))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    with merge_joins(conn):
        return conn.execute(sql.SQL("INSERT INTO {} {}").format(
            sql.Identifier(moves_name(table)), select_moves(table, published))).rowcount


def publish_moves(conn: psycopg.Connection, table: str, result: ScoreResult,
                  scored_at: datetime) -> int:
    """A partition's staged movers into segment_history (none if it staged none: nothing
    was published when it read); returns how many."""
    moves = moves_name(table)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (moves,)).fetchone()
    if not row or not row[0]:
        return 0
    moved = insert_history(conn, sql.Identifier(moves), result, scored_at)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(moves)))
    return moved


def finish_build(conn: psycopg.Connection, table: str) -> None:
    """The build becomes a plain copy of segment_assignments' shape: no comparison column,
    no run constants as defaults."""
    conn.execute(sql.SQL(
        "ALTER TABLE {} DROP COLUMN old_segment_id, ALTER COLUMN model_version DROP DEFAULT,"
        " ALTER COLUMN scored_at DROP DEFAULT, ALTER COLUMN run_id DROP DEFAULT,"
        " ALTER COLUMN first_run_id DROP DEFAULT").format(sql.Identifier(table)))


def published_partitions(conn: psycopg.Connection) -> dict[str, str]:
    """The partitions that make up segment_assignments now, by name, with their bounds."""
    return dict(conn.execute(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'segment_assignments'::regclass ORDER BY 1").fetchall())


def retired_name(run_id: str, part: int) -> str:
    """What a detached old partition is called until it is dropped after the commit (a
    build name no run keeps: swept as an orphan if the drop never comes)."""
    return f"{BUILD_PREFIX}old_{run_id.replace('-', '')[:24]}_{part}"  # within 63 bytes


def swap_in(conn: psycopg.Connection, tables: list[str], run_id: str) -> bool:
    """Replace segment_assignments' partitions by `tables` (partition i of len(tables)).
    Readers wait for the detach and the attach, whose scan checks each row's partition;
    the builds are analyzed before, the old partitions dropped and the parent analyzed
    after the commit (after_publish). If readers hold the table longer than
    SWAP_LOCK_TIMEOUT, undo and return False."""
    for table in tables:  # statistics before the lock: the planner's picture at the swap
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    conn.execute("SAVEPOINT swap_in")
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (SWAP_LOCK_TIMEOUT,))
        for part, name in enumerate(published_partitions(conn)):
            conn.execute(sql.SQL("ALTER TABLE segment_assignments DETACH PARTITION {}")
                         .format(sql.Identifier(name)))
            old = retired_name(run_id, part)
            conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(name), sql.Identifier(old)))
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(f"{name}_pkey"), sql.Identifier(f"{old}_pkey")))
        conn.execute("SET LOCAL lock_timeout TO DEFAULT")
    except psycopg.errors.LockNotAvailable:
        conn.execute("ROLLBACK TO SAVEPOINT swap_in")
        return False
    parts = len(tables)
    for part, table in enumerate(tables):
        final = partition_name(part, parts)
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table),
                                                                  sql.Identifier(final)))
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(f"{table}_pkey"), sql.Identifier(f"{final}_pkey")))
        conn.execute(sql.SQL("ALTER TABLE segment_assignments ATTACH PARTITION {}"
                             " FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
            sql.Identifier(final), sql.Literal(parts), sql.Literal(part)))
    conn.execute("RELEASE SAVEPOINT swap_in")
    return True


def upsert_build(conn: psycopg.Connection, table: str, result: ScoreResult,
                 scored_at: datetime) -> None:
    """The swap could not take its lock: write the build's rows into the published table
    instead (new ones inserted, known ones updated; first runs kept)."""
    params: dict[str, Any] = {"v": result.model_version, "ts": scored_at, "run": result.run_id}
    name = sql.Identifier(table)
    conn.execute(sql.SQL(
        "INSERT INTO segment_assignments (customer_id, segment_id, model_version, scored_at,"
        " run_id, first_run_id) SELECT b.customer_id, b.segment_id, %(v)s, %(ts)s, %(run)s,"
        " %(run)s FROM {} b WHERE NOT EXISTS (SELECT FROM segment_assignments a"
        " WHERE a.customer_id = b.customer_id)").format(name), params)
    conn.execute(sql.SQL(
        "UPDATE segment_assignments a SET segment_id = b.segment_id, model_version = %(v)s,"
        " scored_at = %(ts)s, run_id = %(run)s FROM {} b"
        " WHERE b.customer_id = a.customer_id").format(name), params)
    conn.execute(sql.SQL("DROP TABLE {}").format(name))


def unattached_builds(conn: psycopg.Connection, run_id: str | None = None) -> list[str]:
    """Build tables attached to nothing (all runs', or run_id's)."""
    return unattached_tables(conn, build_name(run_id) if run_id else BUILD_PREFIX)


def drop_tables(conn: psycopg.Connection, names: list[str]) -> None:
    """Drop these tables if they still exist."""
    for name in names:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def drop_orphans(conn: psycopg.Connection, keep_run: str | None = None) -> list[str]:
    """Drop the build tables and staged rows left by runs that never published, and old
    partitions a swap left (all but keep_run's). Called under the run lock: no other run
    is writing any."""
    keep = build_name(keep_run) if keep_run else None
    orphans = [name for name in unattached_builds(conn)
               if keep is None or not name.startswith(keep)]
    drop_tables(conn, orphans)
    conn.execute("DELETE FROM scoring_stage WHERE run_id IS DISTINCT FROM %s::uuid",
                 (keep_run,))
    return orphans


def after_publish(url: str, analyze: bool) -> None:
    """After a publish has committed, outside its lock: drop the partitions a swap
    detached, and refresh the parent's statistics (the planner's picture of the published
    table). Best effort: the next run sweeps what is left."""
    try:
        with connection(url, autocommit=True) as conn:
            drop_tables(conn, [name for name in unattached_builds(conn)
                               if name.startswith(f"{BUILD_PREFIX}old_")])
            if analyze:
                conn.execute("ANALYZE segment_assignments")
    except Exception:
        pass
