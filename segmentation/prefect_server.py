"""A local Prefect server that stays up between commands, like the embedded database.

With no PREFECT_API_URL, Prefect would start a temporary server for every flow command and
stop it at the end (several seconds each time, and the runs vanish from view). Instead the
first flow command starts `prefect server start` under SEGMENTATION_HOME/prefect (its own
SQLite database and port, on loopback only, analytics off) and later commands reuse it;
`segmentation prefect stop` stops it. A file lock makes commands that start at the same
time share one server. Prefect itself is never imported here: the server is a subprocess.

The server stores what every Prefect server stores (flow and task runs, their logs and
artifacts); the flows never hand it a database URL or a password (see docs/security.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from segmentation.errors import SegmentationError

HOST = "127.0.0.1"
STATE_FILE = "server.json"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PrefectServer:
    """A kept server: its process and where its API and UI answer."""

    pid: int
    port: int
    started: float = 0.0  # the process's start time (psutil's create_time): proves the pid


    @property
    def api_url(self) -> str:
        """What PREFECT_API_URL must be for clients."""
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The Prefect UI, in a browser."""
        return f"http://{HOST}:{self.port}"


def server_folder(home: Path) -> Path:
    """Where the kept server keeps its database, state file and log."""
    return home / "prefect"


def read_state(home: Path) -> PrefectServer | None:
    """The server last started under this home (it may have died since)."""
    try:
        data = json.loads((server_folder(home) / STATE_FILE).read_text(encoding="utf-8"))
        return PrefectServer(int(data["pid"]), int(data["port"]), float(data.get("started", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(home: Path, server: PrefectServer) -> None:
    """Record the server (pid 0: stopped, its port kept for the next start)."""
    (server_folder(home) / STATE_FILE).write_text(json.dumps(asdict(server)), encoding="utf-8")


def healthy(server: PrefectServer, timeout_s: float = 2.0) -> bool:
    """Whether the server's API answers its health check."""
    try:
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def running_server(home: Path) -> PrefectServer | None:
    """The kept server if it is up (never starts one)."""
    server = read_state(home)
    return server if server is not None and healthy(server) else None


@contextlib.contextmanager
def start_lock(home: Path) -> Iterator[None]:
    """One command at a time checks and starts the server; the others wait and reuse it."""
    folder = server_folder(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (folder / "start.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_is_free(port: int) -> bool:
    """Whether nothing listens on the port (so a restart keeps the UI's address). Checked
    as the server binds, with SO_REUSEADDR: the connections a stopped server closed linger
    in TIME_WAIT, which keeps a plain bind out for a minute but not the server."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def pick_port(previous: PrefectServer | None) -> int:
    """The previous server's port when free, else one the system hands out."""
    if previous is not None and port_is_free(previous.port):
        return previous.port
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_env(home: Path, port: int) -> dict[str, str]:
    """The server's environment: its own home and database, its UI pointed at its API,
    nothing phoning home."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API_", "PREFECT_UI_", "PREFECT_SERVER_"))}
    env.update({
        "PREFECT_HOME": str(server_folder(home)),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # on any port but 4200 the UI only finds its API when told where it is
        "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    })
    return env


def start_server(home: Path, port: int, timeout_s: float) -> PrefectServer:
    """Start `prefect server start` detached from this command, wait until it answers."""
    folder = server_folder(home)
    with (folder / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
             "--port", str(port)],
            env=server_env(home, port), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=folder, start_new_session=True)  # outlives this command, not its Ctrl-C
    server = PrefectServer(process.pid, port, process_started(process.pid))
    write_state(home, server)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(server, timeout_s=1.0):
            return server
        if process.poll() is not None:
            break
        time.sleep(0.3)
    stop_process(process.pid)
    tail = (folder / "server.log").read_text(encoding="utf-8", errors="replace")
    last = [line for line in tail.splitlines() if line.strip()][-1:] or ["(no output)"]
    raise SegmentationError(f"the local Prefect server did not start on port {port} within "
                            f"{timeout_s:.0f} s: {last[0].strip()} (log: {folder / 'server.log'})")


def ensure_prefect_server(home: Path, timeout_s: float = START_TIMEOUT_S
                          ) -> tuple[PrefectServer, bool]:
    """The kept server, started if it is not up; returns it and whether it was started now."""
    with start_lock(home):
        previous = read_state(home)
        if previous is not None and healthy(previous):
            return previous, False
        if previous is not None and is_our_server(previous):  # hangs: gone before replacing
            stop_process(previous.pid)
        return start_server(home, pick_port(previous), timeout_s), True


def process_started(pid: int) -> float:
    """When a process started (0.0 if it is gone)."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def is_our_server(server: PrefectServer) -> bool:
    """Whether the recorded pid is still the server this home started, leading its process
    group: after a reboot or a crash the pid may belong to anything, which must never be
    signalled. A record without a start time (an older release) is proved by the command
    line instead."""
    import psutil

    if server.pid <= 0:
        return False
    try:
        process = psutil.Process(server.pid)
        if os.getpgid(server.pid) != server.pid:
            return False
        if server.started:
            return abs(process.create_time() - server.started) < 0.05
        command = process.cmdline()
    except (psutil.Error, ProcessLookupError, PermissionError):
        return False
    return "prefect" in " ".join(command) and "server" in command and str(server.port) in command


def stop_process(pid: int, timeout_s: float = 20.0) -> bool:
    """Terminate a server's process group (uvicorn and its services), then kill it."""
    if pid <= 0:  # recorded as stopped (and killpg(0) would signal our own group)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (tests start it so)
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def stop_prefect_server(home: Path) -> bool:
    """Stop the kept server; returns False when none was running."""
    with start_lock(home):
        server = read_state(home)
        if server is None:
            return False
        stopped = is_our_server(server) and stop_process(server.pid)
        # the port is remembered, so the next start keeps the UI's address
        write_state(home, PrefectServer(0, server.port))
        return stopped
