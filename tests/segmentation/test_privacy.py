"""Erasure and retention: a forgotten customer is nowhere; old raw rows and history go."""

import dataclasses
from pathlib import Path

import pytest

from segmentation import privacy, scoring
from segmentation.db import connection
from segmentation.errors import SegmentationError
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch
from tests.helpers import (
    load_batch,
    partitioned,
    query,
    register_champion,
    stage_all,
    tables_holding,
)

pytestmark = pytest.mark.reliability  # erasure is part of the fault and abuse suite

TABLES = (*privacy.CUSTOMER_TABLES, "customer_segments")


@pytest.fixture
def everywhere(db: str, trained, models_dir: Path, synthetic_csv: Path, tmp_path: Path) -> str:
    """Customer C00000007 in customers, published, in history, staged, quarantined (a later
    batch with a broken tenure, quoted in the validation's examples) and in a landed
    batch."""
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-gdpr-1")
    scoring.score_customers(db, model, mode="full")
    # every customer moves (segment ids reversed), and back: two history rows each, the
    # first past a one-day retention (their first segment kept in customer_origins)
    scoring.score_customers(db, dataclasses.replace(
        model, label_to_segment=model.label_to_segment[::-1]), mode="full")
    with connection(db) as conn:
        conn.execute("UPDATE segment_history SET changed_at = changed_at - interval '2 days'")
    scoring.score_customers(db, model, mode="full")
    with connection(db) as conn:
        privacy.apply_retention(conn, 0, 1)
    # and staged by a partitioned run that died before its publish
    with partitioned(db, model, build=False) as start:
        scoring.stage_partition(db, model, start, 0, 1)
    lines = synthetic_csv.read_text().splitlines()
    header = lines[0].split(",")
    target = next(line for line in lines[1:] if line.startswith('"C00000007",'))
    broken = target.split(",")
    broken[header.index("TENURE")] = "99"
    batch = tmp_path / "broken.csv"
    batch.write_text("\n".join([lines[0], ",".join(broken), *lines[100:160]]) + "\n")
    report = validate_batch(db, ingest_csv(db, batch).batch_id)
    assert report.rows_quarantined == 1
    ingest_csv(db, batch)  # landed again, not validated
    return "C00000007"


def holders(db: str, customer_id: str) -> dict[str, int]:
    return {t: query(db, f"SELECT count(*) FROM {t} WHERE customer_id = %s",
                     (customer_id,))[0][0] for t in TABLES}


def test_forget_removes_a_customer_from_every_table_and_keeps_a_trace(db: str,
                                                                      everywhere: str) -> None:
    before = holders(db, everywhere)
    typical = query(db, "SELECT customer_id FROM run_typical_customers LIMIT 1")[0][0]
    assert all(n for table, n in before.items() if table != "run_typical_customers"), before
    # examples name it in validation_examples only, never in the validation's own lines
    assert "validation_runs" not in tables_holding(db, everywhere)
    others = query(db, "SELECT count(*) FROM customers WHERE customer_id NOT IN (%s, %s)",
                   (everywhere, typical))
    with connection(db) as conn:
        erasure = privacy.forget_customers(conn, [everywhere, "NEVER-SEEN", typical], "test")
    assert set(holders(db, everywhere).values()) == {0}
    assert tables_holding(db, typical) == {}  # shown by the app as typical: gone there too
    assert tables_holding(db, everywhere) == {}  # any table, any column, read as text
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id NOT IN (%s, %s)",
                 (everywhere, typical)) == others
    assert erasure.rows_removed["customers"] == 2 and erasure.customers == 3
    row = query(db, "SELECT requested_by, customers, id_hashes::text, rows_removed::text"
                    " FROM erasures")
    assert len(row) == 1 and row[0][:2] == ("test", 3)
    assert everywhere not in str(row)  # only salted hashes of the ids
    with connection(db) as conn:
        assert privacy.was_erased(conn, everywhere)
        assert not privacy.was_erased(conn, "C00000008")


