"""Versioned models: a folder per version on disk, a row per version in PostgreSQL.

A version is written to a temporary folder and renamed into place only when complete, so
a full disk or a permission error leaves the registry as it was.  Loading checks the
file's sha256 against the database row and the scikit-learn version against metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import psycopg
import sklearn
from psycopg.types.json import Json

from segmentation.clustering import SegmentationModel
from segmentation.errors import ModelError, SegmentationError
from segmentation.features import FEATURES
from segmentation.tree import export_rules

MODEL_FILE = "model.joblib"


def new_version() -> str:
    """Sortable, unique version name: m<UTC timestamp>-<random>."""
    return f"m{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:4]}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SavedVersion:
    """Where a version was written and the digest of its model file."""

    version: str
    path: Path
    sha256: str


def save_version(model: SegmentationModel, metrics: dict[str, Any], sizes: dict[int, int],
                 models_dir: Path) -> SavedVersion:
    """Write model, rules and metadata to <models_dir>/<version>/, atomically."""
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / model.version
    if final.exists():
        raise SegmentationError(f"model version {model.version} already exists at {final}")
    staging = Path(tempfile.mkdtemp(prefix=f".{model.version}-", dir=models_dir))
    try:
        joblib.dump(model, staging / MODEL_FILE, compress=3)
        (staging / "rules.txt").write_text(export_rules(model), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        metadata = {
            "version": model.version,
            "created_at": datetime.now(UTC).isoformat(),
            "python": platform.python_version(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "features": list(FEATURES),
            "k": model.k,
            "names": {str(k): v for k, v in model.names.items()},
            "sizes": {str(k): v for k, v in sizes.items()},
            "metrics": metrics,
            "sha256": files,
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        for path in staging.iterdir():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        staging.chmod(0o755)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SavedVersion(model.version, final, files[MODEL_FILE])


def register_version(conn: psycopg.Connection, saved: SavedVersion, model: SegmentationModel,
                     metrics: dict[str, Any], sizes: dict[int, int], reason: str | None) -> None:
    """Insert the version (as challenger) and its segment profiles."""
    conn.execute(
        "INSERT INTO model_versions (version, status, k, metrics, path, sha256, status_reason)"
        " VALUES (%s, 'challenger', %s, %s, %s, %s, %s)",
        (saved.version, model.k, Json(metrics), str(saved.path), saved.sha256, reason),
    )
    centres = model.centroids_original()
    scaler = model.pipeline.named_steps["scale"]
    total = sum(sizes.values()) or 1
    for row, seg in enumerate(sorted(model.names)):
        z = (centres[row] - scaler.mean_) / scaler.scale_
        conn.execute(
            "INSERT INTO segment_profiles (version, segment_id, name, profile, size, share,"
            " centroid, centroid_z) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (saved.version, seg, model.names[seg], model.profiles[seg], sizes.get(seg, 0),
             sizes.get(seg, 0) / total,
             Json(dict(zip(FEATURES, map(float, centres[row]), strict=True))),
             Json(dict(zip(FEATURES, map(float, z), strict=True)))),
        )


def promote(conn: psycopg.Connection, version: str, reason: str = "promoted") -> None:
    """Make `version` the one champion, retiring the old one, in one transaction."""
    with conn.transaction():
        conn.execute("LOCK TABLE model_versions IN SHARE ROW EXCLUSIVE MODE")
        found = conn.execute("SELECT status FROM model_versions WHERE version = %s",
                             (version,)).fetchone()
        if found is None:
            raise SegmentationError(f"no model version {version!r}")
        conn.execute("UPDATE model_versions SET status = 'retired' WHERE status = 'champion'")
        conn.execute(
            "UPDATE model_versions SET status = 'champion', promoted_at = clock_timestamp(),"
            " status_reason = %s WHERE version = %s",
            (reason, version),
        )


def rollback(conn: psycopg.Connection) -> str:
    """Restore the champion before the current one; returns its version."""
    row = conn.execute(
        "SELECT version FROM model_versions WHERE status = 'retired' AND promoted_at IS NOT NULL"
        " ORDER BY promoted_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise SegmentationError("no previous champion to roll back to")
    promote(conn, row[0], reason="rollback")
    return str(row[0])


def champion_version(conn: psycopg.Connection) -> str | None:
    """The current champion's version, if any."""
    row = conn.execute("SELECT version FROM model_versions WHERE status = 'champion'").fetchone()
    return None if row is None else str(row[0])


def load_version(conn: psycopg.Connection, version: str | None = None) -> SegmentationModel:
    """Load a version (default: the champion), refusing tampered or incompatible files."""
    if version is None:
        version = champion_version(conn)
        if version is None:
            raise ModelError("no champion model: run `segmentation train` first")
    row = conn.execute("SELECT path, sha256 FROM model_versions WHERE version = %s",
                       (version,)).fetchone()
    if row is None:
        raise ModelError(f"no model version {version!r}")
    folder, expected = Path(row[0]), row[1]
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"model {version}: file {path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"model {version}: {path} sha256 {actual[:12]}... does not match the "
                         f"registry ({expected[:12]}...); refusing to load a modified file")
    try:
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {version}: unreadable metadata.json ({exc})") from None
    if metadata.get("sklearn") != sklearn.__version__:
        raise ModelError(f"model {version} was saved with scikit-learn {metadata.get('sklearn')}"
                         f", this environment has {sklearn.__version__}; retrain it")
    model = joblib.load(path)
    if not isinstance(model, SegmentationModel):
        raise ModelError(f"model {version}: {path} does not hold a SegmentationModel")
    return model


def champion_reference(conn: psycopg.Connection) -> dict[str, Any]:
    """The champion's training distribution per feature (the drift baseline), if any."""
    row = conn.execute("SELECT metrics->'reference' FROM model_versions"
                       " WHERE status = 'champion'").fetchone()
    return dict(row[0]) if row and row[0] else {}


def apply_name_overrides(conn: psycopg.Connection, model: SegmentationModel) -> dict[int, str]:
    """Segment names with ops' overrides (table segment_name_overrides) applied."""
    names = dict(model.names)
    for seg, name in conn.execute("SELECT segment_id, name FROM segment_name_overrides"):
        if seg in names:
            names[int(seg)] = str(name)
    return names
