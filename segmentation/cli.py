"""The `segmentation` command.  Heavy imports happen inside each verb, so --help is instant.

User mistakes print one line (`error: ...`) and exit non-zero; never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

import typer

from segmentation.errors import SegmentationError

if TYPE_CHECKING:
    from segmentation.config import Settings

EXIT_DRIFT = 3  # the work is done and published, but the data drifted: ops should look

app = typer.Typer(help="Customer segmentation scored every night.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
db_app = typer.Typer(help="The database: migrate, connect, stop the embedded server.",
                     no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
prefect_app = typer.Typer(help="The local Prefect server kept under SEGMENTATION_HOME "
                          "(used when PREFECT_API_URL is unset).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(prefect_app, name="prefect")


def _settings() -> Settings:
    """Settings for this invocation (read from the environment once)."""
    from segmentation.config import load_settings

    return load_settings()


def _url(settings: Settings | None = None) -> str:
    """The database URL for this invocation (starts the embedded server if needed)."""
    from segmentation.db import resolve_url

    return resolve_url(settings or _settings())


def _prefect_api(settings: Settings | None = None) -> str:
    """The Prefect API flows report to: PREFECT_API_URL, else the kept local server (started
    on first use, reused afterwards). Called before Prefect is imported."""
    configured = os.environ.get("PREFECT_API_URL")
    settings = settings or _settings()
    if configured or not settings.keep_prefect_server:
        return configured or ""  # "": Prefect starts its temporary server
    from segmentation.prefect_server import ensure_prefect_server

    server, started = ensure_prefect_server(settings.home)
    if started:
        typer.echo(f"started the local Prefect server: {server.ui_url} "
                   "(`segmentation prefect stop` stops it)", err=True)
    os.environ["PREFECT_API_URL"] = server.api_url
    return server.api_url


@prefect_app.command("status")
def prefect_status() -> None:
    """Whether the kept Prefect server runs, and where its UI is."""
    from segmentation.prefect_server import read_state, running_server

    if os.environ.get("PREFECT_API_URL"):
        typer.echo(f"PREFECT_API_URL is set: flows report to {os.environ['PREFECT_API_URL']}")
    home = _settings().home
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

    server, started = ensure_prefect_server(_settings().home)
    typer.echo(f"{'started' if started else 'already running'}: UI {server.ui_url}")


@prefect_app.command("stop")
def prefect_stop() -> None:
    """Stop the kept Prefect server (its runs stay in its database for next time)."""
    from segmentation.prefect_server import stop_prefect_server

    typer.echo("stopped" if stop_prefect_server(_settings().home)
               else "the local Prefect server was not running")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations from sql/ (idempotent)."""
    from segmentation.config import mask_url
    from segmentation.db import apply_migrations

    url = _url()
    applied = apply_migrations(url)
    typer.echo(f"{mask_url(url)}: " + (f"applied {', '.join(applied)}" if applied
                                       else "schema up to date"))
    from segmentation.db import APP_ROLE, set_role_password

    for role, variable in (("marketing_ro", "SEGMENTATION_MARKETING_PASSWORD"),
                           (APP_ROLE, "SEGMENTATION_APP_PASSWORD")):
        password = os.environ.get(variable)
        if password:
            set_role_password(url, role, password)
            typer.echo(f"{role} may log in (password from {variable})")


