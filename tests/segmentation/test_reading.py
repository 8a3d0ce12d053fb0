"""Reading customers out for a run: exact chunks, values verbatim, the caller's snapshot,
one clear line when the database refuses."""

import math

import numpy as np
import pyarrow as pa
import pytest
from psycopg import sql

from segmentation.db import connection
from segmentation.errors import SegmentationError
from segmentation.features import COLUMNS, FEATURES, ID_COLUMN
from segmentation.reading import (
    PACKED,
    SCORE_COLUMNS,
    feature_matrix_of,
    iter_chunks,
    iter_tables,
    open_snapshot,
    reader_settings,
    rechunk,
    select_customers,
)

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
    assert tables[0].column_names == list(SCORE_COLUMNS)
    # chunks cut across the driver's batches: the matrix reads each slice at its offset
    matrix = np.concatenate([feature_matrix_of(t) for t in tables])
    table = pa.concat_tables(tables)
    balance = dict(zip(table[ID_COLUMN].to_pylist(), matrix[:, FEATURES.index("balance")],
                       strict=True))
    assert sorted(balance) == sorted(ids)  # every id once, byte for byte
    assert math.isnan(balance["plain"])  # a null is NaN, for the imputer
    assert balance["with,comma"] == 1 / 3  # every digit of the float8
    assert all(balance[f"C{i:05d}"] == (i + len(ODD_IDS)) / 3 for i in range(2_494))
    assert (matrix[:, FEATURES.index("tenure")] == 12.0).all()


def test_the_same_rows_read_as_columns_for_training(db: str) -> None:
    insert_customers(db, ["a", "b"])
    with connection(db) as conn:
        (frame,) = iter_chunks(conn, sql.SQL("SELECT {} FROM customers ORDER BY 1").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)), 10)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["balance"].isna().tolist() == [True, False] and frame["tenure"].eq(12).all()


def test_a_matrix_is_refused_from_anything_but_packed_features() -> None:
    wrong = pa.table({PACKED: pa.array([b"\x00" * 8 * len(FEATURES), b"\x00" * 8],
                                       pa.binary())})
    with pytest.raises(SegmentationError, match="not 17 numbers a row"):
        feature_matrix_of(wrong)
    with pytest.raises(SegmentationError, match="not 17 numbers a row"):
        feature_matrix_of(pa.table({PACKED: pa.array([None], pa.binary())}))


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
    with connection(db) as conn, pytest.raises(SegmentationError) as failed:
        list(iter_tables(conn, sql.Composed([sql.SQL("SELECT 1 / 0")]), 10))
    assert "division by zero" in str(failed.value)
    assert "\n" not in str(failed.value)


def test_feature_matrix_keeps_nulls_as_nan_in_feature_order(db: str) -> None:
    """The matrix a chunk is scored from: every feature in FEATURES order, float64, nulls
    as NaN (what the imputer fills), other values to the last digit."""
    insert_customers(db, ["a", "b", "c"])
    with connection(db) as conn:
        (table,) = iter_tables(conn, select_customers("full", "m"), 10)
    x = feature_matrix_of(table)
    assert x.shape == (3, len(FEATURES)) and x.dtype == np.float64 and x.flags.c_contiguous
    by_id = dict(zip(table[ID_COLUMN].to_pylist(), x.tolist(), strict=True))
    balance, tenure = FEATURES.index("balance"), FEATURES.index("tenure")
    assert math.isnan(by_id["a"][balance]) and by_id["b"][balance] == 1 / 3
    assert by_id["c"][tenure] == 12.0 and math.isnan(by_id["c"][FEATURES.index("purchases")])


RANGES = {
    1: ["CREATE TABLE customers_read_0 PARTITION OF customers"
        " FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"],
    2: ["CREATE TABLE customers_read_0 PARTITION OF customers"
        " FOR VALUES FROM (MINVALUE) TO ('C015000')",
        "CREATE TABLE customers_read_1 PARTITION OF customers"
        " FOR VALUES FROM ('C015000') TO (MAXVALUE)"],
}

