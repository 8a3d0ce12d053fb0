"""Versioned models: a folder per version on disk, a row per version in PostgreSQL.

A version is written to a temporary folder and renamed into place only when complete, so
a full disk or a permission error leaves the registry as it was.

Loading a model must never run code, even for someone who can write the database (its
path and sha256 live there): a model is saved with skops, whose loader rebuilds only an
explicit list of types and executes nothing; it is read once, its sha256 checked on those
same bytes, and only a folder inside the models folder is read at all. Pickles (the joblib
files of earlier releases) are never opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Json

if TYPE_CHECKING:
    from segmentation.clustering import SegmentationModel

from segmentation.errors import LegacyModel, ModelError, SegmentationError
from segmentation.features import FEATURES

MODEL_FILE = "model.skops"
LEGACY_FILE = "model.joblib"  # a pickle: never loaded
# What a model file may hold beyond skops' own safe defaults (builtins, numpy arrays,
# scikit-learn estimators): numpy dtypes and a fitted tree's node arrays.
TRUSTED_TYPES = ["numpy.dtype", "sklearn.tree._tree.Tree"]


def sklearn_version() -> str:
    """The installed scikit-learn (imported only when a model is saved or checked)."""
    import sklearn

    return str(sklearn.__version__)


def numpy_version() -> str:
    """The installed numpy."""
    import numpy

    return str(numpy.__version__)


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
        import skops.io

        skops.io.dump(model_payload(model), staging / MODEL_FILE)
        from segmentation.tree import export_rules

        (staging / "rules.txt").write_text(export_rules(model), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        metadata = {
            "version": model.version,
            "created_at": datetime.now(UTC).isoformat(),
            "python": platform.python_version(),
            "sklearn": sklearn_version(),
            "numpy": numpy_version(),
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


def promote(conn: psycopg.Connection, version: str, reason: str = "promoted",
            changed_by: str = "library", action: str = "promote") -> None:
    """Make `version` the one champion, retiring the old one, log the change and install
    segment_for(...) for it, in one transaction: SQL users score with the champion, always.
    The version's own note (status_reason) is never overwritten."""
    from segmentation.sqlexport import install_segment_for

    with conn.transaction():
        conn.execute("LOCK TABLE model_versions IN SHARE ROW EXCLUSIVE MODE")
        found = conn.execute("SELECT status FROM model_versions WHERE version = %s",
                             (version,)).fetchone()
        if found is None:
            raise SegmentationError(f"no model version {version!r}")
        previous = champion_version(conn)
        if previous == version:
            raise SegmentationError(f"{version} is already the champion")
        model = load_version(conn, version)  # refuses a missing or tampered file first
        conn.execute("UPDATE model_versions SET status = 'retired' WHERE status = 'champion'")
        conn.execute("UPDATE model_versions SET status = 'champion',"
                     " promoted_at = clock_timestamp() WHERE version = %s", (version,))
        conn.execute(
            "INSERT INTO champion_log (version, previous_version, action, reason, changed_by)"
            " VALUES (%s, %s, %s, %s, %s)", (version, previous, action, reason, changed_by))
        install_segment_for(conn, model)


def champion_stack(conn: psycopg.Connection) -> list[str]:
    """The champions a rollback walks back through, oldest first: the log replayed, a
    promotion pushing its version, a rollback popping back to its own."""
    stack: list[str] = []
    for version, action in conn.execute("SELECT version, action FROM champion_log ORDER BY id"):
        if action == "rollback" and version in stack:
            newest = len(stack) - 1 - stack[::-1].index(version)
            del stack[newest + 1:]
        else:
            stack.append(version)
    return stack


