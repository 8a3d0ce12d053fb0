"""Nightly scoring flow: load the champion, stream-score customers, publish atomically."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from flows.common import dask_task_runner, db_task, flow_settings, resolve_database
from segmentation import registry, reports, scoring, validation
from segmentation.clustering import SegmentationModel
from segmentation.db import connection
from segmentation.errors import DriftDetected


@db_task
def load_champion(url: str) -> tuple[SegmentationModel, dict[int, str]]:
    """The champion model (sha256-checked) and its segment names with ops' overrides."""
    with connection(url) as conn:
        model = registry.load_version(conn)
        return model, registry.apply_name_overrides(conn, model)


@db_task
def score_customers(url: str, model: SegmentationModel, names: dict[int, str],
                    mode: Literal["full", "incremental"], chunk_rows: int,
                    wait: bool) -> scoring.ScoreResult:
    """Stream, classify and publish in one transaction (safe to retry: all or nothing)."""
    logger = get_run_logger()

    def progress(rows: int, seconds: float) -> None:
        logger.info("scored %s rows (%.0f rows/s)", f"{rows:,}", rows / max(seconds, 1e-9))

    return scoring.score_customers(url, model, names, mode=mode, chunk_rows=chunk_rows,
                                   wait=wait, progress=progress)


@db_task
def check_ready(url: str, model_version: str,
                mode: Literal["full", "incremental"]) -> scoring.RunStart:
    """Refuse before any work: schema current, no unvalidated or failed batch."""
    return scoring.check_ready(url, model_version, mode)


@db_task
def score_partition(url: str, model: SegmentationModel, mode: Literal["full", "incremental"],
                    run_id: str, part: int, parts: int, chunk_rows: int,
                    since: datetime | None) -> scoring.PartitionResult:
    """Score one hash partition into scoring_stage (a retry replaces the partition)."""
    logger = get_run_logger()

    def progress(rows: int, seconds: float) -> None:
        logger.info("partition %d/%d: %s rows (%.0f rows/s)", part + 1, parts, f"{rows:,}",
                    rows / max(seconds, 1e-9))

    staged = scoring.stage_partition(url, model, mode, run_id, part, parts, chunk_rows,
                                     since, progress)
    logger.info("partition %d/%d staged: %s rows in %.1f s", part + 1, parts,
                f"{staged.rows:,}", staged.seconds)
    return staged


@db_task
def publish_partitions(url: str, model: SegmentationModel, names: dict[int, str],
                       mode: Literal["full", "incremental"], run_id: str,
                       staged: list[scoring.PartitionResult], wait: bool,
                       started_at: datetime) -> scoring.ScoreResult:
    """Publish all staged partitions in one transaction (all or nothing)."""
    return scoring.publish_staged(url, model, names, mode, run_id, staged, wait=wait,
                                  started_at=started_at)


@flow(name="partitioned-scoring", log_prints=True)
def partitioned_scoring(url: str, model: SegmentationModel, names: dict[int, str],
                        mode: Literal["full", "incremental"], partitions: int, chunk_rows: int,
                        wait: bool) -> scoring.ScoreResult:
    """Score hash partitions of customer_id as parallel tasks, then publish them at once."""
    start = check_ready(url, model.version, mode)
    run_id = str(uuid.uuid4())
    try:
        staged = score_partition.map(unmapped(url), unmapped(model), unmapped(mode),
                                     unmapped(run_id), range(partitions), unmapped(partitions),
                                     unmapped(chunk_rows), unmapped(start.since)).result()
    except BaseException:
        scoring.discard_staged(url, run_id)  # a lost partition: drop the others' scratch
        raise
    return publish_partitions(url, model, names, mode, run_id, staged, wait, start.started_at)


@flow(name="nightly-scoring", log_prints=True)
def score_flow(mode: Literal["full", "incremental"] = "incremental", wait: bool = False,
               partitions: int = 1) -> str:
    """Score customers with the champion and publish them to customer_segments
    (partitions > 1: in parallel on Dask, a local cluster or SEGMENTATION_DASK_ADDRESS)."""
    settings = flow_settings()
    url = resolve_database(settings)
    model, names = load_champion(url)
    if partitions > 1:
        runner = dask_task_runner(settings, partitions)
        result = partitioned_scoring.with_options(task_runner=runner)(
            url, model, names, mode, partitions, settings.chunk_rows, wait)
    else:
        result = score_customers(url, model, names, mode, settings.chunk_rows, wait)
    create_markdown_artifact(markdown=reports.scoring_markdown(result), key="scoring-report",
                             description="Latest scoring run")
    summary = reports.scoring_summary(result)
    get_run_logger().info(summary)
    mix = segment_mix(url)
    if mix is not None and mix >= validation.MAJOR_DRIFT:  # published, but say it loudly
        emit_event(event="segmentation.drift.detected",
                   resource={"prefect.resource.id": f"segmentation.model.{model.version}"},
                   payload={"kind": "segment-mix", "psi": mix})
        raise DriftDetected(f"segment mix PSI {mix:.2f} >= {validation.MAJOR_DRIFT} against "
                            f"model {model.version}'s training shares: consider a retrain")
    return summary


@db_task
def segment_mix(url: str) -> float | None:
    """Segment-mix PSI of the published table against the champion's training shares."""
    with connection(url) as conn:
        return validation.segment_mix_psi(conn)


@flow(name="nightly", log_prints=True)
def nightly(mode: Literal["full", "incremental"] = "incremental", partitions: int = 1) -> str:
    """The nightly job: validate pending batches, then score (stops if a batch fails)."""
    from flows.validate import validate_flow

    validate_flow()
    return score_flow(mode=mode, wait=True, partitions=partitions)
