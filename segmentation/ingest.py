"""Load an incoming customer table (CSV file or existing table) into `customers_incoming` as
a batch, all or nothing.

Each batch lands in a table of its own (`landing_<hash>`), attached to `customers_incoming`
as its partition once complete, and leaves by a DROP. A file streams with COPY straight into
the typed columns (frozen: its pages are written once), the id rules are CHECK constraints
and uniqueness is the key built after the COPY, so a clean file is parsed once and checked
without another pass. A file that does not type as it streams (a word in a number column,
an empty id) is landed again as text, where the checks name every offending column with an
example: a broken file costs more, and loads nothing. The row rules (ranges, nulls, drift)
belong to validation; `accepting.accept_batch` then moves the rows that passed into
`customers` and drops the batch's table.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.accepting import drop_erased, landing_name
from segmentation.csvfile import (  # noqa: F401  (re-exported: the CLI and tests use them)
    PG_ENCODINGS,
    check_csv_options,
    detect_encoding,
    file_blocks,
    file_slice,
    read_csv_header,
    read_head,
    split_points,
)
from segmentation.db import connect, connection, require_schema
from segmentation.errors import IngestError
from segmentation.features import COLUMNS, FEATURES, normalize_name
from segmentation.progress import Update

MAX_ID_LENGTH = 256  # ids are keys: btree entries must stay small
# A file this big streams on several connections at once (PostgreSQL parses each COPY on
# one core); smaller ones are not worth the extra connections.
PARALLEL_MIN_BYTES = 64 << 20
LANDING_LOCK = 7_421_006  # pg_advisory_lock(LANDING_LOCK, hashtext(table)): its ingest lives
# What PostgreSQL's double precision accepts (NaN and infinities are left to validation).
NUMBER_RE = r"^\s*[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"
# The magnitudes PostgreSQL's double precision holds (finite, non-zero): outside, the cast fails.
FLOAT8_MAX = "1.7976931348623157e308"
FLOAT8_MIN = "2.2250738585072014e-308"
# Failures of the typed COPY that the text landing explains column by column; any other
# failure (the file's structure, its encoding) says the same either way and is final.
RETYPE = (psycopg.errors.InvalidTextRepresentation, psycopg.errors.NumericValueOutOfRange,
          psycopg.errors.NotNullViolation)


@dataclass
class IngestResult:
    """What a load did, for the CLI and the flow."""

    batch_id: str
    source: str
    rows_in: int
    warnings: list[str] = field(default_factory=list)
    rows_erased: int = 0  # rows of erased customers, skipped (not landed)


def new_batch_id() -> str:
    """Sortable, unique batch id: b<UTC timestamp>-<random>."""
    return f"b{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def landing_table(batch_id: str) -> sql.Composable:
    """landing_name as SQL: a fixed prefix and hex digits need no quotes, and unquoted it
    reads as itself in pg_stat_activity (`COPY landing_...`)."""
    return sql.SQL(landing_name(batch_id))


def map_columns(header: list[str]) -> tuple[list[str], list[str]]:
    """Normalised names for each incoming column, and warnings; raises on a broken schema."""
    names = [normalize_name(h) for h in header]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise IngestError(f"duplicate column(s) in the header: {', '.join(duplicated)}")
    missing = [c for c in COLUMNS if c not in names]
    extra = [h for h, n in zip(header, names, strict=True) if n not in COLUMNS]
    if missing:
        message = f"missing column(s): {', '.join(missing)}"
        if extra:
            message += f"; unexpected column(s): {', '.join(extra)} (renamed?)"
        raise IngestError(message)
    warnings = [f"ignored unexpected column(s): {', '.join(extra)}"] if extra else []
    landing = [n if n in COLUMNS else f"_extra_{i}" for i, n in enumerate(names)]
    return landing, warnings


def create_landing_table(conn: psycopg.Connection, batch_id: str, landing: list[str], *,
                         part: int | None = None, parts: bool = False) -> sql.Composable:
    """The batch's typed table, its columns in the file's order (COPY maps by position): the
    whole batch, one slice of it (part i: landing_<hash>_i), or the batch partitioned into
    its slices (parts)."""
    name = landing_name(batch_id) + ("" if part is None else f"_{part}")
    table = sql.SQL(name)  # a fixed prefix and hex digits: see landing_table
    columns: list[sql.Composable] = [
        sql.SQL("{} text NOT NULL").format(sql.Identifier(name)) if name == "customer_id"
        else sql.SQL("{} double precision").format(sql.Identifier(name)) if name in FEATURES
        else sql.SQL("{} text").format(sql.Identifier(name))  # ignored: dropped once landed
        for name in landing]
    batch, number = sql.Literal(batch_id), sql.Literal(part or 0)
    # named alike in a batch's table and its slices: a partition must carry its parent's
    columns += [sql.SQL("batch_id text NOT NULL DEFAULT {} CONSTRAINT one_batch"
                        " CHECK (batch_id = {})").format(batch, batch),
                sql.SQL("loaded_at timestamptz NOT NULL DEFAULT now()"),
                sql.SQL("slice smallint NOT NULL") if parts else
                sql.SQL("slice smallint NOT NULL DEFAULT {} CHECK (slice = {})").format(
                    number, number)]
    conn.execute(sql.SQL("CREATE TABLE {} ({}){}").format(
        table, sql.SQL(", ").join(columns),
        sql.SQL(" PARTITION BY LIST (slice)") if parts else sql.SQL("")))
    return table


def copy_statement(table: sql.Composable, landing: list[str], delimiter: str, encoding: str,
                   *, header: bool = True, freeze: bool = False) -> sql.Composed:
    """COPY of (a slice of) the file into the table. With freeze (a table created in this
    subtransaction), the rows are written frozen and all-visible: the scans that validate
    and accept them do not write every page again to set hint bits."""
    return sql.SQL(
        "COPY {} ({}) FROM STDIN (FORMAT csv, HEADER {}, DELIMITER {}, ENCODING {}, FREEZE {})"
    ).format(
        table,
        sql.SQL(", ").join(sql.Identifier(n) for n in landing),
        sql.SQL("true" if header else "false"),
        sql.Literal(delimiter),
        sql.Literal(PG_ENCODINGS.get(encoding, "UTF8")),
        sql.SQL("true" if freeze else "false"),
    )


def copy_blocks(conn: psycopg.Connection, statement: sql.Composed, blocks: Iterable[bytes],
                sent: Update | None = None) -> int:
    """Stream blocks to a COPY; sent(bytes, lines) after each block. Returns the rows."""
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy:
            for block in blocks:
                copy.write(block)
                if sent is not None:
                    sent(len(block), block.count(b"\n"))
        return max(cursor.rowcount, 0)


def progress_of(path: Path, progress: Update | None) -> Update | None:
    """A sent(bytes, lines) callback that reports progress(rows, estimated total), safe to
    call from several threads."""
    if progress is None:
        return None
    size, totals, lock = path.stat().st_size, [0, 0], threading.Lock()

    def sent(nbytes: int, lines: int) -> None:
        with lock:
            totals[0] += nbytes
            totals[1] += lines
            progress(totals[1], max(totals[1], int(totals[1] * size / max(totals[0], 1))))
    return sent


def copy_file(conn: psycopg.Connection, path: Path, table: sql.Composable, landing: list[str],
              delimiter: str, encoding: str, progress: Update | None = None,
              freeze: bool = False) -> int:
    """Stream the file into the table with COPY (1 MiB blocks), with progress; returns the
    rows copied."""
    statement = copy_statement(table, landing, delimiter, encoding, freeze=freeze)
    try:
        return copy_blocks(conn, statement, file_blocks(path, encoding),
                           progress_of(path, progress))
    except RETYPE:
        raise
    except psycopg.Error as exc:
        raise IngestError(f"{path}: {_describe_copy_error(exc)}") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def copy_in_parallel(url: str, path: Path, batch_id: str, landing: list[str],
                     delimiter: str, encoding: str, cuts: list[int],
                     progress: Update | None = None) -> int:
    """Each slice of the file on a connection (and a server core) of its own, into a table
    of its own created in the same transaction: COPY FREEZE, its ids checked, its key built
    (on rows already in order when the file is), committed as it ends, attached to
    nothing. The first failure cancels the other streams and is raised. Returns the rows."""
    sent = progress_of(path, progress)
    connections: list[psycopg.Connection] = []

    def copy_slice(index: int) -> int:
        with connect(url) as conn:
            connections.append(conn)
            try:
                table = create_landing_table(conn, batch_id, landing, part=index)
                statement = copy_statement(table, landing, delimiter, encoding,
                                           header=index == 0, freeze=True)
                rows = copy_blocks(conn, statement,
                                   file_slice(path, cuts[index], cuts[index + 1]), sent)
                _check_ids(conn, table)
                conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (customer_id)")
                             .format(table))
                return rows
            except BaseException:
                for other in connections:
                    if other is not conn and not other.closed:
                        other.cancel()
                raise

    with ThreadPoolExecutor(len(cuts) - 1) as pool:
        futures = [pool.submit(copy_slice, i) for i in range(len(cuts) - 1)]
        errors = [f.exception() for f in futures]
    # the cause, not the cancellations it triggered
    first = next((e for e in errors if e is not None
                  and not isinstance(e, psycopg.errors.QueryCanceled)), None) or \
        next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return sum(f.result() for f in futures)


def join_slices(conn: psycopg.Connection, batch_id: str, landing: list[str],
                slices: int) -> None:
    """The batch's table, partitioned into its slices; ids unique across them (each
    slice's key holds within it). Slices whose id ranges do not overlap (a file in id
    order, as exports usually are) cannot share an id: two ends of each key tell. Else one
    merge of the slices' keys in order, no sort."""
    table = create_landing_table(conn, batch_id, landing, parts=True)
    names = [sql.SQL(f"{landing_name(batch_id)}_{part}") for part in range(slices)]
    for part, name in enumerate(names):
        conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
            table, name, sql.Literal(part)))
    ranges = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT min(customer_id) AS low, max(customer_id) AS high FROM {}").format(name)
        for name in names)
    apart = conn.execute(sql.SQL(
        "SELECT coalesce(bool_and(high < next_low), true) FROM (SELECT high,"
        " lead(low) OVER (ORDER BY low) AS next_low FROM ({}) r) p"
        " WHERE next_low IS NOT NULL").format(ranges)).fetchone()
    if apart and apart[0]:
        return
    conn.execute("SET LOCAL enable_hashagg = off")
    conn.execute("SET LOCAL enable_sort = off")
    repeated = conn.execute(sql.SQL(
        "SELECT EXISTS (SELECT customer_id FROM {} GROUP BY customer_id HAVING count(*) > 1)"
    ).format(table)).fetchone()
    conn.execute("RESET enable_hashagg")
    conn.execute("RESET enable_sort")
    if repeated and repeated[0]:
        _explain_duplicates(conn, table)


