"""The model registry: `train`, and `models list/show/promote/rename/rollback/...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from segmentation.cli.common import app, database_url, prefect_api
from segmentation.errors import SegmentationError

models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command()
def train(
    k: Annotated[str, typer.Option(help="Number of segments, or 'auto'.")] = "4",
    sample_size: Annotated[int, typer.Option(help="Fit on a reproducible sample.")] = 200_000,
    force: Annotated[bool, typer.Option(help="Promote even if a quality gate fails.")] = False,
) -> None:
    """Retrain (Prefect flow `retrain`): fit, register, promote if the gates hold."""
    if k != "auto" and not (k.isdigit() and 2 <= int(k) <= 20):
        raise SegmentationError(f"--k must be an integer in 2..20 or 'auto', got {k!r}")
    if sample_size < 50:
        raise SegmentationError(f"--sample-size must be at least 50, got {sample_size}")
    database_url()  # reachable, with a schema: said before Prefect's import
    prefect_api()
    from flows.retrain import retrain  # checked first: Prefect takes seconds to import

    k_value: int | Literal["auto"] = "auto" if k == "auto" else int(k)
    summary = retrain(k=k_value, sample_size=sample_size, force=force)
    typer.echo(summary)


@models_app.command("list")
def models_list() -> None:
    """Model versions, newest first."""
    from segmentation.db import connection

    with connection(database_url()) as conn:
        rows = conn.execute(
            "SELECT version, status, k, created_at, metrics->'tree'->>'agreement',"
            " metrics->>'silhouette', coalesce(status_reason, '') FROM model_versions"
            " ORDER BY created_at DESC").fetchall()
    if not rows:
        typer.echo("no models yet: run `segmentation train`")
        return
    typer.echo(f"{'version':<26} {'status':<10} {'k':>2} {'agreement':>9} {'silhouette':>10}  note")
    for version, status, k, _created, agreement, silhouette, reason in rows:
        typer.echo(f"{version:<26} {status:<10} {k:>2} {float(agreement):>9.3f} "
                   f"{float(silhouette):>10.3f}  {reason}")


@models_app.command("show")
def models_show(version: Annotated[str | None, typer.Argument()] = None) -> None:
    """One version's metrics, segments and rules (default: the champion)."""
    from segmentation.db import connection
    from segmentation.registry import champion_version

    with connection(database_url()) as conn:
        version = version or champion_version(conn)
        if version is None:
            raise SegmentationError("no champion model: run `segmentation train` first")
        row = conn.execute("SELECT status, metrics FROM model_versions WHERE version = %s",
                           (version,)).fetchone()
        rules = conn.execute("SELECT convert_from(content, 'UTF8') FROM model_files"
                             " WHERE version = %s AND name = 'rules.txt'", (version,)).fetchone()
        if row is None:
            raise SegmentationError(f"no model version {version!r}")
        segments = conn.execute(
            "SELECT p.segment_id, n.segment_name, p.size, p.share, n.profile"
            " FROM segment_profiles p JOIN segment_names n ON n.model_version = p.version"
            " AND n.segment_id = p.segment_id WHERE p.version = %s ORDER BY p.segment_id",
            (version,)).fetchall()
    status, metrics = row
    tree = metrics["tree"]
    typer.echo(f"model {version} ({status}), k={metrics['k']}, trained on "
               f"{metrics['sample_rows']:,} of {metrics['training_rows']:,} rows")
    typer.echo(f"silhouette {metrics['silhouette']:.3f}, Davies-Bouldin "
               f"{metrics['davies_bouldin']:.3f}, tree agreement {tree['agreement']:.3%} "
               f"(depth {tree['depth']}, {tree['leaves']} leaves)")
    for seg, name, size, share, profile in segments:
        typer.echo(f"  {seg}  {name:<34} {size:>9,} {share:>6.1%}  {profile}")
    if rules:
        typer.echo("rules:")
        typer.echo(rules[0].rstrip())


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="The version to export.")],
    directory: Annotated[Path, typer.Argument(help="Where its folder is written.")],
) -> None:
    """Write a version's files (model.skops, rules.txt, metadata.json) to DIRECTORY/VERSION."""
    from segmentation.db import connection
    from segmentation.registry import export_version

    with connection(database_url()) as conn:
        folder = export_version(conn, version, directory)
    typer.echo(f"exported {version} to {folder}")


