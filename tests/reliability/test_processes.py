"""Processes stop with their parent: the app's server, Prefect's temporary server."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, free_port, wait_for_http

pytestmark = pytest.mark.reliability


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The real `segmentation` command, started in the background."""
    return subprocess.Popen([sys.executable, "-m", "segmentation.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gone(pids: list[int], seconds: float = 20) -> bool:
    """Every pid has exited (or is a zombie nobody serves from) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_killing_the_app_by_its_pid_stops_the_server(db: str, tmp_path: Path,
                                                     sig: signal.Signals) -> None:
    port = free_port()
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": db,
           "SEGMENTATION_HOME": str(tmp_path / "home")}
    app = cli(["app", "--port", str(port)], env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", 60)
        listens = {c.laddr.ip for c in psutil.Process(app.pid).net_connections("inet")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listens == {"127.0.0.1"}, f"the app listens beyond loopback: {listens}"
        family = [app.pid, *(c.pid for c in psutil.Process(app.pid).children(recursive=True))]
        os.kill(app.pid, sig)  # what ops do with the pid they see
        app.wait(30)
        assert gone(family), "a process of the app outlived it"
        assert not listening(port), "the app still serves after its pid was killed"
    finally:
        for proc in psutil.Process().children(recursive=True):
            if "streamlit" in " ".join(proc.cmdline()):
                proc.kill()
        app.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_killed_cli_takes_prefects_temporary_server_with_it(db: str, tmp_path: Path,
                                                            sig: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # temporary server
    env.update(SEGMENTATION_DATABASE_URL=db, SEGMENTATION_HOME=str(tmp_path / "home"),
               PREFECT_HOME=str(tmp_path / "prefect"))
    run = cli(["nightly"], env)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None:
            children = [c for c in psutil.Process(run.pid).children(recursive=True)
                        if "uvicorn" in " ".join(c.cmdline()) or "prefect" in
                        " ".join(c.cmdline())]
            if children:
                break
            time.sleep(0.2)
        assert children, f"no temporary Prefect server seen: {run.communicate()}"
        time.sleep(1.0)  # mid-run
        os.kill(run.pid, sig)
        run.wait(60)
        assert gone([c.pid for c in children]), "Prefect's server outlived the CLI"
    finally:
        for child in children:
            if psutil.pid_exists(child.pid):
                child.kill()
        run.kill()
