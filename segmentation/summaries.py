"""What the app shows, written by each scoring run once it has published (sql/014).

A page visit then reads small tables or one indexed row, never the published table: exact
sizes (the run's own counts on a night that rewrote every row, else one GROUP BY, which the
segment-mix check reuses) and moves (the run's history rows, by their index, and the new
customers it counted), and, from a sample of the published customers joined to their
features by key, the scatter's points, the customers nearest each centre and every
feature's distribution per segment. A night that changed no published row copies the
sampled parts of the previous summary instead of sampling again.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import psycopg
from psycopg import sql

from segmentation.db import connection
from segmentation.features import FEATURES
from segmentation.runs import ScoreResult, last_succeeded

SAMPLE_ROWS = 100_000  # published customers read for the sampled parts
SCATTER_POINTS = 2_000
TYPICAL = 10  # customers nearest each centre
BINS = 20
SAMPLED = ("run_scatter_points", "run_typical_customers", "run_feature_bins")
SUMMARY_LOCK = 7_421_005  # advisory xact lock: a summary's sizes vs an erasure's decrement

log = logging.getLogger(__name__)


def write_summary(url: str, result: ScoreResult, model: Any) -> None:
    """The run's summary, after its publish committed. Best effort: the run is published
    whatever happens here, and the app keeps showing the previous summary (with its date)
    if this one cannot be written; the reason is logged."""
    try:
        with connection(url) as conn:
            summarise(conn, result, model)
    except Exception as exc:
        log.warning("the app's summary of run %s was not written (%s: %s); the app shows "
                    "the previous one", result.run_id, type(exc).__name__, exc)


def summarise(conn: psycopg.Connection, result: ScoreResult, model: Any) -> None:
    """Sizes, moves and the sampled parts of one published run (see the module)."""
    run = result.run_id
    lock_summary(conn)
    if result.segment_counts and erased_since(conn, run):
        result.segment_counts = {}  # its own counts still hold customers erased since
    if not result.segment_counts:  # an ordinary night: count; the segment mix reuses it
        result.segment_counts = {int(s): int(n) for s, n in conn.execute(
            "SELECT segment_id, count(*) FROM segment_assignments GROUP BY 1 ORDER BY 1")}
    total = sum(result.segment_counts.values())
    previous = conn.execute("SELECT run_id::text, sample_rows FROM run_summaries"
                            " ORDER BY written_at DESC LIMIT 1").fetchone()
    reuse = previous is not None and result.rows_changed == 0 and result.rows_quarantined == 0
    conn.execute("DELETE FROM run_summaries WHERE run_id = %s", (run,))  # a retried run
    conn.execute("INSERT INTO run_summaries (run_id, model_version, customers, sample_rows)"
                 " VALUES (%s, %s, %s, 0)", (run, result.model_version, total))
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO run_segment_sizes (run_id, segment_id, customers)"
                        " VALUES (%s, %s, %s)",
                        [(run, s, n) for s, n in sorted(result.segment_counts.items())])
        cur.executemany("INSERT INTO run_segment_moves (run_id, from_segment, to_segment,"
                        " customers) VALUES (%s, NULL, %s, %s)",
                        [(run, s, n) for s, n in sorted(result.new_by_segment.items())])
    conn.execute("INSERT INTO run_segment_moves (run_id, from_segment, to_segment, customers)"
                 " SELECT run_id, old_segment_id, new_segment_id, count(*) FROM segment_history"
                 " WHERE run_id = %s GROUP BY 1, 2, 3", (run,))
    if reuse and previous is not None:
        copy_sampled(conn, previous[0], run, int(previous[1]))
    elif total:
        sample_published(conn, run, model_of(model), total)


def lock_summary(conn: psycopg.Connection) -> None:
    """Until this transaction ends, no erasure changes the sizes (it waits, then subtracts
    its customers from the summary this one writes)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (SUMMARY_LOCK,))


def erased_since(conn: psycopg.Connection, run: str) -> bool:
    """Whether an erasure committed after this run started: its customers are in the run's
    own counts, and the erasure found no summary of this run to subtract them from."""
    row = conn.execute("SELECT EXISTS (SELECT FROM erasures e JOIN scoring_runs r"
                       " ON e.erased_at >= r.started_at WHERE r.run_id = %s)",
                       (run,)).fetchone()
    return bool(row and row[0])


def subtract_erased(conn: psycopg.Connection, segments: list[int]) -> None:
    """Take erased customers (their published segments) out of the latest run's summary,
    so the sizes the app and segment_summary show stay exact until the next night."""
    if not segments:
        return
    lock_summary(conn)
    last = last_succeeded(conn)
    if last is None:
        return
    conn.execute(
        "WITH gone AS (SELECT s AS segment_id, count(*) AS n FROM unnest(%s::smallint[]) s"
        "  GROUP BY 1),"
        " sizes AS (UPDATE run_segment_sizes z SET customers = z.customers - gone.n"
        "  FROM gone WHERE z.segment_id = gone.segment_id AND z.run_id = %s"
        "  RETURNING gone.n)"
        " UPDATE run_summaries SET customers = customers - (SELECT coalesce(sum(n), 0)"
        "  FROM sizes) WHERE run_id = %s", (segments, last.run_id, last.run_id))