@db_app.command("url")
def db_url() -> None:
    """Print the database URL (password masked) and a psql line to connect."""
    from sqlalchemy.engine import make_url

    from segmentation.config import mask_url

    settings = _settings()
    url = _url(settings)
    typer.echo(mask_url(url))
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host or "localhost"
    parts = ["psql", f"-h {host}", f"-U {parsed.username or 'postgres'}"]
    if parsed.port:
        parts.append(f"-p {parsed.port}")
    parts.append(str(parsed.database))
    typer.echo(" ".join(parts))
    if settings.database_url is None:  # the embedded server wants its generated password
        from segmentation.embedded import PASSWORD_FILE

        typer.echo(f"password: in {settings.home / PASSWORD_FILE} (e.g. "
                   f"PGPASSWORD=$(cat {settings.home / PASSWORD_FILE}) psql ...)")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (no-op with SEGMENTATION_DATABASE_URL set)."""
    from segmentation.embedded import stop_embedded

    settings = _settings()
    if settings.database_url is not None:
        typer.echo("SEGMENTATION_DATABASE_URL is set: no embedded server to stop")
        return
    typer.echo("stopped" if stop_embedded(settings.home) else "embedded server was not running")


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
    settings = _settings()
    url = _url(settings)
    if path is not None:
        from segmentation.progress import track

        with track("loading") as update:
            result = ingest_csv(url, path, delimiter=delimiter, encoding=encoding,
                                progress=update)
    else:
        result = ingest_table(url, str(table))
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"batch {result.batch_id}: loaded {result.rows_in:,} rows")
    if validate:
        _validate([result.batch_id], url, settings)
    else:
        typer.echo(f"not validated yet: run `segmentation validate --batch {result.batch_id}`")


def _validate(batch_ids: list[str], url: str, settings: Settings, docs: bool = False) -> None:
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

    settings = _settings()
    url = _url(settings)
    if batch is None:
        with connection(url) as conn:
            batches = [b for (b,) in conn.execute(
                "SELECT batch_id FROM ingest_batches WHERE status = 'loaded' ORDER BY loaded_at")]
        if not batches:
            typer.echo("no batch waiting for validation")
            return
    else:
        batches = [batch]
    _validate(batches, url, settings, docs)


batches_app = typer.Typer(help="Loaded batches: list, discard a failed one.",
                          no_args_is_help=True)
app.add_typer(batches_app, name="batches")


@batches_app.command("list")
def batches_list() -> None:
    """Batches, newest first, with their validation status."""
    from segmentation.db import connection

    with connection(_url()) as conn:
        rows = conn.execute(
            "SELECT batch_id, status, rows_in, rows_quarantined, loaded_at, source"
            " FROM ingest_batches ORDER BY loaded_at DESC LIMIT 50").fetchall()
    for batch_id, status, rows_in, quarantined, loaded_at, source in rows:
        typer.echo(f"{batch_id}  {status:<10} {rows_in:>10,} rows {quarantined:>8,} quarantined"
                   f"  {loaded_at:%Y-%m-%d %H:%M}  {source}")


@batches_app.command("discard")
def batches_discard(batch_id: str) -> None:
    """Give up on a failed or unvalidated batch so scoring can go on without it."""
    from segmentation.db import connection
    from segmentation.validation import drop_batch_view

    url = _url()
    with connection(url) as conn:
        row = conn.execute("UPDATE ingest_batches SET status = 'discarded' WHERE batch_id = %s"
                           " AND status IN ('loaded', 'failed') RETURNING batch_id",
                           (batch_id,)).fetchone()
        if row is None:
            raise SegmentationError(f"no failed or unvalidated batch {batch_id!r}")
        conn.execute("DELETE FROM customers_incoming WHERE batch_id = %s", (batch_id,))
    drop_batch_view(url, batch_id)  # left behind if a validation was killed
    typer.echo(f"batch {batch_id} discarded")


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
    _prefect_api()
    from flows.retrain import retrain  # checked first: Prefect takes seconds to import

    k_value: int | Literal["auto"] = "auto" if k == "auto" else int(k)
    summary = retrain(k=k_value, sample_size=sample_size, force=force)
    typer.echo(summary)


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
    _prefect_api()
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
    _prefect_api()
    from flows.nightly_scoring import nightly as nightly_flow

    typer.echo(nightly_flow(mode=cast(Literal["full", "incremental"], mode),
                            partitions=partitions))


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

    with connection(_url()) as conn:
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

    with connection(_url()) as conn:
        count = readmit_customers(conn, ids, f"cli: {getpass.getuser()}")
    typer.echo(f"{count:,} of {len(set(ids)):,} id(s) were on the erased list and may be loaded "
               "again" + ("" if count == len(set(ids)) else "; the others were not erased"))


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


@models_app.command("list")
def models_list() -> None:
    """Model versions, newest first."""
    from segmentation.db import connection

    with connection(_url()) as conn:
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
    from pathlib import Path as _Path

    from segmentation.db import connection
    from segmentation.registry import champion_version

    with connection(_url()) as conn:
        version = version or champion_version(conn)
        if version is None:
            raise SegmentationError("no champion model: run `segmentation train` first")
        row = conn.execute("SELECT status, metrics, path FROM model_versions WHERE version = %s",
                           (version,)).fetchone()
        if row is None:
            raise SegmentationError(f"no model version {version!r}")
        segments = conn.execute(
            "SELECT p.segment_id, n.segment_name, p.size, p.share, n.profile"
            " FROM segment_profiles p JOIN segment_names n ON n.model_version = p.version"
            " AND n.segment_id = p.segment_id WHERE p.version = %s ORDER BY p.segment_id",
            (version,)).fetchall()
    status, metrics, path = row
    tree = metrics["tree"]
    typer.echo(f"model {version} ({status}), k={metrics['k']}, trained on "
               f"{metrics['sample_rows']:,} of {metrics['training_rows']:,} rows")
    typer.echo(f"silhouette {metrics['silhouette']:.3f}, Davies-Bouldin "
               f"{metrics['davies_bouldin']:.3f}, tree agreement {tree['agreement']:.3%} "
               f"(depth {tree['depth']}, {tree['leaves']} leaves)")
    for seg, name, size, share, profile in segments:
        typer.echo(f"  {seg}  {name:<34} {size:>9,} {share:>6.1%}  {profile}")
    rules = _Path(path) / "rules.txt"
    if rules.exists():
        typer.echo(f"rules: {rules}")


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make VERSION the champion (one transaction)."""
    from segmentation.db import connection
    from segmentation.registry import promote

    with connection(_url()) as conn:
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

    with connection(_url()) as conn:
        now = rename_segment(conn, segment_id, None if reset else name)
    typer.echo(f"segment {segment_id} is now called {now!r}" + (" (generated name)"
                                                                 if reset else ""))