def rollback(conn: psycopg.Connection, to: str | None = None, changed_by: str = "library",
             reason: str | None = None) -> str:
    """Restore the champion before the current one (or `to`, an earlier champion still on
    the log's stack), one champion per call; returns its version."""
    stack = champion_stack(conn)
    earlier = stack[:-1]
    if to is None:
        if not earlier:
            raise SegmentationError("no earlier champion to roll back to")
        target = earlier[-1]
    elif to not in earlier:
        shown = ", ".join(reversed(earlier)) or "none"
        raise SegmentationError(f"{to} is not an earlier champion (rollback targets, newest "
                                f"first: {shown})")
    else:
        target = to
    promote(conn, target, reason=reason or f"rollback from {stack[-1]}",
            changed_by=changed_by, action="rollback")
    return target


def champion_log(conn: psycopg.Connection, limit: int = 20) -> list[tuple]:
    """The newest champion changes: (when, action, version, previous, reason, by)."""
    return conn.execute(
        "SELECT changed_at, action, version, previous_version, reason, changed_by"
        " FROM champion_log ORDER BY id DESC LIMIT %s", (limit,)).fetchall()


def champion_version(conn: psycopg.Connection) -> str | None:
    """The current champion's version, if any."""
    row = conn.execute("SELECT version FROM model_versions WHERE status = 'champion'").fetchone()
    return None if row is None else str(row[0])


class DeferredModel:
    """A version to score with, loaded (and sha256-checked) only when a first row needs it:
    a night with nothing to score never pays for scikit-learn and skops."""

    def __init__(self, version: str, load: Callable[[], SegmentationModel]) -> None:
        self.version = version
        self._load = load
        self._model: SegmentationModel | None = None

    def model(self) -> SegmentationModel:
        """The loaded model (loaded once)."""
        if self._model is None:
            self._model = self._load()
            if self._model.version != self.version:
                raise ModelError(f"asked for model {self.version}, loaded {self._model.version}")
        return self._model

    def predict_matrix(self, x: Any) -> Any:
        """Segment ids for a chunk's feature matrix (see SegmentationModel.predict_matrix)."""
        return self.model().predict_matrix(x)


def model_payload(model: SegmentationModel) -> dict[str, Any]:
    """The model as plain parts skops can store without pickling a class of ours."""
    import numpy as np

    return {"version": model.version, "pipeline": model.pipeline, "pca": model.pca,
            "tree": model.tree, "label_to_segment": np.asarray(model.label_to_segment),
            "names": dict(model.names), "profiles": dict(model.profiles),
            "features": list(model.features), "info": model.info}


def model_from_bytes(data: bytes, where: str) -> SegmentationModel:
    """Rebuild a model from skops bytes, allowing only the trusted types (runs no code)."""
    import skops.io

    try:
        untrusted = set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_TYPES)
    except Exception as exc:  # not a skops archive at all (a pickle, garbage)
        raise ModelError(f"{where} is not a model file written by this registry "
                         f"({type(exc).__name__}); refusing to load it") from None
    if untrusted:
        raise ModelError(f"{where} holds types this registry never writes "
                         f"({', '.join(sorted(untrusted))}); refusing to load it")
    import numpy as np

    from segmentation.clustering import SegmentationModel

    try:
        parts = skops.io.loads(data, trusted=TRUSTED_TYPES)
        model = SegmentationModel(
            version=str(parts["version"]), pipeline=parts["pipeline"], pca=parts["pca"],
            tree=parts["tree"], label_to_segment=np.asarray(parts["label_to_segment"]),
            names={int(k): str(v) for k, v in parts["names"].items()},
            profiles={int(k): str(v) for k, v in parts["profiles"].items()},
            features=tuple(parts["features"]), info=dict(parts["info"]))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{where} does not hold a segmentation model ({exc})") from None
    return model


def model_folder(stored: str, models_dir: Path, version: str) -> Path:
    """The version's folder, refused unless it lies inside the models folder (a database
    row must not point the loader at files elsewhere)."""
    root = models_dir.resolve()
    folder = Path(stored).resolve()
    if not folder.is_relative_to(root) or folder == root:
        raise ModelError(f"model {version}: its folder {stored} is outside the models folder "
                         f"{root}; refusing to load it")
    return folder


