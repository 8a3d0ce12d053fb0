"""Migrations: numbered, idempotent, transactional, tamper-evident."""

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from segmentation.db import apply_migrations, conninfo, list_migrations, sql_dir
from segmentation.errors import SegmentationError
from tests.conftest import admin_url
from tests.helpers import query


def test_migrations_are_numbered_and_ordered() -> None:
    migrations = list_migrations()
    assert migrations, "sql/ holds no migrations"
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)


def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    before = query(database_url, "SELECT version, applied_at FROM schema_migrations")
    assert apply_migrations(database_url) == []
    assert apply_migrations(database_url) == []
    after = query(database_url, "SELECT version, applied_at FROM schema_migrations")
    assert before == after
    assert len(after) == len(list_migrations())


def test_contract_tables_and_columns_exist(database_url: str) -> None:
    columns = set(query(database_url,
                        "SELECT table_name, column_name FROM information_schema.columns"
                        " WHERE table_schema = 'public'"))
    for table, column in [("customers", "customer_id"), ("customers", "tenure"),
                          ("customers", "batch_id"), ("customers", "loaded_at"),
                          ("customer_segments", "segment_name"), ("customer_segments", "run_id"),
                          ("model_versions", "sha256"), ("model_versions", "metrics"),
                          ("scoring_runs", "status")]:
        assert (table, column) in columns


