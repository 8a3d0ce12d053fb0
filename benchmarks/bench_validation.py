"""Validation cost at N rows beside the raw COPY of the same table, in one run.

    python benchmarks/bench_validation.py [--rows 1000000]

Uses SEGMENTATION_DATABASE_URL if set, else a throwaway database on the local server.
Prints seconds and the ratio validation / COPY (the target is about 1).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from segmentation.db import apply_migrations, connection, conninfo
from segmentation.generate import generate_csv
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch

ADMIN = os.environ.get("SEGMENTATION_TEST_DATABASE_URL",
                       "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def copy_out_seconds(url: str, batch_id: str) -> float:
    """Raw floor: COPY the landed batch out to memory."""
    t0 = time.perf_counter()
    sink = io.BytesIO()
    with connection(url) as conn, conn.cursor().copy(
            "COPY (SELECT * FROM customers_incoming WHERE batch_id = %s) TO STDOUT",
            (batch_id,)) as copy:
        for block in copy:
            sink.write(block)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    name = f"seg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo(ADMIN), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        apply_migrations(url)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "customers.csv"
            t0 = time.perf_counter()
            generate_csv(path, args.rows, seed=1)
            generate_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            batch = ingest_csv(url, path)
            ingest_s = time.perf_counter() - t0
        copy_s = copy_out_seconds(url, batch.batch_id)
        import great_expectations  # noqa: F401  (import cost is paid once per process)

        t0 = time.perf_counter()
        report = validate_batch(url, batch.batch_id)
        validate_s = time.perf_counter() - t0
        print(f"rows                 {args.rows:>12,}")
        print(f"generate CSV         {generate_s:>10.2f} s")
        print(f"ingest (COPY+checks) {ingest_s:>10.2f} s")
        print(f"raw COPY out         {copy_s:>10.2f} s")
        gx_s = report.timings["gx_s"]
        print(f"validate end to end  {validate_s:>10.2f} s   "
              f"({report.rows_accepted:,} accepted, {report.rows_quarantined:,} quarantined)")
        print(f"  GX contract checks {gx_s:>10.2f} s")
        print(f"  accept into customers {report.timings['accept_s']:>7.2f} s")
        print(f"ratio GX checks/COPY {gx_s / copy_s:>10.2f}")
        print(f"ratio end-to-end/COPY {validate_s / copy_s:>9.2f}")
    finally:
        with psycopg.connect(conninfo(ADMIN), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