@models_app.command("export-sql")
def models_export_sql(version: Annotated[str | None, typer.Argument()] = None) -> None:
    """Install segment_for(...) in the database: the champion's scoring as SQL."""
    from segmentation.db import connection
    from segmentation.registry import load_version
    from segmentation.sqlexport import install_segment_for

    with connection(_url()) as conn:
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

    with connection(_url()) as conn:
        version = rollback(conn, to, changed_by="cli: models rollback")
    typer.echo(f"rolled back: {version} is the champion again")


@models_app.command("history")
def models_history(limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Champion changes, newest first: when, what, from which version, why, by whom."""
    from segmentation.db import connection
    from segmentation.registry import champion_log

    with connection(_url()) as conn:
        rows = champion_log(conn, limit)
    if not rows:
        typer.echo("no champion yet: run `segmentation train`")
    for when, action, version, previous, reason, by in rows:
        typer.echo(f"{when:%Y-%m-%d %H:%M:%S}  {action:<8} {version}  (was {previous or '-'})"
                   f"  {reason}  [{by}]")


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=100, help="Synthetic customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Generate, migrate, ingest, train, score, and print the segments."""
    import threading

    from segmentation.config import mask_url
    from segmentation.db import apply_migrations
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv

    settings = _settings()
    # Prefect's server starts while the data is made and loaded: train needs it, not before
    prefect = threading.Thread(target=_prefect_api, args=(settings,), daemon=True)
    prefect.start()
    url = _url(settings)
    typer.echo(f"database: {mask_url(url)}")
    apply_migrations(url)
    data = settings.home / "demo" / f"customers_{rows}_{seed}.csv"
    generate_csv(data, rows, seed)
    typer.echo(f"generated {rows:,} synthetic customers -> {data}")
    result = ingest_csv(url, data)
    typer.echo(f"ingested batch {result.batch_id}: {result.rows_in:,} rows")
    _validate([result.batch_id], url, settings)
    prefect.join()
    train(k="4", sample_size=200_000, force=False)
    score(mode="full", wait=True, partitions=1)
    _print_segments(url)
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
    steps = [f"open the app:    {command} app        (then http://127.0.0.1:8501)",
             f"query it:        {command} db url     (prints a psql line)"]
    if prefect_api:  # a kept or configured server: its runs stay visible
        ui = prefect_api.removesuffix("/api")
        steps.append(f"see the runs:    {ui}/runs   (Prefect UI; `{command} prefect stop` "
                     "stops a local one)")
    return steps


def _print_segments(url: str) -> None:
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


@app.command("app")
def run_app(
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    address: Annotated[str, typer.Option(
        help="Address to listen on; beyond the loopback (0.0.0.0) only with the [auth] "
             "login configured, or --no-login.")] = "127.0.0.1",
    no_login: Annotated[bool, typer.Option(
        "--no-login", help="Serve beyond the loopback without the [auth] login (something "
                           "else guards the address).")] = False,
) -> None:
    """Start the Streamlit app on this database, logged in as segmentation_app."""
    from segmentation.db import ensure_app_login

    if not is_loopback(address) and not no_login and not auth_configured():
        raise SegmentationError(
            f"--address {address} serves the app beyond this machine, and no [auth] login is "
            "configured in .streamlit/secrets.toml: configure it (with "
            "SEGMENTATION_APP_ALLOWED_USERS), or pass --no-login if something else guards it")
    settings = _settings()
    script = Path(__file__).resolve().parent.parent / "streamlit_app" / "app.py"
    env = dict(os.environ)
    if settings.app_database_url is None:  # the owner's server: the app gets a login of its own
        env["SEGMENTATION_APP_DATABASE_URL"] = ensure_app_login(_url(settings), settings.home)
    env.pop("SEGMENTATION_DATABASE_URL", None)  # no owner URL in the app's reach
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
           "--server.address", address, "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
           # a served app, not a development one: no watching of every imported module's
           # source for changes, and no full garbage collection after every script run
           # (each costs every session's rerun, many at once)
           "--server.fileWatcherType", "none", "--runner.postScriptGC", "false"]
    sys.stdout.flush()
    sys.stderr.flush()
    # the server replaces this process: its pid is the one ops see and stop, and no child
    # outlives a killed parent
    os.execve(sys.executable, cmd, env)


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

    from segmentation.errors import DriftDetected

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)
    for name in ("prefect.task_engine", "prefect.flow_engine", "prefect.task_runs",
                 "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_NoTracebackForUserErrors())
    try:
        app()
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


if __name__ == "__main__":
    main()
