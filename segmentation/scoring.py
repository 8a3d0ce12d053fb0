"""Bulk scoring: stream customers out with COPY, classify per chunk, COPY into staging, and
publish staging into `customer_segments` in one transaction, with history and a run row.

Two connections: the reader streams `COPY (SELECT ...) TO STDOUT`; the writer holds the
transaction that owns the staging table, the advisory lock and the publish.  Nothing is
visible to readers of `customer_segments` until that transaction commits, so a crash or a
killed connection at any point leaves the table exactly as it was.  Memory holds one chunk.
The publish upserts the changed rows, or, when they are a large share of the table, builds
the table anew and swaps it in as the parent's only partition (sql/006_swap_publish.sql).
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.types.json import Json

from segmentation.clustering import SegmentationModel
from segmentation.db import connection, merge_joins, require_schema
from segmentation.errors import RunLocked, SegmentationError, ValidationFailed
from segmentation.features import COLUMNS, FEATURES, ID_COLUMN
from segmentation.ingest import ACCEPT_LOCK
from segmentation.validation import pending_batches

SCORE_LOCK = 7_421_002  # pg_advisory_xact_lock key: one scoring run at a time
# A run writing at least this share of customer_segments builds a new partition and swaps it
# in: at 10 M rows an UPDATE costs about 5.4 s per million rows written, an INSERT 2.4 s, and
# building + indexing the whole table about 1.2 s per million rows it holds.
SWAP_SHARE = 0.25
SWAP_LOCK_TIMEOUT = "10s"  # readers holding the table longer: fall back to the upsert
Mode = Literal["full", "incremental"]
Progress = Callable[[int, float], None]
READ_TYPES = {ID_COLUMN: pa.string(), **{f: pa.float64() for f in FEATURES}}


@dataclass
class ScoreResult:
    """What a scoring run did."""

    run_id: str
    model_version: str
    mode: str
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    rows_changed: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    published_by: str = ""  # "swap": a new partition built and swapped in; "upsert": rows

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts and JSON."""
        return asdict(self)


def select_customers(mode: Mode, model_version: str,
                     partition: tuple[int, int] | None = None,
                     since: datetime | None = None) -> sql.Composed:
    """The customers a run reads: all, or those new/changed/scored by another model
    (loaded after `since`, when known: an index range instead of a join of both tables);
    optionally only partition (i, n) by a hash of customer_id."""
    columns = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(c)) for c in COLUMNS)
    where: list[sql.Composable] = []
    if mode == "full":
        source = sql.SQL("customers c")
    else:
        source = sql.SQL("customers c LEFT JOIN customer_segments s USING (customer_id)")
        where.append(sql.SQL("(s.customer_id IS NULL OR s.model_version <> {}"
                             " OR c.loaded_at > s.scored_at)").format(sql.Literal(model_version)))
        if since is not None:
            where.append(sql.SQL("c.loaded_at > {}").format(sql.Literal(since)))
    if partition is not None:
        part, parts = partition
        where.append(sql.SQL("(hashtext(c.customer_id) & 2147483647) % {} = {}").format(
            sql.Literal(parts), sql.Literal(part)))
    query = sql.SQL("SELECT {} FROM {}").format(columns, source)
    if where:
        query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(where))
    return query


def iter_chunks(conn: psycopg.Connection, query: sql.Composed, chunk_rows: int
                ) -> Iterator[pd.DataFrame]:
    """Stream a query with COPY ... TO STDOUT (CSV) and yield DataFrames of chunk_rows rows."""
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
    options = pacsv.ReadOptions(column_names=list(COLUMNS))
    parse = pacsv.ParseOptions(newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types=READ_TYPES, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    rows: list[bytes] = []
    with conn.cursor().copy(statement) as copy:
        for row in copy:  # one CSV record per item
            rows.append(bytes(row))
            if len(rows) >= chunk_rows:
                yield _parse(rows, options, parse, convert)
                rows = []
    if rows:
        yield _parse(rows, options, parse, convert)


def _parse(rows: list[bytes], options: pacsv.ReadOptions, parse: pacsv.ParseOptions,
           convert: pacsv.ConvertOptions) -> pd.DataFrame:
    """CSV records -> DataFrame (pyarrow's parser; ids stay strings, verbatim)."""
    table = pacsv.read_csv(io.BytesIO(b"".join(rows)), read_options=options,
                           parse_options=parse, convert_options=convert)
    return table.to_pandas()


def encode_scores(ids: pd.Series, segments: Any) -> bytes:
    """(customer_id, segment_id) as CSV for COPY FROM STDIN."""
    table = pa.table({"customer_id": pa.array(ids, type=pa.string()),
                      "segment_id": pa.array(segments, type=pa.int16())})
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=False,
                                                                 quoting_style="needed"))
    return sink.getvalue()


