"""The one place that turns settings into connections, and applies the migrations in sql/."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from segmentation.config import Settings, mask_url
from segmentation.errors import DatabaseUnavailable, SegmentationError

MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
MIGRATION_LOCK = 7_421_001  # pg_advisory_lock key: one migrator at a time


def resolve_url(settings: Settings) -> str:
    """The SQLAlchemy URL to use: the configured one, or the embedded server's, with the
    statement timeout (SEGMENTATION_STATEMENT_TIMEOUT_S) as a session option."""
    if settings.database_url:
        url = make_url(settings.database_url.get_secret_value())
        if not url.drivername.startswith("postgresql"):
            raise SegmentationError(
                f"SEGMENTATION_DATABASE_URL must be a PostgreSQL URL, got {mask_url(str(url))}"
            )
        url = url.set(drivername="postgresql+psycopg")
    else:
        from segmentation.embedded import ensure_embedded

        url = make_url(ensure_embedded(settings.home))
    if settings.demo:
        url = ensure_demo_database(url)
    if settings.statement_timeout_s and "options" not in url.query:
        url = url.update_query_dict(
            {"options": f"-cstatement_timeout={int(settings.statement_timeout_s * 1000)}"})
    return str(url.render_as_string(hide_password=False))


def ensure_demo_database(url: URL) -> URL:
    """The demo's own database beside the user's (same server, name + DEMO_SUFFIX), created
    on first use: the demo's synthetic customers and models never mix with the user's."""
    from segmentation.config import DEMO_SUFFIX

    name = f"{url.database}{DEMO_SUFFIX}"
    demo = url.set(database=name)
    with connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                        (name,)).fetchone() is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another demo command created it meanwhile
            except psycopg.errors.InsufficientPrivilege:
                raise SegmentationError(
                    f"the demo keeps its own database, {name}, and this login may not "
                    "create it: create it (CREATE DATABASE), or run the demo on the embedded "
                    "server (SEGMENTATION_DATABASE_URL unset)") from None
    return demo


APP_ROLE = "segmentation_app"


def app_database(settings: Settings) -> tuple[str, str | None]:
    """The app's URL and the role its sessions must switch to: its own login
    (SEGMENTATION_APP_DATABASE_URL, no switch needed), or the owner's URL switched to
    segmentation_app before the first query."""
    if settings.app_database_url:
        own = settings.model_copy(update={"database_url": settings.app_database_url})
        return resolve_url(own), None
    return resolve_url(settings), APP_ROLE


def ensure_app_login(owner_url: str, home: Path) -> str:
    """A URL on the owner's server that logs in as segmentation_app itself (a SET ROLE can
    be undone by any statement's RESET ROLE; a login cannot): its password is generated once
    into the home (mode 0600) and set on the role, whose verifier alone reaches the server."""
    import secrets


    path = home / "app.password"
    try:
        password = path.read_text(encoding="utf-8").strip()
    except OSError:
        password = ""
    if not password:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        path.touch(mode=0o600)
        path.write_text(password, encoding="utf-8")
    set_role_password(owner_url, APP_ROLE, password)
    return str(make_url(owner_url).set(username=APP_ROLE, password=password)
               .render_as_string(hide_password=False))


def set_role(conn: psycopg.Connection, role: str | None) -> None:
    """Switch a fresh session to `role` (and commit, so a rollback cannot undo it)."""
    if role:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        if not conn.autocommit:
            conn.commit()


def conninfo(url: str) -> str:
    """A libpq connection URI (what psycopg wants) from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# What a restart, a failover or a conflict looks like: worth retrying after a pause.
