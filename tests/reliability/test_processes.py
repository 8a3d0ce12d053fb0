"""Processes stop with their parent: the app's server; only the kept Prefect server stays."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, free_port, start_cli, wait_for_http

pytestmark = pytest.mark.reliability


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The real `segmentation` command, started in the background."""
    return start_cli(*args, env=env)


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
        served = psutil.Process(app.pid)
        command = " ".join(served.cmdline())  # a served app: no watcher, no GC per rerun
        assert "--server.fileWatcherType none" in command
        assert "--runner.postScriptGC false" in command
        environment = served.environ()  # its own login, never the owner's URL
        assert "SEGMENTATION_DATABASE_URL" not in environment
        assert "segmentation_app" in environment["SEGMENTATION_APP_DATABASE_URL"]
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
def test_killed_cli_leaves_only_the_kept_prefect_server(db: str, tmp_path: Path, trained,
                                                         synthetic_csv: Path, models_dir: Path,
                                                         sig: signal.Signals) -> None:
    """Killed mid-run, the CLI takes every helper with it but the kept Prefect server,
    which stays usable for the next command and stops with `segmentation prefect stop`."""
    from segmentation.prefect_server import read_state, running_server
    from tests.helpers import load_batch, register_champion

    load_batch(db, synthetic_csv)
    register_champion(db, trained, models_dir, "m-kill-1")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # the kept server
    env.update(SEGMENTATION_DATABASE_URL=db, SEGMENTATION_HOME=str(home),
               SEGMENTATION_MODELS_DIR=str(models_dir))
    run = cli(["score", "--mode", "full"], env)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None and running_server(home) is None:
            time.sleep(0.2)
        assert running_server(home) is not None, f"no kept server: {run.communicate()}"
        server = read_state(home)
        assert server is not None
        time.sleep(1.0)  # the flow is starting or running
        seen = {c.pid for c in psutil.Process(run.pid).children(recursive=True)}
        os.kill(run.pid, sig)
        run.wait(60)
        kept = {server.pid, *(c.pid for c in psutil.Process(server.pid).children(recursive=True))}
        assert gone(sorted(seen - kept)), "a helper of the killed CLI outlived it"
        assert running_server(home) == server, "the kept server did not survive the CLI"
        stopped = subprocess.run([sys.executable, "-m", "segmentation.cli", "prefect", "stop"],
                                 env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert stopped.stdout.strip() == "stopped", stopped
        assert gone(sorted(kept)), "`segmentation prefect stop` left a server process"
    finally:
        from segmentation.prefect_server import stop_prefect_server

        stop_prefect_server(home)
        run.kill()
