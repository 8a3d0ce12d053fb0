"""Scoring: streamed, conserving, idempotent, exclusive, atomic."""

import dataclasses
import threading
from pathlib import Path

import psycopg
import pytest

from segmentation import publishing, reading, runs, scoring
from segmentation.db import connection, conninfo
from segmentation.errors import RunLocked, SegmentationError
from tests.helpers import (
    drop_connection_after_publish,
    load_batch,
    query,
    register_champion,
    snapshot_segments,
)


@pytest.fixture
def champion(db: str, trained, models_dir: Path, synthetic_csv: Path):
    """The synthetic customers loaded, and a registered champion."""
    load_batch(db, synthetic_csv)
    return register_champion(db, trained, models_dir, "m-score-1")


def test_full_run_scores_every_customer_once(db: str, champion, synthetic_frame) -> None:
    result = scoring.score_customers(db, champion, mode="full", chunk_rows=700)
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
    scoring.score_customers(db, champion, mode="full")
    before = snapshot_segments(db)
    again = scoring.score_customers(db, champion, mode="full")
    assert again.rows_changed == 0
    assert snapshot_segments(db) == before
    assert query(db, "SELECT count(*) FROM segment_history") == [(5_000,)]
    incremental = scoring.score_customers(db, champion, mode="incremental")
    assert incremental.rows_in == 0 and snapshot_segments(db) == before


def test_incremental_scores_only_new_and_changed(db: str, champion, tmp_path: Path,
                                                 synthetic_csv: Path) -> None:
    scoring.score_customers(db, champion, mode="full")
    lines = synthetic_csv.read_text().splitlines()
    header, first = lines[0], lines[1].split(",")
    first[3] = "99999"  # purchases of the first customer changes
    new = lines[2].split(",")
    new[0] = "NEW-1"
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join([header, ",".join(first), ",".join(new)]) + "\n")
    load_batch(db, changed)
    result = scoring.score_customers(db, champion, mode="incremental")
    assert result.rows_in == 2
    assert query(db, "SELECT count(*) FROM customer_segments") == [(5_001,)]


def test_second_concurrent_run_is_refused_clearly(db: str, champion) -> None:
    with connection(db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (runs.SCORE_LOCK,))
        with pytest.raises(RunLocked, match="another scoring run is in progress"):
            scoring.score_customers(db, champion)
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]


def test_waiting_run_proceeds_after_the_first(db: str, champion) -> None:
    holder = psycopg.connect(conninfo(db))
    holder.execute("SELECT pg_advisory_xact_lock(%s)", (runs.SCORE_LOCK,))
    done: list[scoring.ScoreResult] = []
    waiter = threading.Thread(target=lambda: done.append(
        scoring.score_customers(db, champion, wait=True)))
    waiter.start()
    waiter.join(1.0)
    assert not done, "the second run must wait for the lock"
    holder.rollback()
    holder.close()
    waiter.join(60)
    assert done and done[0].rows_scored == 5_000


@pytest.mark.parametrize("swap_share", [0.25, float("inf")], ids=["swap", "upsert"])
def test_killed_connection_mid_publish_leaves_table_unchanged(db: str, champion, monkeypatch,
                                                              swap_share: float) -> None:
    scoring.score_customers(db, champion, mode="full")
    before = snapshot_segments(db)
    monkeypatch.setattr(publishing, "SWAP_SHARE", swap_share)
    other = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    drop_connection_after_publish(db, monkeypatch)  # the first publish only
    with pytest.raises(psycopg.OperationalError):
        scoring.score_customers(db, other, mode="full")
    assert snapshot_segments(db) == before
    assert query(db, "SELECT status FROM scoring_runs ORDER BY started_at") == \
        [("succeeded",), ("failed",)]
    assert query(db, "SELECT published_by FROM scoring_runs WHERE status = 'failed'") == \
        [(None,)]  # its publish ran, but never committed
    rerun = scoring.score_customers(db, other, mode="full")
    assert rerun.rows_scored == 5_000 and snapshot_segments(db) != before
    assert rerun.published_by == ("swap" if swap_share < 1 else "upsert")


def rescored(rows: list[tuple], model, frame) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """customer_id -> segment as model predicts it, for the ids in rows."""
    expected = dict(zip(frame["customer_id"], model.predict(frame), strict=True))
    return {row[0]: expected[row[0]] for row in rows}


