"""Drift alerts: found by validation (feature PSI) or after scoring (segment mix), reported
after the night's work is published, never instead of it. Each alert is a row ops can
query (`drift_alerts`); the flows also emit an event and an artifact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Json

from segmentation.validation import MAJOR_DRIFT, ValidationReport, segment_mix_psi


@dataclass
class DriftAlert:
    """One major shift: which data, against which model, how far."""

    kind: str  # "feature" | "segment-mix"
    message: str
    psi: dict[str, float]
    batch_id: str | None = None
    run_id: str | None = None
    model_version: str | None = None
    alert_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def feature_alert(report: ValidationReport, model_version: str | None) -> DriftAlert | None:
    """The alert for a validated batch whose features moved past the major band."""
    shifted = report.major_drift()
    if not shifted:
        return None
    listed = ", ".join(f"{f} {v:.2f}" for f, v in sorted(shifted.items(), key=lambda i: -i[1]))
    return DriftAlert("feature", f"batch {report.batch_id}: major drift (PSI >= {MAJOR_DRIFT}) "
                      f"in {listed}: consider `segmentation train`", shifted,
                      batch_id=report.batch_id, model_version=model_version)


def segment_mix_alert(conn: psycopg.Connection, model_version: str,
                      run_id: str | None = None,
                      counts: dict[int, int] | None = None) -> DriftAlert | None:
    """The alert when the published segment shares moved past the major band (counts: the
    published customers per segment, if the run counted them)."""
    mix = segment_mix_psi(conn, counts)
    if mix is None or mix < MAJOR_DRIFT:
        return None
    return DriftAlert("segment-mix", f"segment mix PSI {mix:.2f} >= {MAJOR_DRIFT} against model "
                      f"{model_version}'s training shares: consider a retrain",
                      {"segment_mix": mix}, run_id=run_id, model_version=model_version)


def record_alerts(conn: psycopg.Connection, alerts: list[DriftAlert]) -> None:
    """One drift_alerts row per alert (a retry records each alert once)."""
    for a in alerts:
        conn.execute(
            "INSERT INTO drift_alerts (alert_id, kind, batch_id, run_id, model_version, psi,"
            " message) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (alert_id) DO NOTHING",
            (a.alert_id, a.kind, a.batch_id, a.run_id, a.model_version, Json(a.psi), a.message))


def drift_markdown(alerts: list[DriftAlert], summary: str) -> str:
    """Artifact body: what was published, then each alert."""
    lines = ["# Drift detected", "", "The night's work is published:", "", "```", summary, "```",
             "", "| kind | batch / run | model | PSI | message |", "|---|---|---|---|---|"]
    for a in alerts:
        values = ", ".join(f"{k} {v:.2f}" for k, v in a.psi.items())
        lines.append(f"| {a.kind} | {a.batch_id or a.run_id or ''} | {a.model_version or ''} "
                     f"| {values} | {a.message} |")
    return "\n".join(lines)
