"""Versioned models: a row per version in PostgreSQL, its files (the skops model, the
rules, the metadata) as rows beside it, written in the same transaction.

Any process with the database URL loads a version: a Dask worker on another host, the app,
the flow. Loading a model must never run code, even for someone who can write the database
(the bytes and their sha256 both live there, so the digest proves integrity, not origin):
a model is saved with skops, whose loader rebuilds only an explicit list of types and
executes nothing, and the bytes checked are the bytes loaded. Versions from before this
release, kept in a folder, are imported by `segmentation db migrate`; until then they load
from their folder, only if it lies inside the models folder. Pickles (the joblib files of
earlier releases) are never opened. `models export` writes a version's files to a folder,
`models import` registers a folder made elsewhere.
"""

from __future__ import annotations

import hashlib
import json
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
RULES_FILE = "rules.txt"
METADATA_FILE = "metadata.json"
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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SavedVersion:
    """A version's files, ready to register: the skops model, the rules, the metadata."""

    version: str
    files: dict[str, bytes]

    @property
    def sha256(self) -> str:
        """The digest of the model file (model_versions.sha256)."""
        return sha256_bytes(self.files[MODEL_FILE])


def package_version(model: SegmentationModel, metrics: dict[str, Any],
                    sizes: dict[int, int]) -> SavedVersion:
    """The version's files, in memory: the skops model, its rules and its metadata."""
    import skops.io

    from segmentation.tree import export_rules

    files = {MODEL_FILE: skops.io.dumps(model_payload(model)),
             RULES_FILE: export_rules(model).encode("utf-8")}
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
        "sha256": {name: sha256_bytes(data) for name, data in sorted(files.items())},
    }
    files[METADATA_FILE] = json.dumps(metadata, indent=2).encode("utf-8")
    return SavedVersion(model.version, files)


def insert_files(conn: psycopg.Connection, version: str, files: dict[str, bytes]) -> None:
    """A version's files as rows, each with its own sha256."""
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO model_files (version, name, content, sha256)"
                        " VALUES (%s, %s, %s, %s)",
                        [(version, name, data, sha256_bytes(data))
                         for name, data in sorted(files.items())])


def register_version(conn: psycopg.Connection, saved: SavedVersion, model: SegmentationModel,
                     metrics: dict[str, Any], sizes: dict[int, int], reason: str | None) -> None:
    """Insert the version (as challenger), its files and its segment profiles, in the
    caller's transaction: a version is registered with its files or not at all."""
    conn.execute(
        "INSERT INTO model_versions (version, status, k, metrics, path, sha256, status_reason)"
        " VALUES (%s, 'challenger', %s, %s, NULL, %s, %s)",
        (saved.version, model.k, Json(metrics), saved.sha256, reason),
    )
    insert_files(conn, saved.version, saved.files)
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
    """Load a version (default: the champion) from the database, refusing tampered, foreign
    or incompatible files; a version from before model_files loads from its folder
    (models_dir: where such folders may live; default: the configured models folder)."""
    if version is None:
        version = champion_version(conn)
        if version is None:
            raise ModelError("no champion model: run `segmentation train` first")
    row = conn.execute("SELECT path, sha256 FROM model_versions WHERE version = %s",
                       (version,)).fetchone()
    if row is None:
        raise ModelError(f"no model version {version!r}")
    stored, expected = row
    files: dict[str, bytes] = dict(conn.execute(
        "SELECT name, content FROM model_files WHERE version = %s AND name IN (%s, %s)",
        (version, MODEL_FILE, METADATA_FILE)).fetchall())
    if files:
        where = f"model {version} (in the database)"
        data, metadata_bytes = files.get(MODEL_FILE), files.get(METADATA_FILE)
        if data is None or metadata_bytes is None:
            raise ModelError(f"{where}: its files are incomplete; refusing to load it")
        data = bytes(data)  # one copy: the bytes checked are the bytes loaded
    else:
        where, data, metadata_bytes = read_folder_version(version, stored, models_dir)
    actual = sha256_bytes(data)
    if actual != expected:
        raise ModelError(f"{where}: sha256 {actual[:12]}... does not match the registry "
                         f"({expected[:12]}...); refusing to load a modified file")
    try:
        metadata = json.loads(bytes(metadata_bytes).decode("utf-8"))
    except ValueError as exc:
        raise ModelError(f"{where}: unreadable metadata.json ({exc})") from None
    if metadata.get("sklearn") != sklearn_version():
        raise ModelError(f"model {version} was saved with scikit-learn {metadata.get('sklearn')}"
                         f", this environment has {sklearn_version()}; retrain it")
    model = model_from_bytes(data, where)
    if model.version != version:
        raise ModelError(f"{where} holds model {model.version}; refusing it")
    return model