TRANSIENT_SQLSTATES = frozenset({
    "57P01", "57P02", "57P03",  # admin shutdown, crash shutdown, cannot connect now
    "08000", "08001", "08003", "08004", "08006",  # connection exceptions
    "40001", "40P01",  # serialization failure, deadlock
    "53300",  # too many connections
})
# A connection that never reached the server (no SQLSTATE): refused, reset, timed out.
TRANSIENT_TEXT = ("connection refused", "could not connect", "server closed the connection",
                  "connection timed out", "timeout expired", "no such file or directory",
                  "the database system is", "terminating connection", "connection is lost",
                  "consuming input failed", "connection reset", "ssl syscall")


def is_transient_text(message: str) -> bool:
    """True for the words of a lost or refused connection (an error that reached us only as
    text, as a rule GX could not evaluate does)."""
    text = message.lower()
    return any(marker in text for marker in TRANSIENT_TEXT)


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may cure (the server restarting, a dropped connection, a
    serialization failure); False for bad credentials, a missing database, bad SQL, bad data.
    Looks through SQLAlchemy's and other libraries' wrappers to the driver's error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DatabaseUnavailable):
            return True
        if isinstance(current, psycopg.Error):
            if current.sqlstate is not None:
                return current.sqlstate in TRANSIENT_SQLSTATES
            return isinstance(current, psycopg.OperationalError | psycopg.InterfaceError) \
                and is_transient_text(str(current))
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a psycopg connection; a failure names the (masked) URL, never the password.
    A refused or dropped connection raises DatabaseUnavailable (retried by the flows)."""
    try:
        return psycopg.connect(conninfo(url), autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = DatabaseUnavailable if is_transient(exc) else SegmentationError
        raise error(f"cannot connect to {mask_url(url)}: {first}") from None


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """Context-managed connection: commit on success, roll back on error, always close."""
    conn = connect(url, autocommit=autocommit)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


class ArrowSession:
    """A read-only session that streams query results as Arrow record batches (ADBC's
    PostgreSQL driver: the server's binary COPY, decoded natively, off the GIL)."""

    def __init__(self, adbc_conn: Any) -> None:
        self._cursor = adbc_conn.cursor()

    def execute(self, statement: str) -> None:
        """A statement without rows (BEGIN, SET ...)."""
        with translate_adbc_errors():
            self._cursor.execute(statement)

    def stream(self, query: str, batch_bytes: int) -> Iterator[Any]:
        """The query's rows as record batches of about batch_bytes each."""
        from adbc_driver_postgresql import StatementOptions

        with translate_adbc_errors():
            self._cursor.adbc_statement.set_options(
                **{StatementOptions.BATCH_SIZE_HINT_BYTES.value: str(batch_bytes)})
            self._cursor.execute(query)
            reader = self._cursor.fetch_record_batch()
            try:
                yield from reader
            finally:
                reader.close()


@contextmanager
def translate_adbc_errors() -> Iterator[None]:
    """ADBC's errors as ours, in one line: a dropped or refused connection is
    DatabaseUnavailable (retried like psycopg's), anything else a SegmentationError. Errors
    while streaming come through Arrow's reader as OSError or ArrowException, with libpq's
    text and no SQLSTATE."""
    from adbc_driver_manager import Error as AdbcError
    from pyarrow import ArrowException

    try:
        yield
    except (AdbcError, ArrowException, OSError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        state = getattr(exc, "sqlstate", None)
        transient = state in TRANSIENT_SQLSTATES if state else is_transient_text(text)
        error = DatabaseUnavailable if transient else SegmentationError
        raise error(f"reading from the database: {first}") from exc


@contextmanager
def arrow_reader_session(conn: psycopg.Connection, snapshot: str,
                         settings: list[str]) -> Iterator[ArrowSession]:
    """A second session to the server of `conn` (same parameters and password) that reads
    in the snapshot `conn` exported (pg_export_snapshot), with `settings` (SET LOCAL ...)
    applied; closed on exit, which releases its snapshot and locks."""
    from adbc_driver_postgresql import dbapi
    from psycopg.conninfo import make_conninfo

    params = conn.info.get_parameters()  # the non-default ones, without the password
    if conn.info.password:
        params["password"] = conn.info.password
    with translate_adbc_errors():
        adbc_conn = dbapi.connect(make_conninfo(**params), autocommit=True)
    try:
        session = ArrowSession(adbc_conn)
        session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        session.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot))
                        .as_string(conn))
        for statement in settings:
            session.execute(statement)
        yield session
    finally:
        adbc_conn.close()


