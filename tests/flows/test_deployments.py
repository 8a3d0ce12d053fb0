"""prefect.yaml for real: a local Prefect server, `prefect deploy --all`, a process worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, free_port, wait_for_http

pytestmark = pytest.mark.slow
PREFECT = [sys.executable, "-m", "prefect"]


def test_prefect_yaml_declares_the_three_deployments() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"nightly-scoring", "retrain", "validate"}
    nightly = deployments["nightly-scoring"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["schedules"][0]["timezone"]
    assert deployments["retrain"]["concurrency_limit"] == {"limit": 1,
                                                            "collision_strategy": "CANCEL_NEW"}
    assert all(d["enforce_parameter_schema"] for d in deployments.values())
    assert len({id(d["work_pool"]) for d in deployments.values()}) == 1  # one YAML anchor


@pytest.fixture
def prefect_server(tmp_path: Path, db: str):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           "SEGMENTATION_CHECKOUT": str(ROOT), "SEGMENTATION_DATABASE_URL": db}
    server = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health")
        yield env
    finally:
        server.terminate()
        server.wait(20)


def run(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    result = subprocess.run([*PREFECT, *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_deploy_all_and_run_one_on_a_process_worker(prefect_server: dict[str, str]) -> None:
    env = prefect_server
    run(env, "work-pool", "create", "segmentation", "--type", "process")
    out = run(env, "--no-prompt", "deploy", "--all")
    flat = " ".join(out.replace("│", " ").split())
    for name in ("nightly/nightly-scoring", "retrain/retrain", "validate/validate"):
        assert f"Deployment '{name}' successfully created" in flat
    created = run(env, "deployment", "run", "validate/validate")
    flow_run_id = created.split("UUID:")[1].split()[0]
    run(env, "worker", "start", "--pool", "segmentation", "--run-once", timeout=240)
    inspected = run(env, "flow-run", "inspect", flow_run_id, "--output", "json")
    assert json.loads(inspected)["state"]["type"] == "COMPLETED"
