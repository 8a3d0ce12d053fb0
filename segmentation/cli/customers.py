"""`segmentation customers`: erasure and re-admission."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segmentation.cli.common import app, database_url
from segmentation.errors import SegmentationError

customers_app = typer.Typer(help="Customers: forget (erasure), readmit.",
                             no_args_is_help=True)
app.add_typer(customers_app, name="customers")


@customers_app.command("forget")
def customers_forget(
    ids: Annotated[list[str] | None, typer.Argument(help="Customer ids to erase.")] = None,
    file: Annotated[Path | None, typer.Option(help="A file of ids, one per line.")] = None,
) -> None:
    """Erase customers from every table that holds them, in one transaction; the erasure is
    recorded (when, how many, salted hashes of the ids), never the ids."""
    wanted = list(ids or [])
    if file is not None:
        try:
            wanted += [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise SegmentationError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    if not any(i.strip() for i in wanted):
        raise SegmentationError("give customer ids, or --file with one id per line")
    import getpass

    from segmentation.db import connection
    from segmentation.privacy import forget_customers

    with connection(database_url()) as conn:
        erasure = forget_customers(conn, wanted, f"cli: {getpass.getuser()}")
    typer.echo(erasure.summary())


@customers_app.command("readmit")
def customers_readmit(
    ids: Annotated[list[str], typer.Argument(help="Erased customer ids to allow back.")],
) -> None:
    """Take erased ids off the erased list, so that the next batch carrying them loads them
    (an erased customer otherwise stays erased); logged without the ids."""
    import getpass

    from segmentation.db import connection
    from segmentation.privacy import readmit_customers

    with connection(database_url()) as conn:
        count = readmit_customers(conn, ids, f"cli: {getpass.getuser()}")
    typer.echo(f"{count:,} of {len(set(ids)):,} id(s) were on the erased list and may be loaded "
               "again" + ("" if count == len(set(ids)) else "; the others were not erased"))
