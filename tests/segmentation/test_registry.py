"""The registry: versions and their files in the database, tamper-evident loads, safe
imports of earlier folders, exactly one champion."""

import dataclasses
import json
from pathlib import Path

import pytest

from segmentation import registry
from segmentation.db import connection
from segmentation.errors import ModelError, SegmentationError
from tests.helpers import query


def save_and_register(url: str, trained, models_dir: Path, version: str):
    model = dataclasses.replace(trained.model, version=version)  # the fixture is shared
    saved = registry.package_version(model, trained.metrics, trained.sizes)
    with connection(url) as conn:
        registry.register_version(conn, saved, model, trained.metrics, trained.sizes, None)
    return saved


def test_round_trip_predicts_identically(db: str, trained, models_dir: Path,
                                         synthetic_frame) -> None:
    saved = save_and_register(db, trained, models_dir, "m-rt-1")
    files = dict(query(db, "SELECT name, sha256 FROM model_files WHERE version = 'm-rt-1'"))
    assert files.keys() == {"model.skops", "rules.txt", "metadata.json"}
    assert files["model.skops"] == saved.sha256 == \
        query(db, "SELECT sha256 FROM model_versions WHERE version = 'm-rt-1'")[0][0]
    metadata = json.loads(saved.files["metadata.json"])
    assert metadata["sha256"]["model.skops"] == saved.sha256
    assert {"python", "sklearn", "numpy", "metrics"} <= metadata.keys()
    assert not models_dir.exists() or not any(models_dir.iterdir())  # nothing on disk
    with connection(db) as conn:
        loaded = registry.load_version(conn, "m-rt-1", models_dir=Path("/nonexistent"))
    assert (loaded.predict(synthetic_frame) == trained.model.predict(synthetic_frame)).all()
    assert query(db, "SELECT count(*) FROM segment_profiles WHERE version = 'm-rt-1'") == [(4,)]


def rewrite_file(url: str, version: str, name: str, change) -> None:  # type: ignore[no-untyped-def]
    """Someone edits a stored file's bytes (not its registered digest)."""
    data = bytes(query(url, "SELECT content FROM model_files WHERE version = %s AND name = %s",
                       (version, name))[0][0])
    with connection(url) as conn:
        conn.execute("UPDATE model_files SET content = %s WHERE version = %s AND name = %s",
                     (change(data), version, name))


def test_one_flipped_byte_is_refused(db: str, trained, models_dir: Path) -> None:
    save_and_register(db, trained, models_dir, "m-flip")

    def flip(data: bytes) -> bytes:
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        return bytes(changed)

    rewrite_file(db, "m-flip", registry.MODEL_FILE, flip)
    with connection(db) as conn, pytest.raises(ModelError, match="does not match the registry"):
        registry.load_version(conn, "m-flip")


