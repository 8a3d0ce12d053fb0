"""`segmentation app`: the Streamlit app, served as its own login."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from segmentation.cli.common import app, current_settings, database_url
from segmentation.errors import SegmentationError

if TYPE_CHECKING:
    from segmentation.config import Settings


@app.command("app")
def run_app(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    address: Annotated[str, typer.Option(
        help="Address to listen on; beyond the loopback (0.0.0.0) only with the [auth] "
             "login configured, or --no-login.")] = "127.0.0.1",
    no_login: Annotated[bool, typer.Option(
        "--no-login", help="Serve beyond the loopback without the [auth] login (something "
                           "else guards the address).")] = False,
) -> None:
    """Start the Streamlit app on this database, logged in as segmentation_app."""
    if not is_loopback(address) and not no_login and not auth_configured():
        raise SegmentationError(
            f"--address {address} serves the app beyond this machine, and no [auth] login is "
            "configured in .streamlit/secrets.toml: configure it (with "
            "SEGMENTATION_APP_ALLOWED_USERS), or pass --no-login if something else guards it")
    script = Path(__file__).resolve().parents[2] / "streamlit_app" / "app.py"
    env = app_environment(current_settings(), dict(os.environ))
    cmd = streamlit_command(script, port, address)
    sys.stdout.flush()
    sys.stderr.flush()
    # the server replaces this process: its pid is the one ops see and stop, and no child
    # outlives a killed parent
    os.execve(sys.executable, cmd, env)


def streamlit_command(script: Path, port: int, address: str = "127.0.0.1") -> list[str]:
    """How a script is served as the app is (the benchmark serves its baseline page so)."""
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
            "--server.address", address, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
            # a served app, not a development one: no watching of every imported module's
            # source for changes, and no full garbage collection after every script run
            # (each costs every session's rerun, many at once)
            "--server.fileWatcherType", "none", "--runner.postScriptGC", "false"]


def app_environment(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The served app's environment: the URL of its own login, never the owner's. On the
    owner's server (or the demo's database) the app gets a login of its own; that URL names
    the demo's database already, so the app is not told to add the demo's suffix again."""
    from segmentation.db import ensure_app_login

    env = dict(env)
    if settings.app_database_url is None or settings.demo:
        env["SEGMENTATION_APP_DATABASE_URL"] = ensure_app_login(database_url(settings),
                                                                settings.home)
    env.pop("SEGMENTATION_DATABASE_URL", None)  # no owner URL in the app's reach
    env.pop("SEGMENTATION_DEMO", None)
    return env


def is_loopback(address: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    import ipaddress

    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_configured() -> bool:
    """Whether Streamlit will find an [auth] section (its secrets files: the project's, then
    the user's)."""
    import tomllib

    for path in (Path.cwd() / ".streamlit" / "secrets.toml",
                 Path.home() / ".streamlit" / "secrets.toml"):
        try:
            if "auth" in tomllib.loads(path.read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError):
            continue
    return False
