"""Shared flow helpers: settings/URL once per flow run, and DB-task defaults."""

from __future__ import annotations

import os
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


def dask_task_runner(settings: Settings, partitions: int) -> Any:
    """The partitioned-scoring task runner: an existing cluster, or a local one."""
    from prefect_dask import DaskTaskRunner  # lazy: distributed is heavy, needed only here

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = min(settings.dask_workers, partitions)
    # Local workers report to this run's API; on the ephemeral API each would otherwise
    # start its own temporary server (about 7 s each).
    env = {"PREFECT_API_URL": current_api_url()}
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "env": env})


def current_api_url() -> str:
    """The Prefect API this process talks to (the ephemeral server's when none is set)."""
    from prefect.client.orchestration import get_client

    return os.environ.get("PREFECT_API_URL") or str(get_client().api_url)