@models_app.command("import")
def models_import(
    folder: Annotated[Path, typer.Argument(help="A folder `models export` wrote.")],
) -> None:
    """Register a version exported elsewhere, as a challenger (`models promote` it after);
    its model is checked as every load is (trusted types only, same scikit-learn)."""
    from segmentation.db import connection
    from segmentation.registry import import_version

    with connection(database_url()) as conn:
        version = import_version(conn, folder)
    typer.echo(f"imported {version} as a challenger: `segmentation models promote {version}` "
               "makes it the champion")


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make VERSION the champion (one transaction)."""
    from segmentation.db import connection
    from segmentation.registry import promote

    with connection(database_url()) as conn:
        promote(conn, version, reason="promoted by hand", changed_by="cli: models promote")
    typer.echo(f"{version} is now the champion (segment_for follows it)")


@models_app.command("rename")
def models_rename(
    segment_id: Annotated[int, typer.Argument(help="The champion's segment id.")],
    name: Annotated[str | None, typer.Argument(help="The new name (1-80 characters).")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Back to the generated name.")]
    = False,
) -> None:
    """Rename a segment for every reader at once (tables, views, app, reports); kept across
    retrains, since segment ids are stable."""
    if (name is None) != reset:
        raise SegmentationError("give a NAME, or --reset to go back to the generated name")
    from segmentation.db import connection
    from segmentation.registry import rename_segment

    with connection(database_url()) as conn:
        now = rename_segment(conn, segment_id, None if reset else name)
    typer.echo(f"segment {segment_id} is now called {now!r}" + (" (generated name)"
                                                                 if reset else ""))


@models_app.command("export-sql")
def models_export_sql(version: Annotated[str | None, typer.Argument()] = None) -> None:
    """Install segment_for(...) in the database: the champion's scoring as SQL."""
    from segmentation.db import connection
    from segmentation.registry import load_version
    from segmentation.sqlexport import install_segment_for

    with connection(database_url()) as conn:
        model = load_version(conn, version)
        install_segment_for(conn, model)
    typer.echo(f"installed segment_for(...) for model {model.version}; e.g.\n"
               "  SELECT customer_id, segment_for(balance, balance_frequency, purchases, "
               "oneoff_purchases, installments_purchases, cash_advance, purchases_frequency, "
               "oneoff_purchases_frequency, purchases_installments_frequency, "
               "cash_advance_frequency, cash_advance_trx, purchases_trx, credit_limit, "
               "payments, minimum_payments, prc_full_payment, tenure) FROM customers;")


@models_app.command("rollback")
def models_rollback(
    to: Annotated[str | None, typer.Option(help="An earlier champion to go back to.")] = None,
) -> None:
    """Restore the champion before the current one (each call one further back), or --to
    an earlier champion; logged, segment_for follows."""
    from segmentation.db import connection
    from segmentation.registry import rollback

    with connection(database_url()) as conn:
        version = rollback(conn, to, changed_by="cli: models rollback")
    typer.echo(f"rolled back: {version} is the champion again")


@models_app.command("history")
def models_history(limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Champion changes, newest first: when, what, from which version, why, by whom."""
    from segmentation.db import connection
    from segmentation.registry import champion_log

    with connection(database_url()) as conn:
        rows = champion_log(conn, limit)
    if not rows:
        typer.echo("no champion yet: run `segmentation train`")
    for when, action, version, previous, reason, by in rows:
        typer.echo(f"{when:%Y-%m-%d %H:%M:%S}  {action:<8} {version}  (was {previous or '-'})"
                   f"  {reason}  [{by}]")
