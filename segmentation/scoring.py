"""A scoring run, end to end: read (segmentation.reading), publish (segmentation.publishing
for ordinary nights, segmentation.rebuild for nights that rewrite every row) and record it
(segmentation.runs), all or nothing.

Two connections: the reader streams customers out; the writer holds the transaction that
owns the staging or build table, the run lock and the publish. Nothing is visible to
readers of `customer_segments` until that transaction commits, so a crash or a killed
connection at any point leaves the table exactly as it was. Partitioned runs stage each
partition (in `scoring_stage` under the run's id, or as a build table of its own) and
publish them together, while the flow's session holds the run lock (begin_partitioned);
the publish is idempotent by run id, so a retried publish task never publishes twice nor
records an empty run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from segmentation import rebuild, summaries
from segmentation.db import connection, is_transient, require_schema
from segmentation.errors import SegmentationError
from segmentation.publishing import publish
from segmentation.reading import (
    Classifier,
    Comparison,
    Progress,
    select_customers,
    stream_scores,
)
from segmentation.runs import (
    Mode,
    RunStart,
    ScoreResult,
    acquire_run_lock,
    hold_run_lock,
    incremental_since,
    last_published_run,
    preflight,
    record_failure,
    record_run,
    refuse_erased_since,
    refuse_stale,
    require_hold,
    succeeded_run,
)

# Movers fewer than one in this many rows: their history is found by probing for them.
FEW_MOVES = 20


@dataclass
class PartitionResult:
    """What one partition task staged (table: its build table, when it built one)."""

    part: int
    parts: int
    rows: int
    predict_s: float
    seconds: float
    snapshot_at: datetime | None = None
    table: str | None = None
    comparison: Comparison = field(default_factory=Comparison)


def claim_quarantined(conn: psycopg.Connection, run_id: str, snapshot_at: datetime) -> int:
    """Quarantined rows of the batches this run is the first to score (each batch counted
    by exactly one run: the first whose snapshot holds it)."""
    row = conn.execute(
        "WITH claimed AS (UPDATE ingest_batches SET scored_by = %s WHERE status = 'validated'"
        " AND scored_by IS NULL AND validated_at <= %s RETURNING rows_quarantined)"
        " SELECT coalesce(sum(rows_quarantined), 0) FROM claimed",
        (run_id, snapshot_at)).fetchone()
    return int(row[0]) if row else 0


def score_customers(url: str, model: Classifier, *, mode: Mode = "full",
                    chunk_rows: int = 100_000, wait: bool = False, wait_timeout_s: float = 1800,
                    run_id: str | None = None, progress: Progress | None = None) -> ScoreResult:
    """Classify customers and publish the result atomically; returns the run's counts."""
    result = ScoreResult(run_id or str(uuid.uuid4()), model.version, mode)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    try:
        with connection(url) as writer, connection(url) as reader:
            # the lock first: a run's start (its history's time, the next watermark) is
            # then after every run it waited for, so history stays in publish order
            acquire_run_lock(writer, wait, wait_timeout_s)
            started_at, result.batches_waiting = preflight(writer)
            rebuild.drop_orphans(writer)
            if rebuild.wants_rebuild(writer, model.version):
                table = rebuild.build_name(result.run_id)
                rows, predict_s, snapshot_at, comparison = build_table(
                    reader, writer, table, result, started_at, model, chunk_rows, progress)
                note_stream(result, rows, predict_s, started)
                finish_build(writer, result, [table], comparison, started, started_at,
                             snapshot_at)
            else:
                score_changes(reader, writer, result, model, mode, chunk_rows, progress,
                              started, started_at)
    except BaseException as exc:
        record_failure(url, result, started_at, exc)
        raise
    rebuild.after_publish(url, analyze=bool(result.rows_changed))
    summaries.write_summary(url, result, model)
    return result