def refuse_blocked_batches(conn: psycopg.Connection) -> None:
    """No scoring while a batch is unvalidated or failed: ops must see it first."""
    blocked = pending_batches(conn)
    if not blocked:
        return
    batch_id, status = blocked[0]
    more = f" (and {len(blocked) - 1} more)" if len(blocked) > 1 else ""
    if status == "loaded":
        raise ValidationFailed(f"batch {batch_id}{more} has not been validated: run "
                               f"`segmentation validate --batch {batch_id}`")
    raise ValidationFailed(f"batch {batch_id}{more} failed validation; fix the source and "
                           f"ingest it again, or `segmentation batches discard {batch_id}`")


def quarantined_since_last_run(conn: psycopg.Connection) -> int:
    """Rows quarantined by batches validated since the last successful run."""
    row = conn.execute(
        "SELECT coalesce(sum(rows_quarantined), 0) FROM ingest_batches WHERE status ="
        " 'validated' AND validated_at > coalesce((SELECT max(started_at) FROM scoring_runs"
        " WHERE status = 'succeeded'), '-infinity')").fetchone()
    return int(row[0]) if row else 0


def acquire_run_lock(conn: psycopg.Connection, wait: bool) -> None:
    """Exclusive scoring: wait for, or refuse on, the transaction-scoped advisory lock."""
    if wait:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCORE_LOCK,))
        return
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SCORE_LOCK,)).fetchone()
    if not row or not row[0]:
        running = conn.execute(
            "SELECT run_id, started_at FROM scoring_runs WHERE status = 'running'"
            " ORDER BY started_at DESC LIMIT 1").fetchone()
        detail = f" (run {running[0]} since {running[1]:%H:%M:%S})" if running else ""
        raise RunLocked(f"another scoring run is in progress{detail}; not starting a second "
                        "one (use --wait to queue behind it)")


def publish(conn: psycopg.Connection, result: ScoreResult, names: dict[int, str],
            scored_at: datetime) -> int:
    """Staging -> customer_segments + segment_history, in the caller's transaction.

    One diff pass finds what changed; only those rows are written (a rerun writes nothing).
    A run that rewrites at least SWAP_SHARE of the table builds a new partition and swaps it
    in; otherwise new customers are plain INSERTs and known ones UPDATEs (no ON CONFLICT).
    Returns the number of history rows (customers whose segment or model changed).
    """
    params = {"v": result.model_version, "ts": scored_at, "run": result.run_id,
              "ids": list(names), "names": [names[s] for s in names],
              # incremental: every selected row is new or changed since it was scored
              "touch_all": result.mode == "incremental"}
    conn.execute("SET LOCAL work_mem = '256MB'")
    # A merge join in key order, whose result is sorted as the history inserts want it; a
    # hash join of 10 M staged rows spills (10 M: 21-25 s hashed, then another sort; 5.4 s
    # merged when every customer is new, 14.5 s when every one changed). Names by id.
    with merge_joins(conn):
        written = conn.execute(
            "CREATE TEMP TABLE segment_changes ON COMMIT DROP AS"
            " SELECT st.customer_id, st.segment_id, n.segment_name,"
            " cs.customer_id IS NULL AS is_new, cs.segment_id AS old_segment_id,"
            " cs.model_version AS old_model_version, (cs.customer_id IS NULL"
            "  OR cs.segment_id <> st.segment_id OR cs.model_version <> %(v)s) AS moved"
            " FROM scored_stage st CROSS JOIN LATERAL (SELECT (%(names)s::text[])"
            "  [array_position(%(ids)s::smallint[], st.segment_id)] AS segment_name) n"
            " LEFT JOIN customer_segments cs USING (customer_id)"
            " WHERE %(touch_all)s OR cs.customer_id IS NULL OR cs.segment_id <> st.segment_id"
            " OR cs.model_version <> %(v)s OR cs.segment_name <> n.segment_name"
            # key order: the index inserts below append instead of scattering (5.3 -> 3.5 s/M)
            " ORDER BY st.customer_id", params).rowcount
    conn.execute("ANALYZE segment_changes")
    changed = conn.execute(
        "INSERT INTO segment_history (customer_id, old_segment_id, new_segment_id,"
        " old_model_version, new_model_version, changed_at, run_id)"
        " SELECT customer_id, old_segment_id, segment_id, old_model_version, %(v)s, %(ts)s,"
        " %(run)s FROM segment_changes WHERE moved", params).rowcount
    swapped = bool(written) and written >= SWAP_SHARE * published_rows(conn) \
        and swap_partition(conn, params)
    if not swapped:
        upsert_changes(conn, params)
    result.published_by = "swap" if swapped else "upsert"
    return changed


