"""Scoring: streamed, conserving, idempotent, exclusive, atomic."""

import dataclasses
import threading
from pathlib import Path

import psycopg
import pytest

from segmentation import drift, publishing, reading, rebuild, runs, scoring
from segmentation.db import connection, conninfo
from segmentation.errors import RunLocked, SegmentationError
from tests.helpers import (
    drop_connection_after_publish,
    load_batch,
    partitioned,
    query,
    register_champion,
    snapshot_segments,
    stage_all,
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
    first = scoring.score_customers(db, champion, mode="full")
    assert (first.published_by, first.rows_new, first.rows_moved) == ("swap", 5_000, 0)
    # a first assignment is a fact of the published row, not a history row
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]
    assert query(db, "SELECT first_run_id::text, first_scored_at, count(*)"
                     " FROM customer_segments GROUP BY 1, 2") == \
        [(first.run_id, query(db, "SELECT started_at FROM scoring_runs")[0][0], 5_000)]
    before = snapshot_segments(db)
    again = scoring.score_customers(db, champion, mode="full")
    assert (again.rows_changed, again.rows_new, again.rows_moved) == (0, 0, 0)
    assert snapshot_segments(db) == before
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]
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
    # a swapped-in build's segments were counted while streaming: the segment mix needs
    # no GROUP BY of the published table, and reads the same shares
    published = dict(query(db, "SELECT segment_id, count(*) FROM customer_segments"
                               " GROUP BY 1 ORDER BY 1"))
    assert first.segment_counts == published and len(published) > 1
    with connection(db) as conn:
        counted = drift.segment_mix_psi(conn, first.segment_counts)
        assert counted is not None and counted == pytest.approx(drift.segment_mix_psi(conn))
        # a result that went through JSON (a Prefect result store) reads the same
        as_json = {str(k): v for k, v in first.segment_counts.items()}
        assert drift.segment_mix_psi(conn, as_json) == counted
    other = register_copy(db, champion, "m-score-2", champion.label_to_segment[::-1])
    retrained = scoring.score_customers(db, other, mode="incremental")
    assert (retrained.published_by, retrained.rows_in, retrained.rows_changed,
            retrained.rows_moved) == ("swap", 5_000, 5_000, 5_000)  # ids reversed: all move
    rows = snapshot_segments(db)
    assert len(rows) == 5_000
    assert {r[0]: r[1] for r in rows} == rescored(rows, other, synthetic_frame)
    assert {r[3] for r in rows} == {"m-score-2"}
    assert query(db, "SELECT count(*), count(DISTINCT customer_id) FROM segment_history"
                     " WHERE new_model_version = 'm-score-2'"
                     " AND old_model_version = 'm-score-1'") == [(5_000, 5_000)]
    # first runs survive the rebuild
    assert query(db, "SELECT DISTINCT first_run_id::text FROM segment_assignments") == \
        [(first.run_id,)]
    lines = synthetic_csv.read_text().splitlines()
    new = lines[1].split(",")
    new[0] = "NEW-SWAP"
    delta = tmp_path / "delta.csv"
    delta.write_text("\n".join([lines[0], ",".join(new)]) + "\n")
    load_batch(db, delta)
    small = scoring.score_customers(db, other, mode="incremental")
    assert (small.published_by, small.rows_in) == ("upsert", 1)
    # it streamed one row: its counts are the published table's, counted once it published
    assert small.segment_counts == dict(query(db, "SELECT segment_id, count(*) FROM"
                                                  " customer_segments GROUP BY 1"))
    assert sum(small.segment_counts.values()) == 5_001
    assert query(db, "SELECT count(*) FROM customer_segments") == [(5_001,)]
    assert query(db, "SELECT run_id::text, published_by, rows_new FROM scoring_runs"
                     " ORDER BY started_at") == [(first.run_id, "swap", 5_000),
                                                (retrained.run_id, "swap", 0),
                                                (small.run_id, "upsert", 1)]
    assert query(db, "SELECT first_run_id::text FROM segment_assignments"
                     " WHERE customer_id = 'NEW-SWAP'") == [(small.run_id,)]
    # the parent keeps one partition, with its key, and the views still read it
    assert query(db, "SELECT inhrelid::regclass::text FROM pg_inherits"
                     " WHERE inhparent = 'segment_assignments'::regclass") == \
        [("segment_assignments_p",)]
    assert query(db, "SELECT indexname FROM pg_indexes WHERE tablename ="
                     " 'segment_assignments_p' ORDER BY 1") == [("segment_assignments_p_pkey",)]
    assert build_tables(db) == []
    assert query(db, "SELECT sum(customers) FROM segment_summary") == [(5_001,)]
    assert query(db, "SELECT count(*) FROM customer_segments_current") == [(5_001,)]