def score_changes(reader: psycopg.Connection, writer: psycopg.Connection, result: ScoreResult,
                  model: Classifier, mode: Mode, chunk_rows: int, progress: Progress | None,
                  started: float, started_at: datetime) -> None:
    """An ordinary night: stream the customers to score into scored_stage, then publish
    what changed (segmentation.publishing), in the writer's (locked) transaction."""
    since = incremental_since(writer, model.version) if mode == "incremental" else None
    writer.execute("CREATE TEMP TABLE scored_stage (customer_id text, segment_id smallint)"
                   " ON COMMIT DROP")
    rows, predict_s, snapshot_at = stream_scores(
        reader, writer, "COPY scored_stage FROM STDIN (FORMAT csv)",
        select_customers(mode, model.version, since=since), model, chunk_rows,
        progress)
    note_stream(result, rows, predict_s, started)
    finish_run(writer, result, started, started_at, snapshot_at)


def note_stream(result: ScoreResult, rows: int, predict_s: float, started: float) -> None:
    """What the stream did, into the run's result (either way of publishing)."""
    result.rows_in = result.rows_scored = rows
    result.timings["stream_s"] = round(time.perf_counter() - started, 3)
    result.timings["predict_s"] = round(predict_s, 3)


def build_table(reader: psycopg.Connection, writer: psycopg.Connection, table: str,
                result: ScoreResult, scored_at: datetime, model: Classifier, chunk_rows: int,
                progress: Progress | None = None, partition: tuple[int, int] | None = None
                ) -> tuple[int, float, datetime, Comparison]:
    """Stream every customer (of a partition) into a new build table in the writer's
    transaction, compared with the published rows on the way, then index it; a partition
    also finds its movers (rebuild.stage_moves), in parallel with the others."""
    carry = not rebuild.is_empty(writer)  # nothing published yet: nothing to compare
    published = rebuild.published_source(writer, partition)
    rebuild.create_build(writer, table, result, scored_at)
    comparison = Comparison()
    rows, predict_s, snapshot_at = stream_scores(
        reader, writer, rebuild.copy_into(table, carry),
        rebuild.select_for_build(model.version, carry, partition, published),
        model, chunk_rows,
        progress, compare_run=result.run_id if carry else None, comparison=comparison)
    if not carry:  # nothing published: everyone is new
        comparison.new, comparison.new_segments = rows, dict(comparison.segments)
    t0 = time.perf_counter()
    rebuild.index_build(writer, table)
    result.timings["index_s"] = round(time.perf_counter() - t0, 3)
    if partition is not None and carry:
        rebuild.stage_moves(writer, table, published)
    return rows, predict_s, snapshot_at, comparison


def finish_build(writer: psycopg.Connection, result: ScoreResult, tables: list[str],
                 comparison: Comparison, started: float, started_at: datetime,
                 snapshot_at: datetime, partitioned: bool = False) -> None:
    """Movers' history (found here, or staged by the partition tasks), the swap (or, if
    readers hold the table too long, an upsert of the build) and the run's record, in the
    writer's (locked) transaction."""
    refuse_erased_since(writer, snapshot_at)
    result.rows_quarantined = claim_quarantined(writer, result.run_id, snapshot_at)
    t0 = time.perf_counter()
    if partitioned:
        moved = sum(rebuild.publish_moves(writer, table, result, started_at)
                    for table in tables)
    else:
        few = comparison.moved * FEW_MOVES < sum(comparison.segments.values())
        moved = sum(rebuild.record_moves(writer, table, result, started_at, few=few)
                    for table in tables)
    if moved != comparison.moved:  # the stream and the table must tell the same story
        raise SegmentationError(f"run {result.run_id}: {moved:,} movers in the build tables,"
                                f" {comparison.moved:,} counted while streaming; not publishing")
    result.timings["history_s"] = round(time.perf_counter() - t0, 3)
    for table in tables:
        rebuild.finish_build(writer, table)
    swapped = rebuild.swap_in(writer, tables, result.run_id)
    if not swapped:
        for table in tables:
            rebuild.upsert_build(writer, table, result, started_at)
    result.published_by = "swap" if swapped else "upsert"
    if swapped:  # the published table is the build: its rows are the ones streamed
        result.segment_counts = dict(sorted(comparison.segments.items()))
    result.rows_new, result.rows_moved = comparison.new, comparison.moved
    result.new_by_segment = dict(sorted(comparison.new_segments.items()))
    result.rows_changed = comparison.new + comparison.moved + comparison.switched
    result.timings["publish_s"] = round(time.perf_counter() - t0, 3)
    result.seconds = round(time.perf_counter() - started, 3)
    record_run(writer, result, "succeeded", started_at)