def published_rows(conn: psycopg.Connection) -> float:
    """The planner's row count of customer_segments (kept by the ANALYZE after each run)."""
    row = conn.execute("SELECT greatest(sum(c.reltuples), 0) FROM pg_inherits i"
                       " JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'customer_segments'::regclass").fetchone()
    assert row is not None  # an aggregate: one row; greatest() ignores the NULL of no rows
    return float(row[0])


def upsert_changes(conn: psycopg.Connection, params: dict[str, Any]) -> None:
    """Write segment_changes into customer_segments row by row: INSERT new, UPDATE known."""
    conn.execute(
        "INSERT INTO customer_segments (customer_id, segment_id, segment_name, model_version,"
        " scored_at, run_id) SELECT customer_id, segment_id, segment_name, %(v)s, %(ts)s,"
        " %(run)s FROM segment_changes WHERE is_new", params)
    conn.execute(
        "UPDATE customer_segments cs SET segment_id = ch.segment_id,"
        " segment_name = ch.segment_name, model_version = %(v)s, scored_at = %(ts)s,"
        " run_id = %(run)s FROM segment_changes ch"
        " WHERE ch.customer_id = cs.customer_id AND NOT ch.is_new", params)


def swap_partition(conn: psycopg.Connection, params: dict[str, Any]) -> bool:
    """Build customer_segments anew (unchanged rows + segment_changes), index it in bulk and
    swap it in for the old partition. Readers are blocked only for the DETACH/ATTACH at the
    end; if they hold the table longer than SWAP_LOCK_TIMEOUT, undo and return False."""
    conn.execute("SAVEPOINT swap_publish")
    try:
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # index sorts in memory
        conn.execute("CREATE TABLE customer_segments_next"
                     " (LIKE customer_segments INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        with merge_joins(conn):  # the anti join
            conn.execute(
                "INSERT INTO customer_segments_next SELECT customer_id, segment_id,"
                " segment_name, %(v)s, %(ts)s, %(run)s FROM segment_changes UNION ALL"
                " SELECT cs.* FROM customer_segments cs WHERE NOT EXISTS (SELECT FROM"
                " segment_changes ch WHERE ch.customer_id = cs.customer_id)", params)
        conn.execute("ALTER TABLE customer_segments_next"
                     " ADD CONSTRAINT customer_segments_next_pkey PRIMARY KEY (customer_id)")
        conn.execute("CREATE INDEX customer_segments_next_segment_idx"
                     " ON customer_segments_next (segment_id)")
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (SWAP_LOCK_TIMEOUT,))
        old = conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits"
                           " WHERE inhparent = 'customer_segments'::regclass").fetchall()
        for (name,) in old:
            conn.execute(sql.SQL("ALTER TABLE customer_segments DETACH PARTITION {}")
                         .format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        conn.execute("SET LOCAL lock_timeout TO DEFAULT")
    except psycopg.errors.LockNotAvailable:
        conn.execute("ROLLBACK TO SAVEPOINT swap_publish")
        return False
    # the old partition is gone: the new one takes its names
    conn.execute("ALTER TABLE customer_segments_next RENAME TO customer_segments_p")
    conn.execute("ALTER INDEX customer_segments_next_pkey RENAME TO customer_segments_p_pkey")
    conn.execute("ALTER INDEX customer_segments_next_segment_idx"
                 " RENAME TO customer_segments_p_segment_idx")
    conn.execute("ALTER TABLE customer_segments ATTACH PARTITION customer_segments_p"
                 " FOR VALUES WITH (MODULUS 1, REMAINDER 0)")
    conn.execute("RELEASE SAVEPOINT swap_publish")
    return True


def server_now(conn: psycopg.Connection) -> datetime:
    """The database's clock: run times are compared with loaded_at, which it stamps."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    when: datetime = row[0]
    return when


def incremental_since(conn: psycopg.Connection, model_version: str) -> datetime | None:
    """Start of the last successful run with this model: every customer accepted before
    that moment was seen by that run (see open_snapshot). None: scan every customer."""
    row = conn.execute("SELECT started_at, model_version FROM scoring_runs WHERE status ="
                       " 'succeeded' ORDER BY started_at DESC LIMIT 1").fetchone()
    if row is None or row[1] != model_version:
        return None
    since: datetime = row[0]
    return since


def open_snapshot(reader: psycopg.Connection) -> None:
    """Take the reader's snapshot while no accept into customers is in flight.

    Accepts hold ACCEPT_LOCK exclusively until they commit, so a row this snapshot misses
    was stamped (loaded_at) after it, and after the run's start: the next incremental run
    finds it above its watermark.
    """
    reader.execute("SELECT pg_advisory_lock_shared(%s)", (ACCEPT_LOCK,))
    reader.commit()
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    reader.execute("SELECT 1")  # the snapshot is taken here, under the lock
    reader.execute("SELECT pg_advisory_unlock_shared(%s)", (ACCEPT_LOCK,))


def stream_scores(reader: psycopg.Connection, writer: psycopg.Connection, copy_sql: str,
                  query: sql.Composed, model: SegmentationModel, chunk_rows: int,
                  progress: Progress | None = None) -> tuple[int, float]:
    """Reader COPY out -> predict per chunk -> writer COPY in; returns (rows, predict seconds)."""
    rows, predict_s, started = 0, 0.0, time.perf_counter()
    open_snapshot(reader)
    with writer.cursor().copy(copy_sql) as sink:
        for chunk in iter_chunks(reader, query, chunk_rows):
            t0 = time.perf_counter()
            segments = model.predict(chunk)
            predict_s += time.perf_counter() - t0
            sink.write(encode_scores(chunk[ID_COLUMN], segments))
            rows += len(chunk)
            if progress:
                progress(rows, time.perf_counter() - started)
    reader.commit()  # release the snapshot and its locks: a swap must not wait for them
    return rows, predict_s


def score_customers(url: str, model: SegmentationModel, names: dict[int, str], *,
                    mode: Mode = "full", chunk_rows: int = 100_000, wait: bool = False,
                    run_id: str | None = None, progress: Progress | None = None) -> ScoreResult:
    """Classify customers and publish the result atomically; returns the run's counts."""
    result = ScoreResult(run_id or str(uuid.uuid4()), model.version, mode)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    try:
        with connection(url) as writer, connection(url) as reader:
            started_at = preflight(writer)
            acquire_run_lock(writer, wait)
            since = incremental_since(writer, model.version) if mode == "incremental" else None
            writer.execute("CREATE TEMP TABLE scored_stage (customer_id text, segment_id smallint)"
                           " ON COMMIT DROP")
            rows, predict_s = stream_scores(
                reader, writer, "COPY scored_stage FROM STDIN (FORMAT csv)",
                select_customers(mode, model.version, since=since), model, chunk_rows,
                progress)
            result.rows_in = result.rows_scored = rows
            result.timings["stream_s"] = round(time.perf_counter() - started, 3)
            result.timings["predict_s"] = round(predict_s, 3)
            finish_run(writer, result, names, started, started_at)
    except BaseException as exc:
        record_failure(url, result, started_at, exc)
        raise
    return result


def finish_run(writer: psycopg.Connection, result: ScoreResult, names: dict[int, str],
               started: float, started_at: datetime) -> None:
    """Publish scored_stage and record the run, in the writer's (locked) transaction."""
    result.rows_quarantined = quarantined_since_last_run(writer)
    t0 = time.perf_counter()
    writer.execute("ANALYZE scored_stage")
    result.rows_changed = publish(writer, result, names, started_at)
    if result.rows_changed:  # keep the planner's picture of the published table current
        writer.execute("ANALYZE customer_segments")
    result.timings["publish_s"] = round(time.perf_counter() - t0, 3)
    result.seconds = round(time.perf_counter() - started, 3)
    record_run(writer, result, "succeeded", started_at)


@dataclass
class PartitionResult:
    """What one partition task staged."""

    part: int
    parts: int
    rows: int
    predict_s: float
    seconds: float


@dataclass
class RunStart:
    """When a partitioned run started (database clock) and its incremental watermark."""

    started_at: datetime
    since: datetime | None


def preflight(conn: psycopg.Connection) -> datetime:
    """Refuse before any work if the schema is old or a batch is unvalidated/failed;
    returns the run's start on the database clock."""
    started_at = server_now(conn)
    require_schema(conn)
    refuse_blocked_batches(conn)
    return started_at


def check_ready(url: str, model_version: str, mode: Mode) -> RunStart:
    """A partitioned run's preflight: its start and its incremental watermark."""
    with connection(url) as conn:
        started_at = preflight(conn)
        since = incremental_since(conn, model_version) if mode == "incremental" else None
        return RunStart(started_at, since)


def stage_partition(url: str, model: SegmentationModel, mode: Mode, run_id: str, part: int,
                    parts: int, chunk_rows: int = 100_000, since: datetime | None = None,
                    progress: Progress | None = None) -> PartitionResult:
    """Score one hash partition into scoring_stage under run_id (a retry replaces it)."""
    started = time.perf_counter()
    with connection(url) as writer, connection(url) as reader:
        writer.execute("DELETE FROM scoring_stage WHERE run_id = %s AND part = %s",
                       (run_id, part))
        writer.execute("CREATE TEMP TABLE part_stage (customer_id text, segment_id smallint)"
                       " ON COMMIT DROP")
        rows, predict_s = stream_scores(
            reader, writer, "COPY part_stage FROM STDIN (FORMAT csv)",
            select_customers(mode, model.version, (part, parts), since), model, chunk_rows,
            progress)
        writer.execute("INSERT INTO scoring_stage (run_id, part, customer_id, segment_id)"
                       " SELECT %s, %s, customer_id, segment_id FROM part_stage", (run_id, part))
    return PartitionResult(part, parts, rows, round(predict_s, 3),
                           round(time.perf_counter() - started, 3))


def publish_staged(url: str, model: SegmentationModel, names: dict[int, str], mode: Mode,
                   run_id: str, staged: list[PartitionResult], *, wait: bool = False,
                   started_at: datetime | None = None) -> ScoreResult:
    """Publish every staged partition of run_id in one transaction, then drop the scratch."""
    result = ScoreResult(run_id, model.version, mode)
    started_at = started_at or datetime.now(UTC)
    # the run's clock starts when its partitions did, not when the publish does
    started = time.perf_counter() - (datetime.now(UTC) - started_at).total_seconds()
    try:
        totals = sorted({p.parts for p in staged})
        got = sorted(p.part for p in staged)
        if len(totals) != 1 or got != list(range(totals[0])):
            raise SegmentationError(f"run {run_id} staged partitions {got} of {totals}: "
                                    "refusing to publish an incomplete run")
        with connection(url) as writer:
            require_schema(writer)
            acquire_run_lock(writer, wait)
            writer.execute("CREATE TEMP TABLE scored_stage ON COMMIT DROP AS SELECT customer_id,"
                           " segment_id FROM scoring_stage WHERE run_id = %s", (run_id,))
            result.rows_in = result.rows_scored = sum(p.rows for p in staged)
            result.timings["partitions"] = len(staged)
            result.timings["stream_s"] = max(p.seconds for p in staged)
            result.timings["predict_s"] = round(sum(p.predict_s for p in staged), 3)
            finish_run(writer, result, names, started, started_at)
            writer.execute("DELETE FROM scoring_stage WHERE run_id = %s", (run_id,))
    except BaseException as exc:
        record_failure(url, result, started_at, exc)
        discard_staged(url, run_id)
        raise
    return result


def discard_staged(url: str, run_id: str) -> None:
    """Best effort: drop an unpublished run's scratch rows."""
    try:
        with connection(url) as conn:
            conn.execute("DELETE FROM scoring_stage WHERE run_id = %s", (run_id,))
    except Exception:
        pass


def record_run(conn: psycopg.Connection, result: ScoreResult, status: str,
               started_at: datetime, error: str | None = None) -> None:
    """One row in scoring_runs (inside the publish transaction when it succeeded)."""
    conn.execute(
        "INSERT INTO scoring_runs (run_id, model_version, mode, status, started_at, finished_at,"
        " rows_in, rows_scored, rows_quarantined, rows_changed, timings, published_by, error)"
        " VALUES (%s, %s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s)",
        (result.run_id, result.model_version, result.mode, status, started_at, result.rows_in,
         result.rows_scored, result.rows_quarantined, result.rows_changed,
         Json(result.timings),
         result.published_by if status == "succeeded" else None,  # failed: published nothing
         error),
    )


def record_failure(url: str, result: ScoreResult, started_at: datetime,
                   exc: BaseException) -> None:
    """Best effort: leave a 'failed' row so ops see the run; never mask the real error."""
    try:
        with connection(url) as conn:
            record_run(conn, result, "failed", started_at, f"{type(exc).__name__}: {exc}"[:2000])
    except Exception:
        pass
