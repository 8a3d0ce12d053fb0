"""Retries and concurrency: exactly once, one champion, no duplicates."""

import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from segmentation import registry, runs, scoring
from segmentation.db import connection
from segmentation.errors import RunLocked
from segmentation.training import register_and_gate, train_model
from tests.helpers import (
    assert_published_as_scored,
    drop_connection_after_publish,
    load_batch,
    partitioned,
    query,
    register_champion,
    stage_all,
)

pytestmark = pytest.mark.reliability


def test_flow_retried_after_a_dropped_connection_publishes_once(
        db: str, trained, models_dir: Path, synthetic_csv: Path, prefect_api: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.nightly_scoring import score_flow

    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-retry-1")
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    calls = drop_connection_after_publish(db, monkeypatch)  # after the work, before commit
    summary = score_flow(mode="full")
    assert len(calls) == 2, "the task was retried once by Prefect"
    assert "5,000 in, 5,000 scored" in summary
    assert_published_as_scored(db, model)
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]  # new, not moved
    assert query(db, "SELECT status, rows_new FROM scoring_runs ORDER BY started_at") == \
        [("failed", 0), ("succeeded", 5_000)]


def test_two_scorings_and_a_retrain_at_once(db: str, trained, models_dir: Path,
                                            synthetic_csv: Path, synthetic_frame) -> None:
    """A second run started while the first streams is refused in one line; a third that
    waits runs after the first has published; a retrain promoted meanwhile leaves one
    champion; every customer is published once, as the champion scores them."""
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-race-1")
    outcomes: dict[str, object] = {}

    def attempt(name: str, wait: bool) -> None:
        try:
            outcomes[name] = scoring.score_customers(db, model, mode="full", wait=wait)
        except RunLocked as exc:
            outcomes[name] = exc

    def retrain() -> None:
        result = train_model(synthetic_frame, registry.new_version(), k=4, k_range=range(0),
                             champion=model)
        saved = registry.package_version(result.model, result.metrics, result.sizes)
        outcomes["retrain"] = register_and_gate(db, saved, result, force=True)

    others = [threading.Thread(target=attempt, args=("refused", False)),
              threading.Thread(target=attempt, args=("waited", True)),
              threading.Thread(target=retrain)]

    def start_others(rows: int, _seconds: float) -> None:
        if rows and not others[0].is_alive() and "refused" not in outcomes:
            for t in others:
                t.start()
            others[0].join(60)  # refused at once, while this run holds the lock

    first = scoring.score_customers(db, model, mode="full", chunk_rows=500,
                                    progress=start_others)
    for t in others:
        t.join(120)
    refused, waited = outcomes["refused"], outcomes["waited"]
    assert isinstance(refused, RunLocked) and "\n" not in str(refused)
    assert "another scoring run is in progress" in str(refused)
    assert isinstance(waited, scoring.ScoreResult) and waited.rows_scored == 5_000
    finished = dict(query(db, "SELECT run_id::text, finished_at FROM scoring_runs"
                              " WHERE status = 'succeeded'"))
    assert finished[waited.run_id] > finished[first.run_id]
    assert outcomes["retrain"] == "champion"
    assert query(db, "SELECT count(*) FROM model_versions WHERE status = 'champion'") == [(1,)]
    assert_published_as_scored(db, model)


