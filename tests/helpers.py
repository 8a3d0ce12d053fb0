"""Test helpers: the real CLI in a subprocess, and small SQL reads."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from segmentation.db import conninfo

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real `segmentation` command in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "segmentation.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """The real `segmentation` command, started in the background (output captured)."""
    return subprocess.Popen([sys.executable, "-m", "segmentation.cli", *args], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def query(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Fetch all rows of a statement (test helper)."""
    with psycopg.connect(conninfo(url)) as conn:
        return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def tables_holding(url: str, text: str) -> dict[str, int]:
    """Every table of the schema (build tables and scratch included) whose rows, read as
    text, contain `text` anywhere, with how many rows: where an erased id could hide."""
    from psycopg import sql

    found = {}
    with psycopg.connect(conninfo(url)) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition ORDER BY 1")]
        for table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} t WHERE strpos(t::text, %s) > 0")
                               .format(sql.Identifier(table)), (text,)).fetchone()
            if row and row[0]:
                found[table] = int(row[0])
    return found


def assert_published_as_scored(url: str, model) -> None:  # type: ignore[no-untyped-def]
    """Every accepted customer is published once, in the segment the model gives their
    current data (segment_for in SQL), and no published row lacks a customer."""
    from segmentation.features import FEATURES
    from segmentation.sqlexport import install_segment_for

    with psycopg.connect(conninfo(url)) as conn:
        install_segment_for(conn, model)
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE a.customer_id IS NULL),"
            " count(*) FILTER (WHERE c.customer_id IS NULL),"
            f" count(*) FILTER (WHERE a.segment_id <> segment_for({', '.join(FEATURES)})),"
            " count(*) FROM customers c FULL JOIN segment_assignments a USING (customer_id)"
        ).fetchone()
    assert row is not None and row[3] > 0, "nothing published"
    assert row[:3] == (0, 0, 0), f"unpublished, orphaned, wrong segment: {row[:3]}"


def assert_history_is_a_chain(url: str) -> None:
    """History is a chain of real moves: each move starts where the previous one ended (the
    first where the customer started), none stays put, the last ends where they are."""
    row = query(url, """
        WITH h AS (
            SELECT customer_id, old_segment_id, new_segment_id,
                   lag(new_segment_id) OVER w AS before,
                   row_number() OVER (PARTITION BY customer_id
                                      ORDER BY changed_at DESC, run_id DESC) AS from_last
            FROM segment_history WINDOW w AS (PARTITION BY customer_id ORDER BY changed_at, run_id))
        SELECT count(*) FILTER (WHERE h.before IS NOT NULL AND h.before <> h.old_segment_id),
               count(*) FILTER (WHERE h.before IS NULL AND h.old_segment_id <> f.segment_id),
               count(*) FILTER (WHERE h.old_segment_id = h.new_segment_id),
               count(*) FILTER (WHERE h.from_last = 1 AND h.new_segment_id IS DISTINCT FROM
                                a.segment_id)
        FROM h LEFT JOIN segment_assignments a USING (customer_id)
        LEFT JOIN customer_first_segments f USING (customer_id)""")[0]
    assert row == (0, 0, 0, 0), f"broken links, wrong first, self moves, wrong last: {row}"


def snapshot_segments(url: str) -> list[tuple]:
    """customer_segments, fully ordered, to compare before/after."""
    return query(url, "SELECT * FROM customer_segments ORDER BY customer_id")


def load_batch(url: str, path: Path):  # type: ignore[no-untyped-def]
    """Ingest a CSV and validate it (what `segmentation ingest` does); returns the report."""
    from segmentation.ingest import ingest_csv
    from segmentation.validation import validate_batch

    report = validate_batch(url, ingest_csv(url, path).batch_id)
    assert report.success, report.summary()
    return report


def register_champion(url: str, trained, models_dir: Path, version: str):  # type: ignore[no-untyped-def]
    """Save the shared trained model under `version`, register and promote it."""
    import dataclasses

    from segmentation import registry
    from segmentation.db import connection

    model = dataclasses.replace(trained.model, version=version)  # the fixture is shared
    saved = registry.package_version(model, trained.metrics, trained.sizes)
    with connection(url) as conn:
        registry.register_version(conn, saved, model, trained.metrics, trained.sizes, None)
        registry.promote(conn, version)
    return model


