"""Faults: a killed connection or process at the worst moment loses nothing.

After recovery, customer_segments holds exactly one row per valid customer and every
run conserves rows (scored + quarantined = incoming).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from segmentation import scoring
from segmentation.db import conninfo
from segmentation.errors import IngestError
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch
from tests.helpers import (
    ROOT,
    assert_published_as_scored,
    load_batch,
    query,
    register_champion,
    snapshot_segments,
)

pytestmark = pytest.mark.reliability


class Killer(threading.Thread):
    """A background thread that records the query it killed, so a test can tell that the
    fault it is about really happened."""

    killed: list[str]

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert self.killed, "the connection was never killed: the test proved nothing"


def kill_backends_running(url: str, pattern: str, timeout: float = 30) -> Killer:
    """In the background: terminate the first backend whose query matches `pattern`;
    join() fails the test if none did."""
    killed: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(conninfo(url), autocommit=True) as conn:
            while time.monotonic() < deadline:
                hit = conn.execute(
                    "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND query ILIKE %s AND state = 'active'",
                    (pattern,)).fetchone()
                if hit:
                    done = conn.execute("SELECT pg_terminate_backend(%s)", (hit[0],)).fetchone()
                    if done and done[0]:
                        killed.append(str(hit[1])[:200])
                    return
                time.sleep(0.005)

    thread = Killer(target=killer, daemon=True)
    thread.killed = killed
    thread.start()
    return thread


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200,000 customers: long enough to be caught mid-COPY."""
    from segmentation.generate import generate_csv

    path = tmp_path_factory.mktemp("big") / "customers.csv"
    generate_csv(path, 200_000, seed=11)
    return path


def test_connection_killed_during_ingest_writes_nothing(db: str, big_csv: Path) -> None:
    killer = kill_backends_running(db, "COPY landing%")
    with pytest.raises((IngestError, psycopg.OperationalError)):
        ingest_csv(db, big_csv)
    killer.join()
    assert query(db, "SELECT (SELECT count(*) FROM ingest_batches) +"
                     " (SELECT count(*) FROM customers_incoming)") == [(0,)]
    assert ingest_csv(db, big_csv).rows_in == 200_000  # the retry simply works


def test_connection_killed_during_validation_is_re_evaluated(db: str, big_csv: Path) -> None:
    """GX records a dropped connection as a rule error; the detail pass re-runs those rules
    on a fresh connection, so the verdict is still the true one."""
    batch = ingest_csv(db, big_csv).batch_id
    # GX's first pass: one aggregate query (its text is cut at 1 kB in pg_stat_activity)
    killer = kill_backends_running(db, "SELECT sum(CASE WHEN%column_values.%")
    report = validate_batch(db, batch)
    killer.join()  # fails unless the query really was killed
    assert report.success, report.summary()
    assert report.rows_accepted + report.rows_quarantined == 200_000
    assert query(db, "SELECT count(*) FROM customers") == [(200_000,)]


def test_connection_killed_as_a_first_load_becomes_customers_changes_nothing(
        db: str, big_csv: Path) -> None:
    """A first load's slices are attached to customers in the accept's one transaction:
    killed there, customers is as it was (empty, with its one partition) and the batch is
    still landed, whole; validated again, it is accepted."""
    batch = ingest_csv(db, big_csv, streams=2, parallel_min_bytes=0).batch_id
    partitions = ("SELECT inhrelid::regclass::text FROM pg_inherits"
                  " WHERE inhparent = 'customers'::regclass")
    before = query(db, partitions)
    killer = kill_backends_running(db, "ALTER TABLE customers ATTACH PARTITION%")
    with pytest.raises(psycopg.OperationalError):
        validate_batch(db, batch)
    killer.join()
    assert query(db, partitions) == before
    assert query(db, "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM"
                     " customers_incoming), (SELECT status FROM ingest_batches)") == \
        [(0, 200_000, "loaded")]
    report = validate_batch(db, batch)
    assert report.success and report.rows_accepted + report.rows_quarantined == 200_000
    assert query(db, "SELECT count(*) FROM customers") == [(report.rows_accepted,)]
    assert len(query(db, partitions)) == 2


def break_rules(monkeypatch, error: str) -> None:  # type: ignore[no-untyped-def]
    """GX reports three rules as not evaluated, with `error`, in every pass."""
    from segmentation import validation

    real = validation.run_gx

    def broken_pass(url, batch_id, rules, id_limit=0, docs_dir=None):
        results = real(url, batch_id, rules, id_limit, docs_dir)
        for item in results[:3]:
            item.update(success=False, result={}, error=error)
        return results

    monkeypatch.setattr(validation, "run_gx", broken_pass)