def build_tables(db: str) -> list[str]:
    """Build tables attached to nothing (orphans, if a run is not in progress)."""
    with connection(db) as conn:
        return rebuild.unattached_builds(conn)


def register_copy(db: str, model, version: str, label_to_segment):  # type: ignore[no-untyped-def]
    """The same fitted model under a new version, its KMeans labels mapped as given."""
    with connection(db) as conn:
        conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256)"
                     " SELECT %s, 'challenger', k, metrics, path, sha256"
                     " FROM model_versions WHERE version = %s", (version, model.version))
    return dataclasses.replace(model, version=version, label_to_segment=label_to_segment)


def test_a_new_model_writes_history_for_movers_only(db: str, champion) -> None:
    """After a retrain, a customer whose segment changed gets exactly one history row; one
    kept in the same segment by the new model gets none (the switch is the run's fact)."""
    first = scoring.score_customers(db, champion, mode="incremental")
    before = {r[0]: r[1] for r in snapshot_segments(db)}
    mapping = champion.label_to_segment.copy()
    zero, one = list(mapping).index(0), list(mapping).index(1)
    mapping[zero], mapping[one] = 1, 0  # segments 0 and 1 trade customers; 2 and 3 stay
    other = register_copy(db, champion, "m-score-3", mapping)
    night = scoring.score_customers(db, other, mode="incremental")
    movers = {c for c, s in before.items() if s in (0, 1)}
    assert (night.published_by, night.rows_new, night.rows_moved, night.rows_changed) == \
        ("swap", 0, len(movers), 5_000)
    history = query(db, "SELECT customer_id, old_segment_id, new_segment_id,"
                        " old_model_version, new_model_version, run_id::text"
                        " FROM segment_history")
    assert sorted(h[0] for h in history) == sorted(movers)  # one row each, no one else
    assert all((old, new) == (before[c], 1 - before[c]) and (mv_old, mv_new, run) ==
               ("m-score-1", "m-score-3", night.run_id)
               for c, old, new, mv_old, mv_new, run in history)
    # first facts unchanged; the membership timeline shows the movers' second stretch
    assert query(db, "SELECT DISTINCT first_run_id::text FROM customer_segments") == \
        [(first.run_id,)]
    stretches = dict(query(db, "SELECT customer_id, count(*) FROM segment_membership"
                               " GROUP BY 1"))
    assert {c for c, n in stretches.items() if n == 2} == movers
    assert set(stretches.values()) == {1, 2}
    assert query(db, "SELECT rows_moved, rows_new FROM scoring_runs WHERE run_id = %s",
                 (night.run_id,)) == [(len(movers), 0)]


@pytest.mark.parametrize("new_version", [False, True], ids=["staged", "rebuilt"])
def test_reader_holding_the_table_turns_the_swap_into_an_upsert(db: str, champion,
                                                               monkeypatch,
                                                               new_version: bool) -> None:
    """Both bulk paths: a big diff of staged rows (same model), and a build table streamed
    in directly (a new model) fall back to writing rows into the table the reader holds."""
    first = scoring.score_customers(db, champion, mode="full")
    reverse = champion.label_to_segment[::-1]
    other = register_copy(db, champion, "m-score-4", reverse) if new_version else \
        dataclasses.replace(champion, label_to_segment=reverse)
    monkeypatch.setattr(rebuild, "SWAP_LOCK_TIMEOUT", "200ms")
    with connection(db) as reader:  # a long report: holds its lock until it ends
        reader.execute("SELECT count(*) FROM customer_segments")
        result = scoring.score_customers(db, other, mode="full")
        assert reader.execute("SELECT count(*) FROM customer_segments").fetchone() == (5_000,)
    assert (result.published_by, result.rows_changed) == ("upsert", 5_000)
    rows = snapshot_segments(db)
    assert len(rows) == 5_000 and {str(r[5]) for r in rows} == {result.run_id}
    assert {r[3] for r in rows} == {other.version}
    assert query(db, "SELECT count(*) FROM segment_history") == [(5_000,)]  # all moved
    assert query(db, "SELECT DISTINCT first_run_id::text FROM segment_assignments") == \
        [(first.run_id,)]
    assert build_tables(db) == []  # the unused build undone


