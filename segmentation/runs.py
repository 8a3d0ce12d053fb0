"""Scoring-run bookkeeping: the run lock, the preflight, the watermark and the run's row.

A run is one row in `scoring_runs`, written inside the publish transaction when it succeeds
(so the published rows and the record of them commit together) and best effort when it
fails. A run id is written once as succeeded: a retried publish finds it and does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Json

from segmentation.db import connect, connection, require_schema
from segmentation.errors import RunLocked, SegmentationError, ValidationFailed
from segmentation.validation import pending_batches

# The run lock: one scoring run at a time, from before it reads to after it publishes. A
# single-process run holds it in its transaction; a partitioned run in its flow's session
# (RunHold) while its tasks, on any host, read, stage and publish. Erasures wait for it.
SCORE_LOCK = 7_421_002
Mode = Literal["full", "incremental"]


@dataclass
class ScoreResult:
    """What a scoring run did."""

    run_id: str
    model_version: str
    mode: str
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    rows_changed: int = 0  # new, moved, or scored by another model
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    published_by: str = ""  # "swap": a new partition built and swapped in; "upsert": rows
    rows_new: int = 0  # first scored by this run
    rows_moved: int = 0  # changed segment (each one history row)
    # customers per segment in the published table, when the run wrote every one of its
    # rows (a build swapped in): counted while streaming, so the segment mix needs no
    # GROUP BY of the whole table; empty when not known
    segment_counts: dict[int, int] = field(default_factory=dict)
    batches_waiting: int = 0  # landed but not validated when the run started: left for later
    new_by_segment: dict[int, int] = field(default_factory=dict)  # first scored, by segment

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts and JSON."""
        return asdict(self)


@dataclass(frozen=True)
class RunHold:
    """The session that holds the run lock for a partitioned run (its flow's): its tasks,
    on any host, check that it still does before they write or publish."""

    run_id: str
    pid: int
    backend_start: datetime


@dataclass
class RunStart:
    """A partitioned run once it holds the run lock: its id and mode, when it started
    (database clock), its incremental watermark, whether its partitions build the published
    table anew (segmentation.rebuild), the run published last when it started (its tasks'
    scores are diffs against that), and who holds the lock for it."""

    run_id: str
    mode: Mode
    started_at: datetime
    since: datetime | None
    rebuild: bool
    last_run: str | None
    hold: RunHold
    batches_waiting: int = 0


def refuse_failed_batches(conn: psycopg.Connection) -> int:
    """No scoring while a batch failed validation (ops must see it first); returns how many
    batches are landed but not validated yet, which the run leaves for the next one (it
    scores what was accepted into customers when it reads)."""
    pending = pending_batches(conn)
    failed = [batch_id for batch_id, status in pending if status == "failed"]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ValidationFailed(f"batch {failed[0]}{more} failed validation; fix the source and "
                               f"ingest it again, or `segmentation batches discard {failed[0]}`")
    return len(pending)


# (wait for it, try it) for the transaction's lock and for the session's
LOCK_STATEMENTS = {
    False: ("SELECT pg_advisory_xact_lock(%s)", "SELECT pg_try_advisory_xact_lock(%s)"),
    True: ("SELECT pg_advisory_lock(%s)", "SELECT pg_try_advisory_lock(%s)"),
}


def take_lock(conn: psycopg.Connection, session: bool, wait: bool,
              wait_timeout_s: float = 0) -> None:
    """The run lock, until the transaction ends or (session) the session does: refuse at
    once, or wait for it (at most wait_timeout_s when > 0: a stuck run must not hold the
    night forever)."""
    waiting, trying = LOCK_STATEMENTS[session]
    if wait:
        conn.execute("SELECT set_config('lock_timeout', %s, true)",
                     (f"{int(wait_timeout_s * 1000)}ms",))
        try:
            with conn.transaction():  # a savepoint: the timeout must not abort the caller
                conn.execute(waiting, (SCORE_LOCK,))
        except psycopg.errors.LockNotAvailable:
            raise RunLocked(f"another scoring run{running_run(conn)} still holds the run lock "
                            f"after {wait_timeout_s:,.0f} s of waiting; giving up (see "
                            "`segmentation runs` or pg_stat_activity)") from None
        finally:
            conn.execute("SET LOCAL lock_timeout TO DEFAULT")
        return
    row = conn.execute(trying, (SCORE_LOCK,)).fetchone()
    if not row or not row[0]:
        raise RunLocked(f"another scoring run is in progress{running_run(conn)}; not starting a "
                        "second one (use --wait to queue behind it)")