def test_rule_that_could_not_be_evaluated_fails_the_batch(db: str, big_csv: Path,
                                                          monkeypatch) -> None:
    batch = ingest_csv(db, big_csv).batch_id
    with monkeypatch.context() as patch:
        break_rules(patch, "division by zero")  # a rule GX cannot compute on this data
        report = validate_batch(db, batch)
    assert not report.success
    assert "could not be evaluated: division by zero" in report.summary()
    assert query(db, "SELECT status FROM ingest_batches") == [("failed",)]
    assert query(db, "SELECT count(*) FROM customers") == [(0,)]
    assert validate_batch(db, batch).success  # a failed batch can be validated again


def test_connection_lost_during_validation_is_retryable_not_a_verdict(db: str, big_csv: Path,
                                                                      monkeypatch) -> None:
    """The server went away while GX evaluated (a restart): no verdict on the data, nothing
    written, the batch still waits; the error is one the flows retry."""
    from segmentation.db import is_transient
    from segmentation.errors import DatabaseUnavailable

    batch = ingest_csv(db, big_csv).batch_id
    with monkeypatch.context() as patch:
        break_rules(patch, "(psycopg.OperationalError) server closed the connection "
                           "unexpectedly")
        with pytest.raises(DatabaseUnavailable, match="connection was lost during validation") \
                as lost:
            validate_batch(db, batch)
    assert is_transient(lost.value)
    assert query(db, "SELECT status FROM ingest_batches") == [("loaded",)]
    assert query(db, "SELECT count(*) FROM customers") + \
        query(db, "SELECT count(*) FROM validation_runs") == [(0,), (0,)]
    assert validate_batch(db, batch).success


SCORE = """
import sys
from segmentation.db import connection
from segmentation.registry import load_version
from segmentation.scoring import score_customers
url = sys.argv[1]
with connection(url) as conn:
    model = load_version(conn)
def progress(rows, seconds):
    print(rows, flush=True)
score_customers(url, model, mode="full", chunk_rows=10_000, progress=progress)
"""


def test_scoring_process_killed_mid_run_then_rerun(db: str, trained, models_dir: Path,
                                                   big_csv: Path) -> None:
    load_batch(db, big_csv)
    model = register_champion(db, trained, models_dir, "m-kill-1")
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": db,
           "SEGMENTATION_MODELS_DIR": str(models_dir)}
    child = subprocess.Popen([sys.executable, "-c", SCORE, db], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()  # it has streamed and staged its first chunk
    assert first.strip() == "10000"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert snapshot_segments(db) == []  # nothing half-published
    # the killed run's server session can outlive the kill by a few milliseconds, holding
    # the run lock until it reads the closed socket: the rerun queues behind it (--wait)
    result = scoring.score_customers(db, model, mode="full", wait=True)
    assert (result.rows_in, result.rows_scored) == (200_000, 200_000)
    assert_published_as_scored(db, model)  # each of the 200,000 once, in its segment
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]  # first night: no move
    assert (result.published_by, result.rows_new) == ("swap", 200_000)
    assert orphan_builds(db) == []


def orphan_builds(url: str) -> list[str]:
    """Build tables attached to nothing."""
    from segmentation.db import connection
    from segmentation.rebuild import unattached_builds

    with connection(url) as conn:
        return unattached_builds(conn)


@pytest.mark.parametrize("pattern", ['COPY "segment_assignments_build%',
                                     'ALTER TABLE "segment_assignments_build%PRIMARY KEY%'],
                         ids=["mid-load", "mid-index"])
def test_rebuild_killed_mid_load_or_mid_index_changes_nothing(db: str, trained,
                                                              models_dir: Path, big_csv: Path,
                                                              pattern: str) -> None:
    """The night after a new champion streams every customer into a new table: killed
    while loading it or while building its key, the published table is as it was, and no
    table is left behind once the next run has run."""
    load_batch(db, big_csv)
    first = register_champion(db, trained, models_dir, "m-kill-2")
    scoring.score_customers(db, first, mode="full")
    before = snapshot_segments(db)
    retrained = register_champion(db, trained, models_dir, "m-kill-3")
    killer = kill_backends_running(db, pattern)
    with pytest.raises(psycopg.OperationalError):
        scoring.score_customers(db, retrained, mode="incremental", chunk_rows=10_000)
    killer.join()
    assert snapshot_segments(db) == before
    assert query(db, "SELECT status FROM scoring_runs ORDER BY started_at") == \
        [("succeeded",), ("failed",)]
    result = scoring.score_customers(db, retrained, mode="incremental", wait=True)
    assert (result.published_by, result.rows_scored, result.rows_changed) == \
        ("swap", 200_000, 200_000)
    assert query(db, "SELECT DISTINCT model_version FROM customer_segments") == [("m-kill-3",)]
    assert orphan_builds(db) == []


