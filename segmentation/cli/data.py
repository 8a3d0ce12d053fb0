"""Data in: `generate`, `ingest`, `validate`, `batches`."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from segmentation.cli.common import EXIT_DRIFT, app, current_settings, database_url
from segmentation.errors import SegmentationError
from segmentation.reports import count

if TYPE_CHECKING:
    from segmentation.config import Settings


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="CSV file to write.")] = Path("customers.csv"),
    rows: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same file).")] = 42,
) -> None:
    """Write synthetic customers with the original CC GENERAL headers."""
    from segmentation.generate import generate_csv

    written = generate_csv(out, rows, seed)
    typer.echo(f"wrote {written:,} customers to {out}")


@app.command()
def ingest(
    path: Annotated[Path | None, typer.Argument(help="CSV file to load.")] = None,
    table: Annotated[str | None, typer.Option(help="Load an existing table (schema.name).")] = None,
    delimiter: Annotated[str, typer.Option(help="Field delimiter of the CSV.")] = ",",
    encoding: Annotated[str, typer.Option(help="Encoding of the CSV.")] = "utf-8",
    validate: Annotated[bool, typer.Option(help="Validate the batch right away.")] = True,
) -> None:
    """Load a CSV (or a table) as one batch, then validate it (exit 1 if it fails, 3 if it
    was accepted but drifted)."""
    if (path is None) == (table is None):
        raise SegmentationError("give a CSV path or --table, not both and not neither")
    from segmentation.ingest import check_csv_options, ingest_csv, ingest_table

    check_csv_options(delimiter, encoding)
    settings = current_settings()
    url = database_url(settings)
    # Great Expectations takes seconds to import: on a thread while the rows stream (the
    # COPY busies the server, not this process), joined before anything else imports
    warming = import_in_background("great_expectations") if validate else None
    if path is not None:
        from segmentation.progress import track

        with track("loading") as update:
            result = ingest_csv(url, path, delimiter=delimiter, encoding=encoding,
                                progress=update, streams=settings.ingest_streams)
    else:
        result = ingest_table(url, str(table))
    if warming is not None:
        warming.join()
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"batch {result.batch_id}: loaded {count(result.rows_in, 'row')}")
    if validate:
        validate_batches([result.batch_id], url, settings)
    else:
        typer.echo(f"not validated yet: run `segmentation validate --batch {result.batch_id}`")


def import_in_background(module: str) -> threading.Thread:
    """Start importing a module on a daemon thread; join it before importing anything else."""
    thread = threading.Thread(target=importlib.import_module, args=(module,), daemon=True)
    thread.start()
    return thread


def validate_batches(batch_ids: list[str], url: str, settings: Settings,
                     docs: bool = False) -> None:
    """Validate batches in order, print each summary; exit 1 if any failed, else 3 if a
    batch drifted (accepted all the same, the alert recorded in drift_alerts)."""
    from segmentation.db import connection
    from segmentation.drift import feature_alert, record_alerts
    from segmentation.progress import track
    from segmentation.registry import champion_reference, champion_version
    from segmentation.validation import validate_batch

    with connection(url) as conn:
        reference = champion_reference(conn)
        model_version = champion_version(conn)
    failed, alerts = [], []
    for batch_id in batch_ids:
        docs_dir = settings.home / "gx_docs" if docs else None
        with track("validating", unit="steps") as step:
            report = validate_batch(url, batch_id, reference=reference, docs_dir=docs_dir,
                                    max_quarantine_share=settings.quarantine_max_share,
                                    lock_wait_s=settings.lock_wait_s, progress=step)
        typer.echo(report.summary(), err=not report.success)
        if docs_dir is not None:
            typer.echo(f"data docs: {docs_dir / 'index.html'}")
        if not report.success:
            failed.append(batch_id)
        alert = feature_alert(report, model_version)
        if alert is not None:
            alerts.append(alert)
    if alerts:
        with connection(url) as conn:
            record_alerts(conn, alerts)
        for alert in alerts:
            typer.echo(f"drift: {alert.message}", err=True)
    if failed:
        raise typer.Exit(1)
    if alerts:
        raise typer.Exit(EXIT_DRIFT)


@app.command()
def validate(
    batch: Annotated[str | None, typer.Option(help="Batch id (default: every pending batch).")]
    = None,
    docs: Annotated[bool, typer.Option(help="Also write GX Data Docs under the state dir.")]
    = False,
) -> None:
    """Validate landed batches with the data contract (GX); exit 1 if one fails."""
    from segmentation.db import connection
    from segmentation.validation import waiting_batches

    settings = current_settings()
    url = database_url(settings)
    if batch is None:
        with connection(url) as conn:
            batches = waiting_batches(conn)
        if not batches:
            typer.echo("no batch waiting for validation")
            return
    else:
        batches = [batch]
    validate_batches(batches, url, settings, docs)


batches_app = typer.Typer(help="Loaded batches: list, discard a failed one.",
                          no_args_is_help=True)
app.add_typer(batches_app, name="batches")


@batches_app.command("list")
def batches_list() -> None:
    """Batches, newest first, with their validation status."""
    from segmentation.db import connection

    with connection(database_url()) as conn:
        rows = conn.execute(
            "SELECT batch_id, status, rows_in, rows_quarantined, loaded_at, source"
            " FROM ingest_batches ORDER BY loaded_at DESC LIMIT 50").fetchall()
    for batch_id, status, rows_in, quarantined, loaded_at, source in rows:
        typer.echo(f"{batch_id}  {status:<10} {rows_in:>10,} rows {quarantined:>8,} quarantined"
                   f"  {loaded_at:%Y-%m-%d %H:%M}  {source}")


@batches_app.command("discard")
def batches_discard(batch_id: str) -> None:
    """Give up on a failed or unvalidated batch so scoring can go on without it."""
    from segmentation.accepting import drop_landed
    from segmentation.db import connection
    from segmentation.validation import drop_batch_view

    url = database_url()
    with connection(url) as conn:
        row = conn.execute("UPDATE ingest_batches SET status = 'discarded' WHERE batch_id = %s"
                           " AND status IN ('loaded', 'failed') RETURNING batch_id",
                           (batch_id,)).fetchone()
        if row is None:
            raise SegmentationError(f"no failed or unvalidated batch {batch_id!r}")
        drop_landed(conn, batch_id)
    drop_batch_view(url, batch_id)  # left behind if a validation was killed
    typer.echo(f"batch {batch_id} discarded")
