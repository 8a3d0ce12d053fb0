"""The registry: atomic versions on disk, tamper-evident loads, exactly one champion."""

import dataclasses
import json
from pathlib import Path

import pytest

from segmentation import registry
from segmentation.db import connection
from segmentation.errors import ModelError
from tests.helpers import query


def save_and_register(url: str, trained, models_dir: Path, version: str):
    model = dataclasses.replace(trained.model, version=version)  # the fixture is shared
    saved = registry.save_version(model, trained.metrics, trained.sizes, models_dir)
    with connection(url) as conn:
        registry.register_version(conn, saved, model, trained.metrics, trained.sizes, None)
    return saved


def test_round_trip_predicts_identically(db: str, trained, models_dir: Path,
                                         synthetic_frame) -> None:
    saved = save_and_register(db, trained, models_dir, "m-rt-1")
    assert {p.name for p in saved.path.iterdir()} == {"model.joblib", "rules.txt",
                                                      "metadata.json"}
    metadata = json.loads((saved.path / "metadata.json").read_text())
    assert metadata["sha256"]["model.joblib"] == saved.sha256
    assert {"python", "sklearn", "numpy", "metrics"} <= metadata.keys()
    with connection(db) as conn:
        loaded = registry.load_version(conn, "m-rt-1")
    assert (loaded.predict(synthetic_frame) == trained.model.predict(synthetic_frame)).all()
    assert query(db, "SELECT count(*) FROM segment_profiles WHERE version = 'm-rt-1'") == [(4,)]


def test_one_flipped_byte_is_refused(db: str, trained, models_dir: Path) -> None:
    saved = save_and_register(db, trained, models_dir, "m-flip")
    path = saved.path / registry.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with connection(db) as conn, pytest.raises(ModelError, match="does not match the registry"):
        registry.load_version(conn, "m-flip")


def test_truncated_model_file_is_refused(db: str, trained, models_dir: Path) -> None:
    saved = save_and_register(db, trained, models_dir, "m-cut")
    path = saved.path / registry.MODEL_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # a half-copied file
    with connection(db) as conn, pytest.raises(ModelError, match="does not match the registry"):
        registry.load_version(conn, "m-cut")


def test_other_sklearn_version_is_refused(db: str, trained, models_dir: Path) -> None:
    saved = save_and_register(db, trained, models_dir, "m-skl")
    meta_path = saved.path / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata["sklearn"] = "0.0.1"
    meta_path.write_text(json.dumps(metadata))
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


def test_failed_write_leaves_no_partial_version(trained, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "export_rules", disk_full)
    model = dataclasses.replace(trained.model, version="m-full")
    with pytest.raises(OSError, match="No space left"):
        registry.save_version(model, trained.metrics, trained.sizes, tmp_path)
    assert list(tmp_path.iterdir()) == []
