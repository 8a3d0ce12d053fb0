"""Nightly scoring flow: load the champion, stream-score customers, publish atomically."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from flows.common import db_task, flow_settings, resolve_database
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


@flow(name="nightly-scoring", log_prints=True)
def score_flow(mode: Literal["full", "incremental"] = "incremental", wait: bool = False) -> str:
    """Score customers with the champion and publish them to customer_segments."""
    settings = flow_settings()
    url = resolve_database(settings)
    model, names = load_champion(url)
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
def nightly(mode: Literal["full", "incremental"] = "incremental") -> str:
    """The nightly job: validate pending batches, then score (stops if a batch fails)."""
    from flows.validate import validate_flow

    validate_flow()
    return score_flow(mode=mode, wait=True)
