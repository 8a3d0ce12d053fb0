"""Scoring: streamed, conserving, idempotent, exclusive, atomic."""

import dataclasses
import threading
from pathlib import Path

import psycopg
import pytest

from segmentation import scoring
from segmentation.db import connection, conninfo
from segmentation.errors import RunLocked
from tests.helpers import load_batch, query, register_champion, snapshot_segments


@pytest.fixture
def champion(db: str, trained, models_dir: Path, synthetic_csv: Path):
    """The synthetic customers loaded, and a registered champion."""
    load_batch(db, synthetic_csv)
    return register_champion(db, trained, models_dir, "m-score-1")


def test_full_run_scores_every_customer_once(db: str, champion, synthetic_frame) -> None:
    result = scoring.score_customers(db, champion, champion.names, mode="full", chunk_rows=700)
    assert (result.rows_in, result.rows_scored, result.rows_changed) == (5_000, 5_000, 5_000)
    rows = query(db, "SELECT customer_id, segment_id, segment_name, model_version"
                     " FROM customer_segments")
    assert len(rows) == 5_000 and len({r[0] for r in rows}) == 5_000
    expected = dict(zip(synthetic_frame["customer_id"], champion.predict(synthetic_frame),
                        strict=True))
    assert all(expected[cid] == seg for cid, seg, _, _ in rows)
    assert all(name == champion.names[seg] for _, seg, name, _ in rows)
    assert query(db, "SELECT status, rows_in, rows_scored FROM scoring_runs") == \
        [("succeeded", 5_000, 5_000)]


def test_rerun_changes_nothing_and_adds_no_history(db: str, champion) -> None:
    scoring.score_customers(db, champion, champion.names, mode="full")
    before = snapshot_segments(db)
    again = scoring.score_customers(db, champion, champion.names, mode="full")
    assert again.rows_changed == 0
    assert snapshot_segments(db) == before
    assert query(db, "SELECT count(*) FROM segment_history") == [(5_000,)]
    incremental = scoring.score_customers(db, champion, champion.names, mode="incremental")
    assert incremental.rows_in == 0 and snapshot_segments(db) == before


def test_incremental_scores_only_new_and_changed(db: str, champion, tmp_path: Path,
                                                 synthetic_csv: Path) -> None:
    scoring.score_customers(db, champion, champion.names, mode="full")
    lines = synthetic_csv.read_text().splitlines()
    header, first = lines[0], lines[1].split(",")
    first[3] = "99999"  # purchases of the first customer changes
    new = lines[2].split(",")
    new[0] = "NEW-1"
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join([header, ",".join(first), ",".join(new)]) + "\n")
    load_batch(db, changed)
    result = scoring.score_customers(db, champion, champion.names, mode="incremental")
    assert result.rows_in == 2
    assert query(db, "SELECT count(*) FROM customer_segments") == [(5_001,)]


def test_second_concurrent_run_is_refused_clearly(db: str, champion) -> None:
    with connection(db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (scoring.SCORE_LOCK,))
        with pytest.raises(RunLocked, match="another scoring run is in progress"):
            scoring.score_customers(db, champion, champion.names)
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]


def test_waiting_run_proceeds_after_the_first(db: str, champion) -> None:
    holder = psycopg.connect(conninfo(db))
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (scoring.SCORE_LOCK,))
    done: list[scoring.ScoreResult] = []
    waiter = threading.Thread(target=lambda: done.append(
        scoring.score_customers(db, champion, champion.names, wait=True)))
    waiter.start()
    waiter.join(1.0)
    assert not done, "the second run must wait for the lock"
    holder.rollback()
    holder.close()
    waiter.join(60)
    assert done and done[0].rows_scored == 5_000


def test_killed_connection_mid_publish_leaves_table_unchanged(db: str, champion,
                                                              monkeypatch) -> None:
    scoring.score_customers(db, champion, champion.names, mode="full")
    before = snapshot_segments(db)
    other = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    real_publish = scoring.publish

    def publish_then_die(conn, result, names, scored_at):
        changed = real_publish(conn, result, names, scored_at)
        with connection(db, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return changed

    monkeypatch.setattr(scoring, "publish", publish_then_die)
    with pytest.raises(psycopg.OperationalError):
        scoring.score_customers(db, other, champion.names, mode="full")
    assert snapshot_segments(db) == before
    assert query(db, "SELECT status FROM scoring_runs ORDER BY started_at") == \
        [("succeeded",), ("failed",)]
    monkeypatch.setattr(scoring, "publish", real_publish)
    rerun = scoring.score_customers(db, other, champion.names, mode="full")
    assert rerun.rows_scored == 5_000 and snapshot_segments(db) != before
