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
