"""Lookup latency at N customers: the app's data layer and the browser, in one run.

    python benchmarks/bench_app.py [--rows 1000000]

Builds a throwaway database (generate -> ingest -> validate -> train -> score full), then
prints: scoring seconds, data-layer lookup p50/p95 (sequential and 50 concurrent), and
the time from pressing Enter in the lookup box to the answer being visible in Chromium.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, throwaway_database, wait_for_http  # noqa: E402
from segmentation import registry, scoring  # noqa: E402
from segmentation.db import connection  # noqa: E402
from segmentation.generate import generate_csv  # noqa: E402
from segmentation.ingest import ingest_csv  # noqa: E402
from segmentation.training import load_training_frame, register_and_gate, train_model  # noqa: E402
from segmentation.validation import validate_batch  # noqa: E402
from streamlit_app.data import lookup_customer, lookup_pool  # noqa: E402


def timed(label: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:<34} {time.perf_counter() - t0:>8.2f} s", flush=True)
    return out


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20)
    return f"p50 {statistics.median(samples) * 1000:6.1f} ms   p95 {q[18] * 1000:6.1f} ms"


def browser_lookup_seconds(url: str, ids: list[str], names: dict[int, str]) -> list[float]:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": url}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app" / "app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health")
        seconds = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu",
                                              "--disable-background-networking"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}")
            expect(page.get_by_text("Customer segments").first).to_be_visible(timeout=120_000)
            page.get_by_role("tab", name="Lookup").click()
            box = page.get_by_label("Customer id")
            for cid in ids:
                box.fill(cid)
                t0 = time.perf_counter()
                box.press("Enter")
                expect(page.get_by_text(f"customer {cid}", exact=True)).to_be_visible(
                    timeout=30_000)
                page.get_by_text("Why (decision rules)").wait_for(timeout=30_000)
                seconds.append(time.perf_counter() - t0)
            browser.close()
        return seconds
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        timed("generate", generate_csv, path, args.rows, 3)
        batch = timed("ingest", ingest_csv, url, path)
        timed("validate + accept", validate_batch, url, batch.batch_id)
        frame = timed("load training sample", load_training_frame, url, 200_000, 42)
        result = timed("train (k=4, 200k sample)", train_model, frame,
                       registry.new_version(), k=4, k_range=range(0))
        os.environ["SEGMENTATION_MODELS_DIR"] = str(Path(tmp) / "models")
        saved = registry.save_version(result.model, result.metrics, result.sizes,
                                      Path(tmp) / "models")
        register_and_gate(url, saved, result, force=True)
        model = result.model
        score = timed("score full (stream+publish)", scoring.score_customers, url, model,
                      mode="full")
        print(f"  timings {score.timings}")
        with connection(url) as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT customer_id FROM customer_segments ORDER BY md5(customer_id)"
                " LIMIT 300").fetchall()]
        engine = lookup_pool(url)  # exactly the app's lookup pool
        lookup_customer(engine, ids[0])
        samples = []
        for cid in ids[:200]:
            t0 = time.perf_counter()
            assert lookup_customer(engine, cid) is not None
            samples.append(time.perf_counter() - t0)
        print(f"{'data-layer lookup, sequential':<34} {percentiles(samples)}")

        def one(cid: str) -> float:
            t0 = time.perf_counter()
            lookup_customer(engine, cid)
            return time.perf_counter() - t0

        with ThreadPoolExecutor(50) as pool:
            concurrent = list(pool.map(one, ids[:300]))
        print(f"{'data-layer lookup, 50 concurrent':<34} {percentiles(concurrent)}")
        browser = browser_lookup_seconds(url, ids[200:205], model.names)
        print(f"{'browser: Enter -> answer visible':<34} "
              f"max {max(browser):.2f} s, median {statistics.median(browser):.2f} s")


if __name__ == "__main__":
    main()
