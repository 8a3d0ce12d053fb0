"""Reading customers out for a run: exact chunks, values verbatim, the caller's snapshot,
one clear line when the database refuses."""

import math

import pyarrow as pa
import pytest

from segmentation.db import connection
from segmentation.errors import SegmentationError
from segmentation.features import COLUMNS, FEATURES, ID_COLUMN
from segmentation.reading import iter_tables, open_snapshot, rechunk, select_customers

ODD_IDS = ["plain", "with,comma", 'with "quotes"', "multi\nline", "ünïcødé", " spaced "]


def insert_customers(url: str, ids: list[str]) -> None:
    """Customers with these ids; balance null for the first, i / 3 for the others."""
    with connection(url) as conn:
        conn.execute("INSERT INTO ingest_batches (batch_id, source, rows_in, rows_inserted,"
                     " rows_updated, status) VALUES ('b-read', 'test', %s, %s, 0,"
                     " 'validated')", (len(ids), len(ids)))
        with conn.cursor().copy("COPY customers (customer_id, balance, tenure, batch_id)"
                                " FROM STDIN") as copy:
            for i, customer in enumerate(ids):
                copy.write_row((customer, None if i == 0 else i / 3, 12.0, "b-read"))


def test_chunks_are_exact_and_values_verbatim(db: str) -> None:
    ids = ODD_IDS + [f"C{i:05d}" for i in range(2_494)]  # 2,500 rows
    insert_customers(db, ids)
    with connection(db) as conn:
        tables = list(iter_tables(conn, select_customers("full", "m"), 1_000))
    assert [t.num_rows for t in tables] == [1_000, 1_000, 500]
    assert tables[0].column_names == list(COLUMNS)
    table = pa.concat_tables(tables)
    by_id = dict(zip(table[ID_COLUMN].to_pylist(), table["balance"].to_pylist(), strict=True))
    assert sorted(by_id) == sorted(ids)  # every id once, byte for byte
    assert by_id["plain"] is None  # a null stays null, for the imputer
    assert math.isclose(by_id["with,comma"], 1 / 3)  # every digit of the float8
    assert table.schema.field("tenure").type == pa.float64()
    assert set(FEATURES) <= set(table.column_names)


def test_rows_come_from_the_callers_snapshot(db: str) -> None:
    insert_customers(db, ["before"])
    with connection(db) as reader:
        open_snapshot(reader)
        with connection(db) as other:  # committed after the snapshot: not in this run
            other.execute("UPDATE customers SET customer_id = 'after'")
        tables = list(iter_tables(reader, select_customers("full", "m"), 100))
    assert [t[ID_COLUMN].to_pylist() for t in tables] == [["before"]]


def test_rechunk_splits_and_joins_batches_of_any_size() -> None:
    batches = [pa.record_batch({"a": list(range(n))}) for n in (3, 0, 7, 1, 5)]
    chunks = list(rechunk(iter(batches), 4, ["x"]))
    assert [c.num_rows for c in chunks] == [4, 4, 4, 4]
    assert pa.concat_tables(chunks)["x"].to_pylist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 0,
                                                         0, 1, 2, 3, 4]


def test_an_error_while_reading_is_one_clear_line(db: str) -> None:
    from psycopg import sql

    with connection(db) as conn, pytest.raises(SegmentationError) as failed:
        list(iter_tables(conn, sql.Composed([sql.SQL("SELECT 1 / 0")]), 10))
    assert "division by zero" in str(failed.value)
    assert "\n" not in str(failed.value)


def test_feature_matrix_keeps_nulls_as_nan_in_feature_order(db: str) -> None:
    """The matrix a chunk is scored from: every feature in FEATURES order, float64, nulls
    as NaN (what the imputer fills), other values to the last digit."""
    import numpy as np

    from segmentation.reading import feature_matrix_of

    insert_customers(db, ["a", "b", "c"])
    with connection(db) as conn:
        (table,) = iter_tables(conn, select_customers("full", "m"), 10)
    x = feature_matrix_of(table)
    assert x.shape == (3, len(FEATURES)) and x.dtype == np.float64 and x.flags.c_contiguous
    by_id = dict(zip(table[ID_COLUMN].to_pylist(), x.tolist(), strict=True))
    balance, tenure = FEATURES.index("balance"), FEATURES.index("tenure")
    assert math.isnan(by_id["a"][balance]) and by_id["b"][balance] == 1 / 3
    assert by_id["c"][tenure] == 12.0 and math.isnan(by_id["c"][FEATURES.index("purchases")])