def _describe_copy_error(exc: psycopg.Error) -> str:
    """One line from a COPY failure: PostgreSQL's reason and where (line, column)."""
    message = ((exc.diag.message_primary or str(exc)).strip().splitlines() or [""])[0]
    context = (exc.diag.context or "").strip().splitlines()
    where = context[0].split(", ", 1)[-1] if context else ""  # "COPY table, line 3, ..."
    if "extra data after last expected column" in message or "missing data for column" in message:
        message += " (a row has a different number of fields than the header)"
    return f"{where}: {message}" if where else message


def land_as_text(conn: psycopg.Connection, path: Path, table: sql.Composable,
                 landing: list[str], delimiter: str, encoding: str,
                 progress: Update | None = None) -> None:
    """A file that did not type as it streamed: land it as text, check it column by column
    (each problem named with an example), then type it into the batch's table."""
    create_text_landing(conn, landing)
    copy_file(conn, path, sql.Identifier("landing"), landing, delimiter, encoding, progress)
    type_landing(conn, table)


def create_text_landing(conn: psycopg.Connection, landing: list[str]) -> None:
    """A temporary all-text table with the incoming columns, dropped at commit."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} text").format(sql.Identifier(name)) for name in landing
    )
    conn.execute(sql.SQL("CREATE TEMP TABLE landing ({}) ON COMMIT DROP").format(columns))


def type_landing(conn: psycopg.Connection, table: sql.Composable) -> None:
    """The text landing's rows, checked, into the batch's typed table."""
    _check_ids(conn)
    casts = sql.SQL(", ").join(
        sql.SQL("NULLIF(btrim({c}), '')::double precision").format(c=sql.Identifier(n))
        for n in FEATURES
    )
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    try:  # the cast either works or fails; the slow diagnosis runs only when it fails
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {table} (customer_id, {features})"
                                 " SELECT customer_id, {casts} FROM landing").format(
                table=table, features=features, casts=casts))
    except psycopg.errors.InvalidTextRepresentation:
        _check_numbers(conn)
        raise
    except psycopg.errors.NumericValueOutOfRange:
        _check_ranges(conn)


def _check_ids(conn: psycopg.Connection, table: sql.Composable = sql.SQL("landing")) -> None:
    """customer_id present and short enough to be a key, or the batch is refused. (One scan
    after the COPY, on parallel workers: as CHECK constraints the same rules slowed the COPY
    itself, which runs on one core, by more than the scan takes.)"""
    row = conn.execute(sql.SQL(
        "SELECT count(*) FILTER (WHERE customer_id IS NULL OR btrim(customer_id) = ''),"
        " count(*) FILTER (WHERE length(customer_id) > %s),"
        " min(left(customer_id, 20)) FILTER (WHERE length(customer_id) > %s) FROM {}").format(
        table), (MAX_ID_LENGTH, MAX_ID_LENGTH)).fetchone()
    assert row is not None
    if row[0]:
        raise IngestError(f"customer_id is empty on {row[0]} row(s); every row needs an id")
    if row[1]:
        raise IngestError(f"customer_id longer than {MAX_ID_LENGTH} characters on {row[1]} "
                          f"row(s), e.g. {row[2]!r}...")


def _explain_duplicates(conn: psycopg.Connection, table: sql.Composable) -> None:
    """After a key violation: name the duplicated ids (customer_id unique within a batch)."""
    dupes = conn.execute(sql.SQL(
        "SELECT customer_id, count(*) FROM {} GROUP BY customer_id HAVING count(*) > 1"
        " ORDER BY count(*) DESC, customer_id LIMIT 3").format(table)).fetchall()
    if dupes:
        total = conn.execute(sql.SQL(
            "SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY customer_id"
            " HAVING count(*) > 1) d").format(table)).fetchone()
        examples = ", ".join(f"{cid!r} ({n}x)" for cid, n in dupes)
        raise IngestError(
            f"customer_id is not unique within the batch: {total[0] if total else '?'} "
            f"duplicated id(s), e.g. {examples}"
        )


def _check_numbers(conn: psycopg.Connection) -> None:
    """Every feature value parses as a number (or is empty), naming each offending column."""
    checks = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE NULLIF(btrim({c}), '') !~* {re}), "
                "min({c}) FILTER (WHERE NULLIF(btrim({c}), '') !~* {re})").format(
            c=sql.Identifier(name), re=sql.Literal(NUMBER_RE)
        )
        for name in FEATURES
    )
    row = conn.execute(sql.SQL("SELECT {} FROM landing").format(checks)).fetchone()
    assert row is not None
    problems = [
        f"{name}: {row[2 * i]} value(s) are not numbers, e.g. {row[2 * i + 1]!r}"
        for i, name in enumerate(FEATURES)
        if row[2 * i]
    ]
    if problems:
        raise IngestError("non-numeric values in numeric column(s): " + "; ".join(problems))


def _check_ranges(conn: psycopg.Connection) -> None:
    """Every number fits PostgreSQL's double precision, naming each offending column."""
    def outside(name: str) -> sql.Composable:
        v = sql.SQL("NULLIF(btrim({}), '')::numeric").format(sql.Identifier(name))
        return sql.SQL("({v} NOT IN ('NaN', 'Infinity', '-Infinity') AND (abs({v}) > {hi}"
                       " OR ({v} <> 0 AND abs({v}) < {lo})))").format(
            v=v, hi=sql.Literal(FLOAT8_MAX), lo=sql.Literal(FLOAT8_MIN))
    checks = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE {o}), min(btrim({c})) FILTER (WHERE {o})").format(
            o=outside(name), c=sql.Identifier(name)) for name in FEATURES)
    row = conn.execute(sql.SQL("SELECT {} FROM landing").format(checks)).fetchone()
    assert row is not None
    problems = [f"{name}: {row[2 * i]} value(s) too large or too small for a number, e.g. "
                f"{row[2 * i + 1]!r}" for i, name in enumerate(FEATURES) if row[2 * i]]
    raise IngestError("numbers out of range in column(s): " + "; ".join(problems or
                      ["a value does not fit a double precision number"]))


