"""Scoring: `score` and `nightly` (the Prefect flows, run from here)."""

from __future__ import annotations

from typing import Annotated, Literal, cast

import typer

from segmentation.cli.common import app, database_url, prefect_api
from segmentation.errors import SegmentationError


@app.command()
def score(
    mode: Annotated[str, typer.Option(help="full | incremental")] = "incremental",
    wait: Annotated[bool, typer.Option(help="Wait for a running scoring run.")] = False,
    partitions: Annotated[int, typer.Option(
        min=1, help="Hash partitions scored in parallel on Dask (1: in this process).")] = 1,
) -> None:
    """Score customers with the champion (Prefect flow `nightly-scoring`); exit 3 if the
    published segment mix drifted."""
    if mode not in ("full", "incremental"):
        raise SegmentationError(f"--mode must be full or incremental, got {mode!r}")
    database_url()  # reachable, with a schema: said before Prefect's import
    prefect_api()
    from flows.nightly_scoring import score_flow

    typer.echo(score_flow(mode=cast(Literal["full", "incremental"], mode), wait=wait,
                          partitions=partitions))


@app.command()
def nightly(
    mode: Annotated[str, typer.Option(help="full | incremental")] = "incremental",
    partitions: Annotated[int, typer.Option(
        min=1, help="Hash partitions scored in parallel on Dask (1: in this process).")] = 1,
) -> None:
    """What the nightly deployment runs: validate pending batches, score, publish; exit 3
    if data or segment mix drifted (everything is published first)."""
    if mode not in ("full", "incremental"):
        raise SegmentationError(f"--mode must be full or incremental, got {mode!r}")
    database_url()  # reachable, with a schema: said before Prefect's import
    prefect_api()
    from flows.nightly_scoring import nightly as nightly_flow

    typer.echo(nightly_flow(mode=cast(Literal["full", "incremental"], mode),
                            partitions=partitions))
