"""docker/: no Docker engine here, so check what can be checked: the files and the commands."""

import os
import shlex
import subprocess
import sys

import yaml

from tests.helpers import ROOT, query, run_cli

COMPOSE = ROOT / "docker" / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_names_the_services_with_health_checks_and_volumes() -> None:
    spec = compose()
    assert set(spec["services"]) == {"postgres", "prefect-server", "migrate", "worker", "app"}
    for name in ("postgres", "prefect-server", "app"):
        assert "healthcheck" in spec["services"][name], name
    # models live in the database: no volume shared between the worker and the app
    assert set(spec["volumes"]) == {"pgdata", "prefect"}
    assert "${POSTGRES_PASSWORD}" in COMPOSE.read_text()  # secret only from the env file
    example = (ROOT / "docker" / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example


def test_one_locked_build_for_every_service() -> None:
    """The worker and the app run the image migrate builds, installed from the hash-checked
    lock (a rebuilt image has yesterday's versions, so it loads yesterday's models)."""
    services = compose()["services"]
    built = [name for name, spec in services.items() if "build" in spec]
    assert built == ["migrate"]
    images = {services[name]["image"] for name in ("migrate", "worker", "app")}
    assert images == {"segmentation:${TAG:-local}"}
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    lock = (ROOT / "requirements.lock").read_text()
    for line in lock.splitlines():  # every pin carries its hashes
        if "==" in line and not line.lstrip().startswith("#"):
            assert line.rstrip().endswith("\\"), line
    assert lock.count("--hash=sha256:") >= lock.count("==")
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-dev.lock" in makefile
    # without uv on PATH, uv itself is installed first, pinned and hash-checked as well
    assert "pip install --quiet --require-hashes -r requirements-bootstrap.lock" in makefile
    bootstrap = (ROOT / "requirements-bootstrap.lock").read_text()
    pins = [line for line in bootstrap.splitlines() if "==" in line and "#" not in line]
    assert [p.split("==")[0] for p in pins] == ["uv"] and bootstrap.count("--hash=sha256:") > 1


def test_dockerfile_copies_what_the_package_needs() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for path in ("segmentation", "flows", "streamlit_app", "sql", "prefect.yaml",
                 "pyproject.toml"):
        assert f"COPY {path}" in dockerfile, path
    assert "USER app" in dockerfile


def test_migrate_service_command_runs_here(db: str, tmp_path) -> None:
    command = shlex.split(compose()["services"]["migrate"]["command"])
    assert command[0] == "segmentation"
    result = run_cli(*command[1:], env={**os.environ, "SEGMENTATION_DATABASE_URL": db,
                                        "SEGMENTATION_HOME": str(tmp_path)})
    assert result.returncode == 0 and "schema up to date" in result.stdout
    assert query(db, "SELECT count(*) FROM schema_migrations")[0][0] >= 4


def test_app_and_worker_commands_exist_here() -> None:
    app = shlex.split(compose()["services"]["app"]["command"])
    assert run_cli(*app[1:], "--help").returncode == 0
    worker = shlex.split(compose()["services"]["worker"]["command"])
    assert worker[:3] == ["prefect", "worker", "start"]
    help_ = subprocess.run([sys.executable, "-m", "prefect", *worker[1:], "--help"],
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--pool" in help_.stdout


def test_the_app_gets_its_own_login_and_only_the_hosts_loopback() -> None:
    app = compose()["services"]["app"]
    env = app["environment"]
    assert "SEGMENTATION_DATABASE_URL" not in env  # no owner URL in the app's reach
    assert env["SEGMENTATION_APP_DATABASE_URL"].startswith(
        "postgresql+psycopg://segmentation_app:${APP_PASSWORD}@")
    assert all(str(port).startswith("127.0.0.1:") for port in app["ports"])
    assert "volumes" not in app  # it reads the models from the database, as its login
    assert "SEGMENTATION_APP_PASSWORD" in compose()["x-app-env"]
    assert "APP_PASSWORD=" in (ROOT / "docker" / ".env.example").read_text()