def attach_landing(conn: psycopg.Connection, batch_id: str, source: str, rows_in: int,
                   warnings: list[str], extra: list[str]) -> IngestResult:
    """The landed batch, its ids checked and keyed: erased customers out, ignored columns
    dropped, recorded in ingest_batches and attached to customers_incoming, all in the
    caller's transaction."""
    if rows_in == 0:
        raise IngestError(f"{source}: no data rows (header only); nothing loaded")
    table = landing_table(batch_id)
    erased = drop_erased(conn, landing_name(batch_id))  # an erased customer stays erased
    if erased:
        warnings = [*warnings, f"skipped {erased:,} row(s) of erased customers (`segmentation "
                    "customers readmit ID` lets one back in)"]
    for name in extra:  # a partition holds its parent's columns only
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(name)))
    conn.execute(
        "INSERT INTO ingest_batches (batch_id, source, rows_in, rows_inserted, rows_updated,"
        " warnings, rows_erased) VALUES (%s, %s, %s, 0, 0, %s::jsonb, %s)",
        (batch_id, source, rows_in, Json(warnings), erased),
    )
    # the CHECK on batch_id spares ATTACH its scan of the rows
    conn.execute(sql.SQL("ALTER TABLE customers_incoming ATTACH PARTITION {} FOR VALUES IN ({})")
                 .format(table, sql.Literal(batch_id)))
    # fresh statistics: without them the planner expects a few thousand rows per batch and
    # validates a million-row batch without parallel workers (2x slower, measured)
    conn.execute("ANALYZE customers_incoming")
    return IngestResult(batch_id, source, rows_in, warnings, erased)