def publish_partitioned(db: str, model, parts: int, run_id: str | None = None):  # type: ignore[no-untyped-def]
    """A whole partitioned run, its partitions staged in turn (600-row chunks)."""
    with partitioned(db, model, run_id=run_id) as start:
        return scoring.publish_staged(db, model, start, stage_all(db, model, start, parts, 600))


def test_partitions_cover_every_customer_once_and_publish_like_one_run(db: str,
                                                                      champion) -> None:
    single = scoring.score_customers(db, champion, mode="full")
    expected = [row[:4] for row in snapshot_segments(db)]
    with connection(db) as conn:
        conn.execute("TRUNCATE segment_assignments, segment_history")
    with partitioned(db, champion) as start:
        staged = stage_all(db, champion, start, 4, 600)
        assert sum(p.rows for p in staged) == 5_000 and all(p.rows > 0 for p in staged)
        result = scoring.publish_staged(db, champion, start, staged)
    assert (result.rows_in, result.rows_changed) == (single.rows_in, single.rows_changed)
    assert result.segment_counts == single.segment_counts and sum(
        result.segment_counts.values()) == 5_000
    assert [row[:4] for row in snapshot_segments(db)] == expected
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


def test_a_partitioned_retrain_reads_only_its_own_published_partition(db: str,
                                                                      champion) -> None:
    """When the published table is already n hash partitions, a partition task of an
    n-partition rebuild reads (and its history joins) only its own; the published rows,
    the movers and the new customers come out as from the whole table."""
    first = publish_partitioned(db, champion, 2)
    with connection(db) as conn:
        assert [rebuild.published_source(conn, (part, 2)) for part in (0, 1)] == \
            ["segment_assignments_p0", "segment_assignments_p1"]
        # another layout, or one process: the whole table
        assert rebuild.published_source(conn, (1, 3)) == "segment_assignments"
        assert rebuild.published_source(conn, None) == "segment_assignments"
    before = {r[0]: r[1] for r in snapshot_segments(db)}
    mapping = champion.label_to_segment.copy()
    zero, one = list(mapping).index(0), list(mapping).index(1)
    mapping[zero], mapping[one] = 1, 0
    other = register_copy(db, champion, "m-score-5", mapping)
    with partitioned(db, other) as start:
        staged = stage_all(db, other, start, 2, 600)
        staged[1] = scoring.stage_partition(db, other, start, 1, 2, 600)
        movers = {c for c, s in before.items() if s in (0, 1)}
        # each task found its own movers (a retried one replaced them); nothing is history
        found = [query(db, f"SELECT customer_id FROM {rebuild.moves_name(p.table or '')}")
                 for p in staged]
        assert sorted(c for rows in found for (c,) in rows) == sorted(movers)
        assert all(rows for rows in found)
        assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]
        night = scoring.publish_staged(db, other, start, staged)
    assert build_tables(db) == []  # the moves tables went with the publish
    assert (night.published_by, night.rows_new, night.rows_moved) == ("swap", 0, len(movers))
    assert sorted(c for (c,) in query(db, "SELECT customer_id FROM segment_history")) == \
        sorted(movers)
    after = {r[0]: r[1] for r in snapshot_segments(db)}
    assert after == {c: (1 - s if c in movers else s) for c, s in before.items()}
    assert query(db, "SELECT DISTINCT first_run_id::text FROM customer_segments") == \
        [(first.run_id,)]
    with connection(db) as conn:  # a single-process publish: one partition again
        scoring.score_customers(db, champion, mode="full")
        assert rebuild.published_source(conn, (0, 2)) == "segment_assignments"


