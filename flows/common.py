"""Shared flow helpers: settings/URL once per flow run, and DB-task defaults."""

from __future__ import annotations

from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE

from segmentation.config import Settings, load_settings
from segmentation.db import resolve_url

# Database tasks retry transient failures; pure computation does not.
DB_RETRIES = 2
DB_RETRY_DELAY_S = 2


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry on a lost/refused connection, never on a user error (bad model, bad data)."""
    try:
        state.result()
    except (psycopg.OperationalError, psycopg.errors.SerializationFailure):
        return True
    except Exception:
        return False
    return False


# A task that talks to the database: retried on transient errors only, never cached.
db_task = task(cache_policy=NO_CACHE, retries=DB_RETRIES, retry_delay_seconds=DB_RETRY_DELAY_S,
               retry_condition_fn=transient_only)


@db_task
def resolve_database(settings: Settings) -> str:
    """The database URL (starting the embedded server if none is configured)."""
    return resolve_url(settings)


def flow_settings() -> Settings:
    """Settings for a flow run, read from the worker's environment."""
    return load_settings()
