"""A batch's own tables: the file copied into typed columns, as one stream or in slices on
several connections at once, and the orphans of crashed ingests cleared.

Each batch lands in a table of its own (`landing_<hash>`), attached to `customers_incoming`
as its partition once complete, and leaves by a DROP. A file streams with COPY straight
into the typed columns of a table created in the same transaction (FREEZE: its pages are
written once); a big file is cut at record boundaries into slices, each copied frozen into
a table of its own and keyed there, on its own connection and server core, and the
batch's partition is partitioned by slice. A file that does not type as it streams is
landed again as text (`structure`), where every offending column is named.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

from segmentation.accepting import landing_name
from segmentation.csvfile import PG_ENCODINGS, file_blocks, file_slice
from segmentation.db import connect, require_schema, unattached_tables
from segmentation.errors import IngestError
from segmentation.features import FEATURES
from segmentation.progress import Update
from segmentation.structure import (
    check_ids,
    create_text_landing,
    explain_duplicates,
    text_landing,
    type_landing,
)

# A file this big streams on several connections at once (PostgreSQL parses each COPY on
# one core); smaller ones are not worth the extra connections.
PARALLEL_MIN_BYTES = 64 << 20
LANDING_LOCK = 7_421_006  # pg_advisory_lock(LANDING_LOCK, hashtext(table)): its ingest lives
# Failures of the typed COPY that the text landing explains column by column; any other
# failure (the file's structure, its encoding) says the same either way and is final.
RETYPE = (psycopg.errors.InvalidTextRepresentation, psycopg.errors.NumericValueOutOfRange,
          psycopg.errors.NotNullViolation)


def landing_table(batch_id: str) -> sql.Composable:
    """landing_name as SQL: a fixed prefix and hex digits need no quotes, and unquoted it
    reads as itself in pg_stat_activity (`COPY landing_...`)."""
    return sql.SQL(landing_name(batch_id))


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
        raise IngestError(f"{path}: {describe_copy_error(exc)}") from None
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
                check_ids(conn, table)
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
        explain_duplicates(conn, table)


def describe_copy_error(exc: psycopg.Error) -> str:
    """One line from a COPY failure: PostgreSQL's reason and where (line, column)."""
    message = ((exc.diag.message_primary or str(exc)).strip().splitlines() or [""])[0]
    context = (exc.diag.context or "").strip().splitlines()
    where = context[0].split(", ", 1)[-1] if context else ""  # "COPY table, line 3, ..."
    if "extra data after last expected column" in message or "missing data for column" in message:
        message += " (a row has a different number of fields than the header)"
    return f"{where}: {message}" if where else message


def land_as_text(conn: psycopg.Connection, path: Path, batch_id: str, table: sql.Composable,
                 landing: list[str], delimiter: str, encoding: str,
                 progress: Update | None = None) -> None:
    """A file that did not type as it streamed: land it as text, check it column by column
    (each problem named with an example), then type it into the batch's table."""
    text = text_landing(batch_id)
    create_text_landing(conn, text, landing)
    copy_file(conn, path, text, landing, delimiter, encoding, progress)
    type_landing(conn, table, text)
    conn.execute(sql.SQL("DROP TABLE {}").format(text))


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
            raise IngestError(f"{path}: {describe_copy_error(exc)}") from None
        except OSError as exc:
            raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        return owner, rows
    except BaseException:
        drop_quietly(owner, batch_id)
        raise


def drop_quietly(owner: psycopg.Connection, batch_id: str) -> None:
    """Drop the batch's unattached slices and close the owner; if the connection is gone,
    they are orphans the next ingest drops."""
    try:
        if not owner.closed:
            for name in unattached_tables(owner, landing_name(batch_id)):
                owner.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error:
        pass
    finally:
        owner.close()


def drop_orphan_landings(conn: psycopg.Connection) -> list[str]:
    """Drop batch tables and slices attached to nothing whose ingest is gone (the lock on
    their batch's name is free)."""
    dropped = []
    for name in unattached_tables(conn, "landing_"):
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
