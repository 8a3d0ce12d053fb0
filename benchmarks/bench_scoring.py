"""Scoring at N customers: raw COPY floor, the naive notebook path, and ours, in one run.

    python benchmarks/bench_scoring.py [--rows 1000000]

Each stage runs in its own process; its peak RSS is sampled every 20 ms with psutil
(ru_maxrss would carry over this parent's high-water mark through fork/exec). Prints
seconds, rows/s, peak RSS, and the ratios floor/ours and naive/ours.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOR = """
import io, sys, time
from segmentation.db import connection
url, n = sys.argv[1], int(sys.argv[2])
with connection(url) as conn:
    sink = io.BytesIO()
    with conn.cursor().copy("COPY customers TO STDOUT") as copy:
        for block in copy:
            sink.write(block)
    conn.execute("CREATE TEMP TABLE floor_out (customer_id text, segment_id smallint,"
                 " model_version text, scored_at timestamptz)")
    with conn.cursor().copy("COPY floor_out FROM STDIN") as copy:
        row = b"C%08d\\t1\\tm1\\t2026-01-01 00:00:00+00\\n"
        for start in range(0, n, 100_000):
            copy.write(b"".join(row % i for i in range(start, min(n, start + 100_000))))
"""

NAIVE = """
import sys
import pandas as pd
from segmentation.db import connection, sa_engine
from segmentation.registry import load_version
url = sys.argv[1]
engine = sa_engine(url)
with connection(url) as conn:
    model = load_version(conn)
df = pd.read_sql("SELECT * FROM customers", engine)
out = pd.DataFrame({"customer_id": df["customer_id"], "segment_id": model.predict(df),
                    "model_version": model.version, "scored_at": pd.Timestamp.now(tz="UTC")})
out.to_sql("naive_segments", engine, if_exists="replace", index=False, chunksize=100_000)
"""

OURS = """
import sys
from segmentation.db import connection
from segmentation.registry import load_version, apply_name_overrides
from segmentation.scoring import score_customers
url = sys.argv[1]
with connection(url) as conn:
    model = load_version(conn)
    names = apply_name_overrides(conn, model)
result = score_customers(url, model, names, mode="full")
print(result.timings)
"""


def stage(label: str, argv: list[str], env: dict[str, str], rows: int) -> float:
    """Run one stage in a child process; print seconds, rows/s and its peak RSS."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=ROOT)
    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    if child.returncode != 0:
        raise SystemExit(f"{label} failed with status {child.returncode}")
    print(f"{label:<42} {seconds:>7.2f} s {rows / seconds:>12,.0f} rows/s "
          f"peak RSS {peak / 2**20:>7,.0f} MiB", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import throwaway_database
    from segmentation import registry
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv
    from segmentation.training import load_training_frame, register_and_gate, train_model
    from segmentation.validation import validate_batch

    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        generate_csv(path, args.rows, 5)
        validate_batch(url, ingest_csv(url, path).batch_id)
        result = train_model(load_training_frame(url, 200_000, 42), registry.new_version(),
                             k=4, k_range=range(0))
        saved = registry.save_version(result.model, result.metrics, result.sizes,
                                      Path(tmp) / "models")
        register_and_gate(url, saved, result, force=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGMENTATION_DATABASE_URL": url}
        py = [sys.executable, "-c"]
        print(f"rows {args.rows:,}")
        floor = stage("(a) floor: COPY out + COPY in", [*py, FLOOR, url, str(args.rows)],
                      env, args.rows)
        naive = stage("(b) naive: read_sql -> predict -> to_sql", [*py, NAIVE, url], env,
                      args.rows)
        ours = stage("(c) ours: score_customers (full, fresh)", [*py, OURS, url], env,
                     args.rows)
        again = stage("(c') ours again (idempotent rerun)", [*py, OURS, url], env,
                      args.rows)
        print(f"floor/ours {floor / ours:.2f}   naive/ours {naive / ours:.2f}   "
              f"floor/rerun {floor / again:.2f}")


if __name__ == "__main__":
    main()
