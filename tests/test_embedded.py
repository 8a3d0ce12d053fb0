"""The embedded default: no SEGMENTATION_DATABASE_URL, nothing installed, a working demo."""

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_demo_on_the_embedded_default(tmp_path: Path, prefect_api: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTATION_")}
    env["HOME"] = str(tmp_path)  # a fresh user: state goes to ~/.segmentation
    try:
        result = run_cli("demo", "--rows", "2000", env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "High spenders" in result.stdout or "segment" in result.stdout
        assert "2,000" in result.stdout
        assert (tmp_path / ".segmentation" / "pgdata" / "PG_VERSION").exists()
        again = run_cli("db", "url", env=env)
        assert again.returncode == 0 and again.stdout.splitlines()[1].startswith("psql -h ")
    finally:
        stopped = run_cli("db", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
