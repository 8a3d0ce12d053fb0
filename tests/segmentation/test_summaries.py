"""The run summaries behind segment_summary and the app: exact, and read without a scan."""

import json
from pathlib import Path

from segmentation import privacy, scoring, summaries
from segmentation.db import connection
from tests.helpers import load_batch, query, register_champion

PUBLISHED = "SELECT segment_id, count(*) FROM segment_assignments GROUP BY 1 ORDER BY 1"
SUMMARY = "SELECT segment_id, customers FROM segment_summary WHERE customers > 0 ORDER BY 1"


def scans_of_published(url: str, statement: str) -> list[int]:
    """How many times each plan node on segment_assignments (or its partitions) ran."""
    with connection(url) as conn:
        plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement).fetchone()[0]
    loops: list[int] = []

    def walk(node: dict) -> None:
        if str(node.get("Relation Name", "")).startswith(("segment_assignments",
                                                          "segment_build")):
            loops.append(int(node["Actual Loops"]))
        for child in node.get("Plans", []):
            walk(child)

    walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])
    return loops


def test_segment_summary_reads_the_runs_counts_not_the_published_table(
        db: str, trained, models_dir: Path, synthetic_csv: Path) -> None:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-sum-1")
    scoring.score_customers(db, model, mode="full")
    assert query(db, SUMMARY) == query(db, PUBLISHED)
    loops = scans_of_published(db, "SELECT * FROM segment_summary")
    assert loops and set(loops) == {0}, loops  # planned as the fallback, never run
    with connection(db) as conn:  # a database from before summaries: the view counts
        conn.execute("DELETE FROM run_summaries")
    assert query(db, SUMMARY) == query(db, PUBLISHED)
    assert max(scans_of_published(db, "SELECT * FROM segment_summary")) > 0


def test_an_erasure_keeps_the_summarised_sizes_exact(
        db: str, trained, models_dir: Path, synthetic_csv: Path) -> None:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-sum-2")
    result = scoring.score_customers(db, model, mode="full")
    gone = [i for (i,) in query(db, "SELECT customer_id FROM segment_assignments"
                                    " ORDER BY customer_id LIMIT 7")]
    with connection(db) as conn:
        privacy.forget_customers(conn, gone, "test")
    assert query(db, SUMMARY) == query(db, PUBLISHED)
    assert query(db, "SELECT customers FROM run_summaries") == \
        query(db, "SELECT count(*) FROM segment_assignments")
    # an erasure that committed between the publish and its summary: the run's own counts
    # still hold those customers, so the summary counts instead
    assert result.segment_counts  # a full night knows its counts
    with connection(db) as conn:
        privacy.forget_customers(conn, [i for (i,) in query(
            db, "SELECT customer_id FROM segment_assignments LIMIT 3")], "test")
        conn.execute("DELETE FROM run_summaries")
    with connection(db) as conn:
        summaries.summarise(conn, result, model)
    assert query(db, SUMMARY) == query(db, PUBLISHED)
