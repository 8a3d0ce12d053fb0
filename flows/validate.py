"""Validation flow: run the data contract on every pending batch, publish artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows.common import db_task, flow_settings, resolve_database
from segmentation import reports, validation
from segmentation.db import connection
from segmentation.errors import DriftDetected, ValidationFailed
from segmentation.registry import champion_reference


@db_task
def list_pending(url: str) -> list[str]:
    """Batches landed but not validated yet, oldest first."""
    with connection(url) as conn:
        return [str(b) for (b,) in conn.execute(
            "SELECT batch_id FROM ingest_batches WHERE status = 'loaded' ORDER BY loaded_at")]


@task(cache_policy=NO_CACHE)
def validate_one(url: str, batch_id: str, max_share: float) -> validation.ValidationReport:
    """Validate one batch (GX pushed down to PostgreSQL)."""
    with connection(url) as conn:
        reference = champion_reference(conn)
    return validation.validate_batch(url, batch_id, reference=reference,
                                     max_quarantine_share=max_share)


@flow(name="validate", log_prints=True)
def validate_flow(batch_id: str | None = None) -> list[str]:
    """Validate one batch, or every pending one; fails when a batch breaks the contract."""
    settings = flow_settings()
    url = resolve_database(settings)
    batches = [batch_id] if batch_id else list_pending(url)
    summaries, failed = [], []
    drifted: dict[str, dict[str, float]] = {}
    for batch in batches:
        report = validate_one(url, batch, settings.quarantine_max_share)
        summaries.append(report.summary())
        get_run_logger().info(report.summary())
        create_markdown_artifact(markdown=reports.validation_markdown(report),
                                 key="validation-report", description="Latest validation")
        create_table_artifact(table=reports.validation_rows(report), key="validation-rules",
                              description="Rules of the latest validation")
        if not report.success:
            failed.append(batch)
        if report.major_drift():
            drifted[batch] = report.major_drift()
    if failed:
        raise ValidationFailed(f"batch(es) {', '.join(failed)} failed validation")
    if drifted:  # accepted, but the model may no longer describe these customers
        for batch, features in drifted.items():
            emit_event(event="segmentation.drift.detected",
                       resource={"prefect.resource.id": f"segmentation.batch.{batch}"},
                       payload={"kind": "feature", "psi": features})
        raise DriftDetected("major drift (PSI >= 0.25) in " + "; ".join(
            f"batch {b}: " + ", ".join(f"{f} {v:.2f}" for f, v in fs.items())
            for b, fs in drifted.items()) + ": consider `segmentation train`")
    return summaries or ["no batch waiting for validation"]