def test_truncated_model_file_is_refused(db: str, trained, models_dir: Path) -> None:
    save_and_register(db, trained, models_dir, "m-cut")
    rewrite_file(db, "m-cut", registry.MODEL_FILE, lambda data: data[: len(data) // 3])
    with connection(db) as conn, pytest.raises(ModelError, match="does not match the registry"):
        registry.load_version(conn, "m-cut")


def test_other_sklearn_version_is_refused(db: str, trained, models_dir: Path) -> None:
    save_and_register(db, trained, models_dir, "m-skl")

    def older(data: bytes) -> bytes:
        metadata = json.loads(data)
        metadata["sklearn"] = "0.0.1"
        return json.dumps(metadata).encode()

    rewrite_file(db, "m-skl", "metadata.json", older)
    with connection(db) as conn, pytest.raises(ModelError, match="scikit-learn 0.0.1"):
        registry.load_version(conn, "m-skl")


def test_promote_and_rollback_keep_exactly_one_champion(db: str, trained,
                                                        models_dir: Path) -> None:
    for version in ("m-a", "m-b"):
        save_and_register(db, trained, models_dir, version)
    with connection(db) as conn:
        with pytest.raises(ModelError, match="no champion"):
            registry.load_version(conn)
        registry.promote(conn, "m-a")
        registry.promote(conn, "m-b")
        assert registry.champion_version(conn) == "m-b"
        assert registry.rollback(conn) == "m-a"
    assert query(db, "SELECT version, status FROM model_versions ORDER BY version") == \
        [("m-a", "champion"), ("m-b", "retired")]


def test_a_failed_registration_leaves_no_partial_version(db: str, trained) -> None:
    model = dataclasses.replace(trained.model, version="m-full")
    saved = registry.package_version(model, trained.metrics, trained.sizes)
    broken = dataclasses.replace(saved, files={**saved.files, "not-a-file-name": b"x"})
    with connection(db) as conn, pytest.raises(Exception, match="model_files_name_check"), \
            conn.transaction():
        registry.register_version(conn, broken, model, trained.metrics, trained.sizes, None)
    assert query(db, "SELECT count(*) FROM model_versions") == [(0,)]  # neither the row
    assert query(db, "SELECT count(*) FROM model_files") == [(0,)]  # nor any of its files


def test_export_then_import_elsewhere_gives_the_same_model(db: str, trained, models_dir: Path,
                                                          synthetic_frame, tmp_path: Path) -> None:
    save_and_register(db, trained, models_dir, "m-travel")
    with connection(db) as conn:
        folder = registry.export_version(conn, "m-travel", tmp_path / "out")
        with pytest.raises(SegmentationError, match="already exists"):
            registry.export_version(conn, "m-travel", tmp_path / "out")
    assert {p.name for p in folder.iterdir()} == {"model.skops", "rules.txt", "metadata.json"}
    with connection(db) as conn:
        with pytest.raises(SegmentationError, match="already registered"):
            registry.import_version(conn, folder)
        conn.execute("DELETE FROM model_versions WHERE version = 'm-travel'")
    with connection(db) as conn:
        assert registry.import_version(conn, folder) == "m-travel"
        loaded = registry.load_version(conn, "m-travel")
    assert (loaded.predict(synthetic_frame) == trained.model.predict(synthetic_frame)).all()
    assert query(db, "SELECT status, status_reason LIKE 'imported from %%' FROM model_versions")\
        == [("challenger", True)]


def test_a_folder_from_an_earlier_release_moves_into_the_database(
        db: str, trained, models_dir: Path, tmp_path: Path) -> None:
    save_and_register(db, trained, models_dir, "m-old")
    with connection(db) as conn:  # as an earlier release kept it: a folder, no file rows
        folder = registry.export_version(conn, "m-old", models_dir)
        conn.execute("DELETE FROM model_files WHERE version = 'm-old'")
        conn.execute("UPDATE model_versions SET path = %s WHERE version = 'm-old'",
                     (str(folder),))
    with connection(db) as conn:
        assert registry.load_version(conn, "m-old", models_dir).version == "m-old"  # as before
        assert registry.import_folders(conn, models_dir) == ["m-old"]
        assert registry.import_folders(conn, models_dir) == []  # once
    assert query(db, "SELECT count(*) FROM model_files WHERE version = 'm-old'") == [(3,)]
    import shutil

    shutil.rmtree(folder)
    with connection(db) as conn:  # the folder is no longer needed
        assert registry.load_version(conn, "m-old", models_dir).version == "m-old"


def register_flipped(url: str, trained, models_dir: Path, version: str, flip: bool) -> None:
    """A version whose segment ids are the shared model's reversed (when flip): scoring
    with it visibly differs, so the test can tell which model segment_for runs."""
    model = dataclasses.replace(trained.model, version=version,
                                label_to_segment=trained.model.label_to_segment[::-1]
                                if flip else trained.model.label_to_segment)
    saved = registry.package_version(model, trained.metrics, trained.sizes)
    with connection(url) as conn:
        registry.register_version(conn, saved, model, trained.metrics, trained.sizes,
                                  f"gates note of {version}")


def sql_segments(url: str, frame) -> list[int]:
    """segment_for(...) on the first rows of `frame`, as a SQL user would call it."""
    from segmentation.features import FEATURES

    values = ", ".join("(" + ", ".join(f"{float(v)!r}::float8" for v in row) + ")"
                       for row in frame[list(FEATURES)].head(40).fillna(0).to_numpy())
    columns = ", ".join(FEATURES)
    return [r[0] for r in query(url, f"SELECT segment_for({columns}) FROM (VALUES {values})"
                                     f" AS t({columns})")]


def test_rollback_walks_back_through_the_champion_log(db: str, trained,
                                                      models_dir: Path) -> None:
    for version in ("m-1", "m-2", "m-3"):
        register_flipped(db, trained, models_dir, version, flip=False)
    with connection(db) as conn:
        for version in ("m-1", "m-2", "m-3"):
            registry.promote(conn, version, reason=f"gates passed for {version}",
                             changed_by="test")
        assert registry.rollback(conn, changed_by="test") == "m-2"
        assert registry.rollback(conn, changed_by="test") == "m-1"  # not back to m-3
        with pytest.raises(SegmentationError, match="no earlier champion"):
            registry.rollback(conn)
        registry.promote(conn, "m-3", reason="by hand", changed_by="test")
        with pytest.raises(SegmentationError, match=r"m-2 is not an earlier champion.*m-1"):
            registry.rollback(conn, to="m-2")  # rolled back from earlier: not on the stack
        assert registry.rollback(conn, to="m-1", changed_by="test") == "m-1"
    assert query(db, "SELECT action, version, previous_version, changed_by FROM champion_log"
                     " ORDER BY id") == [
        ("promote", "m-1", None, "test"), ("promote", "m-2", "m-1", "test"),
        ("promote", "m-3", "m-2", "test"), ("rollback", "m-2", "m-3", "test"),
        ("rollback", "m-1", "m-2", "test"), ("promote", "m-3", "m-1", "test"),
        ("rollback", "m-1", "m-3", "test")]
    # the versions' own notes are never overwritten by a promotion or a rollback
    assert query(db, "SELECT version, status_reason FROM model_versions ORDER BY version") == \
        [(v, f"gates note of {v}") for v in ("m-1", "m-2", "m-3")]


def test_segment_for_follows_every_champion_change(db: str, trained, models_dir: Path,
                                                   synthetic_frame) -> None:
    from segmentation.training import register_and_gate

    register_flipped(db, trained, models_dir, "m-plain", flip=False)
    register_flipped(db, trained, models_dir, "m-flip", flip=True)
    plain = trained.model.predict(synthetic_frame.head(40)).tolist()
    flipped = [int(trained.model.label_to_segment[::-1][list(trained.model.label_to_segment)
                                                        .index(s)]) for s in plain]
    assert plain != flipped
    with connection(db) as conn:
        registry.promote(conn, "m-plain")
    assert sql_segments(db, synthetic_frame) == plain
    with connection(db) as conn:
        registry.promote(conn, "m-flip")
    assert sql_segments(db, synthetic_frame) == flipped
    with connection(db) as conn:
        registry.rollback(conn)
    assert sql_segments(db, synthetic_frame) == plain
    # a gated retrain that promotes: the same transaction installs its function
    model = dataclasses.replace(trained.model, version="m-gated",
                                label_to_segment=trained.model.label_to_segment[::-1])
    saved = registry.package_version(model, trained.metrics, trained.sizes)
    result = dataclasses.replace(trained, model=model, gate_failures=[])
    assert register_and_gate(db, saved, result, force=False) == "champion"
    assert sql_segments(db, synthetic_frame) == flipped


def test_rename_reaches_every_reader_at_once_and_reset_restores(db: str, trained,
                                                                models_dir: Path,
                                                                synthetic_csv: Path) -> None:
    from segmentation import scoring
    from tests.helpers import load_batch, register_champion

    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-names")
    scoring.score_customers(db, model, mode="full")
    generated = model.names[2]
    with connection(db) as conn:
        assert registry.rename_segment(conn, 2, "  Dormant customers ") == "Dormant customers"
    readers = {
        "customer_segments": "SELECT DISTINCT segment_name FROM customer_segments"
                             " WHERE segment_id = 2",
        "customer_segments_current": "SELECT DISTINCT segment_name FROM"
                                     " customer_segments_current WHERE segment_id = 2",
        "segment_summary": "SELECT segment_name FROM segment_summary WHERE segment_id = 2",
        "segment_names": "SELECT segment_name FROM segment_names WHERE segment_id = 2",
        "segment_name()": "SELECT segment_name(2::smallint)",
    }
    for reader, statement in readers.items():  # no scoring run in between
        assert query(db, statement) == [("Dormant customers",)], reader
    with connection(db) as conn:
        assert registry.segment_names(conn)[2] == "Dormant customers"
        assert registry.rename_segment(conn, 2, None) == generated  # --reset
    for reader, statement in readers.items():
        assert query(db, statement) == [(generated,)], reader
    assert query(db, "SELECT count(*) FROM segment_history") == [(0,)]  # a rename moves no one


@pytest.mark.parametrize("segment", [99, -1])
def test_renaming_a_segment_the_champion_lacks_is_refused(db: str, trained, models_dir: Path,
                                                          segment: int) -> None:
    from tests.helpers import register_champion

    register_champion(db, trained, models_dir, "m-ghost")
    with connection(db) as conn, \
            pytest.raises(SegmentationError, match=rf"no segment {segment} \(its segments: "
                                                   r"0, 1, 2, 3\)"):
        registry.rename_segment(conn, segment, "Ghost")
    assert query(db, "SELECT count(*) FROM segment_name_overrides") == [(0,)]


def test_summary_names_the_model_that_scored_the_rows(db: str, trained, models_dir: Path,
                                                      synthetic_csv: Path) -> None:
    """After a promotion and before the rescore, the rows are the old model's: the summary
    says so instead of labelling them with the new champion."""
    from segmentation import scoring
    from tests.helpers import load_batch, register_champion

    load_batch(db, synthetic_csv)
    old = register_champion(db, trained, models_dir, "m-old")
    scoring.score_customers(db, old, mode="full")
    register_flipped(db, trained, models_dir, "m-new", flip=True)
    with connection(db) as conn:
        registry.promote(conn, "m-new")
    rows = query(db, "SELECT model_version, rescore_pending, sum(customers)::int"
                     " FROM segment_summary_by_model GROUP BY 1, 2 ORDER BY 1")
    assert rows == [("m-new", False, 0), ("m-old", True, 5_000)]
    # what marketing reads first: one row per segment, named by the model that published
    summary = query(db, "SELECT segment_id, segment_name, model_version, rescore_pending"
                        " FROM segment_summary")
    assert [r[0] for r in summary] == sorted({r[0] for r in summary})  # each segment once
    assert {r[2:] for r in summary} == {("m-old", True)}
    assert {r[1] for r in summary} == set(old.names.values())
    with connection(db) as conn:
        new = registry.load_version(conn)
    scoring.score_customers(db, new, mode="incremental")
    assert query(db, "SELECT model_version, rescore_pending, sum(customers)::int"
                     " FROM segment_summary GROUP BY 1, 2") == [("m-new", False, 5_000)]


class RunsCode:
    """What an attacker plants: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.marker}",))


def plant(db: str, version: str, payload: bytes) -> None:
    """A database writer's attack: model bytes of their choosing, with matching digests."""
    import hashlib

    digest = hashlib.sha256(payload).hexdigest()
    with connection(db) as conn:
        conn.execute("UPDATE model_files SET content = %s, sha256 = %s WHERE version = %s"
                     " AND name = %s", (payload, digest, version, registry.MODEL_FILE))
        conn.execute("UPDATE model_versions SET sha256 = %s WHERE version = %s",
                     (digest, version))


def as_earlier_release(db: str, version: str, folder_parent: Path) -> Path:
    """The version as an earlier release kept it: a folder on disk, no file rows."""
    with connection(db) as conn:
        folder = registry.export_version(conn, version, folder_parent)
        conn.execute("DELETE FROM model_files WHERE version = %s", (version,))
        conn.execute("UPDATE model_versions SET path = %s WHERE version = %s",
                     (str(folder), version))
    return folder


@pytest.mark.reliability
@pytest.mark.parametrize("where", ["database", "earlier release's joblib file"])
def test_planted_pickle_with_a_matching_digest_never_runs(db: str, trained, models_dir: Path,
                                                          tmp_path: Path, where: str) -> None:
    import hashlib
    import pickle

    save_and_register(db, trained, models_dir, "m-victim")
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(RunsCode(marker))
    if where == "database":
        plant(db, "m-victim", payload)
    else:  # an earlier release's folder, its joblib file swapped for a pickle
        folder = as_earlier_release(db, "m-victim", models_dir)
        (folder / registry.MODEL_FILE).unlink()
        (folder / registry.LEGACY_FILE).write_bytes(payload)
        with connection(db) as conn:
            conn.execute("UPDATE model_versions SET sha256 = %s WHERE version = 'm-victim'",
                         (hashlib.sha256(payload).hexdigest(),))
    with connection(db) as conn, pytest.raises(ModelError, match="refusing|never loaded"):
        registry.load_version(conn, "m-victim", models_dir)
    assert not marker.exists(), "loading the model ran the attacker's code"


@pytest.mark.reliability
def test_a_skops_file_naming_a_function_is_refused(db: str, trained, models_dir: Path,
                                                   tmp_path: Path) -> None:
    """skops stores references to functions; a file that names one is refused before
    anything is rebuilt."""
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    save_and_register(db, trained, models_dir, "m-func")
    payload = registry.model_payload(trained.model)
    payload["version"] = "m-func"
    payload["pipeline"] = FunctionTransformer(func=os.system)
    plant(db, "m-func", skops.io.dumps(payload))
    with connection(db) as conn, \
            pytest.raises(ModelError, match=r"holds types this registry never writes \(.*system"):
        registry.load_version(conn, "m-func")


@pytest.mark.reliability
def test_a_model_folder_outside_the_models_folder_is_refused(db: str, trained,
                                                             models_dir: Path,
                                                             tmp_path: Path) -> None:
    save_and_register(db, trained, models_dir, "m-away")
    elsewhere = as_earlier_release(db, "m-away", tmp_path / "elsewhere")  # genuine, misplaced
    for stored in (str(elsewhere), f"{models_dir}/../elsewhere/m-away"):
        with connection(db) as conn:
            conn.execute("UPDATE model_versions SET path = %s WHERE version = 'm-away'",
                         (stored,))
        with connection(db) as conn, pytest.raises(ModelError, match="outside the models"):
            registry.load_version(conn, "m-away", models_dir)