def ingest_csv(url: str, path: Path, *, delimiter: str = ",", encoding: str = "utf-8",
               batch_id: str | None = None, progress: Update | None = None,
               streams: int = 1, parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> IngestResult:
    """Load a CSV (original upper-case or snake_case headers) as one batch, all or nothing;
    a big file in `streams` slices at once."""
    header, encoding = read_csv_header(path, delimiter, encoding)
    landing, warnings = map_columns(header)
    batch_id = batch_id or new_batch_id()
    extra = [n for n in landing if n not in COLUMNS]
    refused = False  # a slice was refused: what is wrong is found as text, at once
    if streams > 1 and encoding in PG_ENCODINGS and path.stat().st_size >= parallel_min_bytes:
        cuts = split_points(path, streams)
        if len(cuts) > 2:
            landed = land_in_parallel(url, path, batch_id, landing, delimiter, encoding, cuts,
                                      progress)
            if landed is not None:
                return attach_parallel(url, batch_id, str(path), landing, len(cuts) - 1,
                                       *landed, warnings, extra)
            refused = True
    with connection(url) as conn:
        require_schema(conn)
        drop_orphan_landings(conn)
        typed = None if refused else copy_typed(conn, path, batch_id, landing, delimiter,
                                                encoding, progress)
        if typed is None:
            table = create_landing_table(conn, batch_id, landing)
            land_as_text(conn, path, table, landing, delimiter, encoding, progress)
            rows_in = count_rows(conn, sql.Identifier("landing"))
        else:
            table, rows_in = typed
        key_batch(conn, table)
        return attach_landing(conn, batch_id, str(path), rows_in, warnings, extra)


def key_batch(conn: psycopg.Connection, table: sql.Composable) -> None:
    """Ids present, short enough and unique within the batch: its key, built once."""
    _check_ids(conn, table)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (customer_id)").format(table))
    except psycopg.errors.UniqueViolation:
        _explain_duplicates(conn, table)
        raise


def copy_typed(conn: psycopg.Connection, path: Path, batch_id: str, landing: list[str],
               delimiter: str, encoding: str, progress: Update | None
               ) -> tuple[sql.Composable, int] | None:
    """The file into the batch's table as one stream, the table created where it is filled
    (COPY FREEZE writes its rows frozen, once); None if a value did not type (nothing
    kept: the caller lands the file as text to say what is wrong)."""
    try:
        with conn.transaction():
            table = create_landing_table(conn, batch_id, landing)
            return table, copy_file(conn, path, table, landing, delimiter, encoding, progress,
                                    freeze=True)
    except RETYPE:
        return None


def land_in_parallel(url: str, path: Path, batch_id: str, landing: list[str], delimiter: str,
                     encoding: str, cuts: list[int], progress: Update | None
                     ) -> tuple[psycopg.Connection, int] | None:
    """The file's slices, each into its own table at once (copy_in_parallel). An owner
    connection holds the batch's lock for as long as the ingest lives: slices whose lock is
    free are orphans of a crashed ingest, which the next ingest drops. Returns the owner
    connection (the caller joins and attaches the slices on it, then closes it) and the
    rows; or None when a slice was refused (a value that does not type, an empty or
    duplicated id): its slices dropped, the caller lands the file as one stream, whose
    messages name what is wrong across the whole file."""
    owner = connect(url, autocommit=True)
    try:
        require_schema(owner)
        owner.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                      (LANDING_LOCK, landing_name(batch_id)))
        drop_orphan_landings(owner)
        try:
            rows = copy_in_parallel(url, path, batch_id, landing, delimiter, encoding, cuts,
                                    progress)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError, IngestError):
            drop_quietly(owner, batch_id)
            return None
        except psycopg.Error as exc:
            raise IngestError(f"{path}: {_describe_copy_error(exc)}") from None
        except OSError as exc:
            raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        return owner, rows
    except BaseException:
        drop_quietly(owner, batch_id)
        raise