def read_folder_version(version: str, stored: str | None,
                        models_dir: Path | None) -> tuple[str, bytes, bytes]:
    """A version from before model_files: (where, model bytes, metadata bytes) read from its
    folder, which must lie inside the models folder."""
    if not stored:
        raise ModelError(f"model {version}: no files in the database and no folder; "
                         "refusing to load it")
    if models_dir is None:
        from segmentation.config import load_settings

        models_dir = load_settings().models_path
    folder = model_folder(stored, models_dir, version)
    path = folder / MODEL_FILE
    if not path.is_file():
        if (folder / LEGACY_FILE).is_file():
            raise LegacyModel(f"model {version} is a pickle from an earlier release, which is "
                              "never loaded (it could run code): retrain with "
                              "`segmentation train --force`")
        raise ModelError(f"model {version}: file {path} is missing")
    try:
        return f"model {version}: {path}", path.read_bytes(), \
            (folder / METADATA_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"model {version}: unreadable files in {folder} ({exc})") from None


def import_folders(conn: psycopg.Connection, models_dir: Path) -> list[str]:
    """Move the files of versions from before model_files into the database (their folder
    inside models_dir, their model file's sha256 as registered); returns the versions
    moved. A folder that is missing or does not match is left, and named, for ops."""
    moved = []
    rows = conn.execute("SELECT v.version, v.path, v.sha256 FROM model_versions v"
                        " WHERE v.path IS NOT NULL AND NOT EXISTS"
                        " (SELECT FROM model_files f WHERE f.version = v.version)").fetchall()
    for version, stored, expected in rows:
        folder = model_folder(stored, models_dir, version)
        files = {name: (folder / name).read_bytes() for name in
                 (MODEL_FILE, RULES_FILE, METADATA_FILE) if (folder / name).is_file()}
        if MODEL_FILE not in files or METADATA_FILE not in files:
            continue  # a pickle of an earlier release, or gone: load_version says which
        if sha256_bytes(files[MODEL_FILE]) != expected:
            raise ModelError(f"model {version}: {folder / MODEL_FILE} does not match the "
                             "registry's sha256; not importing it")
        insert_files(conn, str(version), files)
        moved.append(str(version))
    return moved


def export_version(conn: psycopg.Connection, version: str, directory: Path) -> Path:
    """Write a version's files to <directory>/<version>/ (complete, or not at all)."""
    rows = conn.execute("SELECT name, content FROM model_files WHERE version = %s",
                        (version,)).fetchall()
    if not rows:
        raise SegmentationError(f"no model version {version!r} with files in the database")
    final = directory / version
    if final.exists():
        raise SegmentationError(f"{final} already exists; export elsewhere")
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=directory))
    try:
        for name, content in rows:
            (staging / name).write_bytes(bytes(content))
        staging.chmod(0o755)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def import_version(conn: psycopg.Connection, folder: Path) -> str:
    """Register a version exported (or made) elsewhere, as a challenger: its model is
    loaded through the same checks first (trusted types, scikit-learn version)."""
    try:
        files = {name: (folder / name).read_bytes() for name in
                 (MODEL_FILE, RULES_FILE, METADATA_FILE)}
        metadata = json.loads(files[METADATA_FILE].decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise SegmentationError(f"{folder}: not an exported model version ({exc})") from None
    if metadata.get("sha256", {}).get(MODEL_FILE) != sha256_bytes(files[MODEL_FILE]):
        raise ModelError(f"{folder / MODEL_FILE} does not match its metadata's sha256; "
                         "refusing to import it")
    if metadata.get("sklearn") != sklearn_version():
        raise ModelError(f"{folder} was saved with scikit-learn {metadata.get('sklearn')}, "
                         f"this environment has {sklearn_version()}; retrain instead")
    model = model_from_bytes(files[MODEL_FILE], str(folder / MODEL_FILE))
    if conn.execute("SELECT 1 FROM model_versions WHERE version = %s",
                    (model.version,)).fetchone():
        raise SegmentationError(f"model version {model.version} is already registered")
    sizes = {int(k): int(v) for k, v in metadata.get("sizes", {}).items()}
    with conn.transaction():
        register_version(conn, SavedVersion(model.version, files), model,
                         metadata.get("metrics", {}), sizes, f"imported from {folder}")
    return model.version


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
