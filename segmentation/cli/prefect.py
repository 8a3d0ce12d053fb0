"""`segmentation prefect` (the kept local server) and `segmentation alerts`."""

from __future__ import annotations

import os

import typer

from segmentation.cli.common import app, current_settings
from segmentation.errors import SegmentationError

prefect_app = typer.Typer(help="The local Prefect server kept under SEGMENTATION_HOME "
                          "(used when PREFECT_API_URL is unset).", no_args_is_help=True)
app.add_typer(prefect_app, name="prefect")


@prefect_app.command("status")
def prefect_status() -> None:
    """Whether the kept Prefect server runs, and where its UI is."""
    from segmentation.prefect_server import read_state, running_server

    if os.environ.get("PREFECT_API_URL"):
        typer.echo(f"PREFECT_API_URL is set: flows report to {os.environ['PREFECT_API_URL']}")
    home = current_settings().home
    server = running_server(home)
    if server is None:
        stale = read_state(home)
        typer.echo("the local Prefect server is not running" + (
            f" (last on port {stale.port})" if stale else "")
            + "; the next flow command starts it")
        raise typer.Exit(1)
    typer.echo(f"running (pid {server.pid}): UI {server.ui_url}, API {server.api_url}")


@prefect_app.command("start")
def prefect_start() -> None:
    """Start the kept Prefect server now (flow commands otherwise start it on first use)."""
    from segmentation.prefect_server import ensure_prefect_server

    server, started = ensure_prefect_server(current_settings().home)
    typer.echo(f"{'started' if started else 'already running'}: UI {server.ui_url}")


@prefect_app.command("stop")
def prefect_stop() -> None:
    """Stop the kept Prefect server (its runs stay in its database for next time)."""
    from segmentation.prefect_server import stop_prefect_server

    typer.echo("stopped" if stop_prefect_server(current_settings().home)
               else "the local Prefect server was not running")


alerts_app = typer.Typer(help="Prefect automations that notify ops.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("install")
def alerts_install() -> None:
    """Install the failed-run and drift automations (webhook from
    SEGMENTATION_ALERT_WEBHOOK_URL) on the Prefect server in PREFECT_API_URL."""
    from flows.alerts import install_automations, save_webhook_block

    webhook = os.environ.get("SEGMENTATION_ALERT_WEBHOOK_URL")
    if not webhook:
        raise SegmentationError("set SEGMENTATION_ALERT_WEBHOOK_URL to the webhook to notify")
    for name in install_automations(save_webhook_block(webhook)):
        typer.echo(f"installed automation {name!r}")
