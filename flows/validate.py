"""Validation flow: run the data contract on every pending batch, publish artifacts."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from flows.common import database_url, db_task, finished, flow_settings, flow_timeout_s
from segmentation import drift, reports, validation
from segmentation.config import Settings
from segmentation.db import connection
from segmentation.errors import DriftDetected, ValidationFailed
from segmentation.progress import track
from segmentation.registry import champion_reference, champion_version


@db_task
def list_pending() -> list[str]:
    """Batches landed but not validated yet, oldest first."""
    with connection(database_url()) as conn:
        return validation.waiting_batches(conn)


@db_task
def validate_one(batch_id: str, max_share: float,
                 lock_wait_s: float) -> validation.ValidationReport | str:
    """Validate one batch (GX pushed down to PostgreSQL); a batch another run validated
    meanwhile is reported, not validated twice."""
    url = database_url()
    with connection(url) as conn:
        reference = champion_reference(conn)
    try:
        with track(f"validating {batch_id}", unit="steps", log=get_run_logger().info) as step:
            return validation.validate_batch(url, batch_id, reference=reference,
                                             max_quarantine_share=max_share,
                                             lock_wait_s=lock_wait_s, progress=step)
    except validation.AlreadyValidated as exc:
        return str(exc)


@db_task
def record_drift(alerts: list[drift.DriftAlert]) -> None:
    """The alerts as drift_alerts rows ops can query."""
    with connection(database_url()) as conn:
        drift.record_alerts(conn, alerts)


@db_task
def champion() -> str | None:
    """The champion's version (drift is measured against its training data)."""
    with connection(database_url()) as conn:
        return champion_version(conn)


def validate_pending(settings: Settings, batch_id: str | None = None
                     ) -> tuple[list[str], list[drift.DriftAlert]]:
    """Validate one or every pending batch; raise if one failed, return summaries and the
    drift found (reported by the caller once its work is done)."""
    batches = [batch_id] if batch_id else list_pending()
    summaries, failed, alerts = [], [], []
    model_version = champion() if batches else None
    for batch in batches:
        report = validate_one(batch, settings.quarantine_max_share, settings.lock_wait_s)
        if isinstance(report, str):  # validated by another run meanwhile
            summaries.append(report)
            continue
        summaries.append(report.summary(examples=False))  # Prefect keeps it: no ids
        create_markdown_artifact(markdown=reports.validation_markdown(report),
                                 key="validation-report", description="Latest validation")
        create_table_artifact(table=reports.validation_rows(report), key="validation-rules",
                              description="Rules of the latest validation")
        if not report.success:
            failed.append(batch)
        alert = drift.feature_alert(report, model_version)
        if alert is not None:
            alerts.append(alert)
    if failed:
        raise ValidationFailed(f"batch(es) {', '.join(failed)} failed validation")
    return summaries, alerts


def report_drift(alerts: list[drift.DriftAlert], summary: str) -> None:
    """After the work is published: a row per alert, an event each (the automation notifies
    ops), an artifact, then fail the run so it stands out. Nothing if no alert."""
    if not alerts:
        return
    record_drift(alerts)
    for alert in alerts:
        subject = (f"segmentation.batch.{alert.batch_id}" if alert.batch_id
                   else f"segmentation.model.{alert.model_version}")
        emit_event(event="segmentation.drift.detected",
                   resource={"prefect.resource.id": subject},
                   payload={"kind": alert.kind, "psi": alert.psi, "message": alert.message,
                            "alert_id": alert.alert_id})
    create_markdown_artifact(markdown=drift.drift_markdown(alerts, summary), key="drift-report",
                             description="Drift found by the latest run")
    raise DriftDetected("\n".join([summary, *(f"drift: {a.message}" for a in alerts)]))


@flow(name="validate", log_prints=True, timeout_seconds=flow_timeout_s())
def validate_flow(batch_id: str | None = None) -> list[str]:
    """Validate one batch, or every pending one; fails when a batch breaks the contract,
    and (after accepting it) when its features drifted."""
    settings = flow_settings()
    summaries, alerts = validate_pending(settings, batch_id)
    summary = "\n".join(summaries) or "no batch waiting for validation"
    report_drift(alerts, summary)
    return finished(summaries or ["no batch waiting for validation"])

