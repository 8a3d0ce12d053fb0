"""Load: many app sessions looking customers up at once get the right answers.

The latency figure (p95 of 50 concurrent lookups) is measured by benchmarks/bench_app.py;
this test protects correctness under that concurrency, not speed.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from segmentation import scoring
from streamlit_app.data import lookup_customer, lookup_pool
from tests.helpers import load_batch, query, register_champion

pytestmark = pytest.mark.reliability


def test_fifty_concurrent_lookups_answer_correctly(db: str, trained, models_dir: Path,
                                                   synthetic_csv: Path) -> None:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-load-1")
    scoring.score_customers(db, model, mode="full")
    expected = dict(query(db, "SELECT customer_id, segment_id FROM customer_segments"
                              " ORDER BY md5(customer_id) LIMIT 500"))
    ids = [*expected, "no-such-customer", "'; DROP TABLE customers; --", "nul\x00byte"]
    pool = lookup_pool(db, max_size=20)  # fewer connections than threads: they must queue
    try:
        with ThreadPoolExecutor(50) as threads:
            found = list(threads.map(lambda cid: lookup_customer(pool, cid), ids))
        assert pool.get_stats()["pool_max"] == 20
    finally:
        pool.close()
    assert [f["segment_id"] if f else None for f in found] == [*expected.values(), None,
                                                                None, None]
    assert all(f["customer_id"] == cid for f, cid in zip(found, expected, strict=False))
    assert query(db, "SELECT count(*) FROM customers") == [(5_000,)]
