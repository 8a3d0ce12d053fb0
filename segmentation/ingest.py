"""Load an incoming customer table (CSV file or existing table) into `customers_incoming` as
a batch, all or nothing: the file's header mapped to the 18 columns, the rows landed in
the batch's own table (`landing`) and checked (`structure`), then recorded and attached.
A rejected file, or a crash, leaves nothing. The row rules (ranges, nulls, drift) belong
to validation; `accepting.accept_batch` then moves the rows that passed into `customers`
and drops the batch's table.
"""

from __future__ import annotations

import uuid
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
    read_csv_header,
    split_points,
)
from segmentation.db import connection, require_schema
from segmentation.errors import IngestError
from segmentation.features import COLUMNS, normalize_name
from segmentation.landing import (
    PARALLEL_MIN_BYTES,
    copy_typed,
    count_rows,
    create_landing_table,
    drop_orphan_landings,
    drop_quietly,
    join_slices,
    land_as_text,
    land_in_parallel,
    landing_table,
)
from segmentation.progress import Update
from segmentation.structure import key_batch, text_landing, type_landing


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
            land_as_text(conn, path, batch_id, table, landing, delimiter, encoding, progress)
            rows_in = count_rows(conn, table)
        else:
            table, rows_in = typed
        key_batch(conn, table)
        return attach_landing(conn, batch_id, str(path), rows_in, warnings, extra)


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
        text = text_landing(batch_id)  # as a file's text, in this transaction
        conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {} FROM {}")
                     .format(text, selected, source))
        target = create_landing_table(conn, batch_id, [n for n in landing if n in COLUMNS])
        rows_in = count_rows(conn, text)
        if rows_in:
            type_landing(conn, target, text)
            key_batch(conn, target)
        conn.execute(sql.SQL("DROP TABLE {}").format(text))
        return attach_landing(conn, batch_id, f"table:{table}", rows_in, warnings, [])
