"""Shared by the benchmarks: a throwaway database (and the tests' server helpers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from segmentation.config import Settings
from segmentation.db import apply_migrations, conninfo
from tests.helpers import free_port, wait_for_http  # one copy, shared with the tests

__all__ = ["CLI_STREAMS", "free_port", "throwaway_database", "wait_for_http"]

# a first load lands as `segmentation ingest` lands it: customers in that many partitions
CLI_STREAMS = Settings.model_fields["ingest_streams"].default

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
