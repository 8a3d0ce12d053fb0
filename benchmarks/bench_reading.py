"""What a scoring read costs the client and the server, per way of sending the features.

    python benchmarks/bench_reading.py [--rows 1000000] [--rounds 3]

Fills `customers` of a throwaway database on the local server with N rows (the generator's
features, a null in about one value in twenty), then streams every customer through ADBC's
PostgreSQL driver into one float64 matrix per 100,000-row chunk, two ways, in turns:
"columns" (the id and 17 double columns, the matrix filled column by column, as scoring
read until 2026-12-03) and "packed" (the id and `reading.packed_features`: one fixed-width
bytea a row, read by `reading.feature_matrix_of`, as scoring reads now). Prints wall
seconds, this process's CPU seconds (the driver's decoding is most of it) and the serving
backend's CPU seconds (read from /proc: the server must be on this machine), and the
ratios columns/packed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import throwaway_database
from segmentation.db import connection
from segmentation.features import FEATURES, ID_COLUMN
from segmentation.reading import feature_matrix_of, select_customers

CHUNK = 100_000


def fill_customers(url: str, rows: int) -> None:
    """N customers straight into `customers` (a decode benchmark needs no validation)."""
    values = ", ".join(f"CASE WHEN random() < 0.05 THEN NULL ELSE random() * {10 ** (i % 4)}"
                       " END" for i in range(len(FEATURES)))
    with connection(url) as conn:
        conn.execute("INSERT INTO ingest_batches (batch_id, source, rows_in, rows_inserted,"
                     " rows_updated, status) VALUES ('bench', 'bench', %s, %s, 0,"
                     " 'validated')", (rows, rows))
        conn.execute(f"INSERT INTO customers (customer_id, {', '.join(FEATURES)}, batch_id)"
                     f" SELECT 'C' || lpad(g::text, 9, '0'), {values}, 'bench'"
                     " FROM generate_series(1, %s) g", (rows,))
    with connection(url, autocommit=True) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE) customers")


def backend_cpu(pid: int) -> float:
    """CPU seconds a local backend has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def matrix_from_columns(batch: Any) -> Any:
    """The earlier way: each double column copied into the matrix in turn."""
    import numpy as np

    x = np.empty((batch.num_rows, len(FEATURES)), dtype=np.float64)
    for j, name in enumerate(FEATURES):
        x[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return x


def read_once(url: str, query: str, to_matrix: Any) -> tuple[float, float, float, float]:
    """Stream the query into matrices; (wall s, client CPU s, backend CPU s, checksum)."""
    import pyarrow as pa
    from adbc_driver_postgresql import StatementOptions, dbapi
    from sqlalchemy.engine import make_url

    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = dbapi.connect(plain, autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
        cursor.adbc_statement.set_options(
            **{StatementOptions.BATCH_SIZE_HINT_BYTES.value: str(CHUNK * 200)})
        server0, wall0, client0 = backend_cpu(pid), time.perf_counter(), time.process_time()
        cursor.execute(query)
        total = 0.0
        for batch in cursor.fetch_record_batch():
            x = to_matrix(pa.Table.from_batches([batch]) if to_matrix is feature_matrix_of
                          else batch)
            total += float(x[:, 0][x[:, 0] == x[:, 0]].sum())  # touch it; NaN skipped
        return (time.perf_counter() - wall0, time.process_time() - client0,
                backend_cpu(pid) - server0, total)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    columns_sql = (f"SELECT c.{ID_COLUMN}, " + ", ".join(f"c.{f}" for f in FEATURES)
                   + " FROM customers c")
    with throwaway_database() as url:
        fill_customers(url, args.rows)
        with connection(url) as conn:
            packed_sql = select_customers("full", "bench").as_string(conn)
        ways = {"columns": (columns_sql, matrix_from_columns),
                "packed": (packed_sql, feature_matrix_of)}
        best: dict[str, tuple[float, float, float]] = {}
        sums = set()
        print(f"rows {args.rows:,}, {args.rounds} rounds; seconds: wall, client CPU, "
              "backend CPU")
        for round_ in range(1, args.rounds + 1):
            for name, (query, to_matrix) in ways.items():
                wall, client, server, total = read_once(url, query, to_matrix)
                sums.add(round(total, 3))
                print(f"  round {round_} {name:8s} {wall:6.2f} {client:6.2f} {server:6.2f}",
                      flush=True)
                prior = best.get(name, (float("inf"),) * 3)
                best[name] = (min(prior[0], wall), min(prior[1], client), min(prior[2], server))
        if len(sums) != 1:
            raise SystemExit(f"the two ways read different numbers: {sorted(sums)}")
        (cw, cc, cs), (pw, pc, ps) = best["columns"], best["packed"]
        print(f"best of {args.rounds}: columns {cw:.2f} / {cc:.2f} / {cs:.2f}, packed "
              f"{pw:.2f} / {pc:.2f} / {ps:.2f}; columns/packed: wall {cw / pw:.2f}, "
              f"client CPU {cc / pc:.2f}, backend CPU {cs / ps:.2f}, CPU both sides "
              f"{(cc + cs) / (pc + ps):.2f}")


if __name__ == "__main__":
    main()