def test_bulk_run_swaps_the_table_and_a_small_one_updates_rows(db: str, champion, tmp_path,
                                                              synthetic_csv: Path,
                                                              synthetic_frame) -> None:
    first = scoring.score_customers(db, champion, mode="incremental")
    assert first.published_by == "swap"  # every row is new
    other = dataclasses.replace(champion, version="m-score-2",
                                label_to_segment=champion.label_to_segment[::-1])
    with connection(db) as conn:
        conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256)"
                     " SELECT 'm-score-2', 'challenger', k, metrics, path, sha256"
                     " FROM model_versions WHERE version = %s", (champion.version,))
    retrained = scoring.score_customers(db, other, mode="incremental")
    assert (retrained.published_by, retrained.rows_in, retrained.rows_changed) == \
        ("swap", 5_000, 5_000)  # a new model: every customer rescored, every one moved
    rows = snapshot_segments(db)
    assert len(rows) == 5_000
    assert {r[0]: r[1] for r in rows} == rescored(rows, other, synthetic_frame)
    assert {r[3] for r in rows} == {"m-score-2"}
    assert query(db, "SELECT count(*), count(DISTINCT customer_id) FROM segment_history"
                     " WHERE new_model_version = 'm-score-2'") == [(5_000, 5_000)]
    lines = synthetic_csv.read_text().splitlines()
    new = lines[1].split(",")
    new[0] = "NEW-SWAP"
    delta = tmp_path / "delta.csv"
    delta.write_text("\n".join([lines[0], ",".join(new)]) + "\n")
    load_batch(db, delta)
    small = scoring.score_customers(db, other, mode="incremental")
    assert (small.published_by, small.rows_in) == ("upsert", 1)
    assert query(db, "SELECT count(*) FROM customer_segments") == [(5_001,)]
    assert query(db, "SELECT run_id::text, published_by FROM scoring_runs"
                     " ORDER BY started_at") == [(first.run_id, "swap"),
                                                (retrained.run_id, "swap"),
                                                (small.run_id, "upsert")]
    # the parent keeps one partition, with both indexes, and the views still read it
    assert query(db, "SELECT inhrelid::regclass::text FROM pg_inherits"
                     " WHERE inhparent = 'segment_assignments'::regclass") == \
        [("segment_assignments_p",)]
    assert query(db, "SELECT indexname FROM pg_indexes WHERE tablename ="
                     " 'segment_assignments_p' ORDER BY 1") == \
        [("segment_assignments_p_pkey",), ("segment_assignments_p_segment_idx",)]
    assert query(db, "SELECT sum(customers) FROM segment_summary") == [(5_001,)]
    assert query(db, "SELECT count(*) FROM customer_segments_current") == [(5_001,)]


def test_reader_holding_the_table_turns_the_swap_into_an_upsert(db: str, champion,
                                                               monkeypatch) -> None:
    scoring.score_customers(db, champion, mode="full")
    other = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    monkeypatch.setattr(publishing, "SWAP_LOCK_TIMEOUT", "200ms")
    with connection(db) as reader:  # a long report: holds its lock until it ends
        reader.execute("SELECT count(*) FROM customer_segments")
        result = scoring.score_customers(db, other, mode="full")
        assert reader.execute("SELECT count(*) FROM customer_segments").fetchone() == (5_000,)
    assert (result.published_by, result.rows_changed) == ("upsert", 5_000)
    rows = snapshot_segments(db)
    assert len(rows) == 5_000 and {str(r[5]) for r in rows} == {result.run_id}
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname ="
                     " 'customer_segments_next'") == [(0,)]  # the unused build undone


def stage_all(db: str, model, run_id: str, parts: int, mode="full"):  # type: ignore[no-untyped-def]
    """Stage every hash partition of a run, as the Dask tasks do (here in turn)."""
    return [scoring.stage_partition(db, model, mode, run_id, part, parts, chunk_rows=600)
            for part in range(parts)]


def test_partitions_cover_every_customer_once_and_publish_like_one_run(db: str,
                                                                      champion) -> None:
    single = scoring.score_customers(db, champion, mode="full")
    expected = [row[:4] for row in snapshot_segments(db)]
    with connection(db) as conn:
        conn.execute("TRUNCATE segment_assignments, segment_history")
    staged = stage_all(db, champion, "00000000-0000-4000-8000-000000000001", 4)
    assert sum(p.rows for p in staged) == 5_000 and all(p.rows > 0 for p in staged)
    result = scoring.publish_staged(db, champion, "full",
                                    "00000000-0000-4000-8000-000000000001", staged)
    assert (result.rows_in, result.rows_changed) == (single.rows_in, single.rows_changed)
    assert [row[:4] for row in snapshot_segments(db)] == expected
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