def acquire_run_lock(conn: psycopg.Connection, wait: bool, wait_timeout_s: float = 0) -> None:
    """Exclusive scoring until this transaction ends (see take_lock)."""
    take_lock(conn, False, wait, wait_timeout_s)


# The sessions holding this database's run lock (a single bigint key: classid 0, objid the
# key, objsubid 1), with their pg_stat_activity row as `a`.
LOCK_HOLDERS = (
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1 AND l.granted")


def running_run(conn: psycopg.Connection) -> str:
    """' (run <id>)' for a partitioned run holding the lock, named by its session."""
    row = conn.execute(
        "SELECT a.application_name " + LOCK_HOLDERS +
        " AND a.application_name LIKE 'segmentation run %%' LIMIT 1", (SCORE_LOCK,)).fetchone()
    return f" ({row[0].removeprefix('segmentation ')})" if row else ""


@contextmanager
def hold_run_lock(url: str, run_id: str, wait: bool,
                  wait_timeout_s: float = 0) -> Iterator[RunHold]:
    """Hold the run lock in a session of its own for the block (a partitioned run, from
    before its partitions read to after its publish): closing the session releases it, so
    a flow that dies frees it too."""
    conn = connect(url, autocommit=True)
    try:
        conn.execute("SELECT set_config('application_name', %s, false)",
                     (f"segmentation run {run_id}",))
        with conn.transaction():
            take_lock(conn, True, wait, wait_timeout_s)
        row = conn.execute("SELECT pid, backend_start FROM pg_stat_activity"
                           " WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None
        yield RunHold(run_id, int(row[0]), row[1])
    finally:
        conn.close()


def require_hold(conn: psycopg.Connection, hold: RunHold) -> None:
    """Refuse to write for a run whose flow no longer holds the run lock (it died, or lost
    its connection): another run may have started since."""
    row = conn.execute(
        "SELECT EXISTS (SELECT " + LOCK_HOLDERS +
        " AND l.mode = 'ExclusiveLock' AND a.pid = %s AND a.backend_start = %s)",
        (SCORE_LOCK, hold.pid, hold.backend_start)).fetchone()
    if not row or not row[0]:
        raise SegmentationError(f"run {hold.run_id} no longer holds the run lock (its flow "
                                "ended or lost its connection): not writing; run it again")


@dataclass(frozen=True)
class LastRun:
    """The run that published last."""

    run_id: str
    model_version: str
    started_at: datetime


def last_succeeded(conn: psycopg.Connection) -> LastRun | None:
    """The run that published last: the published rows are its (or older). Runs publish one
    at a time and take their start under the run lock, so this is also the latest start."""
    row = conn.execute("SELECT run_id::text, model_version, started_at FROM scoring_runs"
                       " WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1"
                       ).fetchone()
    return LastRun(str(row[0]), str(row[1]), row[2]) if row else None


def last_published_run(conn: psycopg.Connection) -> str | None:
    """The id of the run that published last."""
    last = last_succeeded(conn)
    return last.run_id if last else None


def refuse_stale(conn: psycopg.Connection, start: RunStart) -> None:
    """A partitioned run's scores are diffs against what was published when it started:
    if another run published since, publishing them would write older segments back."""
    now = last_published_run(conn)
    if now != start.last_run:
        raise SegmentationError(f"run {start.run_id}: run {now} published after this run "
                                "started; its scores are stale, not publishing them: run again")


def server_now(conn: psycopg.Connection) -> datetime:
    """The database's clock: run times are compared with loaded_at, which it stamps."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    when: datetime = row[0]
    return when


def preflight(conn: psycopg.Connection) -> tuple[datetime, int]:
    """Refuse before any work if the schema is old or a batch failed; returns the run's
    start on the database clock and how many batches wait for validation."""
    started_at = server_now(conn)
    require_schema(conn)
    return started_at, refuse_failed_batches(conn)


def refuse_erased_since(conn: psycopg.Connection, snapshot_at: datetime) -> None:
    """Never publish back a customer erased after the run read the customers (erasures wait
    for the run lock, which every run holds until it has published: this is the guard
    behind that, should a run's lock be lost)."""
    row = conn.execute("SELECT count(*) FROM erasures WHERE erased_at >= %s",
                       (snapshot_at,)).fetchone()
    if row and row[0]:
        raise SegmentationError("customers were erased after this run read them; not "
                                "publishing them back: run the scoring again")


def incremental_since(conn: psycopg.Connection, model_version: str) -> datetime | None:
    """Start of the last successful run with this model: every customer accepted before
    that moment was seen by that run (see reading.open_snapshot). None: scan everyone."""
    last = last_succeeded(conn)
    return last.started_at if last and last.model_version == model_version else None


def succeeded_run(conn: psycopg.Connection, run_id: str) -> ScoreResult | None:
    """The recorded result of run_id if it already succeeded (a retried publish)."""
    row = conn.execute(
        "SELECT model_version, mode, rows_in, rows_scored, rows_quarantined, rows_changed,"
        " extract(epoch FROM finished_at - started_at), timings, published_by, rows_new,"
        " rows_moved FROM scoring_runs WHERE run_id = %s AND status = 'succeeded'",
        (run_id,)).fetchone()
    if row is None:
        return None
    return ScoreResult(run_id, row[0], row[1], row[2], row[3], row[4], row[5],
                       round(float(row[6]), 3), dict(row[7]), row[8] or "", row[9], row[10])


def record_run(conn: psycopg.Connection, result: ScoreResult, status: str,
               started_at: datetime, error: str | None = None) -> None:
    """The run's row in scoring_runs (inside the publish transaction when it succeeded).
    A retry of a failed run overwrites its 'failed' row; a succeeded row is final."""
    conn.execute(
        "INSERT INTO scoring_runs (run_id, model_version, mode, status, started_at, finished_at,"
        " rows_in, rows_scored, rows_quarantined, rows_changed, timings, published_by, error,"
        " rows_new, rows_moved)"
        " VALUES (%s, %s, %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (run_id) DO UPDATE SET status = EXCLUDED.status,"
        " finished_at = EXCLUDED.finished_at, rows_in = EXCLUDED.rows_in,"
        " rows_scored = EXCLUDED.rows_scored, rows_quarantined = EXCLUDED.rows_quarantined,"
        " rows_changed = EXCLUDED.rows_changed, timings = EXCLUDED.timings,"
        " published_by = EXCLUDED.published_by, error = EXCLUDED.error,"
        " rows_new = EXCLUDED.rows_new, rows_moved = EXCLUDED.rows_moved"
        " WHERE scoring_runs.status <> 'succeeded'",
        (result.run_id, result.model_version, result.mode, status, started_at, result.rows_in,
         result.rows_scored, result.rows_quarantined, result.rows_changed,
         Json(result.timings),
         result.published_by if status == "succeeded" else None,  # failed: published nothing
         error,
         *((result.rows_new, result.rows_moved) if status == "succeeded" else (0, 0))),
    )


def record_failure(url: str, result: ScoreResult, started_at: datetime,
                   exc: BaseException) -> None:
    """Best effort: leave a 'failed' row so ops see the run; never mask the real error."""
    try:
        with connection(url) as conn:
            record_run(conn, result, "failed", started_at, f"{type(exc).__name__}: {exc}"[:2000])
    except Exception:
        pass
