"""A segment rename on N published customers: what readers see, and what it costs.

    python benchmarks/bench_rename.py [--rows 10000000]

Publishes N customers of one model (4 segments) straight into segment_assignments, then
times `registry.rename_segment` (one row in segment_name_overrides: every reader sees the
new name at once) against the baseline of the previous design, where each published row
carried its name: an UPDATE of the renamed segment's rows in a plain copy of the table
(indexed as customer_segments was), which is what a rename cost before. Also times what
the view costs a reader: counting customers per segment name and one lookup by id, on the
view and on the plain copy. Prints seconds and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import throwaway_database  # noqa: E402
from segmentation import registry  # noqa: E402
from segmentation.db import connection  # noqa: E402

SEGMENTS = 4


def publish(url: str, rows: int) -> None:
    """N customers of model m-bench, spread over 4 segments, and the model's profiles."""
    with connection(url) as conn:
        conn.execute("INSERT INTO model_versions (version, status, k, metrics, path, sha256,"
                     " promoted_at) VALUES ('m-bench', 'champion', %s, '{}', 'p', 'x', now())",
                     (SEGMENTS,))
        for seg in range(SEGMENTS):
            conn.execute("INSERT INTO segment_profiles VALUES ('m-bench', %s, %s, 'profile',"
                         " 0, 0.25, '{}', '{}')", (seg, f"Generated name {seg}"))
        conn.execute("INSERT INTO segment_assignments SELECT 'C' || lpad(i::text, 9, '0'),"
                     " i %% %s, 'm-bench', now(), gen_random_uuid()"
                     " FROM generate_series(1, %s) i", (SEGMENTS, rows))
        # the previous design: the name copied into every published row, same indexes
        conn.execute("CREATE TABLE named_copy AS SELECT a.customer_id, a.segment_id,"
                     " 'Generated name ' || a.segment_id AS segment_name, a.model_version,"
                     " a.scored_at, a.run_id FROM segment_assignments a")
        conn.execute("ALTER TABLE named_copy ADD PRIMARY KEY (customer_id)")
        conn.execute("CREATE INDEX ON named_copy (segment_id)")
    with connection(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE segment_assignments")
        conn.execute("VACUUM ANALYZE named_copy")


def timed(url: str, statement: str, params: tuple = (), repeat: int = 3) -> float:
    """Median seconds of a statement on one open connection (committed each time)."""
    times = []
    with connection(url) as conn:
        for _ in range(repeat):
            t0 = time.perf_counter()
            cursor = conn.execute(statement, params)  # type: ignore[arg-type]
            if cursor.description:  # a query: its rows are part of its cost
                cursor.fetchall()
            conn.commit()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    rows = parser.parse_args().rows
    with throwaway_database() as url:
        t0 = time.perf_counter()
        publish(url, rows)
        print(f"published {rows:,} rows in {time.perf_counter() - t0:.1f} s")
        times = []
        for i in range(5):
            with connection(url) as conn:
                t0 = time.perf_counter()
                registry.rename_segment(conn, 2, f"Dormant customers {i}")
                times.append(time.perf_counter() - t0)
        rename = statistics.median(times)
        with connection(url) as conn:
            seen = conn.execute("SELECT count(*) FROM customer_segments"
                                " WHERE segment_name = 'Dormant customers 4'").fetchone()
        assert seen and seen[0] == rows // SEGMENTS + (rows % SEGMENTS > 2), seen
        before = timed(url, "UPDATE named_copy SET segment_name = %s WHERE segment_id = 2",
                       ("Dormant customers",), repeat=1)
        count_view = timed(url, "SELECT segment_name, count(*) FROM customer_segments"
                                " GROUP BY segment_name")
        count_plain = timed(url, "SELECT segment_name, count(*) FROM named_copy"
                                 " GROUP BY segment_name")
        lookup_view = timed(url, "SELECT * FROM customer_segments WHERE customer_id = %s",
                            ("C000123457",), repeat=50)
        lookup_plain = timed(url, "SELECT * FROM named_copy WHERE customer_id = %s",
                             ("C000123457",), repeat=50)
    print(f"rename (one override row, every reader at once): {rename * 1000:.1f} ms")
    print(f"baseline: UPDATE of the renamed segment's {rows // SEGMENTS:,} rows: {before:.1f} s"
          f"  (ratio baseline/rename {before / rename:,.0f})")
    print(f"count per segment name: view {count_view:.2f} s, plain table {count_plain:.2f} s"
          f"  (ratio view/plain {count_view / count_plain:.2f})")
    print(f"lookup by id: view {lookup_view * 1000:.2f} ms, plain table "
          f"{lookup_plain * 1000:.2f} ms")


if __name__ == "__main__":
    main()
