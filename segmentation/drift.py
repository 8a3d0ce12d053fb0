"""Drift: PSI against the champion's training data, and the alerts it raises.

Found by validation (each feature of a batch) or after scoring (the segment mix), reported
after the night's work is published, never instead of it. Each alert is a row ops can
query (`drift_alerts`); the flows also emit an event and an artifact.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.features import FEATURES

if TYPE_CHECKING:
    from segmentation.validation import ValidationReport

PSI_BANDS = ((0.25, "major shift"), (0.10, "moderate shift"))  # below 0.10: stable


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
    if mix is None or psi_band(mix) != PSI_BANDS[0][1]:
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


MAJOR_DRIFT = PSI_BANDS[0][0]
# Drift is estimated from a page sample of this many rows (see feature_psi).
DRIFT_SAMPLE_ROWS = 100_000
# PSI over ten buckets is noise on small batches (10 rows of the same population score
# > 1): below this many rows drift is not measured, and the report says so.
MIN_DRIFT_ROWS = 500


def feature_psi(conn: psycopg.Connection, batch_id: str,
                reference: dict[str, dict[str, list[float]]], rows_in: int,
                sample_rows: int = DRIFT_SAMPLE_ROWS) -> dict[str, float]:
    """PSI of each feature against the champion's training distribution.

    Read from a page sample of about sample_rows rows (every row of a smaller batch): the
    drift bands are 0.10 and 0.25, and at 100,000 rows the sampling error of a PSI over
    ten buckets is about 0.001. Counts below each training edge, cumulative, give
    width_bucket's buckets; plain filtered counts run on parallel workers.
    """
    features = [f for f in FEATURES if f in reference]
    if not features:
        return {}
    counts: list[sql.Composable] = []
    edges: list[float] = []
    for feature in features:
        counts.append(sql.SQL("count({})").format(sql.Identifier(feature)))
        for edge in reference[feature]["edges"]:
            counts.append(sql.SQL("count(*) FILTER (WHERE {} < %s)")
                          .format(sql.Identifier(feature)))
            edges.append(edge)
    percent = min(100.0, 100.0 * sample_rows / max(rows_in, 1))
    row = conn.execute(sql.SQL(
        "SELECT {} FROM customers_incoming TABLESAMPLE SYSTEM (%s::real) REPEATABLE (0)"
        " WHERE batch_id = %s").format(sql.SQL(", ").join(counts)),
        [*edges, percent, batch_id]).fetchone()
    assert row is not None
    values, position = {}, 0
    for feature in features:
        n = len(reference[feature]["edges"])
        total, below = int(row[position]), [int(v) for v in row[position + 1:position + 1 + n]]
        position += 1 + n
        if total:
            cumulative = [0, *below, total]
            values[feature] = psi(reference[feature]["proportions"],
                                  [(cumulative[i + 1] - cumulative[i]) / total
                                   for i in range(n + 1)])
    return values


def psi_band(value: float) -> str | None:
    """The band of a PSI, judged on the two decimals it is shown with: a PSI shown as 0.25
    is a major shift, whichever side of 0.25 its third decimal falls."""
    shown = round(value, 2)
    return next((label for threshold, label in PSI_BANDS if shown >= threshold), None)


def drift_warnings(values: dict[str, float]) -> list[str]:
    """PSI values in words, with the usual bands (0.10 moderate, 0.25 major)."""
    return [f"drift: {feature} PSI {value:.2f} ({band} vs the champion's training data)"
            for feature, value in values.items() if (band := psi_band(value))]


def segment_mix_psi(conn: psycopg.Connection,
                    counts: dict[int, int] | None = None) -> float | None:
    """PSI of today's segment shares against the champion's training shares; counts: the
    published customers per segment when the run counted them (else counted here)."""
    shares = conn.execute(
        "SELECT p.segment_id, p.share FROM segment_profiles p JOIN model_versions m"
        " ON m.version = p.version AND m.status = 'champion' ORDER BY p.segment_id"
    ).fetchall()
    if not shares:
        return None
    if not counts:
        counts = dict(conn.execute(
            "SELECT segment_id, count(*) FROM customer_segments GROUP BY segment_id"
        ).fetchall())
    counts = {int(k): int(v) for k, v in counts.items()}  # JSON would make keys text
    total = sum(counts.get(segment, 0) for segment, _ in shares)
    if not total:
        return None
    return psi([share for _, share in shares],
               [counts.get(segment, 0) / total for segment, _ in shares])


def psi(expected: list[float], actual: list[float], floor: float = 1e-4) -> float:
    """Population stability index between two bucket distributions."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, floor), max(a, floor)
        total += (a - e) * math.log(a / e)
    return total
