"""Scoring-run bookkeeping: the run lock, the preflight, the watermark and the run's row.

A run is one row in `scoring_runs`, written inside the publish transaction when it succeeds
(so the published rows and the record of them commit together) and best effort when it
fails. A run id is written once as succeeded: a retried publish finds it and does nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Json

from segmentation.db import connection, require_schema
from segmentation.errors import RunLocked, SegmentationError, ValidationFailed
from segmentation.validation import pending_batches

SCORE_LOCK = 7_421_002  # pg_advisory_xact_lock key: one scoring run at a time
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

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts and JSON."""
        return asdict(self)


@dataclass
class RunStart:
    """When a partitioned run started (database clock), its incremental watermark, and
    whether its partitions build the published table anew (segmentation.rebuild)."""

    started_at: datetime
    since: datetime | None
    rebuild: bool = False


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


def acquire_run_lock(conn: psycopg.Connection, wait: bool, wait_timeout_s: float = 0) -> None:
    """Exclusive scoring: refuse at once, or wait for the transaction-scoped advisory lock
    (at most wait_timeout_s when > 0: a stuck run must not hold the night forever)."""
    if wait:
        conn.execute("SELECT set_config('lock_timeout', %s, true)",
                     (f"{int(wait_timeout_s * 1000)}ms",))
        try:
            with conn.transaction():  # a savepoint: the timeout must not abort the caller
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCORE_LOCK,))
        except psycopg.errors.LockNotAvailable:
            raise RunLocked(f"another scoring run{_running(conn)} still holds the run lock "
                            f"after {wait_timeout_s:,.0f} s of waiting; giving up (see "
                            "`segmentation runs` or pg_stat_activity)") from None
        finally:
            conn.execute("SET LOCAL lock_timeout TO DEFAULT")
        return
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SCORE_LOCK,)).fetchone()
    if not row or not row[0]:
        raise RunLocked(f"another scoring run is in progress{_running(conn)}; not starting a "
                        "second one (use --wait to queue behind it)")


def _running(conn: psycopg.Connection) -> str:
    """' (run <id> since HH:MM:SS)' for the newest running run, if one is recorded."""
    running = conn.execute(
        "SELECT run_id, started_at FROM scoring_runs WHERE status = 'running'"
        " ORDER BY started_at DESC LIMIT 1").fetchone()
    return f" (run {running[0]} since {running[1]:%H:%M:%S})" if running else ""


def server_now(conn: psycopg.Connection) -> datetime:
    """The database's clock: run times are compared with loaded_at, which it stamps."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    when: datetime = row[0]
    return when


def preflight(conn: psycopg.Connection) -> datetime:
    """Refuse before any work if the schema is old or a batch is unvalidated/failed;
    returns the run's start on the database clock."""
    started_at = server_now(conn)
    require_schema(conn)
    refuse_blocked_batches(conn)
    return started_at


def refuse_erased_since(conn: psycopg.Connection, snapshot_at: datetime) -> None:
    """Never publish back a customer erased after the run read the customers (possible
    only for a partitioned run, whose tasks release the run lock before the publish)."""
    row = conn.execute("SELECT count(*) FROM erasures WHERE erased_at >= %s",
                       (snapshot_at,)).fetchone()
    if row and row[0]:
        raise SegmentationError("customers were erased after this run read them; not "
                                "publishing them back: run the scoring again")


def incremental_since(conn: psycopg.Connection, model_version: str) -> datetime | None:
    """Start of the last successful run with this model: every customer accepted before
    that moment was seen by that run (see reading.open_snapshot). None: scan everyone."""
    row = conn.execute("SELECT started_at, model_version FROM scoring_runs WHERE status ="
                       " 'succeeded' ORDER BY started_at DESC LIMIT 1").fetchone()
    if row is None or row[1] != model_version:
        return None
    since: datetime = row[0]
    return since


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
