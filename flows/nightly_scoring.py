"""Nightly scoring flow: load the champion, stream-score customers, publish atomically."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact

from flows.common import (
    dask_task_runner,
    database_url,
    db_task,
    finished,
    flow_settings,
    flow_timeout_s,
    quiet_workers,
)
from flows.validate import report_drift, validate_pending
from segmentation import drift, privacy, registry, reports, scoring
from segmentation.config import Settings
from segmentation.db import connection
from segmentation.errors import ModelError
from segmentation.progress import track

if TYPE_CHECKING:
    from segmentation.clustering import SegmentationModel


def load_model(version: str | None = None) -> SegmentationModel:
    """A version (default: the champion), sha256-checked, loaded where it is used."""
    with connection(database_url()) as conn:
        return registry.load_version(conn, version)


_LOADED: dict[str, SegmentationModel] = {}
_LOADING = threading.Lock()


def shared_model(version: str) -> SegmentationModel:
    """The version, loaded once per process: partition tasks on one worker's threads share
    it (a model is read-only once loaded) instead of each decoding its own copy."""
    with _LOADING:
        if version not in _LOADED:
            _LOADED.clear()  # only tonight's model stays in memory
            _LOADED[version] = load_model(version)
        return _LOADED[version]


def deferred_model(version: str) -> registry.DeferredModel:
    """The version, loaded only if this task has rows to score."""
    return registry.DeferredModel(version, lambda: shared_model(version))


@db_task
def champion_version() -> str:
    """The champion's version: what this run scores with (each task that needs the model
    loads and checks it itself)."""
    with connection(database_url()) as conn:
        version = registry.champion_version(conn)
    if version is None:
        raise ModelError("no champion model: run `segmentation train` first")
    return version


@db_task
def score_customers(model_version: str, mode: Literal["full", "incremental"],
                    chunk_rows: int, wait: bool, wait_timeout_s: float) -> scoring.ScoreResult:
    """Stream, classify and publish in one transaction (safe to retry: all or nothing)."""
    with track("scoring", log=get_run_logger().info) as update:
        return scoring.score_customers(database_url(), deferred_model(model_version),
                                       mode=mode, chunk_rows=chunk_rows, wait=wait,
                                       wait_timeout_s=wait_timeout_s,
                                       progress=lambda rows, _s: update(rows))


@db_task
def score_partition(model_version: str, start: scoring.RunStart, part: int, parts: int,
                    chunk_rows: int) -> scoring.PartitionResult:
    """Score one hash partition into scoring_stage, or into a build table of its own on a
    night that rewrites every row (a retry replaces the partition)."""
    logger = get_run_logger()
    with track(f"partition {part + 1}/{parts}", log=logger.info) as update:
        staged = scoring.stage_partition(database_url(), deferred_model(model_version), start,
                                         part, parts, chunk_rows,
                                         lambda rows, _s: update(rows))
    logger.info("partition %d/%d staged: %s rows in %.1f s", part + 1, parts,
                f"{staged.rows:,}", staged.seconds)
    return staged


@db_task
def publish_partitions(model_version: str, start: scoring.RunStart,
                       staged: list[scoring.PartitionResult]) -> scoring.ScoreResult:
    """Publish all staged partitions in one transaction (all or nothing; a retry of a
    published run returns its record)."""
    return scoring.publish_staged(database_url(), deferred_model(model_version), start, staged)


@db_task
def discard_staged(run_id: str) -> None:
    """Drop a run's scratch rows once it is given up."""
    scoring.discard_staged(database_url(), run_id)


@flow(name="partitioned-scoring", log_prints=True)
def partitioned_scoring(model_version: str, mode: Literal["full", "incremental"],
                        partitions: int, chunk_rows: int, wait: bool,
                        wait_timeout_s: float) -> scoring.ScoreResult:
    """Score hash partitions of customer_id as parallel tasks, then publish them at once.
    This flow's own session holds the run lock from before the partitions read to after
    the publish, so no other run, nor an erasure, comes in between; each task (on any Dask
    worker) resolves the database, loads the model and checks the lock itself."""
    with scoring.begin_partitioned(database_url(), model_version, mode, wait=wait,
                                   wait_timeout_s=wait_timeout_s) as start:
        futures = score_partition.map(unmapped(model_version), unmapped(start),
                                      range(partitions), unmapped(partitions),
                                      unmapped(chunk_rows))
        try:
            futures.wait()  # every partition ends before any is discarded
            return publish_partitions(model_version, start, futures.result())
        except BaseException:
            discard_staged(start.run_id)
            raise


@db_task
def segment_names(model_version: str) -> dict[int, str]:
    """The published model's segment names, as readers see them (renames applied)."""
    with connection(database_url()) as conn:
        return registry.segment_names(conn, model_version)


@db_task
def segment_mix(model_version: str, run_id: str,
                counts: dict[int, int]) -> list[drift.DriftAlert]:
    """Segment-mix drift of the published table against the champion's training shares
    (from the run's counts when it wrote every published row)."""
    with connection(database_url()) as conn:
        alert = drift.segment_mix_alert(conn, model_version, run_id, counts)
    return [alert] if alert else []


def run_scoring(settings: Settings, mode: Literal["full", "incremental"], wait: bool,
                partitions: int) -> tuple[str, list[drift.DriftAlert]]:
    """Score and publish (in this process or on Dask), then look at the segment mix;
    returns the summary and any drift, which the caller reports."""
    version = champion_version()
    if partitions > 1:
        runner = dask_task_runner(settings, partitions)
        with quiet_workers():
            result = partitioned_scoring.with_options(task_runner=runner)(
                version, mode, partitions, settings.chunk_rows, wait, settings.lock_wait_s)
    else:
        result = score_customers(version, mode, settings.chunk_rows, wait, settings.lock_wait_s)
    create_markdown_artifact(markdown=reports.scoring_markdown(result, segment_names(version)),
                             key="scoring-report", description="Latest scoring run")
    # the summary is the run's result (and the CLI's output), the report its artifact
    return (reports.scoring_summary(result),
            segment_mix(version, result.run_id, result.segment_counts))


@flow(name="nightly-scoring", log_prints=True, timeout_seconds=flow_timeout_s())
def score_flow(mode: Literal["full", "incremental"] = "incremental", wait: bool = False,
               partitions: int = 1) -> str:
    """Score customers with the champion and publish them to customer_segments
    (partitions > 1: in parallel on Dask, a local cluster or SEGMENTATION_DASK_ADDRESS)."""
    summary, alerts = run_scoring(flow_settings(), mode, wait, partitions)
    report_drift(alerts, summary)
    return finished(summary)


@db_task
def apply_retention(quarantine_days: int, history_days: int) -> str:
    """Delete quarantined raw rows and history past their retention; say what went."""
    with connection(database_url()) as conn:
        return privacy.apply_retention(conn, quarantine_days, history_days).summary()


@flow(name="nightly", log_prints=True, timeout_seconds=flow_timeout_s())
def nightly(mode: Literal["full", "incremental"] = "incremental", partitions: int = 1) -> str:
    """The nightly job: validate pending batches, score and publish, then report drift
    (drift never stops the night; a failed batch does, as scoring would refuse it)."""
    settings = flow_settings()
    validated, alerts = validate_pending(settings)
    summary, mix = run_scoring(settings, mode, True, partitions)
    retention = apply_retention(settings.quarantine_retention_days,
                                settings.history_retention_days)
    summary = "\n".join([*validated, summary, retention])
    report_drift(alerts + mix, summary)
    return finished(summary)
