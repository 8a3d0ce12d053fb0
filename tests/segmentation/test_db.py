"""Migrations: numbered, idempotent, transactional, tamper-evident."""

import shutil
from pathlib import Path

import pytest

from segmentation.db import apply_migrations, list_migrations, sql_dir
from segmentation.errors import SegmentationError
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
