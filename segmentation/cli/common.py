"""What every verb shares: the Typer app, this invocation's settings, database and Prefect API.
Heavy imports happen inside each verb, so --help is instant."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from segmentation.config import Settings

EXIT_DRIFT = 3  # the work is done and published, but the data drifted: ops should look


app = typer.Typer(help="Customer segmentation scored every night.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode="markdown")  # a docstring paragraph wraps as one


def current_settings() -> Settings:
    """Settings for this invocation (read from the environment once)."""
    from segmentation.config import load_settings

    return load_settings()


def database_url(settings: Settings | None = None) -> str:
    """The database URL for this invocation (starts the embedded server if needed; a new
    database gets the schema, and the user is told)."""
    from segmentation.config import mask_url
    from segmentation.db import create_schema_if_new, resolve_url

    url = resolve_url(settings or current_settings())
    if create_schema_if_new(url):
        typer.echo(f"created the schema in {mask_url(url)} (a new database)", err=True)
    return url


def prefect_api(settings: Settings | None = None) -> str:
    """The Prefect API flows report to: PREFECT_API_URL, else the kept local server (started
    on first use, reused afterwards). Called before Prefect is imported."""
    configured = os.environ.get("PREFECT_API_URL")
    settings = settings or current_settings()
    if configured or not settings.keep_prefect_server:
        return configured or ""  # "": Prefect starts its temporary server
    from segmentation.prefect_server import ensure_prefect_server

    server, started = ensure_prefect_server(settings.home)
    if started:
        typer.echo(f"started the local Prefect server: {server.ui_url} "
                   "(`segmentation prefect stop` stops it)", err=True)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


@app.callback()
def root(demo: bool = typer.Option(
        False, "--demo", help="Work on the demo's own database and models (what `segmentation "
        "demo` made), not yours: `segmentation --demo app`.")) -> None:
    """Customer segmentation scored every night."""
    if demo:
        use_demo()


def use_demo() -> None:
    """Every setting this process reads from now on points at the demo's database."""
    os.environ["SEGMENTATION_DEMO"] = "true"