def load_version(conn: psycopg.Connection, version: str | None = None,
                 models_dir: Path | None = None) -> SegmentationModel:
    """Load a version (default: the champion), refusing tampered, foreign or incompatible
    files. models_dir: where versions may live (default: the configured models folder)."""
    if version is None:
        version = champion_version(conn)
        if version is None:
            raise ModelError("no champion model: run `segmentation train` first")
    row = conn.execute("SELECT path, sha256 FROM model_versions WHERE version = %s",
                       (version,)).fetchone()
    if row is None:
        raise ModelError(f"no model version {version!r}")
    if models_dir is None:
        from segmentation.config import load_settings

        models_dir = load_settings().models_path
    folder, expected = model_folder(row[0], models_dir, version), row[1]
    path = folder / MODEL_FILE
    if not path.is_file():
        if (folder / LEGACY_FILE).is_file():
            raise LegacyModel(f"model {version} is a pickle from an earlier release, which is "
                              "never loaded (it could run code): retrain with "
                              "`segmentation train --force`")
        raise ModelError(f"model {version}: file {path} is missing")
    data = path.read_bytes()  # read once: the bytes checked are the bytes loaded
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelError(f"model {version}: {path} sha256 {actual[:12]}... does not match the "
                         f"registry ({expected[:12]}...); refusing to load a modified file")
    try:
        metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {version}: unreadable metadata.json ({exc})") from None
    if metadata.get("sklearn") != sklearn_version():
        raise ModelError(f"model {version} was saved with scikit-learn {metadata.get('sklearn')}"
                         f", this environment has {sklearn_version()}; retrain it")
    model = model_from_bytes(data, f"model {version}: {path}")
    if model.version != version:
        raise ModelError(f"model {version}: {path} holds model {model.version}; refusing it")
    return model


def champion_reference(conn: psycopg.Connection) -> dict[str, Any]:
    """The champion's training distribution per feature (the drift baseline), if any."""
    row = conn.execute("SELECT metrics->'reference' FROM model_versions"
                       " WHERE status = 'champion'").fetchone()
    return dict(row[0]) if row and row[0] else {}


def segment_names(conn: psycopg.Connection, version: str | None = None) -> dict[int, str]:
    """A version's segment names as every reader sees them (ops' renames win); default:
    the champion's. The view segment_names is the one source of truth."""
    if version is None:
        version = champion_version(conn)
    return {int(seg): str(name) for seg, name in conn.execute(
        "SELECT segment_id, segment_name FROM segment_names WHERE model_version = %s"
        " ORDER BY segment_id", (version,))}


def rename_segment(conn: psycopg.Connection, segment_id: int, name: str | None) -> str:
    """Rename a champion segment for every reader at once (name None: back to the generated
    name); returns the name now in effect. One row written, in one transaction."""
    with conn.transaction():
        row = conn.execute(
            "SELECT n.generated_name FROM segment_names n JOIN model_versions m ON"
            " m.version = n.model_version AND m.status = 'champion' WHERE n.segment_id = %s",
            (segment_id,)).fetchone()
        if row is None:
            known = ", ".join(str(s) for s in segment_names(conn)) or "none: no champion"
            raise SegmentationError(f"the champion has no segment {segment_id} "
                                    f"(its segments: {known})")
        if name is None:
            conn.execute("DELETE FROM segment_name_overrides WHERE segment_id = %s",
                         (segment_id,))
            return str(row[0])
        name = name.strip()
        if not 1 <= len(name) <= 80:
            raise SegmentationError("a segment name must have 1 to 80 characters")
        conn.execute(
            "INSERT INTO segment_name_overrides (segment_id, name) VALUES (%s, %s)"
            " ON CONFLICT (segment_id) DO UPDATE SET name = EXCLUDED.name, updated_at = now()",
            (segment_id, name))
        return name
