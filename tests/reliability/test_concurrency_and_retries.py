"""Retries and concurrency: exactly once, one champion, no duplicates."""

import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from segmentation import registry, scoring
from segmentation.db import connection
from segmentation.errors import RunLocked
from segmentation.training import register_and_gate, train_model
from tests.helpers import load_batch, query, register_champion

pytestmark = pytest.mark.reliability


def test_flow_retried_after_a_dropped_connection_publishes_once(
        db: str, trained, models_dir: Path, synthetic_csv: Path, prefect_api: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.nightly_scoring import score_flow

    load_batch(db, synthetic_csv)
    register_champion(db, trained, models_dir, "m-retry-1")
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    real_publish, calls = scoring.publish, []

    def publish_dies_the_first_time(conn, result, names, scored_at):
        changed = real_publish(conn, result, names, scored_at)
        calls.append(result.run_id)
        if len(calls) == 1:  # the server drops us after the work, before the commit
            with connection(db, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return changed

    monkeypatch.setattr(scoring, "publish", publish_dies_the_first_time)
    summary = score_flow(mode="full")
    assert len(calls) == 2, "the task was retried once by Prefect"
    assert "5,000 in, 5,000 scored" in summary
    assert query(db, "SELECT count(*), count(DISTINCT customer_id) FROM customer_segments") \
        == [(5_000, 5_000)]
    assert query(db, "SELECT count(*) FROM segment_history") == [(5_000,)]
    assert query(db, "SELECT status FROM scoring_runs ORDER BY started_at") == \
        [("failed",), ("succeeded",)]


def test_two_scorings_and_a_retrain_at_once(db: str, trained, models_dir: Path,
                                            synthetic_csv: Path, synthetic_frame) -> None:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-race-1")
    outcomes: list[object] = []

    def score() -> None:
        try:
            outcomes.append(scoring.score_customers(db, model, model.names, mode="full"))
        except RunLocked as exc:
            outcomes.append(exc)

    def retrain() -> None:
        result = train_model(synthetic_frame, registry.new_version(), k=4, k_range=range(0),
                             champion=model)
        saved = registry.save_version(result.model, result.metrics, result.sizes, models_dir)
        outcomes.append(register_and_gate(db, saved, result, force=True))

    threads = [threading.Thread(target=f) for f in (score, score, retrain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    scored = [o for o in outcomes if isinstance(o, scoring.ScoreResult)]
    refused = [o for o in outcomes if isinstance(o, RunLocked)]
    assert len(scored) + len(refused) == 2 and scored, outcomes
    assert "champion" in outcomes
    assert query(db, "SELECT count(*) FROM model_versions WHERE status = 'champion'") == [(1,)]
    assert query(db, "SELECT count(*), count(DISTINCT customer_id) FROM customer_segments") \
        == [(5_000, 5_000)]


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
    url = make_url(db).set(password=secret).render_as_string(hide_password=False)
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", url)  # local trust auth ignores it
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
    assert any("scored" in line for line in keep.lines), "the run's logs were captured"
    assert all(secret not in line for line in keep.lines)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert {a.key for a in artifacts} >= {"retrain-report", "scoring-report"}
    assert all(secret not in str(a.data) for a in artifacts)
