"""The app at N customers, in Chromium, against its targets, in one run.

    python benchmarks/bench_app.py [--rows 1000000]     build a throwaway database
    python benchmarks/bench_app.py --csv FILE           the same from a file (the real one)
    python benchmarks/bench_app.py --url URL            an existing scored database (10 M:
                                                        build it once, clone it per try)

Prints, each timed until Streamlit's script has finished (its status widget gone and the
page's last element shown):
- the first load after the app starts, and the first load after a night (a scoring run
  committed while the app was up: every cached summary is stale);
- each page, reached from the navigation;
- 10 lookups of random ids, one after another (median, max), then 20 browser tabs looking
  up ids at once (p50, p95), then 20 sessions at once spoken to in Streamlit's own protocol
  without a browser (the app's side of 20 people on their own machines), and the same 20
  tabs against the least a Streamlit lookup can be (bare_lookup_app.py: a box and one line
  of text, no database): the floor of Streamlit and Chromium sharing this machine;
- the app process's peak RSS (its process tree, sampled every 50 ms);
- the data layer's lookup alone, sequential and 50 threads at once.
Targets: first load after a night <= 3 s, each page <= 1 s, a lookup <= 0.5 s, p95 <= 1 s
with 20 tabs, the app <= 1 GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import free_port, throwaway_database, wait_for_http  # noqa: E402
from segmentation import registry, scoring  # noqa: E402
from segmentation.cli.appserver import streamlit_command  # noqa: E402
from segmentation.db import connection  # noqa: E402
from streamlit_app.data import lookup_customer, lookup_pool  # noqa: E402

# a heading each page draws (the run that draws it is the page's), then Streamlit's own
# word that the script has finished (the app's data-test-script-state)
PAGES = {"Overview": "Segments", "Segments": "Who they are", "Lookup": "Customer lookup",
         "Predict": "Predict a segment", "Runs": "Scoring runs", "Models": "Models"}
TARGETS = {"first load after a night": 3.0, "page": 1.0, "lookup": 0.5, "lookup p95": 1.0,
           "app RSS MiB": 1024.0}
# Tabs not in front would be throttled by Chromium itself (timers once a second, renderers
# deprioritised): 20 people have 20 tabs in front, on 20 machines.
CHROMIUM = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows"]


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) >= 2 else samples[0]


def build(url: str, rows: int, folder: Path, csv: Path | None = None) -> None:
    """generate (or the given file) -> ingest -> validate -> train (200k sample) -> score."""
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv
    from segmentation.training import load_training_frame, register_and_gate, train_model
    from segmentation.validation import validate_batch

    path = csv or folder / "customers.csv"
    if csv is None:
        generate_csv(path, rows, 3)
    validate_batch(url, ingest_csv(url, path).batch_id)
    result = train_model(load_training_frame(url, 200_000, 42), registry.new_version(), k=4,
                         k_range=range(0))
    saved = registry.package_version(result.model, result.metrics, result.sizes)
    register_and_gate(url, saved, result, force=True)
    scoring.score_customers(url, result.model, mode="full")


class PeakRss:
    """The peak RSS of a process tree, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.05):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                return

    def cpu_seconds(self) -> float:
        """CPU the process tree has used so far (user + system)."""
        import psutil

        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def finished(page, heading: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the page's script has run to the end."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible(
        timeout=300_000)
    expect(page.locator("[data-test-script-state='notRunning']")).to_have_count(
        1, timeout=300_000)


