"""Validation cost at N rows beside the raw COPY of the same table, in one run.

    python benchmarks/bench_validation.py [--rows 1000000]

Uses SEGMENTATION_DATABASE_URL if set, else a throwaway database on the local server.
Prints seconds and the ratio validation / COPY (the target is about 1). Validation is the
contract checks (GX, pushed down) plus drift against a reference, as on a night with a
champion; the reference is the deciles of the same generator with another seed.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import throwaway_database
from segmentation.db import connection
from segmentation.generate import generate_csv
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch


def copy_seconds(url: str, batch_id: str) -> tuple[float, float]:
    """Raw COPY of the landed batch out to memory, and the floor of the benchmark issue:
    that COPY out plus COPY of an equal number of (id, segment, version, ts) rows in."""
    t0 = time.perf_counter()
    sink = io.BytesIO()
    with connection(url) as conn:
        with conn.cursor().copy(
                "COPY (SELECT * FROM customers_incoming WHERE batch_id = %s) TO STDOUT",
                (batch_id,)) as copy:
            for block in copy:
                sink.write(block)
        out_s = time.perf_counter() - t0
        rows = sink.getvalue().count(b"\n")
        conn.execute("CREATE TEMP TABLE floor_in (customer_id text, segment_id smallint,"
                     " model_version text, scored_at timestamptz)")
        line = b"C%08d\t1\tm1\t2026-01-01 00:00:00+00\n"
        with conn.cursor().copy("COPY floor_in FROM STDIN") as copy:
            for start in range(0, rows, 100_000):
                copy.write(b"".join(line % i for i in range(start, min(rows, start + 100_000))))
    return out_s, time.perf_counter() - t0


def reference_for(path: Path) -> dict[str, dict[str, list[float]]]:
    """A champion's drift reference: deciles of 100,000 customers of another seed."""
    import pandas as pd

    from segmentation.features import feature_matrix, normalize_columns
    from segmentation.training import reference_distribution

    generate_csv(path, 100_000, seed=2)
    return reference_distribution(feature_matrix(normalize_columns(pd.read_csv(path))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        t0 = time.perf_counter()
        generate_csv(path, args.rows, seed=1)
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = ingest_csv(url, path)
        ingest_s = time.perf_counter() - t0
        copy_s, floor_s = copy_seconds(url, batch.batch_id)
        reference = reference_for(Path(tmp) / "reference.csv")
        import great_expectations  # noqa: F401  (import cost is paid once per process)

        t0 = time.perf_counter()
        report = validate_batch(url, batch.batch_id, reference=reference)
        validate_s = time.perf_counter() - t0
        print(f"rows                 {args.rows:>12,}")
        print(f"generate CSV         {generate_s:>10.2f} s")
        print(f"ingest (COPY+checks) {ingest_s:>10.2f} s")
        print(f"raw COPY out         {copy_s:>10.2f} s")
        print(f"floor: COPY out + in {floor_s:>10.2f} s   (as in bench_scoring.py)")
        gx_s, drift_s = report.timings["gx_s"], report.timings["drift_s"]
        checks_s = gx_s + drift_s
        print(f"validate end to end  {validate_s:>10.2f} s   "
              f"({report.rows_accepted:,} accepted, {report.rows_quarantined:,} quarantined)")
        print(f"  GX contract checks {gx_s:>10.2f} s")
        print(f"  drift (PSI, {len(report.drift)} features) {drift_s:>5.2f} s")
        print(f"  accept into customers {report.timings['accept_s']:>7.2f} s")
        print(f"ratio GX checks/COPY {gx_s / copy_s:>10.2f}")
        print(f"ratio checks+drift/COPY {checks_s / copy_s:>8.2f}")
        print(f"ratio checks+drift/floor {checks_s / floor_s:>7.2f}")
        print(f"ratio end-to-end/COPY {validate_s / copy_s:>9.2f}")


if __name__ == "__main__":
    main()
