"""Shared by the benchmarks: a throwaway database and waiting for a local server."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from segmentation.db import apply_migrations, conninfo

ADMIN = os.environ.get("SEGMENTATION_TEST_DATABASE_URL",
                       "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A migrated database named seg_bench_<random>, dropped afterwards; yields its URL."""
    name = f"seg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conninfo(ADMIN), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        apply_migrations(url)
        yield url
    finally:
        with psycopg.connect(conninfo(ADMIN), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, seconds: float = 60) -> None:
    """Poll a health URL until it answers (raises TimeoutError)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f} s")