def test_builds_of_a_partitioned_run_that_never_published_are_swept(db: str,
                                                                   champion) -> None:
    """Partition tasks commit their build tables unattached; if the publish never comes
    (the flow died: its run lock is gone), the next run drops them, and the late publish
    is refused, not half-applied."""
    with partitioned(db, champion) as start:
        staged = stage_all(db, champion, start, 2)
    assert all(p.table for p in staged) and len(build_tables(db)) == 2
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]  # invisible
    result = scoring.score_customers(db, champion, mode="full")
    assert build_tables(db) == [] and result.rows_new == 5_000
    before = snapshot_segments(db)
    with pytest.raises(SegmentationError, match="no longer holds the run lock"):
        scoring.publish_staged(db, champion, start, staged)
    assert snapshot_segments(db) == before


@pytest.mark.parametrize("build", [True, False], ids=["build", "stage"])
def test_retried_partition_replaces_its_rows(db: str, champion, build: bool) -> None:
    with partitioned(db, champion, build=build) as start:
        first = scoring.stage_partition(db, champion, start, 1, 3)
        again = scoring.stage_partition(db, champion, start, 1, 3)
    assert first.rows == again.rows and (first.table is not None) == build
    if build:
        assert query(db, f"SELECT count(*) FROM {again.table}") == [(first.rows,)]
    else:
        assert query(db, "SELECT count(*) FROM scoring_stage WHERE run_id = %s",
                     (start.run_id,)) == [(first.rows,)]


def test_incomplete_partitioned_run_is_not_published(db: str, champion) -> None:
    scoring.score_customers(db, champion, mode="full")
    before = snapshot_segments(db)
    other = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    with partitioned(db, other) as start:
        staged = stage_all(db, other, start, 3)[:2]  # the last partition lost
        with pytest.raises(SegmentationError, match=r"partitions \[0, 1\] of \[3\]"):
            scoring.publish_staged(db, other, start, staged)
    assert snapshot_segments(db) == before
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


def test_snapshot_waits_for_an_accept_in_flight(db: str, champion) -> None:
    """The incremental watermark is safe: a scoring snapshot never starts while rows are
    being accepted into customers, so it sees them or they are stamped after the run."""
    from segmentation.accepting import ACCEPT_LOCK

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


def test_a_run_with_nothing_to_read_opens_no_reading_session(db: str, champion,
                                                             monkeypatch) -> None:
    """A night with nothing new is the common one: it reads nothing, so it neither starts
    the ADBC session nor imports Arrow for it."""
    from segmentation import db as database
    from segmentation import scoring

    scoring.score_customers(db, champion, mode="incremental")  # everyone, once

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("opened a reading session with nothing to read")

    monkeypatch.setattr(database, "arrow_reader_session", refuse)
    again = scoring.score_customers(db, champion, mode="incremental")
    assert (again.rows_in, again.rows_changed) == (0, 0)


def test_a_retrain_that_moves_few_records_exactly_them(db: str, champion) -> None:
    """A new model that moves a handful: their history is found by probing for them (the
    planner would read both tables whole), and says exactly who moved, from where."""
    scoring.score_customers(db, champion, mode="incremental")
    tampered = query(db, "SELECT customer_id, segment_id FROM segment_assignments"
                         " ORDER BY customer_id LIMIT 7")
    with connection(db) as conn:  # published in a segment the model does not give them
        conn.execute("UPDATE segment_assignments SET segment_id = segment_id + 100"
                     " WHERE customer_id = ANY(%s)", ([c for c, _ in tampered],))
    same = register_copy(db, champion, "m-score-few", champion.label_to_segment)
    result = scoring.score_customers(db, same, mode="incremental")
    assert (result.published_by, result.rows_moved) == ("swap", 7)
    assert query(db, "SELECT customer_id, old_segment_id, new_segment_id, old_model_version"
                     " FROM segment_history WHERE new_model_version = 'm-score-few'"
                     " ORDER BY customer_id") == \
        [(c, s + 100, s, champion.version) for c, s in tampered]
