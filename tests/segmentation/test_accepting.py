"""Accepting a batch into customers: the plan of the join that finds its changes."""

from pathlib import Path

import psycopg
from psycopg import sql

from segmentation.accepting import select_changes
from segmentation.db import conninfo, merge_joins
from segmentation.generate import generate_csv
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch


def test_a_batch_is_compared_with_each_partition_by_key_without_a_copy(
        db: str, tmp_path: Path) -> None:
    """customers in two partitions (a first load in two slices), then a batch in two
    slices: each partition is merged with the batch's rows of its range, both sides read
    by key, nothing sorted and nothing copied into a tuplestore (a Materialize, which a
    merge join needs over a parent of partitions, and which costs a copy of every row)."""
    path = tmp_path / "customers.csv"
    generate_csv(path, 2_000, seed=3)
    first = ingest_csv(db, path, streams=2, parallel_min_bytes=0).batch_id
    assert validate_batch(db, first).success
    batch = ingest_csv(db, path, streams=2, parallel_min_bytes=0).batch_id
    with psycopg.connect(conninfo(db)) as conn:
        conn.execute("SET LOCAL enable_sort = off")  # as merge_changes
        conn.execute("SET LOCAL enable_nestloop = off")  # as at scale: index probes lose
        with merge_joins(conn):
            plan = "\n".join(row[0] for row in conn.execute(
                sql.SQL("EXPLAIN {}").format(select_changes(conn)), {"batch": batch}))
    assert plan.count("Merge Left Join") == 2, plan
    assert "Materialize" not in plan and "Sort" not in plan.replace("Sort Key", ""), plan
