"""`segmentation demo`: synthetic customers through every stage, in a database of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from segmentation.cli.common import app, current_settings, database_url, prefect_api, use_demo
from segmentation.cli.data import validate_batches
from segmentation.cli.models import train
from segmentation.cli.scoring import score


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=100, help="Synthetic customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Generate, migrate, ingest, train, score, and print the segments, in the demo's own
    database (your data never meets the demo's customers)."""
    import threading

    from segmentation.config import mask_url
    from segmentation.db import apply_migrations
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv

    use_demo()
    settings = current_settings()
    # Prefect's server starts while the data is made and loaded: train needs it, not before
    prefect = threading.Thread(target=prefect_api, args=(settings,), daemon=True)
    prefect.start()
    url = database_url(settings)
    typer.echo(f"database: {mask_url(url)} (the demo's own: your data goes elsewhere)")
    apply_migrations(url)
    data = settings.home / "demo" / f"customers_{rows}_{seed}.csv"
    generate_csv(data, rows, seed)
    typer.echo(f"generated {rows:,} synthetic customers -> {data}")
    result = ingest_csv(url, data)
    typer.echo(f"ingested batch {result.batch_id}: {result.rows_in:,} rows")
    validate_batches([result.batch_id], url, settings)
    prefect.join()
    train(k="4", sample_size=200_000, force=False)
    score(mode="full", wait=True, partitions=1)
    print_segments(url)
    typer.echo("")
    for line in next_steps(os.environ.get("PREFECT_API_URL", "")):
        typer.echo(line)


def next_steps(prefect_api: str) -> list[str]:
    """The demo's last lines: commands that work as printed, from where `make demo` ran."""
    exe = Path(sys.argv[0]).absolute()
    venv_exe = exe if exe.name == "segmentation" and exe.is_file() else None
    command = "segmentation"
    if venv_exe is not None and str(venv_exe.parent) not in os.environ.get("PATH", "").split(
            os.pathsep):
        try:
            command = str(venv_exe.relative_to(Path.cwd()))
        except ValueError:
            command = str(venv_exe)
    steps = [f"open the app:    {command} --demo app        (then http://127.0.0.1:8501)",
             f"query it:        {command} --demo db url     (prints a psql line)"]
    if prefect_api:  # a kept or configured server: its runs stay visible
        ui = prefect_api.removesuffix("/api")
        steps.append(f"see the runs:    {ui}/runs   (Prefect UI; `{command} prefect stop` "
                     "stops a local one)")
    steps += ["your own data:   " + f"{command} ingest FILE.csv && {command} train && "
              f"{command} nightly", "                 (your database: the demo's customers "
              "are not in it; `--demo` goes back to them)"]
    return steps


def print_segments(url: str) -> None:
    """The segment table marketing sees."""
    from segmentation.db import connection

    with connection(url) as conn:
        rows = conn.execute(
            "SELECT segment_id, segment_name, count(*), count(*)::float / sum(count(*)) OVER ()"
            " FROM customer_segments GROUP BY segment_id, segment_name ORDER BY segment_id"
        ).fetchall()
    typer.echo(f"\n{'id':>3}  {'segment':<36} {'customers':>10} {'share':>7}")
    for seg, name, count, share in rows:
        typer.echo(f"{seg:>3}  {name:<36} {count:>10,} {share:>7.1%}")