def test_edited_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    first = sorted(copy.glob("001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(SegmentationError, match="edited after it was applied"):
        apply_migrations(database_url, copy)


def test_failed_migration_rolls_back(database_url: str, tmp_path: Path) -> None:
    copy = tmp_path / "sql"
    shutil.copytree(sql_dir(), copy)
    (copy / "999_broken.sql").write_text("CREATE TABLE half_done (x int);\nSELECT 1/0;\n")
    with pytest.raises(Exception, match="division by zero"):
        apply_migrations(database_url, copy)
    assert query(database_url, "SELECT to_regclass('half_done')") == [(None,)]
    assert query(database_url, "SELECT count(*) FROM schema_migrations WHERE version = '999'") \
        == [(0,)]


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty database of its own (not migrated), dropped afterwards."""
    name = f"seg_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(conninfo(admin_url()), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo(admin_url()), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def migrations_until(tmp_path: Path, last: str) -> Path:
    """A folder with the migrations up to `last` (a database as an older release left it)."""
    folder = tmp_path / f"sql_{last}"
    folder.mkdir()
    for migration in list_migrations():
        if migration.version <= last:
            (folder / migration.name).write_text(migration.sql, encoding="utf-8")
    return folder


def test_swap_migration_keeps_published_rows_history_and_views(fresh_database: str,
                                                               tmp_path: Path) -> None:
    """006 turns a customer_segments holding data into the parent of one partition."""
    apply_migrations(fresh_database, migrations_until(tmp_path, "005"))
    run = "00000000-0000-4000-8000-00000000000a"
    with psycopg.connect(conninfo(fresh_database)) as conn:
        conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256)"
                     " VALUES ('m1', 'champion', 4, '{}', 'm1.joblib', 'x')")
        conn.execute("INSERT INTO customer_segments SELECT 'C' || i, i %% 4, 'S' || i %% 4,"
                     " 'm1', now(), %s FROM generate_series(1, 100) i", (run,))
        conn.execute("INSERT INTO segment_history (customer_id, new_segment_id,"
                     " new_model_version, changed_at, run_id) SELECT customer_id, segment_id,"
                     " model_version, scored_at, run_id FROM customer_segments")
    rows = query(fresh_database, "SELECT * FROM customer_segments ORDER BY customer_id")
    assert [m.split("_")[0] for m in apply_migrations(
        fresh_database, migrations_until(tmp_path, "006"))] == ["006"]
    assert query(fresh_database, "SELECT * FROM customer_segments ORDER BY customer_id") == rows
    assert query(fresh_database, "SELECT count(*) FROM customer_segments_current") == [(100,)]
    assert query(fresh_database, "SELECT inhrelid::regclass::text FROM pg_inherits"
                                 " WHERE inhparent = 'customer_segments'::regclass") == \
        [("customer_segments_p",)]
    assert query(fresh_database, "SELECT count(*) FROM segment_history") == [(100,)]
    with psycopg.connect(conninfo(fresh_database)) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation):  # one row per customer per run
        conn.execute("INSERT INTO segment_history (customer_id, new_segment_id,"
                     " new_model_version, changed_at, run_id)"
                     " VALUES ('C1', 2, 'm1', now(), %s)", (run,))


def test_day2_migration_resolves_names_and_logs_earlier_champions(fresh_database: str,
                                                                 tmp_path: Path) -> None:
    """007: published rows lose their copy of the name (read from the profiles and ops'
    renames instead), and the champions promoted so far start the champion log."""
    apply_migrations(fresh_database, migrations_until(tmp_path, "006"))
    run = "00000000-0000-4000-8000-00000000000b"
    with psycopg.connect(conninfo(fresh_database)) as conn:
        for version, status, at in (("m1", "retired", "2026-01-01"),
                                    ("m2", "champion", "2026-02-01")):
            conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256,"
                         " status_reason, promoted_at) VALUES (%s, %s, 2, '{}', 'p', 'x',"
                         " 'gates passed', %s)", (version, status, at))
            for seg in (0, 1):
                conn.execute("INSERT INTO segment_profiles VALUES (%s, %s, %s, 'profile', 1, 0.5,"
                             " '{}', '{}')", (version, seg, f"{version} segment {seg}"))
        conn.execute("INSERT INTO segment_name_overrides (segment_id, name) VALUES (1, 'Dormant')")
        conn.execute("INSERT INTO customer_segments SELECT 'C' || i, i %% 2, 'stale copy',"
                     " 'm2', now(), %s FROM generate_series(1, 10) i", (run,))
    before = query(fresh_database, "SELECT customer_id, segment_id, model_version, scored_at,"
                                   " run_id FROM customer_segments ORDER BY customer_id")
    assert [m.split("_")[0] for m in apply_migrations(
        fresh_database, migrations_until(tmp_path, "007"))] == ["007"]
    assert query(fresh_database, "SELECT customer_id, segment_id, model_version, scored_at,"
                                 " run_id FROM customer_segments ORDER BY customer_id") == before
    assert query(fresh_database, "SELECT DISTINCT segment_id, segment_name FROM"
                                 " customer_segments ORDER BY 1") == \
        [(0, "m2 segment 0"), (1, "Dormant")]
    assert query(fresh_database, "SELECT version, previous_version, action FROM champion_log"
                                 " ORDER BY id") == [("m1", None, "promote"),
                                                     ("m2", "m1", "promote")]
    assert query(fresh_database, "SELECT count(*) FROM segment_assignments") == [(10,)]


def test_moves_only_migration_keeps_what_history_says(fresh_database: str,
                                                      tmp_path: Path) -> None:
    """011: history as earlier releases stored it (every first assignment, every model
    switch) becomes moves only, with the first assignments moved onto the published rows:
    the membership timeline, the moves and the per-run counts read the same after."""
    apply_migrations(fresh_database, migrations_until(tmp_path, "010"))
    runs = [f"00000000-0000-4000-8000-00000000001{i}" for i in range(3)]
    # customer -> segment after each run (None: not yet scored); r1 and r2 used m1 and m2
    story = {"C1": (0, 0, 0), "C2": (0, 1, 1), "C3": (1, 1, 0), "C4": (1, 0, 1),
             "C5": (None, 1, 1), "C6": (None, None, 0)}
    with psycopg.connect(conninfo(fresh_database)) as conn:
        for version in ("m1", "m2"):
            conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256)"
                         " VALUES (%s, 'retired', 2, '{}', 'p', 'x')", (version,))
            for seg in (0, 1):
                conn.execute("INSERT INTO segment_profiles VALUES (%s, %s, %s, 'p', 1, 0.5,"
                             " '{}', '{}')", (version, seg, f"segment {seg}"))
        conn.execute("UPDATE model_versions SET status = 'champion' WHERE version = 'm2'")
        for i, run in enumerate(runs):
            version = "m1" if i == 0 else "m2"
            conn.execute("INSERT INTO scoring_runs (run_id, model_version, mode, status,"
                         " started_at, finished_at) VALUES (%s, %s, 'full', 'succeeded',"
                         " '2026-01-01'::timestamptz + %s * interval '1 day',"
                         " '2026-01-01'::timestamptz + %s * interval '1 day')",
                         (run, version, i, i))
        for customer, segments in story.items():
            before: tuple[int | None, str | None] = (None, None)
            for i, (run, segment) in enumerate(zip(runs, segments, strict=True)):
                version = "m1" if i == 0 else "m2"
                if segment is None or before == (segment, version):
                    continue  # not scored yet, or nothing changed: no row then either
                conn.execute("INSERT INTO segment_history (customer_id, old_segment_id,"
                             " new_segment_id, old_model_version, new_model_version,"
                             " changed_at, run_id) SELECT %s, %s, %s, %s, %s, started_at, %s"
                             " FROM scoring_runs WHERE run_id = %s",
                             (customer, before[0], segment, before[1], version, run, run))
                before = (segment, version)
            conn.execute("INSERT INTO segment_assignments (customer_id, segment_id,"
                         " model_version, scored_at, run_id) SELECT %s, %s, 'm2', started_at,"
                         " run_id FROM scoring_runs WHERE run_id = %s",
                         (customer, segments[-1], runs[-1]))
    membership = "SELECT * FROM segment_membership ORDER BY customer_id, valid_from"
    moves = ("SELECT run_id, from_segment, to_segment, customers FROM segment_movement"
             " WHERE from_segment IS DISTINCT FROM to_segment ORDER BY 1, 2 NULLS FIRST, 3")
    timeline, movement = query(fresh_database, membership), query(fresh_database, moves)
    assert len(timeline) == 6 + 4  # a stretch per customer, and one per move
    assert [m.split("_")[0] for m in apply_migrations(
        fresh_database, migrations_until(tmp_path, "011"))] == ["011"]
    assert query(fresh_database, membership) == timeline
    assert query(fresh_database, moves) == movement
    assert query(fresh_database, "SELECT count(*) FROM segment_history") == [(4,)]
    assert dict(query(fresh_database, "SELECT customer_id, first_run_id::text FROM"
                                      " customer_segments")) == \
        {"C1": runs[0], "C2": runs[0], "C3": runs[0], "C4": runs[0], "C5": runs[1],
         "C6": runs[2]}
    assert query(fresh_database, "SELECT rows_new, rows_moved FROM scoring_runs"
                                 " ORDER BY started_at") == [(4, 0), (1, 2), (1, 2)]
    with psycopg.connect(conninfo(fresh_database)) as conn, \
            pytest.raises(psycopg.errors.CheckViolation):  # history holds moves only
        conn.execute("INSERT INTO segment_history VALUES ('C1', 0, 0, 'm1', 'm2', now(), %s)",
                     (runs[2],))


def test_batch_partitions_migration_keeps_landed_batches_validatable(
        fresh_database: str, tmp_path: Path) -> None:
    """Batches landed by an earlier release, not validated yet, become partitions named as
    ingest names them; validating one afterwards accepts it and drops its table."""
    import hashlib

    from segmentation.validation import validate_batch

    apply_migrations(fresh_database, migrations_until(tmp_path, "017"))
    batches = ["b-old-1", "b-old-2"]
    with psycopg.connect(conninfo(fresh_database)) as conn:
        for n, batch in enumerate(batches, start=1):
            conn.execute("INSERT INTO ingest_batches (batch_id, source, rows_in, rows_inserted,"
                         " rows_updated) VALUES (%s, 'old.csv', %s, 0, 0)", (batch, n))
            conn.execute("INSERT INTO customers_incoming (customer_id, balance, balance_frequency,"
                         " purchases, oneoff_purchases, installments_purchases, cash_advance,"
                         " purchases_frequency, oneoff_purchases_frequency,"
                         " purchases_installments_frequency, cash_advance_frequency,"
                         " cash_advance_trx, purchases_trx, credit_limit, payments,"
                         " minimum_payments, prc_full_payment, tenure, batch_id)"
                         " SELECT 'C' || i, 40.9, 0.8, 95.4, 0, 95.4, 0, 0.2, 0, 0.1, 0, 0,"
                         " 2, 1000, 201.8, 139.5, 0, 12, %s FROM generate_series(1, %s) i",
                         (batch, n))
    rows = "SELECT customer_id, balance, tenure, batch_id FROM customers_incoming ORDER BY 1, 4"
    before = query(fresh_database, rows)
    assert [m.split("_")[0] for m in apply_migrations(
        fresh_database, migrations_until(tmp_path, "018"))] == ["018"]
    assert query(fresh_database, rows) == before
    names = {"landing_" + hashlib.md5(b.encode()).hexdigest()[:16] for b in batches}
    assert {r[0] for r in query(fresh_database, "SELECT inhrelid::regclass::text FROM"
                                " pg_inherits WHERE inhparent = 'customers_incoming'::regclass"
                                )} == names
    apply_migrations(fresh_database)
    report = validate_batch(fresh_database, "b-old-2")
    assert (report.success, report.rows_accepted) == (True, 2), report.summary()
    assert query(fresh_database, "SELECT count(*) FROM pg_inherits WHERE inhparent ="
                                 " 'customers_incoming'::regclass") == [(1,)]


def test_range_migration_keeps_customers_and_their_key(fresh_database: str,
                                                       tmp_path: Path) -> None:
    """019 turns a customers holding data into the parent of one partition of every id: the
    same rows, the key still named customers_pkey, the app reading it through the parent
    only."""
    apply_migrations(fresh_database, migrations_until(tmp_path, "018"))
    with psycopg.connect(conninfo(fresh_database)) as conn:
        conn.execute("INSERT INTO customers (customer_id, balance, tenure, batch_id)"
                     " SELECT 'C' || i, i, 12, 'b-old' FROM generate_series(1, 100) i")
    rows = "SELECT * FROM customers ORDER BY customer_id"
    before = query(fresh_database, rows)
    assert [m.split("_")[0] for m in apply_migrations(
        fresh_database, migrations_until(tmp_path, "019"))] == ["019"]
    assert query(fresh_database, rows) == before
    assert query(fresh_database, "SELECT inhrelid::regclass::text, pg_get_expr(c.relpartbound,"
                                 " c.oid) FROM pg_inherits JOIN pg_class c ON c.oid = inhrelid"
                                 " WHERE inhparent = 'customers'::regclass") == \
        [("customers_all", "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)")]
    assert query(fresh_database, "SELECT indexname FROM pg_indexes WHERE tablename ="
                                 " 'customers' ORDER BY 1") == \
        [("customers_loaded_at_idx",), ("customers_pkey",)]
    with psycopg.connect(conninfo(fresh_database)) as conn, \
            pytest.raises(psycopg.errors.UniqueViolation, match="customers_pkey"):
        conn.execute("INSERT INTO customers (customer_id, batch_id) VALUES ('C1', 'b')")
    with psycopg.connect(conninfo(fresh_database)) as conn:
        conn.execute("SET ROLE segmentation_app")
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (100,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM customers_all")