def timed_load(page, app: str, last: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    page.goto(app, timeout=300_000)
    finished(page, last)
    return time.perf_counter() - t0


def lookup_seconds(page, cid: str) -> float:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    box = page.get_by_label("Customer id")
    box.fill(cid)
    t0 = time.perf_counter()
    box.press("Enter")
    expect(page.get_by_text(f"customer {cid}", exact=True)).to_be_visible(timeout=120_000)
    expect(page.locator("[data-test-script-state='notRunning']")).to_have_count(
        1, timeout=120_000)
    return time.perf_counter() - t0


def browser_run(url: str, ids: list[str], night) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Start the app as `segmentation app` does and drive it with Chromium."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    home = tempfile.mkdtemp(prefix="seg-bench-app-home-")
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": url, "SEGMENTATION_HOME": home}
    server = subprocess.Popen(  # exactly what ops start: the CLI execs the served app
        [sys.executable, "-m", "segmentation.cli", "app", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, object] = {}
    try:
        rss = PeakRss(server.pid)
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health")
        app = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            out["first load after the app starts"] = timed_load(page, app, PAGES["Overview"])
            night()  # a scoring run commits while the app is up
            out["first load after a night"] = timed_load(page, app, PAGES["Overview"])
            pages = {}
            for name, last in PAGES.items():
                t0 = time.perf_counter()
                page.get_by_role("link", name=name, exact=True).click()
                finished(page, last)
                pages[name] = time.perf_counter() - t0
            out["pages"] = pages
            page.get_by_role("link", name="Lookup", exact=True).click()
            finished(page, PAGES["Lookup"])
            out["lookups"] = [lookup_seconds(page, cid) for cid in ids[:10]]
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench-lookup.png"))
            browser.close()
        import psutil

        machine, app_cpu = psutil.cpu_times(), rss.cpu_seconds()
        started = time.perf_counter()
        out["lookups, 20 tabs"] = asyncio.run(twenty_tabs(app, ids[10:70]))
        after = psutil.cpu_times()
        busy = 1 - (after.idle - machine.idle) / (sum(after) - sum(machine))
        out["20 tabs: machine busy, app CPU s, wall s"] = (
            busy, rss.cpu_seconds() - app_cpu, time.perf_counter() - started)
        out["lookups, 20 sessions"] = asyncio.run(twenty_sessions(port, ids[70:130]))
        out["app RSS MiB"] = rss.stop()
        out["bare lookups, 20 tabs"] = bare_tabs(ids[10:70])
    finally:
        server.terminate()
        server.wait(20)
    return out


def bare_tabs(ids: list[str]) -> list[float]:
    """The 20 tabs against the bare lookup page, served as the app is."""
    port = free_port()
    server = subprocess.Popen(streamlit_command(Path(__file__).with_name("bare_lookup_app.py"),
                                                port), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health")
        return asyncio.run(twenty_tabs(f"http://127.0.0.1:{port}", ids))
    finally:
        server.terminate()
        server.wait(20)


async def read_run(ws) -> tuple[dict[str, str], list[str]]:  # type: ignore[no-untyped-def]
    """Streamlit's messages until the script run has finished: the text inputs' ids by
    label, and the plain texts drawn."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    inputs, texts = {}, []
    while True:
        msg = ForwardMsg()
        msg.ParseFromString(await ws.recv())
        kind = msg.WhichOneof("type")
        if kind == "script_finished":
            return inputs, texts
        if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            if element.WhichOneof("type") == "text_input":
                inputs[element.text_input.label] = element.text_input.id
            elif element.WhichOneof("type") == "text":
                texts.append(element.text.body)


async def twenty_sessions(port: int, ids: list[str]) -> list[float]:
    """20 sessions of the app at once, each on the Lookup page, looking up ids, spoken to in
    Streamlit's own protocol (what a browser sends and receives, without rendering it):
    the app's side of 20 people, whatever their machines."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg

    def rerun(box: str | None = None, cid: str = "") -> bytes:
        message = BackMsg()
        message.rerun_script.page_name = "lookup"
        if box is not None:
            widget = message.rerun_script.widget_states.widgets.add()
            widget.id, widget.string_value = box, cid
        return message.SerializeToString()

    async def one_session(chunk: list[str], ready: asyncio.Barrier) -> list[float]:
        async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream",
                                      subprotocols=["streamlit"], max_size=None) as ws:
            await ws.send(rerun())
            inputs, _ = await read_run(ws)
            await ready.wait()
            seconds = []
            for cid in chunk:
                t0 = time.perf_counter()
                await ws.send(rerun(inputs["Customer id"], cid))
                _, texts = await read_run(ws)
                seconds.append(time.perf_counter() - t0)
                assert f"customer {cid}" in texts, (cid, texts[:3])
            return seconds

    ready = asyncio.Barrier(20)
    done = await asyncio.gather(*(one_session(ids[3 * i:3 * i + 3], ready) for i in range(20)))
    return [s for chunk in done for s in chunk]


async def twenty_tabs(app: str, ids: list[str]) -> list[float]:
    """20 tabs of one browser, each on the Lookup page, all looking up ids at once."""
    from playwright.async_api import async_playwright, expect

    async def one_tab(browser, chunk: list[str], ready: asyncio.Barrier) -> list[float]:  # type: ignore[no-untyped-def]
        tab = await browser.new_page()
        await tab.goto(f"{app}/lookup", timeout=300_000)
        await expect(tab.get_by_label("Customer id")).to_be_visible(timeout=300_000)
        await ready.wait()
        seconds = []
        for cid in chunk:
            box = tab.get_by_label("Customer id")
            await box.fill(cid)
            t0 = time.perf_counter()
            await box.press("Enter")
            await expect(tab.get_by_text(f"customer {cid}", exact=True)).to_be_visible(
                timeout=120_000)
            await expect(tab.locator("[data-test-script-state='notRunning']")).to_have_count(
                1, timeout=120_000)
            seconds.append(time.perf_counter() - t0)
        return seconds

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                          args=CHROMIUM)
        ready = asyncio.Barrier(20)  # every tab loaded: then all look up at once
        done = await asyncio.gather(*(one_tab(browser, ids[3 * i:3 * i + 3], ready)
                                      for i in range(20)))
        await browser.close()
    return [s for chunk in done for s in chunk]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--csv", type=Path, help="build from this file (the real one: "
                                                 "../shared/data/customer_data.csv)")
    parser.add_argument("--url", help="an existing scored database (not changed but by one "
                                      "scoring night)")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.url:
            url = args.url
        else:
            url = stack.enter_context(throwaway_database())
            os.environ["SEGMENTATION_MODELS_DIR"] = str(folder / "models")
            build(url, args.rows, folder, args.csv)
        with connection(url) as conn:
            model = registry.load_version(conn, None)
            customers = conn.execute("SELECT count(*) FROM segment_assignments").fetchone()
            percent = min(100.0, 100.0 * 10_000 / max(customers[0] if customers else 1, 1))
            ids = [r[0] for r in conn.execute(
                "SELECT customer_id FROM segment_assignments TABLESAMPLE SYSTEM (%s)"
                " LIMIT 5000", (percent,)).fetchall()]
        random.Random(7).shuffle(ids)
        print(f"app at {customers[0] if customers else 0:,} scored customers")

        def night() -> None:
            t0 = time.perf_counter()
            scoring.score_customers(url, model, mode="incremental")
            print(f"  (a night while the app is up: {time.perf_counter() - t0:.1f} s)")

        pool = lookup_pool(url)  # exactly the app's lookup pool
        lookup_customer(pool, ids[0])
        sequential = []
        for cid in ids[100:300]:
            t0 = time.perf_counter()
            assert lookup_customer(pool, cid) is not None
            sequential.append(time.perf_counter() - t0)

        def one(cid: str) -> float:
            t0 = time.perf_counter()
            lookup_customer(pool, cid)
            return time.perf_counter() - t0

        with ThreadPoolExecutor(50) as threads:
            concurrent = list(threads.map(one, ids[300:600]))
        seen = browser_run(url, ids, night)
        pages: dict[str, float] = seen["pages"]  # type: ignore[assignment]
        lookups: list[float] = seen["lookups"]  # type: ignore[assignment]
        tabs: list[float] = seen["lookups, 20 tabs"]  # type: ignore[assignment]
        sessions: list[float] = seen["lookups, 20 sessions"]  # type: ignore[assignment]
        bare: list[float] = seen["bare lookups, 20 tabs"]  # type: ignore[assignment]
        rows = [
            ("first load after the app starts", seen["first load after the app starts"], None),
            ("first load after a night", seen["first load after a night"],
             TARGETS["first load after a night"]),
            *((f"page: {name}", s, TARGETS["page"]) for name, s in pages.items()),
            ("lookup, median of 10", statistics.median(lookups), TARGETS["lookup"]),
            ("lookup, max of 10", max(lookups), None),
            ("lookup p50, 20 tabs at once", statistics.median(tabs), None),
            ("lookup p95, 20 tabs at once", p95(tabs), TARGETS["lookup p95"]),
            ("bare Streamlit lookup p50, 20 tabs", statistics.median(bare), None),
            ("bare Streamlit lookup p95, 20 tabs", p95(bare), None),
            ("lookup p50, 20 sessions, no browser", statistics.median(sessions), None),
            ("lookup p95, 20 sessions, no browser", p95(sessions), TARGETS["lookup p95"]),
        ]
        met = True
        for name, value, target in rows:
            ok = target is None or float(value) <= target  # type: ignore[arg-type]
            met &= ok
            bound = f"(target {target:g} s)" if target is not None else ""
            print(f"{name:<34} {float(value):7.2f} s {bound:<16} "  # type: ignore[arg-type]
                  f"{'' if target is None else 'met' if ok else 'MISSED'}")
        busy, used, wall = seen["20 tabs: machine busy, app CPU s, wall s"]  # type: ignore[misc]
        print(f"{'  during the 20 tabs':<34} machine {busy:.0%} busy over {wall:.1f} s; the "
              f"app's process tree {used:.1f} s of CPU ({used / (wall * os.cpu_count()):.0%} "
              "of the machine), the rest Chromium")
        print(f"{'  20 tabs, p95: bare page / app':<34} {p95(bare) / p95(tabs):7.2f} "
              "(1.00: the app costs no more than Streamlit itself)")
        memory = float(seen["app RSS MiB"])  # type: ignore[arg-type]
        ok = memory <= TARGETS["app RSS MiB"]
        met &= ok
        print(f"{'app process, peak RSS':<34} {memory:7.0f} MiB (target 1024 MiB) "
              f"{'met' if ok else 'MISSED'}")
        for name, samples in (("sequential", sequential), ("50 threads", concurrent)):
            print(f"{'data-layer lookup, ' + name:<34} p50 "
                  f"{statistics.median(samples) * 1000:6.1f} ms, "
                  f"p95 {p95(samples) * 1000:6.1f} ms")
        print("every target met" if met else "some target MISSED")


if __name__ == "__main__":
    main()
