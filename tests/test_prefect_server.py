"""The kept local Prefect server: started once, shared by commands, stopped on request."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segmentation.prefect_server import read_state, running_server, stop_prefect_server
from tests.helpers import ROOT, start_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A SEGMENTATION_HOME whose kept server is stopped at the end, whatever happens."""
    folder = tmp_path / "home"
    yield folder
    stop_prefect_server(folder)


def env_for(home: Path, db: str) -> dict[str, str]:
    """A user's environment: no PREFECT_API_URL, so the CLI keeps its own server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "SEGMENTATION_HOME": str(home), "SEGMENTATION_DATABASE_URL": db}


def segmentation(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return start_cli(*args, env=env)


def test_commands_starting_together_share_one_server_and_later_ones_reuse_it(
        home: Path, db: str) -> None:
    env = env_for(home, db)
    first, second = segmentation(env, "prefect", "start"), segmentation(env, "prefect", "start")
    outputs = [p.communicate(timeout=180) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    said = sorted(out.split(":")[0] for out, _ in outputs)
    assert said == ["already running", "started"], outputs  # one started, one reused
    server = running_server(home)
    assert server is not None
    # a flow command reuses it (the flow fails for want of a model, after reaching Prefect)
    night = segmentation(env, "nightly")
    out, err = night.communicate(timeout=180)
    assert night.returncode == 1 and "no champion model" in err, (out, err)
    assert "started the local Prefect server" not in err
    assert read_state(home) == server
    status = subprocess.run([sys.executable, "-m", "segmentation.cli", "prefect", "status"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and server.ui_url in status.stdout, status


def test_stop_then_status_says_so_and_the_next_command_starts_it_again(
        home: Path, db: str) -> None:
    env = env_for(home, db)
    assert segmentation(env, "prefect", "start").wait(180) == 0
    before = read_state(home)
    stop = segmentation(env, "prefect", "stop")
    assert stop.communicate(timeout=60)[0].strip() == "stopped"
    assert running_server(home) is None
    status = segmentation(env, "prefect", "status")
    out, _ = status.communicate(timeout=60)
    assert status.returncode == 1 and "not running" in out, out
    night = segmentation(env, "nightly")
    _, err = night.communicate(timeout=180)
    assert "started the local Prefect server" in err, err
    after = running_server(home)
    assert after is not None and before is not None
    assert after.port == before.port, "a restart should keep the UI's address"


def test_a_dead_server_whose_port_was_taken_is_replaced_on_another_port(
        home: Path, db: str) -> None:
    import socket

    env = env_for(home, db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (home / "prefect").mkdir(parents=True)
        (home / "prefect" / "server.json").write_text(f'{{"pid": 999999999, "port": {port}}}')
        start = segmentation(env, "prefect", "start")
        out, err = start.communicate(timeout=180)
    assert start.returncode == 0 and out.startswith("started"), (out, err)
    server = running_server(home)
    assert server is not None and server.port != port


def test_a_port_left_only_with_closed_connections_counts_as_free() -> None:
    """A stopped server closed its connections first, so they linger in TIME_WAIT for a
    minute; the server binds with SO_REUSEADDR and can take the port again, so the
    restart must not move the UI to another address. A listener still makes it taken."""
    import socket

    from segmentation.prefect_server import port_is_free

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: its end waits in TIME_WAIT
            client.recv(1)
    assert port_is_free(port)