HASHES = {
    1: ["CREATE TABLE segment_assignments_p PARTITION OF segment_assignments"
        " FOR VALUES WITH (modulus 1, remainder 0)"],
    2: ["CREATE TABLE segment_assignments_p0 PARTITION OF segment_assignments"
        " FOR VALUES WITH (modulus 2, remainder 0)",
        "CREATE TABLE segment_assignments_p1 PARTITION OF segment_assignments"
        " FOR VALUES WITH (modulus 2, remainder 1)"],
}


@pytest.mark.parametrize("published", [1, 2])
@pytest.mark.parametrize("partitions", [1, 2])
def test_a_build_reads_both_tables_by_their_keys_even_out_of_key_order(
        db: str, partitions: int, published: int) -> None:
    """A rebuild's reader merges customers with the published rows by two key scans in one
    process, even when rows are out of key order (as a night's updates leave them) and the
    planner would rather sort: it then sorted the whole published table in each parallel
    worker, on disk (docs/performance.md has what that cost at 30 M). customers in two
    ranges (a first load in two slices) is read as its partitions one after the other, in
    key order still; with the published table in one partition, nothing is copied into a
    tuplestore on the way (in two, one side is, as before customers had ranges)."""
    import random

    from segmentation.accepting import drop_partitions
    from segmentation.rebuild import select_for_build

    with connection(db) as conn:  # customers' ranges as a first load in `partitions` slices
        drop_partitions(conn)
        for statement in RANGES[partitions]:
            conn.execute(statement)
        for (name,) in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits WHERE"
                                    " inhparent = 'segment_assignments'::regclass").fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        for statement in HASHES[published]:  # as one night, or a night in 2 partitions
            conn.execute(statement)
    ids = [f"C{i:06d}" for i in range(30_000)]
    random.Random(5).shuffle(ids)  # stored out of key order
    insert_customers(db, ids)
    with connection(db) as conn:
        conn.execute("INSERT INTO segment_assignments (customer_id, segment_id, model_version,"
                     " scored_at, run_id, first_run_id) SELECT customer_id, 0, 'm0', now(),"
                     " gen_random_uuid(), gen_random_uuid() FROM customers ORDER BY random()")
        conn.execute("ANALYZE customers")
        conn.execute("ANALYZE segment_assignments")
        # the planner's view at 30 M: tables far beyond its cache, parallel workers cheap
        for setting in ("SET LOCAL effective_cache_size = '64kB'",
                        "SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0",
                        "SET LOCAL min_parallel_table_scan_size = 0",
                        *reader_settings(compare=True)):
            conn.execute(setting)
        plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(
            select_for_build("m1", carry=True))).fetchone()
    assert plan is not None

    def kinds(node: dict) -> list[str]:  # type: ignore[type-arg]
        return [node["Node Type"]] + [k for child in node.get("Plans", []) for k in kinds(child)]

    def tables(node: dict) -> set[str]:  # type: ignore[type-arg]
        return {node.get("Relation Name", "")} | {t for c in node.get("Plans", [])
                                                  for t in tables(c)}

    # (the published side in two partitions is a Merge Append of key scans: key order
    # still, nothing sorted)
    root = plan[0][0]["Plan"]
    plan_kinds = kinds(root)
    assert plan_kinds[0] == "Merge Join", plan_kinds
    assert {k for k in plan_kinds if "Scan" in k} == {"Index Scan"}, plan_kinds
    assert not {"Sort", "Gather", "Gather Merge"} & set(plan_kinds), plan_kinds
    # customers read as they are, its ranges one after the other
    side = next(c for c in root["Plans"] if "customers_read_0" in tables(c))
    reads = side["Plans"][0] if side["Node Type"] == "Materialize" else side
    assert reads["Node Type"] == ("Append" if partitions > 1 else "Index Scan"), plan_kinds
    assert tables(reads) - {""} == {f"customers_read_{i}" for i in range(partitions)}
    # a merge join steps back in its inner side, which a parent of partitions cannot: one
    # side is then copied into a tuplestore, but only when both are parents of several
    if published == 1:
        assert "Materialize" not in plan_kinds, plan_kinds
