"""Marketing in SQL: read-only role on the views, and segment_for() equal to Python."""

from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from segmentation.db import connection, conninfo, set_marketing_password
from segmentation.features import FEATURES
from segmentation.sqlexport import install_segment_for
from segmentation.training import train_model
from tests.helpers import load_batch, query

VIEWS = ("segment_summary", "segment_summary_by_model", "customer_segments_current",
         "segment_movement",
         "customer_segments", "segment_names", "champion_log", "segment_membership",
         "champion_segment_names")


@pytest.fixture
def marketing(db: str) -> psycopg.Connection:
    """A real login as marketing_ro (password set the way `db migrate` sets it)."""
    set_marketing_password(db, "m4rketing-only")
    url = make_url(db).set(username="marketing_ro", password="m4rketing-only")
    conn = psycopg.connect(conninfo(url.render_as_string(hide_password=False)),
                           autocommit=True)
    yield conn
    conn.close()


@pytest.mark.parametrize("view", VIEWS)
def test_marketing_reads_the_views(marketing: psycopg.Connection, view: str) -> None:
    marketing.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()


@pytest.mark.parametrize("statement", [
    "INSERT INTO segment_assignments VALUES ('x', 1, 'v', now(), gen_random_uuid())",
    "UPDATE segment_assignments SET segment_id = 0",
    "DELETE FROM segment_assignments",
    "TRUNCATE segment_assignments",
    "SELECT * FROM segment_assignments",  # the storage: marketing reads the views
    "UPDATE segment_name_overrides SET name = 'x'",
    "DROP VIEW customer_segments",
    "CREATE TABLE marketing_scratch (x int)",
    "ALTER TABLE segment_assignments ADD COLUMN x int",
    "SELECT * FROM customers",  # raw features are not marketing's
    "SELECT * FROM customers_quarantine",
])
def test_marketing_cannot_write_or_change_anything(marketing: psycopg.Connection,
                                                   statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        marketing.execute(statement)


def test_segment_for_matches_python_on_every_real_row(db: str, real_data: Path,
                                                      real_frame) -> None:
    load_batch(db, real_data)
    model = train_model(real_frame, "m-sql-1", k=4, k_range=range(0))
    with connection(db) as conn:
        install_segment_for(conn, model.model)
    columns = ", ".join(FEATURES)
    in_sql = dict(query(db, f"SELECT customer_id, segment_for({columns}) FROM customers"))
    expected = dict(zip(real_frame["customer_id"], model.model.predict(real_frame).tolist(),
                        strict=True))
    assert len(in_sql) == 8_950
    mismatches = [cid for cid, seg in expected.items() if in_sql[cid] != seg]
    assert mismatches == []


def test_segment_name_takes_the_integers_marketing_types(
        db: str, marketing: psycopg.Connection, trained, models_dir: Path,
        synthetic_csv: Path) -> None:
    from tests.helpers import register_champion

    load_batch(db, synthetic_csv)
    register_champion(db, trained, models_dir, "m-name-int")
    names = dict(query(db, "SELECT segment_id, segment_name FROM segment_names"
                           " WHERE model_version = 'm-name-int'"))
    assert marketing.execute("SELECT segment_name(2)").fetchone() == (names[2],)
    assert marketing.execute("SELECT segment_name(2::smallint)").fetchone() == (names[2],)
    assert marketing.execute("SELECT segment_name(70000)").fetchone() == (None,)  # no segment
