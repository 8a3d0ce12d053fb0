"""What a new user meets first: the test run's choice of server, and the demo's last lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_an_unreachable_configured_server_stops_the_run_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ,
           "SEGMENTATION_TEST_DATABASE_URL": "postgresql+psycopg://ops:pw@127.0.0.1:1/postgres"}
    started = time.monotonic()
    # its own basetemp: a second session on /tmp/pytest-of-<user> would reset that folder to
    # 0700 under the embedded servers of this one
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--basetemp", str(tmp_path / "inner"),
                          "tests/segmentation/test_db.py"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out[-3000:]
    assert out.count("cannot be used") == 1, out[-3000:]
    assert "Traceback" not in out and "pw@" not in out  # one line, password masked
    assert "127.0.0.1:1" in out and "SEGMENTATION_TEST_DATABASE_URL" in out
    assert time.monotonic() - started < 60


def test_the_demos_closing_commands_work_as_printed(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from segmentation.cli.demo import next_steps

    venv_bin = Path(sys.executable).parent
    exe = venv_bin / "segmentation"
    if not exe.exists():
        pytest.skip("the package is not installed into this interpreter's environment")
    monkeypatch.setattr(sys, "argv", [str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT)
                                      else str(exe), "demo"])
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    lines = next_steps("http://127.0.0.1:4321/api")
    said = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in lines if ":" in line}
    assert said["see the runs"].split()[0] == "http://127.0.0.1:4321/runs"
    for what in ("open the app", "query it"):
        command = said[what].split("(")[0].split()
        assert "--demo" in command  # the demo's own database, never the user's
        shown = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, env={**os.environ, "PATH": "/usr/bin:/bin"})
        assert shown.returncode == 0, (what, shown.stderr)
    own = [step.split() for step in said["your own data"].split("&&")]
    assert [s[1:] for s in own] == [["ingest", "FILE.csv"], ["train"], ["nightly"]]
    assert all("--demo" not in s for s in own)
    assert "see the runs" not in "".join(next_steps(""))  # no kept server: no UI line


@pytest.mark.slow
def test_from_the_demo_to_your_own_data_every_step_exits_0(
        db: str, real_data: Path, prefect_api: str, tmp_path: Path) -> None:
    """The README's "Your own data", after `make demo`: the user's database holds the
    user's customers only, scored by a model trained on them."""
    from tests.helpers import query, run_cli

    env = {**os.environ, "SEGMENTATION_DATABASE_URL": db, "PREFECT_API_URL": prefect_api,
           "SEGMENTATION_HOME": str(tmp_path / "home")}
    env.pop("SEGMENTATION_MODELS_DIR", None)
    demo = run_cli("demo", "--rows", "2000", env=env)
    assert demo.returncode == 0, demo.stderr[-2000:]
    for step in (["ingest", str(real_data)], ["train"], ["nightly"]):
        done = run_cli(*step, env=env)
        assert done.returncode == 0, (step, done.stdout[-1500:], done.stderr[-1500:])
    ids = {i for (i,) in query(db, "SELECT customer_id FROM customers")}
    assert len(ids) == 8_950 and all(i.startswith("C1") for i in ids)  # CC GENERAL's ids
    assert query(db, "SELECT count(*), count(DISTINCT model_version) FROM customer_segments") \
        == [(8_950, 1)]
    assert query(db, "SELECT training_rows FROM (SELECT (metrics->>'training_rows')::int AS"
                     " training_rows FROM model_versions WHERE status = 'champion') m") \
        == [(8_950,)]
    demo_db = make_demo_url(db)
    assert query(demo_db, "SELECT count(*) FROM customers") == [(2_000,)]
    shown = run_cli("--demo", "db", "url", env=env)
    assert f"{make_url_database(db)}_demo" in shown.stdout  # its commands point there


def make_demo_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_demo").render_as_string(hide_password=False)


def make_url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).database)