def finish_run(writer: psycopg.Connection, result: ScoreResult, started: float,
               started_at: datetime, snapshot_at: datetime) -> None:
    """Publish scored_stage and record the run, in the writer's (locked) transaction."""
    refuse_erased_since(writer, snapshot_at)
    result.rows_quarantined = claim_quarantined(writer, result.run_id, snapshot_at)
    t0 = time.perf_counter()
    writer.execute("ANALYZE scored_stage")
    result.rows_changed = publish(writer, result, started_at)
    result.timings["publish_s"] = round(time.perf_counter() - t0, 3)
    result.seconds = round(time.perf_counter() - started, 3)
    record_run(writer, result, "succeeded", started_at)


@contextmanager
def begin_partitioned(url: str, model_version: str, mode: Mode, *, wait: bool = False,
                      wait_timeout_s: float = 1800, run_id: str | None = None
                      ) -> Iterator[RunStart]:
    """A partitioned run's start: hold the run lock (in a session of this process: the
    flow's) for the block, then refuse before any work if the schema is old or a batch
    failed. Every task of the run checks the lock is still held before it writes."""
    run_id = run_id or str(uuid.uuid4())
    with hold_run_lock(url, run_id, wait, wait_timeout_s) as hold, connection(url) as conn:
        started_at, waiting = preflight(conn)
        since = incremental_since(conn, model_version) if mode == "incremental" else None
        start = RunStart(run_id, mode, started_at, since,
                         rebuild.wants_rebuild(conn, model_version), last_published_run(conn),
                         hold, waiting)
        rebuild.drop_orphans(conn, keep_run=run_id)  # dead runs' builds and staged rows
        conn.commit()
        yield start


def stage_partition(url: str, model: Classifier, start: RunStart, part: int, parts: int,
                    chunk_rows: int = 100_000, progress: Progress | None = None
                    ) -> PartitionResult:
    """Score one hash partition: into a build table of its own when the run rewrites every
    row (start.rebuild), else into scoring_stage under the run's id. A retry replaces the
    partition's rows either way. Its published rows carry the run's start as scored_at."""
    started = time.perf_counter()
    with connection(url) as writer, connection(url) as reader:
        require_hold(writer, start.hold)
        if start.rebuild:
            return build_partition(reader, writer, model, start, part, parts, chunk_rows,
                                   progress, started)
        writer.execute("DELETE FROM scoring_stage WHERE run_id = %s AND part = %s",
                       (start.run_id, part))
        writer.execute("CREATE TEMP TABLE part_stage (customer_id text, segment_id smallint)"
                       " ON COMMIT DROP")
        rows, predict_s, snapshot_at = stream_scores(
            reader, writer, "COPY part_stage FROM STDIN (FORMAT csv)",
            select_customers(start.mode, model.version, (part, parts), start.since), model,
            chunk_rows, progress)
        writer.execute("INSERT INTO scoring_stage (run_id, part, customer_id, segment_id)"
                       " SELECT %s, %s, customer_id, segment_id FROM part_stage",
                       (start.run_id, part))
        require_hold(writer, start.hold)  # still the run's: commit what it staged
    return PartitionResult(part, parts, rows, round(predict_s, 3),
                           round(time.perf_counter() - started, 3), snapshot_at)


def build_partition(reader: psycopg.Connection, writer: psycopg.Connection, model: Classifier,
                    start: RunStart, part: int, parts: int, chunk_rows: int,
                    progress: Progress | None, started: float) -> PartitionResult:
    """One partition's build table, loaded and indexed here (in parallel with the other
    partitions) and committed unattached, while the run's flow holds the run lock."""
    table = rebuild.build_name(start.run_id, part)
    rebuild.drop_tables(writer, [table, rebuild.moves_name(table)])  # a retry starts over
    result = ScoreResult(start.run_id, model.version, "full")
    rows, predict_s, snapshot_at, comparison = build_table(
        reader, writer, table, result, start.started_at, model, chunk_rows, progress,
        (part, parts))
    require_hold(writer, start.hold)
    return PartitionResult(part, parts, rows, round(predict_s, 3),
                           round(time.perf_counter() - started, 3), snapshot_at, table,
                           comparison)