@contextmanager
def partitioned(url: str, model, mode: str = "full", run_id: str | None = None,  # type: ignore[no-untyped-def]
                build: bool | None = None) -> Iterator:
    """A partitioned run's start, its run lock held here as its flow would hold it; build
    forces the way its partitions stage (None: as the run decides)."""
    import dataclasses

    from segmentation import scoring

    with scoring.begin_partitioned(url, model.version, mode, run_id=run_id) as start:  # type: ignore[arg-type]
        yield start if build is None else dataclasses.replace(start, rebuild=build)


def stage_all(url: str, model, start, parts: int, chunk_rows: int = 100_000) -> list:  # type: ignore[no-untyped-def]
    """Stage every hash partition of a run, as the Dask tasks do (here in turn)."""
    from segmentation import scoring

    return [scoring.stage_partition(url, model, start, part, parts, chunk_rows)
            for part in range(parts)]


class Overlaps:
    """Operations in flight and what they ended with."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.refused: list[str] = []
        self.erased: set[str] = set()

    def start(self, name: str, work, *, may_refuse: bool = False) -> None:  # type: ignore[no-untyped-def]
        from segmentation.errors import RunLocked

        def run() -> None:
            try:
                work()
            except RunLocked as exc:
                if not may_refuse:
                    self.errors.append(f"{name}: refused although it waits: {exc}")
                self.refused.append(str(exc))
            except Exception as exc:
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)

    def settle(self) -> None:
        for thread in self.threads:
            thread.join(300)
            assert not thread.is_alive(), f"{thread.name} did not finish"
        self.threads.clear()


def partitioned_night(url: str, model, parts: int = 2, chunk_rows: int = 150,  # type: ignore[no-untyped-def]
                      wait_s: float = 600) -> None:
    """A partitioned full rescore as the flow runs it: the lock held here, the partitions
    on threads of their own, one publish."""
    from segmentation import scoring

    with scoring.begin_partitioned(url, model.version, "full", wait=True,
                                   wait_timeout_s=wait_s) as start:
        staged: list[scoring.PartitionResult | None] = [None] * parts
        failures: list[BaseException] = []

        def one(part: int) -> None:
            try:
                staged[part] = scoring.stage_partition(url, model, start, part, parts,
                                                       chunk_rows)
            except BaseException as exc:
                failures.append(exc)

        tasks = [threading.Thread(target=one, args=(p,)) for p in range(parts)]
        for t in tasks:
            t.start()
        for t in tasks:
            t.join()
        if failures:
            raise failures[0]
        scoring.publish_staged(url, model, start, [s for s in staged if s is not None])


def open_page(at, page: str):  # type: ignore[no-untyped-def]
    """Show one page of the app (AppTest): the entry point runs only that page's script."""
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, seconds: float = 60) -> None:
    """Poll a health URL until it answers (raises TimeoutError)."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")


def drop_connection_after_publish(url: str, monkeypatch, times: int = 1) -> list[str]:  # type: ignore[no-untyped-def]
    """Make the publish lose its connection after doing its work (rows written, run
    recorded), before the commit (the first `times` calls), whichever way it published.
    Returns the run id of every call, as made."""
    from segmentation import scoring
    from segmentation.db import connection

    real_record, calls = scoring.record_run, []

    def record_then_drop(conn, result, status, started_at, error=None):  # type: ignore[no-untyped-def]
        real_record(conn, result, status, started_at, error)
        if status != "succeeded":
            return
        calls.append(result.run_id)
        if len(calls) <= times:
            with connection(url, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    monkeypatch.setattr(scoring, "record_run", record_then_drop)
    return calls


DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_or_skip() -> str | None:
    """The browser to drive: Debian's chromium, else Playwright's own (`playwright install
    chromium`); otherwise the test is skipped, with the reason in the summary. Returns the
    executable path (None: Playwright's default)."""
    import pytest

    if DEBIAN_CHROMIUM.exists():
        return str(DEBIAN_CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no browser: the playwright package is not installed")
    with sync_playwright() as p:
        if Path(p.chromium.executable_path).exists():
            return None
    pytest.skip("no browser: install Debian's chromium, or run `playwright install chromium`")
    return None  # unreachable: skip raises