def test_forget_is_all_or_nothing(db: str, everywhere: str, monkeypatch) -> None:
    before = holders(db, everywhere)
    monkeypatch.setattr(privacy, "CUSTOMER_TABLES", (*privacy.CUSTOMER_TABLES, "no_such_table"))
    with connection(db) as conn, pytest.raises(Exception, match="no_such_table"):
        privacy.forget_customers(conn, [everywhere], "test")
    assert holders(db, everywhere) == before
    assert query(db, "SELECT count(*) FROM erasures") == [(0,)]


def test_retention_removes_only_what_is_older(db: str, everywhere: str) -> None:
    with connection(db) as conn:
        conn.execute("UPDATE customers_quarantine SET quarantined_at = now() - interval '91 days'")
        conn.execute("UPDATE segment_history SET changed_at = now() - interval '800 days'"
                     " WHERE customer_id < 'C00000100'")
    old_history = query(db, "SELECT count(*) FROM segment_history WHERE changed_at <"
                            " now() - interval '730 days'")[0][0]
    total = query(db, "SELECT count(*) FROM segment_history")[0][0]
    with connection(db) as conn:
        kept = privacy.apply_retention(conn, 0, 0)
        assert kept.summary() == "retention: off"
        done = privacy.apply_retention(conn, 90, 730)
    assert (done.quarantined_removed, done.history_removed) == (1, old_history) and old_history
    assert query(db, "SELECT count(*) FROM segment_history") == [(total - old_history,)]
    assert "1 quarantined row(s) older than 90 days" in done.summary()


def test_forget_needs_an_id(db: str) -> None:
    with connection(db) as conn, pytest.raises(SegmentationError, match="no customer id"):
        privacy.forget_customers(conn, ["  "], "test")


def test_an_erasure_during_a_scoring_run_is_not_undone_by_its_publish(
        db: str, trained, models_dir: Path, synthetic_csv: Path) -> None:
    """The run read the customer before the erasure: the erasure waits for the run, so
    the publish cannot bring the customer back."""
    import threading

    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-gdpr-2")
    erasures: list[privacy.Erasure] = []
    threads: list[threading.Thread] = []

    def forget() -> None:
        with connection(db) as conn:
            erasures.append(privacy.forget_customers(conn, ["C00000007"], "test"))

    def erase_mid_run(rows: int, seconds: float) -> None:
        if not threads:  # the run has read and published nothing yet
            threads.append(threading.Thread(target=forget))
            threads[0].start()

    result = scoring.score_customers(db, model, mode="full", chunk_rows=500,
                                     progress=erase_mid_run)
    threads[0].join(60)
    assert erasures and erasures[0].rows_removed["segment_assignments"] == 1
    assert result.rows_scored == 5_000
    assert query(db, "SELECT count(*) FROM customer_segments WHERE customer_id ="
                     " 'C00000007'") == [(0,)]
    assert query(db, "SELECT count(*) FROM customer_segments") == [(4_999,)]


def test_an_erasure_during_a_partitioned_run_waits_for_its_publish(
        db: str, trained, models_dir: Path, synthetic_csv: Path) -> None:
    """Partition tasks have built their tables (holding the customer): an erasure waits for
    the run (its flow holds the run lock until the publish), then removes the customer
    from what the run published; it is never published back."""
    import threading
    import time

    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-gdpr-3")
    erasures: list[privacy.Erasure] = []

    def forget() -> None:
        with connection(db) as conn:
            erasures.append(privacy.forget_customers(conn, ["C00000007"], "test"))

    eraser = threading.Thread(target=forget)
    with partitioned(db, model) as start:
        staged = stage_all(db, model, start, 2)
        eraser.start()
        time.sleep(1.0)
        assert erasures == [], "the erasure waits for the partitioned run"
        result = scoring.publish_staged(db, model, start, staged)
        assert result.rows_new == 5_000
    eraser.join(60)
    assert erasures and erasures[0].rows_removed["segment_assignments"] == 1
    assert query(db, "SELECT count(*) FROM customer_segments WHERE customer_id ="
                     " 'C00000007'") == [(0,)]
    assert query(db, "SELECT count(*) FROM customer_segments") == [(4_999,)]