def attach_parallel(url: str, batch_id: str, source: str, landing: list[str], slices: int,
                    owner: psycopg.Connection, rows_in: int, warnings: list[str],
                    extra: list[str]) -> IngestResult:
    """join_slices then attach_landing on the owner connection, in one transaction; on any
    failure the slices are dropped."""
    try:
        with owner.transaction():
            join_slices(owner, batch_id, landing, slices)
            return attach_landing(owner, batch_id, source, rows_in, warnings, extra)
    except BaseException:
        drop_quietly(owner, batch_id)
        raise
    finally:
        owner.close()


def drop_quietly(owner: psycopg.Connection, batch_id: str) -> None:
    """Drop the batch's unattached slices and close the owner; if the connection is gone,
    they are orphans the next ingest drops."""
    try:
        if not owner.closed:
            for name in unattached_landings(owner, landing_name(batch_id)):
                owner.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error:
        pass
    finally:
        owner.close()


def unattached_landings(conn: psycopg.Connection, prefix: str = "landing_") -> list[str]:
    """Batch tables and slices attached to nothing."""
    return [name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()"
        " AND c.relname LIKE %s AND NOT c.relispartition ORDER BY 1",
        (prefix.replace("_", "\\_") + "%",)).fetchall()]


def drop_orphan_landings(conn: psycopg.Connection) -> list[str]:
    """Drop batch tables and slices attached to nothing whose ingest is gone (the lock on
    their batch's name is free)."""
    dropped = []
    for name in unattached_landings(conn):
        base = name[:len("landing_") + 16]  # a slice's batch
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                           (LANDING_LOCK, base)).fetchone()
        if row and row[0]:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LANDING_LOCK, base))
            dropped.append(name)
    return dropped