@contextmanager
def merge_joins(conn: psycopg.Connection) -> Iterator[None]:
    """Hash joins off for the statements inside, in the caller's transaction: joining two
    tables of millions of rows by key, a hash join spills past work_mem where a merge join
    reads both in index order. Back to the server's setting afterwards."""
    conn.execute("SET LOCAL enable_hashjoin = off")
    yield
    conn.execute("SET LOCAL enable_hashjoin TO DEFAULT")


def partitions(conn: psycopg.Connection, parent: str) -> list[str]:
    """The partitions attached to a table of this schema, by name."""
    return [name for (name,) in conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass"
        " ORDER BY 1", (parent,)).fetchall()]


def unattached_tables(conn: psycopg.Connection, prefix: str) -> list[str]:
    """Tables (plain or partitioned) of this schema named prefix..., attached to nothing:
    a run's builds, an ingest's slices, left by whoever created them."""
    return [name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()"
        " AND c.relname LIKE %s AND NOT c.relispartition ORDER BY 1",
        (prefix.replace("_", "\\_") + "%",)).fetchall()]


def sa_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    """A SQLAlchemy engine (pandas, GX, the app) with pre-ping for long-lived pools."""
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size,
                         max_overflow=max_overflow)


def sql_dir() -> Path:
    """Where the numbered migrations live (repo checkout or installed wheel)."""
    packaged = Path(__file__).with_name("_sql")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


@dataclass(frozen=True)
class Migration:
    """One numbered .sql file."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Detects a migration edited after it was applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def list_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in order; names must be NNN_snake_case.sql."""
    directory = directory or sql_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(match.group(1), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise SegmentationError(f"duplicate migration numbers in {directory}")
    return found


def apply_migrations(url: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied."""
    applied_now: list[str] = []
    with connection(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            for migration in list_migrations(directory):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise SegmentationError(
                            f"migration {migration.name} was edited after it was applied; "
                            "add a new numbered migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def create_schema_if_new(url: str) -> list[str]:
    """A database never migrated (no schema_migrations) gets the schema on first use, so a
    newcomer's first `ingest` works; an older schema is left for `segmentation db migrate`,
    ops' decision. Returns the migrations applied."""
    with connection(url) as conn:
        row = conn.execute("SELECT to_regclass('public.schema_migrations') IS NULL").fetchone()
    return apply_migrations(url) if row and row[0] else []


def set_role_password(url: str, role: str, password: str) -> None:
    """Let a role (marketing_ro, segmentation_app) log in with a password taken from the
    environment."""
    with connection(url, autocommit=True) as conn:
        # the server is sent the SCRAM verifier, never the password: a server that logs DDL
        # (log_statement = 'ddl') would otherwise write it into its log
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(),
                                                b"scram-sha-256").decode()
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}")
                     .format(sql.Identifier(role), sql.Literal(verifier)))


def role_can_login(url: str, role: str) -> bool:
    """Whether a role of this product may log in (ops gave it a password)."""
    with connection(url) as conn:
        row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s",
                           (role,)).fetchone()
    return bool(row and row[0])


def set_marketing_password(url: str, password: str) -> None:
    """Let marketing_ro log in with a password taken from the environment."""
    set_role_password(url, "marketing_ro", password)


def require_schema(conn: psycopg.Connection) -> None:
    """Fail with a clear message when `segmentation db migrate` has not run."""
    row = conn.execute("SELECT to_regclass('public.customers') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise SegmentationError("the database has no schema yet: run `segmentation db migrate`")