def test_reader_killed_mid_stream_is_transient_and_changes_nothing(db: str, trained,
                                                                  models_dir: Path,
                                                                  big_csv: Path) -> None:
    """The session that streams customers out (a binary COPY through ADBC) is killed: the
    run fails with one line that the flows retry (DatabaseUnavailable), the published table
    is as it was, and a rerun publishes everyone."""
    from segmentation.db import is_transient
    from segmentation.errors import DatabaseUnavailable

    load_batch(db, big_csv)
    model = register_champion(db, trained, models_dir, "m-kill-reader")
    killer = kill_backends_running(db, "COPY (SELECT%FROM customers c%")
    with pytest.raises(DatabaseUnavailable) as failed:
        scoring.score_customers(db, model, mode="full", chunk_rows=10_000)
    killer.join()
    assert is_transient(failed.value)
    assert "\n" not in str(failed.value) and "terminating connection" in str(failed.value)
    assert snapshot_segments(db) == []
    assert query(db, "SELECT status FROM scoring_runs") == [("failed",)]
    result = scoring.score_customers(db, model, mode="full", wait=True)
    assert (result.rows_scored, result.published_by) == (200_000, "swap")
    assert orphan_builds(db) == []


def landing_tables(url: str) -> list[tuple[str]]:
    """Batch tables in the database (attached or not)."""
    return query(url, "SELECT relname FROM pg_class WHERE relname LIKE 'landing\\_%%'"
                      " AND relkind = 'r'")


@pytest.mark.parametrize("pattern", ["COPY landing%", "ALTER TABLE landing%PRIMARY KEY%"],
                         ids=["mid-copy", "mid-key"])
def test_ingest_killed_mid_copy_or_mid_key_leaves_no_table(db: str, big_csv: Path,
                                                           pattern: str) -> None:
    """A batch lands in a table of its own: killed while the file streams into it or while
    its key is built, the table goes with the transaction, and the retry lands whole."""
    killer = kill_backends_running(db, pattern)
    with pytest.raises((IngestError, psycopg.OperationalError)):
        ingest_csv(db, big_csv)
    killer.join()
    assert killer.killed, f"nothing ran {pattern!r}"
    assert landing_tables(db) == []
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(0,)]
    batch = ingest_csv(db, big_csv).batch_id
    assert query(db, "SELECT count(*) FROM customers_incoming WHERE batch_id = %s",
                 (batch,)) == [(200_000,)]


def test_a_word_in_the_last_row_of_a_clean_file_names_it_and_loads_nothing(
        db: str, big_csv: Path, tmp_path: Path) -> None:
    """The typed COPY stops at the word; the file is then landed as text to name every
    offending column with an example (the message ingest has always given)."""
    lines = big_csv.read_bytes().splitlines(keepends=True)
    fields = lines[-1].decode().split(",")
    fields[3] = "ninety"  # PURCHASES
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"".join(lines[:-1]) + ",".join(fields).encode())
    with pytest.raises(IngestError, match=r"purchases: 1 value\(s\) are not numbers, "
                                          r"e\.g\. 'ninety'"):
        ingest_csv(db, broken)
    assert landing_tables(db) == []
    assert query(db, "SELECT (SELECT count(*) FROM ingest_batches) +"
                     " (SELECT count(*) FROM customers_incoming)") == [(0,)]


def test_one_stream_of_a_parallel_ingest_killed_leaves_no_table(db: str, big_csv: Path
                                                                ) -> None:
    """A big file streams on two connections: one killed mid-COPY cancels the other, the
    batch's table is dropped, no batch row; the retry lands every row."""
    killer = kill_backends_running(db, "COPY landing%")
    with pytest.raises(IngestError, match="terminating connection|closed the connection") \
            as caught:
        ingest_csv(db, big_csv, streams=2, parallel_min_bytes=0)
    killer.join()
    assert "\n" not in str(caught.value)  # one line
    assert landing_tables(db) == []
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(0,)]
    assert ingest_csv(db, big_csv, streams=2, parallel_min_bytes=0).rows_in == 200_000
    assert query(db, "SELECT count(*) FROM customers_incoming") == [(200_000,)]
