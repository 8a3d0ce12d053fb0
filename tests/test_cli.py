"""The `segmentation` command as users run it: a subprocess, real PostgreSQL."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segmentation.cli import app
from segmentation.db import connection
from tests.helpers import query, run_cli

VERBS = [[], ["db"], ["db", "migrate"], ["db", "url"], ["db", "stop"], ["generate"], ["ingest"],
         ["train"], ["score"], ["models"], ["models", "list"], ["models", "show"],
         ["models", "promote"], ["models", "rollback"], ["models", "rename"],
         ["models", "history"], ["customers"], ["customers", "forget"], ["demo"],
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
            assert "warning: cash_advance_frequency outside [0, 1]: 8 row(s)" \
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

    stored = "SELECT content FROM model_files WHERE version = %s AND name = 'model.skops'"
    original = bytes(query(db, stored, (second,))[0][0])
    flipped = bytearray(original)
    flipped[100] ^= 0xFF
    set_model = ("UPDATE model_files SET content = %s WHERE version = %s"
                 " AND name = 'model.skops' RETURNING 1")
    query(db, set_model, (bytes(flipped), second))
    refused = run_cli("score", env=env)
    assert refused.returncode == 1
    assert "does not match the registry" in refused.stderr and "Traceback" not in refused.stderr
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]
    query(db, set_model, (original, second))

    rolled = run_cli("models", "rollback", env=env)
    assert rolled.returncode == 0 and first in rolled.stdout
    assert run_cli("models", "rename", "0", "VIP", env=env).returncode == 0
    assert run_cli("score", env=env).returncode == 0
    assert query(db, "SELECT DISTINCT model_version FROM customer_segments") == [(first,)]
    assert query(db, "SELECT DISTINCT segment_name FROM customer_segments"
                     " WHERE segment_id = 0") == [("VIP",)]


def one_line_error(result, message: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 1, a single `error: ...` line naming the problem, no traceback (beside the
    timestamped log lines Prefect prints for a flow command)."""
    import re

    assert result.returncode == 1, result.stdout + result.stderr
    own = [line for line in result.stderr.splitlines()
           if not re.match(r"\d\d:\d\d:\d\d\.\d{3} \| [A-Z]+ +\| ", line)]
    assert len(own) == 1 and own[0].startswith("error: "), result.stderr
    assert message in own[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_rename_from_the_cli_is_immediate_and_checked(db: str, trained, synthetic_csv: Path,
                                                     models_dir: Path, tmp_path: Path) -> None:
    from segmentation import scoring
    from tests.helpers import load_batch, register_champion

    env = {**cli_env(db, tmp_path), "SEGMENTATION_MODELS_DIR": str(models_dir)}
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-cli-names")
    scoring.score_customers(db, model, mode="full")
    renamed = run_cli("models", "rename", "2", "Dormant customers", env=env)
    assert renamed.returncode == 0 and "'Dormant customers'" in renamed.stdout
    assert query(db, "SELECT DISTINCT segment_name FROM customer_segments"
                     " WHERE segment_id = 2") == [("Dormant customers",)]  # no rescore
    assert "Dormant customers" in run_cli("models", "show", env=env).stdout
    one_line_error(run_cli("models", "rename", "99", "Ghost", env=env),
                   "the champion has no segment 99 (its segments: 0, 1, 2, 3)")
    one_line_error(run_cli("models", "rename", "--", "-1", "X", env=env),
                   "the champion has no segment -1")
    one_line_error(run_cli("models", "rename", "2", env=env), "or --reset")
    reset = run_cli("models", "rename", "2", "--reset", env=env)
    assert reset.returncode == 0 and model.names[2] in reset.stdout
    assert query(db, "SELECT DISTINCT segment_name FROM customer_segments"
                     " WHERE segment_id = 2") == [(model.names[2],)]


def test_bad_options_are_refused_before_the_heavy_imports(tmp_path: Path) -> None:
    """`train --k 1` and friends answer without importing Prefect, GX or scikit-learn
    (those take seconds): the check runs first."""
    import subprocess
    import sys

    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('heavy:', sorted(m for m in ('prefect',"
             " 'great_expectations', 'sklearn') if m in sys.modules), file=sys.stderr))\n"
             "from segmentation.cli import main\n"
             "sys.argv = ['segmentation', *sys.argv[1:]]\nmain()\n")
    cases = [(["train", "--k", "1"], "--k must be an integer in 2..20"),
             (["train", "--sample-size", "10"], "--sample-size must be at least 50"),
             (["score", "--mode", "sometimes"], "--mode must be full or incremental"),
             (["nightly", "--mode", "x"], "--mode must be full or incremental"),
             (["ingest", "x.csv", "--delimiter", ";;"], "--delimiter must be a single"),
             (["ingest", "x.csv", "--encoding", "klingon"], "unknown encoding 'klingon'")]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True,
                                text=True, timeout=60, env=cli_env("postgresql://x@127.0.0.1:1/x",
                                                                   tmp_path))
        assert result.returncode == 1, (args, result.stderr)
        assert f"error: {message}" in result.stderr, (args, result.stderr)
        assert "heavy: []" in result.stderr, (args, result.stderr)


@pytest.mark.parametrize(("content", "options", "message"), [
    ("1e400", [], "balance: 1 value(s) too large or too small for a number, e.g. '1e400'"),
    ("-1e-400", [], "balance: 1 value(s) too large or too small for a number"),
])
def test_out_of_range_numbers_are_one_line(db: str, synthetic_csv: Path, tmp_path: Path,
                                           content: str, options: list[str],
                                           message: str) -> None:
    lines = synthetic_csv.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[1].split(",")
    fields[header.index("BALANCE")] = content
    path = tmp_path / "huge.csv"
    path.write_text("\n".join([lines[0], ",".join(fields), *lines[2:20]]) + "\n")
    one_line_error(run_cli("ingest", str(path), *options, env=cli_env(db, tmp_path)), message)
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(0,)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "cp437"])
def test_files_in_other_encodings_load(db: str, synthetic_csv: Path, tmp_path: Path,
                                       encoding: str) -> None:
    """UTF-16 and UTF-8 with a byte-order mark load as they are; a codec PostgreSQL does not
    know is decoded by Python (--encoding takes any name Python's codecs know)."""
    import codecs

    text = "\n".join(synthetic_csv.read_text().splitlines()[:51]) + "\n"
    raw = text.encode(encoding)
    if encoding == "utf-16-be":
        raw = codecs.BOM_UTF16_BE + raw  # the BOM alone names it: no --encoding given
    path = tmp_path / f"customers-{encoding}.csv"
    path.write_bytes(raw)
    options = ["--encoding", encoding] if encoding == "cp437" else []
    result = run_cli("ingest", str(path), "--no-validate", *options, env=cli_env(db, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "loaded 50 rows" in result.stdout
    assert query(db, "SELECT count(*) FROM customers_incoming") == [(50,)]


@pytest.mark.slow
def test_train_reports_once_and_rollback_walks_back(db: str, synthetic_csv: Path,
                                                   tmp_path: Path, prefect_api: str) -> None:
    env = cli_env(db, tmp_path)
    assert run_cli("ingest", str(synthetic_csv), env=env).returncode == 0
    trained = run_cli("train", "--sample-size", "3000", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "trained on 3,000 of 5,000 rows" in trained.stdout  # the sample, of all
    assert (trained.stdout + trained.stderr).count("trained on 3,000") == 1  # printed once
    for _ in range(2):
        assert run_cli("train", "--force", env=env).returncode == 0
    v1, v2, v3 = [v for (v,) in query(db, "SELECT version FROM model_versions"
                                          " ORDER BY created_at")]
    first = run_cli("models", "rollback", env=env)
    assert first.returncode == 0 and v2 in first.stdout
    second = run_cli("models", "rollback", env=env)  # one further back, not back to v3
    assert second.returncode == 0 and v1 in second.stdout
    one_line_error(run_cli("models", "rollback", env=env), "no earlier champion")
    assert run_cli("models", "promote", v3, env=env).returncode == 0
    to = run_cli("models", "rollback", "--to", v1, env=env)
    assert to.returncode == 0 and v1 in to.stdout
    history = run_cli("models", "history", env=env).stdout.splitlines()
    assert [line.split()[2:4] for line in history] == [
        ["rollback", v1], ["promote", v3], ["rollback", v1], ["rollback", v2],
        ["promote", v3], ["promote", v2], ["promote", v1]]
    assert "[cli: models rollback]" in history[0] and "[retrain flow --force]" in history[4]


@pytest.mark.slow
def test_planted_pickle_fails_the_run_with_one_line(db: str, trained, models_dir: Path,
                                                    synthetic_csv: Path, tmp_path: Path,
                                                    prefect_api: str) -> None:
    """Through the database alone (bytes and digests), a pickle cannot run in the worker."""
    import hashlib
    import pickle

    from tests.helpers import load_batch, register_champion
    from tests.segmentation.test_registry import RunsCode

    load_batch(db, synthetic_csv)
    register_champion(db, trained, models_dir, "m-planted")
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(RunsCode(marker))
    digest = hashlib.sha256(payload).hexdigest()
    query(db, "UPDATE model_files SET content = %s, sha256 = %s WHERE version = 'm-planted'"
              " AND name = 'model.skops' RETURNING 1", (payload, digest))
    query(db, "UPDATE model_versions SET sha256 = %s WHERE version = 'm-planted' RETURNING 1",
          (digest,))
    env = {**cli_env(db, tmp_path), "SEGMENTATION_MODELS_DIR": str(models_dir)}
    one_line_error(run_cli("score", env=env), "is not a model file written by this registry")
    assert not marker.exists()
    assert query(db, "SELECT count(*) FROM customer_segments") == [(0,)]


def test_forget_from_the_cli(db: str, synthetic_csv: Path, tmp_path: Path) -> None:
    from tests.helpers import load_batch

    load_batch(db, synthetic_csv)
    ids = tmp_path / "ids.txt"
    ids.write_text("C00000003\n\nC00000004\n")
    result = run_cli("customers", "forget", "C00000002", "--file", str(ids),
                     env=cli_env(db, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "3 of 3 customer id(s) found and forgotten" in result.stdout
    assert "customers 3" in result.stdout
    unknown = run_cli("customers", "forget", "NOPE123", env=cli_env(db, tmp_path))
    assert unknown.returncode == 0, unknown.stderr
    assert "0 of 1 customer id(s) found" in unknown.stdout
    assert "not held anywhere: 'NOPE123'" in unknown.stdout
    back = run_cli("customers", "readmit", "C00000002", "NOPE999", env=cli_env(db, tmp_path))
    assert back.returncode == 0, back.stderr
    assert back.stdout.startswith("1 of 2 id(s) were on the erased list"), back.stdout
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id IN"
                     " ('C00000002', 'C00000003', 'C00000004')") == [(0,)]
    one_line_error(run_cli("customers", "forget", env=cli_env(db, tmp_path)),
                   "give customer ids")
    one_line_error(run_cli("customers", "forget", "--file", str(tmp_path / "none.txt"),
                           env=cli_env(db, tmp_path)), "cannot be read")


@pytest.mark.parametrize("args", [["app", "--port", "99999"], ["score", "--partitions", "0"],
                                  ["generate", "--rows", "0"], ["no-such-verb"],
                                  ["models", "show", "--no-such-option"]],
                         ids=lambda a: " ".join(a))
def test_a_usage_mistake_is_one_error_line_and_exit_1(args: list[str], tmp_path: Path) -> None:
    result = run_cli(*args, env={**os.environ, "SEGMENTATION_HOME": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert "--help" in result.stderr  # where to read what is allowed


def test_help_wraps_whole_sentences() -> None:
    result = run_cli("--help", env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    # a docstring's paragraph is one sentence, not its source lines (it read "exit 1 if |
    # it fails, 3 if it | was accepted")
    assert "then validate it (exit 1 if it fails, 3 if it was accepted but drifted)" \
        in result.stdout


def test_db_url_says_how_ops_and_marketing_log_in(db: str, tmp_path: Path) -> None:
    from segmentation.db import set_marketing_password

    env = cli_env(db, tmp_path)
    with connection(db) as conn:
        conn.execute("ALTER ROLE marketing_ro NOLOGIN")
    result = run_cli("db", "url", env=env)
    assert result.returncode == 0, result.stderr
    assert "marketing_ro cannot log in yet" in result.stdout
    assert "SEGMENTATION_MARKETING_PASSWORD" in result.stdout
    set_marketing_password(db, "m4rketing-only")
    lines = run_cli("db", "url", env=env).stdout.splitlines()
    marketing = next(line for line in lines if line.startswith("marketing (read-only):"))
    assert "-U marketing_ro" in marketing and "psql" in marketing
    assert any(line.startswith("owner (ops):") and "psql" in line for line in lines)


def test_a_one_row_file_is_one_row(db: str, synthetic_csv: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    one.write_text("\n".join(synthetic_csv.read_text().splitlines()[:2]) + "\n")
    result = run_cli("ingest", str(one), "--no-validate", env=cli_env(db, tmp_path))
    assert result.returncode == 0, result.stderr
    assert ": loaded 1 row\n" in result.stdout  # not "1 rows"


def test_the_demos_app_reads_the_demos_database(db: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`segmentation --demo app`: its login names the demo's database, once."""
    from sqlalchemy.engine import make_url

    from segmentation.cli.appserver import app_environment
    from segmentation.config import load_settings
    from segmentation.db import app_database

    env = {**cli_env(db, tmp_path), "SEGMENTATION_DEMO": "true"}
    for key in ("SEGMENTATION_DATABASE_URL", "SEGMENTATION_HOME", "SEGMENTATION_DEMO"):
        monkeypatch.setenv(key, env[key])
    served = app_environment(load_settings(), env)
    assert "SEGMENTATION_DATABASE_URL" not in served and "SEGMENTATION_DEMO" not in served
    for key in ("SEGMENTATION_DATABASE_URL", "SEGMENTATION_DEMO"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SEGMENTATION_APP_DATABASE_URL", served["SEGMENTATION_APP_DATABASE_URL"])
    url, role = app_database(load_settings())  # as the app process resolves it
    assert make_url(url).database == f"{make_url(db).database}_demo" and role is None
    assert make_url(url).username == "segmentation_app"