def test_password_never_reaches_logs_or_artifacts(db: str, models_dir: Path,
                                                  synthetic_csv: Path, prefect_api: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from prefect.client.orchestration import get_client

    from flows.nightly_scoring import score_flow
    from flows.retrain import retrain

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(self.format(record))

    secret = "s3cret-Pa55-for-tests"
    secret = make_url(db).password or secret  # trust auth ignores a made-up one
    url = make_url(db).set(password=secret).render_as_string(hide_password=False)
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", url)
    load_batch(db, synthetic_csv)
    keep = Keep()
    loggers = [logging.getLogger(n) for n in ("prefect", "prefect.flow_runs",
                                               "prefect.task_runs")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(keep)
        lg.setLevel(logging.DEBUG)
    try:
        retrain(k=4)
        score_flow(mode="full")
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(keep)
            lg.setLevel(level)
    assert any("Finished in state" in line for line in keep.lines), "no run logs captured"
    assert all(secret not in line for line in keep.lines)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert {a.key for a in artifacts} >= {"retrain-report", "scoring-report"}
    assert all(secret not in str(a.data) for a in artifacts)


def test_two_validations_of_one_batch_validate_it_once(db: str, scored_champion,
                                                       synthetic_csv: Path) -> None:
    """The `validate` deployment and an `ingest` that validates by itself, at once: one
    validates, the other waits and is told the batch is done; nothing is marked failed."""
    from segmentation.ingest import ingest_csv
    from segmentation.validation import VALIDATION_LOCK, AlreadyValidated, validate_batch

    batch = ingest_csv(db, synthetic_csv).batch_id
    outcomes: list[object] = []

    def validate() -> None:
        try:
            outcomes.append(validate_batch(db, batch, lock_wait_s=60))
        except AlreadyValidated as exc:
            outcomes.append(exc)

    with connection(db, autocommit=True) as holder:  # both start while the batch is held
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (VALIDATION_LOCK, batch))
        threads = [threading.Thread(target=validate) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert outcomes == [], "both wait for the batch's lock"
        holder.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (VALIDATION_LOCK, batch))
        for t in threads:
            t.join(120)
    reports = [o for o in outcomes if not isinstance(o, AlreadyValidated)]
    assert len(reports) == 1 and len(outcomes) == 2, outcomes
    assert "is already validated" in str(next(o for o in outcomes if o is not reports[0]))
    assert query(db, "SELECT status FROM ingest_batches WHERE batch_id = %s", (batch,)) == \
        [("validated",)]
    assert query(db, "SELECT count(*) FROM validation_runs WHERE batch_id = %s", (batch,)) == \
        [(1,)]


def test_a_batch_being_validated_is_named_when_nobody_waits(db: str, synthetic_csv: Path) -> None:
    from segmentation.errors import BatchBusy
    from segmentation.ingest import ingest_csv
    from segmentation.validation import VALIDATION_LOCK, validate_batch

    batch = ingest_csv(db, synthetic_csv).batch_id
    with connection(db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (VALIDATION_LOCK, batch))
        with pytest.raises(BatchBusy, match=f"batch {batch} is being validated by another run"):
            validate_batch(db, batch, lock_wait_s=0)
    assert query(db, "SELECT status FROM ingest_batches WHERE batch_id = %s", (batch,)) == \
        [("loaded",)]


@pytest.fixture
def scored_champion(db: str, trained, models_dir: Path):  # type: ignore[no-untyped-def]
    """A champion (no customers yet)."""
    return register_champion(db, trained, models_dir, "m-day2-1")


def staged_rows(db: str) -> int:
    """Rows waiting for a publish: in scoring_stage and in unattached build tables."""
    from segmentation.rebuild import unattached_builds

    with connection(db) as conn:
        tables = unattached_builds(conn)
    return query(db, "SELECT count(*) FROM scoring_stage")[0][0] + sum(
        query(db, f'SELECT count(*) FROM "{t}"')[0][0] for t in tables)


@pytest.mark.parametrize("build", [True, False], ids=["build", "stage"])
def test_retried_partitioned_publish_publishes_once(db: str, scored_champion,
                                                    synthetic_csv: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    build: bool) -> None:
    """The publish dies after its work (a dropped connection): the staged rows or build
    tables stay for the retry, which publishes; a retry after the commit returns the
    recorded run."""
    load_batch(db, synthetic_csv)
    with partitioned(db, scored_champion, build=build) as start:
        run = start.run_id
        staged = stage_all(db, scored_champion, start, 2)
        drop_connection_after_publish(db, monkeypatch)  # the first publish only
        with pytest.raises(psycopg.OperationalError):
            scoring.publish_staged(db, scored_champion, start, staged)
        assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]
        assert query(db, "SELECT status FROM scoring_runs") == [("failed",)]
        assert staged_rows(db) == 5_000  # kept for the retry
        first = scoring.publish_staged(db, scored_champion, start, staged)
    # a late retry, after the flow let go of the run lock: the recorded run, nothing written
    again = scoring.publish_staged(db, scored_champion, start, staged)
    assert (first.rows_scored, first.rows_changed, first.rows_new) == (5_000, 5_000, 5_000)
    assert (again.run_id, again.rows_scored, again.rows_changed) == (run, 5_000, 5_000)
    assert query(db, "SELECT status, rows_scored FROM scoring_runs") == [("succeeded", 5_000)]
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]
    assert staged_rows(db) == 0
    assert_published_as_scored(db, scored_champion)


@pytest.mark.parametrize("build", [True, False], ids=["build", "stage"])
def test_staged_rows_must_add_up_to_the_partitions(db: str, scored_champion,
                                                   synthetic_csv: Path, build: bool) -> None:
    """Rows missing from the stage (deleted by a cleanup, a lost write): refused, recorded
    as failed, the watermark untouched."""
    from segmentation.errors import SegmentationError

    load_batch(db, synthetic_csv)
    with partitioned(db, scored_champion, build=build) as start:
        staged = stage_all(db, scored_champion, start, 2)
        with connection(db) as conn:
            if build:
                conn.execute(f'DELETE FROM "{staged[1].table}"')
            else:
                conn.execute("DELETE FROM scoring_stage WHERE run_id = %s AND part = 1",
                             (start.run_id,))
        with pytest.raises(SegmentationError, match=r"partition 1: 0 of [\d,]+"):
            scoring.publish_staged(db, scored_champion, start, staged)
    assert query(db, "SELECT status FROM scoring_runs") == [("failed",)]
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]
    with connection(db) as conn:
        assert runs.incremental_since(conn, scored_champion.version) is None