def copy_sampled(conn: psycopg.Connection, source: str, run: str, sample_rows: int) -> None:
    """Nothing changed since the previous summary: its sampled parts stand for this run."""
    for table in SAMPLED:
        columns = sql.SQL(", ").join(sql.Identifier(c) for (c,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
            " AND column_name <> 'run_id' ORDER BY ordinal_position", (table,)))
        conn.execute(sql.SQL("INSERT INTO {t} (run_id, {c}) SELECT %s, {c} FROM {t}"
                             " WHERE run_id = %s").format(t=sql.Identifier(table), c=columns),
                     (run, source))
    conn.execute("UPDATE run_summaries SET sample_rows = %s WHERE run_id = %s",
                 (sample_rows, run))


def model_of(model: Any) -> Any:
    """The SegmentationModel behind what a run scored with (a DeferredModel loads it)."""
    return model.model() if callable(getattr(model, "model", None)) else model


def sample_published(conn: psycopg.Connection, run: str, model: Any, total: int) -> None:
    """Read a sample of the published customers with their features (by key: no scan of
    customers), then write the scatter, the typical customers and the histograms."""
    import numpy as np

    percent = min(100.0, 100.0 * SAMPLE_ROWS / total)
    conn.execute("SET LOCAL enable_hashjoin = off")  # an index probe per sampled row,
    conn.execute("SET LOCAL enable_mergejoin = off")  # not a scan of every customer
    columns = sql.SQL(", ").join(sql.Identifier("c", f) for f in FEATURES)
    rows = conn.execute(sql.SQL(
        "SELECT a.customer_id, a.segment_id, {} FROM segment_assignments a"
        " TABLESAMPLE SYSTEM (%s) REPEATABLE (%s) JOIN customers c USING (customer_id)"
        " LIMIT %s"  # whatever the counts said: never much more than the sample
    ).format(columns), (percent, zlib.crc32(run.encode()) % 1_000_000,
                        2 * SAMPLE_ROWS)).fetchall()
    conn.execute("UPDATE run_summaries SET sample_rows = %s WHERE run_id = %s",
                 (len(rows), run))
    if not rows:
        return
    ids = [r[0] for r in rows]
    segments = np.array([r[1] for r in rows], dtype=np.int16)
    x = np.array([r[2:] for r in rows], dtype=np.float64)  # None -> nan
    z = model.standardize_matrix(x.copy())
    rng = np.random.default_rng(zlib.crc32(run.encode()))
    shown = rng.choice(len(rows), size=min(SCATTER_POINTS, len(rows)), replace=False)
    points = model.pca.transform(z[shown])
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO run_scatter_points (run_id, segment_id, pc1, pc2)"
                        " VALUES (%s, %s, %s, %s)",
                        [(run, int(segments[i]), float(p[0]), float(p[1]))
                         for i, p in zip(shown, points, strict=True)])
        cur.executemany("INSERT INTO run_typical_customers (run_id, segment_id, rank,"
                        " customer_id, distance) VALUES (%s, %s, %s, %s, %s)",
                        typical_rows(run, model, ids, segments, z))
        cur.executemany("INSERT INTO run_feature_bins (run_id, feature, segment_id, bin,"
                        " lower, upper, customers) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        histogram_rows(run, segments, x))


def typical_rows(run: str, model: Any, ids: list[str], segments: Any, z: Any) -> list[tuple]:
    """The TYPICAL sampled customers nearest each segment's centre, nearest first."""
    import numpy as np

    out = []
    for segment in sorted({int(s) for s in segments}):
        mine = np.flatnonzero(segments == segment)
        distance = ((z[mine] - model.centre_z(segment)) ** 2).sum(axis=1)
        for rank, k in enumerate(np.argsort(distance, kind="stable")[:TYPICAL]):
            out.append((run, segment, rank, ids[mine[k]], float(np.sqrt(distance[k]))))
    return out


def histogram_rows(run: str, segments: Any, x: Any) -> list[tuple]:
    """Each feature in BINS equal bins between its 1st and 99th percentile (the ends take
    the outliers), for everyone (segment None) and per segment; missing values left out."""
    import numpy as np

    out = []
    groups = [(None, np.ones(len(segments), dtype=bool))] + [
        (int(s), segments == s) for s in sorted({int(s) for s in segments})]
    for j, feature in enumerate(FEATURES):
        values = x[:, j]
        known = ~np.isnan(values)
        if not known.any():
            continue
        low, high = np.percentile(values[known], [1, 99])
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, BINS + 1)
        clipped = np.clip(values, low, high)
        for segment, member in groups:
            counts, _ = np.histogram(clipped[member & known], bins=edges)
            out += [(run, feature, segment, b, float(edges[b]), float(edges[b + 1]), int(n))
                    for b, n in enumerate(counts)]
    return out