def test_retried_partition_replaces_its_rows(db: str, champion) -> None:
    run = "00000000-0000-4000-8000-000000000002"
    first = scoring.stage_partition(db, champion, "full", run, 1, 3)
    again = scoring.stage_partition(db, champion, "full", run, 1, 3)
    assert first.rows == again.rows
    assert query(db, "SELECT count(*) FROM scoring_stage WHERE run_id = %s",
                 (run,)) == [(first.rows,)]


def test_incomplete_partitioned_run_is_not_published(db: str, champion) -> None:
    scoring.score_customers(db, champion, mode="full")
    before = snapshot_segments(db)
    other = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    run = "00000000-0000-4000-8000-000000000003"
    staged = stage_all(db, other, run, 3)[:2]  # the last partition lost
    with pytest.raises(SegmentationError, match=r"partitions \[0, 1\] of \[3\]"):
        scoring.publish_staged(db, other, "full", run, staged)
    assert snapshot_segments(db) == before
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


def test_snapshot_waits_for_an_accept_in_flight(db: str, champion) -> None:
    """The incremental watermark is safe: a scoring snapshot never starts while rows are
    being accepted into customers, so it sees them or they are stamped after the run."""
    from segmentation.ingest import ACCEPT_LOCK

    accept = psycopg.connect(conninfo(db))
    accept.execute("SELECT pg_advisory_xact_lock(%s)", (ACCEPT_LOCK,))
    accept.execute("INSERT INTO customers (customer_id, batch_id) VALUES ('IN-FLIGHT', 'b')")
    seen: list[int] = []

    def snapshot_and_count() -> None:
        with connection(db) as reader:
            reading.open_snapshot(reader)
            row = reader.execute("SELECT count(*) FROM customers"
                                 " WHERE customer_id = 'IN-FLIGHT'").fetchone()
            seen.append(row[0] if row else -1)

    thread = threading.Thread(target=snapshot_and_count)
    thread.start()
    thread.join(1.0)
    assert not seen, "the snapshot must wait for the accept to commit"
    accept.commit()
    accept.close()
    thread.join(30)
    assert seen == [1]


def test_watermark_is_the_last_successful_run_of_this_model(db: str, champion) -> None:
    with connection(db) as conn:
        assert scoring.incremental_since(conn, champion.version) is None  # never scored
    first = scoring.score_customers(db, champion, mode="incremental")
    assert first.rows_in == 5_000
    with connection(db) as conn:
        (started,), = conn.execute("SELECT started_at FROM scoring_runs").fetchall()
        assert scoring.incremental_since(conn, champion.version) == started
        assert scoring.incremental_since(conn, "another-model") is None  # rescore everyone
        conn.execute("INSERT INTO scoring_runs (run_id, model_version, mode, status,"
                     " started_at) VALUES (gen_random_uuid(), %s, 'full', 'failed', now())",
                     (champion.version,))
        assert scoring.incremental_since(conn, champion.version) == started  # failed: no


def test_each_quarantine_is_counted_by_the_run_that_scores_its_batch(
        db: str, champion, synthetic_csv: Path, tmp_path: Path) -> None:
    """A batch validated while a run streams is not in that run's snapshot: the next run
    scores it and reports its quarantine, once (scored + quarantined = incoming)."""
    from segmentation.ingest import ingest_csv
    from segmentation.validation import validate_batch

    lines = synthetic_csv.read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:41]]
    for i, fields in enumerate(rows):
        fields[0] = f"LATE-{i}"
    rows[0][header.index("TENURE")] = "99"  # one broken row: quarantined
    late = tmp_path / "late.csv"
    late.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    validated: list[object] = []

    def validate_meanwhile(done: int, seconds: float) -> None:
        if not validated:  # after the run's snapshot, before its publish
            validated.append(validate_batch(db, ingest_csv(db, late).batch_id))

    first = scoring.score_customers(db, champion, mode="full", chunk_rows=1_000,
                                    wait=True, progress=validate_meanwhile)
    assert validated and (first.rows_in, first.rows_quarantined) == (5_000, 0)
    second = scoring.score_customers(db, champion, mode="incremental")
    assert (second.rows_in, second.rows_quarantined) == (39, 1)  # 39 + 1 = 40 incoming
    third = scoring.score_customers(db, champion, mode="full")
    assert third.rows_quarantined == 0
