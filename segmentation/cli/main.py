"""The console entry point: one line for a user's mistake, never a traceback."""

from __future__ import annotations

import logging
import os
import sys

import typer

from segmentation.cli.common import EXIT_DRIFT, app
from segmentation.errors import SegmentationError

QUIET_DEFAULTS = {
    # nothing phones home unless the user opts in
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
}


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs failed runs with a traceback; a user error needs only its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SegmentationError):
            record.exc_info = None
            record.exc_text = None
        return True


def _exit_on_signal(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C: context managers and atexit hooks run, so children
    (Prefect's temporary server, a Dask cluster) stop with this process."""
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point: user errors are one line and exit 1; drift exits 3."""
    import signal

    import psycopg

    # Typer vendors click (0.16 on): its usage errors are these, raised when not standalone
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    from segmentation.errors import DriftDetected

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in ("prefect.task_engine", "prefect.flow_engine", "prefect.task_runs",
                 "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be said in one line
    except NoArgsIsHelpError as exc:  # `segmentation db`: its help
        typer.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "segmentation"
        typer.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
        sys.exit(1)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except DriftDetected as exc:  # published: the summary, then what drifted
        for line in str(exc).splitlines():
            typer.echo(line, err=line.startswith("drift: "))
        sys.exit(EXIT_DRIFT)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SegmentationError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except psycopg.OperationalError as exc:
        from segmentation.config import mask_secrets

        text = mask_secrets(str(exc).strip()).splitlines() or [type(exc).__name__]
        typer.echo(f"error: database: {text[0]}", err=True)
        sys.exit(1)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject,
            psycopg.errors.UndefinedFunction) as exc:  # a database this release never set up
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        typer.echo(f"error: database: {first} (its schema is missing or older than this "
                   "release: run `segmentation db migrate`)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