def test_partitioned_publish_retried_by_prefect(db: str, scored_champion, synthetic_csv: Path,
                                                prefect_api: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The publish task is retried by Prefect after a dropped connection: no primary-key
    error, one succeeded run, every row once."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.nightly_scoring import partitioned_scoring

    load_batch(db, synthetic_csv)
    calls = drop_connection_after_publish(db, monkeypatch)
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    result = partitioned_scoring.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(
        scored_champion.version, "full", 2, 10_000, False, 5.0)
    assert len(calls) == 2 and calls[0] == calls[1] == result.run_id
    assert (result.rows_scored, result.rows_changed) == (5_000, 5_000)
    assert query(db, "SELECT status FROM scoring_runs") == [("succeeded",)]
    assert_published_as_scored(db, scored_champion)
    assert result.published_by == "swap" and staged_rows(db) == 0  # the build path


def test_waiting_behind_a_stuck_run_gives_up(db: str, scored_champion,
                                             synthetic_csv: Path) -> None:
    """`nightly` waits behind a running scoring run, but not forever."""
    load_batch(db, synthetic_csv)
    with connection(db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (runs.SCORE_LOCK,))
        started = time.monotonic()
        with pytest.raises(RunLocked, match=r"after 1 s of waiting"):
            scoring.score_customers(db, scored_champion, mode="full", wait=True,
                                    wait_timeout_s=1)
        assert time.monotonic() - started < 30
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]


def test_refused_connections_are_retried_and_bad_credentials_are_not(db: str) -> None:
    """The retry filter sees a restart as transient, even after connect() wrapped it for
    the CLI's one-line message."""
    from flows.common import retry_delays, transient_only
    from segmentation.db import connect, is_transient
    from segmentation.errors import DatabaseUnavailable, SegmentationError

    class State:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self) -> None:
            raise self.exc

    with pytest.raises(DatabaseUnavailable) as refused:
        connect("postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    assert transient_only(None, None, State(refused.value))
    missing = make_url(db).set(database="no_such_database_here")
    with pytest.raises(SegmentationError) as wrong:
        connect(missing.render_as_string(hide_password=False))
    assert not isinstance(wrong.value, DatabaseUnavailable)
    assert not transient_only(None, None, State(wrong.value))
    with connection(db) as conn, pytest.raises(psycopg.Error) as bad_sql:
        conn.execute("SELECT no_such_column FROM customers")
    assert not is_transient(bad_sql.value)
    delays = retry_delays(600)
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and max(delays) == 60.0
    assert 600 <= sum(delays) < 660
    assert retry_delays(0) == []


def read_all_events(client) -> list[str]:  # type: ignore[no-untyped-def]
    """Every event the server holds, page by page (the API returns 50 at a time)."""
    page = client._client.post("/events/filter", json={"limit": 50}).json()
    events = [str(e) for e in page["events"]]
    while page.get("next_page") and len(events) < 20_000:
        page = client._client.get(page["next_page"]).json()
        events += [str(e) for e in page["events"]]
    return events


@pytest.mark.slow
def test_no_password_in_anything_prefect_stores(db: str, models_dir: Path,
                                                synthetic_csv: Path, prefect_api: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Train, validate and a partitioned nightly run with a password in the database URL;
    then every flow run's parameters, every task run, artifact, log and event the Prefect
    server holds is read back through its API: the password is in none of them."""
    import logging

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from flows.nightly_scoring import nightly
    from flows.retrain import retrain
    from flows.validate import validate_flow
    from segmentation.ingest import ingest_csv

    secret = "s3cret-Pa55-in-the-url"
    secret = make_url(db).password or secret  # trust auth ignores a made-up one
    url = make_url(db).set(password=secret).render_as_string(hide_password=False)
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", url)
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):  # every log to the API
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    load_batch(db, synthetic_csv)
    retrain(k=4)
    lines = synthetic_csv.read_text().splitlines()
    for name in ("a", "b"):
        path = synthetic_csv.parent / f"secret-{name}.csv"
        path.write_text("\n".join([lines[0], *(line.replace("C0", f"{name.upper()}0", 1)
                                               for line in lines[1:101])]) + "\n")
        ingest_csv(db, path)
        if name == "a":
            validate_flow()
    nightly(partitions=2)
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # send what is batched
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                handler.flush()
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs()
        stored = {
            "flow run parameters": [r.parameters for r in flow_runs],
            "flow runs": [r.model_dump_json() for r in flow_runs],
            "task runs": [r.model_dump_json() for r in client.read_task_runs()],
            "artifacts": [a.model_dump_json() for a in client.read_artifacts()],
            "logs": [log.message for log in client.read_logs()],
            "events": read_all_events(client),
        }
    assert len({r.flow_id for r in flow_runs}) >= 4, \
        "retrain, validate, nightly and partitioned-scoring all ran"
    assert len(stored["logs"]) > 10, stored["logs"]
    assert stored["task runs"] and stored["events"]
    leaks = [where for where, values in stored.items() if secret in str(values)]
    assert leaks == [], f"the password is stored by Prefect in: {leaks}"
