"""The `segmentation` command as users run it: a subprocess, real PostgreSQL."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segmentation.cli import app
from tests.helpers import query, run_cli

VERBS = [[], ["db"], ["db", "migrate"], ["db", "url"], ["db", "stop"], ["generate"], ["ingest"],
         ["train"], ["score"], ["models"], ["models", "list"], ["models", "show"],
         ["models", "promote"], ["models", "rollback"], ["models", "rename"], ["demo"],
         ["app"], ["validate"], ["nightly"], ["batches"], ["batches", "list"],
         ["batches", "discard"]]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "root")
def test_every_verb_has_help(verb: list[str]) -> None:
    result = CliRunner().invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def cli_env(url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SEGMENTATION_DATABASE_URL": url,
            "SEGMENTATION_HOME": str(tmp_path / "home"),
            "SEGMENTATION_MODELS_DIR": str(tmp_path / "models")}


@pytest.mark.parametrize(("target", "message"), [
    ("missing.csv", "no such file"),
    (".", "is a directory"),
    ("pyproject.toml", "not a CSV file"),
])
def test_ingest_bad_path_is_one_line_nonzero_and_writes_nothing(db: str, tmp_path: Path,
                                                                target: str, message: str) -> None:
    path = Path(__file__).resolve().parent.parent / target
    result = run_cli("ingest", str(path), env=cli_env(db, tmp_path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stderr
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(0,)]


def test_unreachable_database_is_one_line_with_masked_password(tmp_path: Path) -> None:
    env = cli_env("postgresql+psycopg://ops:topsecret@127.0.0.1:1/nothing", tmp_path)
    result = run_cli("db", "migrate", env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "cannot connect to" in result.stderr and "topsecret" not in result.stderr


def test_score_without_a_model_says_what_to_do(db: str, tmp_path: Path,
                                               prefect_api: str) -> None:
    result = run_cli("score", env=cli_env(db, tmp_path))
    assert result.returncode == 1
    assert "no champion model: run `segmentation train` first" in result.stderr


@pytest.mark.slow
def test_acceptance_on_the_real_file(db: str, real_data: Path, tmp_path: Path,
                                     prefect_api: str) -> None:
    """Issue #2: migrate, ingest, train, score (twice) on the real CC GENERAL file."""
    env = cli_env(db, tmp_path)
    for args in (["db", "migrate"], ["ingest", str(real_data)], ["train"], ["score"],
                 ["score", "--mode", "full"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
        if args[0] == "ingest":  # issue #3: the real file validates, warnings listed
            assert "8,950 accepted, 0 quarantined" in result.stdout
            assert "warning: [warning] cash_advance_frequency within [0, 1]: 8 row(s)" \
                in result.stdout
    assert query(db, "SELECT count(*), count(DISTINCT segment_id) FROM customer_segments") \
        == [(8_950, 4)]
    assert query(db, "SELECT count(*) FROM customer_segments s LEFT JOIN model_versions m"
                     " ON m.version = s.model_version WHERE m.version IS NULL") == [(0,)]
    listing = run_cli("models", "list", env=env)
    assert "champion" in listing.stdout
    shown = run_cli("models", "show", env=env)
    assert "tree agreement" in shown.stdout and shown.returncode == 0


@pytest.mark.slow
def test_tamper_rollback_and_rename_through_the_cli(db: str, synthetic_csv: Path,
                                                     tmp_path: Path, prefect_api: str) -> None:
    """Issue #4: a flipped byte is refused; rollback restores the previous champion."""
    env = cli_env(db, tmp_path)
    assert run_cli("ingest", str(synthetic_csv), env=env).returncode == 0
    for _ in range(2):
        assert run_cli("train", env=env).returncode == 0
    first, second = [v for (v,) in query(db, "SELECT version FROM model_versions"
                                             " ORDER BY created_at")]
    assert query(db, "SELECT version FROM model_versions WHERE status = 'champion'") == [(second,)]

    model_file = tmp_path / "models" / second / "model.joblib"
    original = model_file.read_bytes()
    flipped = bytearray(original)
    flipped[100] ^= 0xFF
    model_file.write_bytes(bytes(flipped))
    refused = run_cli("score", env=env)
    assert refused.returncode == 1
    assert "does not match the registry" in refused.stderr and "Traceback" not in refused.stderr
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]
    model_file.write_bytes(original)

    rolled = run_cli("models", "rollback", env=env)
    assert rolled.returncode == 0 and first in rolled.stdout
    assert run_cli("models", "rename", "0", "VIP", env=env).returncode == 0
    assert run_cli("score", env=env).returncode == 0
    assert query(db, "SELECT DISTINCT model_version FROM customer_segments") == [(first,)]
    assert query(db, "SELECT DISTINCT segment_name FROM customer_segments"
                     " WHERE segment_id = 0") == [("VIP",)]
