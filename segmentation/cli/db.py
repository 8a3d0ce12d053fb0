"""`segmentation db`: migrate, connect (for ops and for marketing), stop the embedded server."""

from __future__ import annotations

import os

import typer

from segmentation.cli.common import app, current_settings, database_url

db_app = typer.Typer(help="The database: migrate, connect, stop the embedded server.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations from sql/ (idempotent)."""
    from segmentation.config import mask_url
    from segmentation.db import apply_migrations, resolve_url

    url = resolve_url(current_settings())
    applied = apply_migrations(url)
    typer.echo(f"{mask_url(url)}: " + (f"applied {', '.join(applied)}" if applied
                                       else "schema up to date"))
    from segmentation.db import connection
    from segmentation.registry import import_folders

    settings = current_settings()
    with connection(url) as conn:  # versions of earlier releases: their files move in
        moved = import_folders(conn, settings.models_path)
    if moved:
        typer.echo(f"moved the files of {len(moved)} model version(s) from "
                   f"{settings.models_path} into the database: {', '.join(moved)}")
    from segmentation.db import APP_ROLE, set_role_password

    for role, variable in (("marketing_ro", "SEGMENTATION_MARKETING_PASSWORD"),
                           (APP_ROLE, "SEGMENTATION_APP_PASSWORD")):
        password = os.environ.get(variable)
        if password:
            set_role_password(url, role, password)
            typer.echo(f"{role} may log in (password from {variable})")


@db_app.command("url")
def db_url() -> None:
    """Print the database URL (password masked), and how ops and marketing connect."""
    from sqlalchemy.engine import make_url

    from segmentation.config import mask_url
    from segmentation.db import role_can_login

    settings = current_settings()
    url = database_url(settings)
    typer.echo(mask_url(url))
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "localhost"

    def psql(user: str) -> str:
        port = f" -p {parsed.port}" if parsed.port else ""
        return f"psql -h {host}{port} -U {user} {parsed.database}"

    typer.echo(f"owner (ops):           {psql(parsed.username or 'postgres')}")
    if settings.database_url is None:  # the embedded server wants its generated password
        from segmentation.embedded import PASSWORD_FILE

        typer.echo(f"  password: in {settings.home / PASSWORD_FILE} (e.g. "
                   f"PGPASSWORD=$(cat {settings.home / PASSWORD_FILE}) psql ...)")
    if role_can_login(url, "marketing_ro"):
        typer.echo(f"marketing (read-only): {psql('marketing_ro')}")
        typer.echo("  password: the one ops set with SEGMENTATION_MARKETING_PASSWORD")
    else:
        typer.echo("marketing (read-only): marketing_ro cannot log in yet; ops give it a "
                   "password with `SEGMENTATION_MARKETING_PASSWORD=... segmentation db migrate`")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (no-op with SEGMENTATION_DATABASE_URL set)."""
    from segmentation.embedded import stop_embedded

    settings = current_settings()
    if settings.database_url is not None:
        typer.echo("SEGMENTATION_DATABASE_URL is set: no embedded server to stop")
        return
    typer.echo("stopped" if stop_embedded(settings.home) else "embedded server was not running")