def count_rows(conn: psycopg.Connection, table: sql.Composable) -> int:
    """How many rows a table holds."""
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    return int(row[0]) if row else 0


def ingest_table(url: str, table: str, *, batch_id: str | None = None) -> IngestResult:
    """Load an existing table or view (schema.name) as one batch, all or nothing."""
    schema, _, name = table.rpartition(".")
    batch_id = batch_id or new_batch_id()
    with connection(url) as conn:
        require_schema(conn)
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = COALESCE(NULLIF(%s, ''), current_schema()) AND table_name = %s"
            " ORDER BY ordinal_position",
            (schema, name),
        ).fetchall()
        if not rows:
            raise IngestError(f"table {table!r} does not exist or has no columns")
        header = [r[0] for r in rows]
        landing, warnings = map_columns(header)
        source = sql.Identifier(*(p for p in (schema, name) if p))
        selected = sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(h), sql.Identifier(n))
            for h, n in zip(header, landing, strict=True) if n in COLUMNS
        )
        conn.execute(sql.SQL("CREATE TEMP TABLE landing ON COMMIT DROP AS SELECT {} FROM {}")
                     .format(selected, source))
        target = create_landing_table(conn, batch_id, [n for n in landing if n in COLUMNS])
        rows_in = count_rows(conn, sql.Identifier("landing"))
        if rows_in:
            type_landing(conn, target)
            key_batch(conn, target)
        return attach_landing(conn, batch_id, f"table:{table}", rows_in, warnings, [])
