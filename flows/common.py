"""Shared flow helpers: settings, the database URL (resolved inside each task) and the
defaults of tasks that talk to the database.

Flows and tasks never take or return the database URL (it may hold a password, and Prefect
stores parameters): every task resolves it from its own process's settings.

Retries and timeouts come from the settings of the process that imports the flows (the
worker's flow-run process, or the CLI): SEGMENTATION_RETRY_WINDOW_S and
SEGMENTATION_FLOW_TIMEOUT_S.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from segmentation.config import Settings, load_settings
from segmentation.db import is_transient, resolve_url


def finished(summary: Any) -> Any:
    """The flow's end, carrying its summary: the run's last log line ("Finished in state
    Completed('run ...: 8,950 scored ...')") and its state in the UI say what it did;
    calling the flow still returns the summary itself."""
    from prefect.states import Completed

    text = "\n".join(summary) if isinstance(summary, list) else str(summary)
    return Completed(message="; ".join(line.strip() for line in text.splitlines()),
                     data=summary)


FIRST_RETRY_S = 1.0
MAX_RETRY_DELAY_S = 60.0
RETRY_JITTER = 0.5  # each delay varies by up to half: retries of many runs do not align


def retry_delays(window_s: float, first_s: float = FIRST_RETRY_S,
                 cap_s: float = MAX_RETRY_DELAY_S) -> list[float]:
    """Exponential backoff (first_s, doubling, at most cap_s) until window_s is covered."""
    delays: list[float] = []
    delay = first_s
    while sum(delays) < window_s:
        delays.append(delay)
        delay = min(delay * 2, cap_s)
    return delays


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a restart, a failover, a lost connection or a serialization failure; never a
    user error (bad model, bad data, bad credentials)."""
    try:
        state.result()
    except Exception as exc:  # the task's own exception
        return is_transient(exc)
    return False


def flow_timeout_s() -> float:
    """How long any flow may run (SEGMENTATION_FLOW_TIMEOUT_S)."""
    return load_settings().flow_timeout_s


_DELAYS = retry_delays(load_settings().retry_window_s)
# A task that talks to the database: retried on transient errors only, never cached.
db_task = task(cache_policy=NO_CACHE, retries=len(_DELAYS), retry_delay_seconds=_DELAYS,
               retry_jitter_factor=RETRY_JITTER, retry_condition_fn=transient_only)


def flow_settings() -> Settings:
    """Settings for a flow run, read from the worker's environment."""
    return load_settings()


def database_url() -> str:
    """The database URL, resolved where it is used (inside each task, from this process's
    settings): a URL holds the password, so it is never a flow or task parameter, result,
    log line or artifact that Prefect would store."""
    return resolve_url(load_settings())


def dask_task_runner(settings: Settings, partitions: int) -> Any:
    """The partitioned-scoring task runner: an existing cluster, or a local one."""
    from prefect_dask import DaskTaskRunner  # lazy: distributed is heavy, needed only here

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    # Every endpoint (scheduler, workers, dashboards) on the loopback and a free port:
    # in-process workers would otherwise listen on every interface, and the scheduler on
    # 8787. TCP on the loopback for in-process workers too: Dask's in-process transport
    # names its addresses by the host's outward IP, found by routing a socket towards
    # 8.8.8.8, and nothing here may reach for the internet.
    cluster: dict[str, Any] = {"n_workers": min(settings.dask_workers, partitions),
                               "threads_per_worker": 1, "processes": settings.dask_processes,
                               "host": "127.0.0.1", "protocol": "tcp://",
                               "dashboard_address": "127.0.0.1:0",
                               "worker_dashboard_address": "127.0.0.1:0"}
    if settings.dask_processes:
        # Worker processes report to this run's API; on the ephemeral API each would
        # otherwise start its own temporary server.
        cluster["env"] = {"PREFECT_API_URL": current_api_url()}
    return DaskTaskRunner(cluster_kwargs=cluster)


@contextmanager
def quiet_workers() -> Iterator[None]:
    """Dask workers started inside run without their statistical profiler, which every
    10 ms walks the stack of each task thread holding the GIL: the partition tasks are
    long, CPU-bound and share one interpreter, so the samples cost them, and nobody reads
    the profile (an existing cluster, SEGMENTATION_DASK_ADDRESS, keeps its own config)."""
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": False}):
        yield


def current_api_url() -> str:
    """The Prefect API this process talks to (the ephemeral server's when none is set)."""
    from prefect.client.orchestration import get_client

    return os.environ.get("PREFECT_API_URL") or str(get_client().api_url)