def check_staged(conn: psycopg.Connection, run_id: str, staged: list[PartitionResult]) -> None:
    """Every partition's rows are staged (in scoring_stage or its build table), as many as
    its task reported."""
    totals = sorted({p.parts for p in staged})
    got = sorted(p.part for p in staged)
    if len(totals) != 1 or got != list(range(totals[0])):
        raise SegmentationError(f"run {run_id} staged partitions {got} of {totals}: "
                                "refusing to publish an incomplete run")
    builds = {p.table is not None for p in staged}
    if builds == {True}:
        found = {p.part: built_rows(conn, p.table) for p in staged if p.table}
    elif builds == {False}:
        found = dict(conn.execute(
            "SELECT part, count(*) FROM scoring_stage WHERE run_id = %s GROUP BY part",
            (run_id,)).fetchall())
    else:
        raise SegmentationError(f"run {run_id}: some partitions built tables and some staged "
                                "rows (the published table changed under the run); run again")
    missing = [f"partition {p.part}: {found.get(p.part, 0):,} of {p.rows:,}" for p in staged
               if found.get(p.part, 0) != p.rows]
    if missing:
        raise SegmentationError(f"run {run_id}: staged rows do not match what the partitions "
                                f"scored ({'; '.join(missing)}); refusing to publish")


def built_rows(conn: psycopg.Connection, table: str | None) -> int:
    """Rows in a partition's build table (0 if it is gone: swept, or never built)."""
    if not table:
        return 0
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                       ).fetchone()
    return int(row[0]) if row else 0


def publish_staged(url: str, model: Classifier, start: RunStart,
                   staged: list[PartitionResult]) -> ScoreResult:
    """Publish every staged partition of the run in one transaction, then drop the scratch.

    Only while the run's flow holds the run lock, and only if no other run published since
    the run started (its scores are diffs against what was published then). Idempotent by
    run id: a run already recorded as succeeded is returned as recorded. A transient failure
    keeps the staged rows for the retry; any other drops them."""
    run_id, started_at = start.run_id, start.started_at
    result = ScoreResult(run_id, model.version, start.mode, batches_waiting=start.batches_waiting)
    # the run's clock starts when its partitions did, not when the publish does
    started = time.perf_counter() - (datetime.now(UTC) - started_at).total_seconds()
    try:
        with connection(url) as writer:
            require_schema(writer)
            done = succeeded_run(writer, run_id)
            if done is not None:  # an earlier attempt committed: publish nothing twice
                return done
            require_hold(writer, start.hold)
            refuse_stale(writer, start)
            check_staged(writer, run_id, staged)
            result.rows_in = result.rows_scored = sum(p.rows for p in staged)
            result.timings["partitions"] = len(staged)
            result.timings["stream_s"] = max(p.seconds for p in staged)
            result.timings["predict_s"] = round(sum(p.predict_s for p in staged), 3)
            snapshots = [p.snapshot_at for p in staged if p.snapshot_at is not None]
            snapshot_at = min(snapshots, default=started_at)
            tables = [p.table for p in sorted(staged, key=lambda p: p.part) if p.table]
            if tables:
                comparison = Comparison()
                for p in staged:
                    comparison.add(p.comparison)
                finish_build(writer, result, tables, comparison, started, started_at,
                             snapshot_at, partitioned=True)
            else:
                writer.execute("CREATE TEMP TABLE scored_stage ON COMMIT DROP AS SELECT"
                               " customer_id, segment_id FROM scoring_stage WHERE run_id = %s",
                               (run_id,))
                finish_run(writer, result, started, started_at, snapshot_at)
                writer.execute("DELETE FROM scoring_stage WHERE run_id = %s", (run_id,))
    except BaseException as exc:
        record_failure(url, result, started_at, exc)
        if not is_transient(exc):
            discard_staged(url, run_id)
        raise
    rebuild.after_publish(url, analyze=bool(result.rows_changed))
    summaries.write_summary(url, result, model)
    return result


def discard_staged(url: str, run_id: str) -> None:
    """Best effort: drop an unpublished run's scratch rows and build tables (called once
    every partition task of the run has ended)."""
    try:
        with connection(url) as conn:
            conn.execute("DELETE FROM scoring_stage WHERE run_id = %s", (run_id,))
            rebuild.drop_tables(conn, rebuild.unattached_builds(conn, run_id))
    except Exception:
        pass
