"""Load an incoming customer table (CSV file or existing table) into `customers` as a batch.

A file is streamed with COPY into a temporary all-text landing table, so nothing is lost
to parsing: the structural contract (a CSV, the 18 columns, numbers where numbers belong,
one row per customer id) is checked in SQL with messages that name the column and show an
example, and only then are the typed rows written to `customers_incoming` in the same
transaction.  Any failure rolls everything back: a rejected file writes nothing.  The row
rules (ranges, nulls, drift) belong to validation; `accepting.accept_batch` then moves the
rows that passed into `customers`.
"""

from __future__ import annotations

import codecs
import csv
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.accepting import drop_erased
from segmentation.db import connection, require_schema
from segmentation.errors import IngestError
from segmentation.features import COLUMNS, FEATURES, normalize_name
from segmentation.progress import Update

BLOCK = 1 << 20
SNIFF_BYTES = 1 << 16
MAX_ID_LENGTH = 256  # ids are keys: btree entries must stay small
# What PostgreSQL's double precision accepts (NaN and infinities are left to validation).
NUMBER_RE = r"^\s*[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
# Python codec name -> PostgreSQL's: COPY decodes these itself; any other codec Python knows
# is decoded here and streamed to COPY as UTF-8.
PG_ENCODINGS = {"utf-8": "UTF8", "utf-8-sig": "UTF8", "iso8859-1": "LATIN1",
                "cp1252": "WIN1252", "iso8859-15": "LATIN9"}
# A byte-order mark names the encoding whatever --encoding says (longest first: UTF-32 LE
# starts like UTF-16 LE).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))
# The magnitudes PostgreSQL's double precision holds (finite, non-zero): outside, the cast fails.
FLOAT8_MAX = "1.7976931348623157e308"
FLOAT8_MIN = "2.2250738585072014e-308"




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


def check_csv_options(delimiter: str, encoding: str) -> str:
    """The codec's canonical name, or one line saying what is wrong with the options."""
    if len(delimiter) != 1 or delimiter in "\r\n\"":
        raise IngestError(f"--delimiter must be a single character other than a quote or a "
                          f"line break, got {delimiter!r}")
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise IngestError(f"unknown encoding {encoding!r}: use a name Python's codecs know "
                          "(utf-8, utf-16, latin1, cp1252, ...)") from None


def detect_encoding(head: bytes, encoding: str) -> str:
    """The file's codec: the one its byte-order mark names, else the one given."""
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return check_csv_options(",", encoding)


def read_head(path: Path) -> bytes:
    """The first bytes of a file, or one line saying why it cannot be read."""
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a CSV file")
    try:
        with path.open("rb") as fh:
            return fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_csv_header(path: Path, delimiter: str = ",", encoding: str = "utf-8"
                    ) -> tuple[list[str], str]:
    """Check that `path` is a readable CSV; return its header (as written) and codec."""
    check_csv_options(delimiter, encoding)
    head = read_head(path)
    if not head.strip():
        raise IngestError(f"{path}: the file is empty (no header, no rows)")
    encoding = detect_encoding(head, encoding)
    if b"\x00" in head and not encoding.startswith(("utf-16", "utf-32")):
        raise IngestError(f"{path}: not a CSV file (binary content: NUL bytes); if it is "
                          "UTF-16 without a byte-order mark, pass --encoding utf-16")
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        text = decoder.decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{path}: not valid {encoding} (byte 0x{head[exc.start]:02x} at offset {exc.start}); "
            "pass --encoding latin1 (or cp1252) if that is how the file was saved"
        ) from None
    text = text.lstrip("\ufeff")
    first_line = text.splitlines()[0] if text.splitlines() else ""
    header = next(csv.reader([first_line], delimiter=delimiter), [])
    if len(header) <= 1:
        for other, label in DELIMITERS.items():
            if other != delimiter and other in first_line:
                raise IngestError(
                    f"{path}: the header has one column but contains '{other}': the file looks "
                    f"{label}-separated; pass --delimiter {other!r}"
                )
        raise IngestError(f"{path}: not a CSV file with the customer columns (header: "
                          f"{first_line[:80]!r})")
    return header, encoding


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


def _create_landing(conn: psycopg.Connection, landing: list[str]) -> None:
    """A temporary all-text table with the incoming columns, dropped at commit."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} text").format(sql.Identifier(name)) for name in landing
    )
    conn.execute(sql.SQL("CREATE TEMP TABLE landing ({}) ON COMMIT DROP").format(columns))


def _file_blocks(path: Path, encoding: str) -> Iterator[bytes]:
    """The file in 1 MiB blocks: as stored when PostgreSQL decodes the encoding itself,
    else decoded here and re-encoded as UTF-8."""
    with path.open("rb") as fh:
        if encoding in PG_ENCODINGS:
            while block := fh.read(BLOCK):
                yield block
            return
        decoder = codecs.getincrementaldecoder(encoding)()
        offset = 0
        while True:
            block = fh.read(BLOCK)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise IngestError(f"{path}: not valid {encoding} (at byte offset "
                                  f"{offset + exc.start})") from None
            offset += len(block)
            if text:  # the UTF-16/32 codecs consume the byte-order mark themselves
                yield text.encode("utf-8")
            if not block:
                return


def _copy_file(conn: psycopg.Connection, path: Path, landing: list[str],
               delimiter: str, encoding: str, progress: Update | None = None) -> None:
    """Stream the file into the landing table with COPY (1 MiB blocks); progress(rows,
    estimated total) after each block."""
    statement = sql.SQL(
        "COPY landing ({}) FROM STDIN (FORMAT csv, HEADER true, DELIMITER {}, ENCODING {})"
    ).format(
        sql.SQL(", ").join(sql.Identifier(n) for n in landing),
        sql.Literal(delimiter),
        sql.Literal(PG_ENCODINGS.get(encoding, "UTF8")),
    )
    try:
        size, sent, lines = path.stat().st_size, 0, 0
        with conn.cursor().copy(statement) as copy:
            for block in _file_blocks(path, encoding):
                copy.write(block)
                if progress is not None:  # rows so far, and the total they extrapolate to
                    sent, lines = sent + len(block), lines + block.count(b"\n")
                    progress(lines, max(lines, int(lines * size / sent)))
    except psycopg.Error as exc:
        raise IngestError(f"{path}: {_describe_copy_error(exc)}") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _describe_copy_error(exc: psycopg.Error) -> str:
    """One line from a COPY failure: PostgreSQL's reason and where (line, column)."""
    message = (exc.diag.message_primary or str(exc)).strip()
    context = (exc.diag.context or "").strip().splitlines()
    where = context[0].replace("COPY landing, ", "") if context else ""
    if "extra data after last expected column" in message or "missing data for column" in message:
        message += " (a row has a different number of fields than the header)"
    return f"{where}: {message}" if where else message


def _check_ids(conn: psycopg.Connection) -> None:
    """customer_id present and short enough to be a key, or the batch is refused."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE customer_id IS NULL OR btrim(customer_id) = ''),"
        " count(*) FILTER (WHERE length(customer_id) > %s),"
        " min(left(customer_id, 20)) FILTER (WHERE length(customer_id) > %s) FROM landing",
        (MAX_ID_LENGTH, MAX_ID_LENGTH)).fetchone()
    assert row is not None
    if row[0]:
        raise IngestError(f"customer_id is empty on {row[0]} row(s); every row needs an id")
    if row[1]:
        raise IngestError(f"customer_id longer than {MAX_ID_LENGTH} characters on {row[1]} "
                          f"row(s), e.g. {row[2]!r}...")


def _explain_duplicates(conn: psycopg.Connection) -> None:
    """After a key violation: name the duplicated ids (customer_id unique within a batch)."""
    dupes = conn.execute(
        "SELECT customer_id, count(*) FROM landing GROUP BY customer_id HAVING count(*) > 1"
        " ORDER BY count(*) DESC, customer_id LIMIT 3"
    ).fetchall()
    if dupes:
        total = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM landing GROUP BY customer_id"
            " HAVING count(*) > 1) d"
        ).fetchone()
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


def _land(conn: psycopg.Connection, batch_id: str) -> None:
    """Typed rows of the batch into customers_incoming."""
    casts = sql.SQL(", ").join(
        sql.SQL("NULLIF(btrim({c}), '')::double precision").format(c=sql.Identifier(n))
        for n in FEATURES
    )
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    conn.execute(sql.SQL(
        "INSERT INTO customers_incoming (customer_id, {features}, batch_id, loaded_at)"
        " SELECT customer_id, {casts}, %s, now() FROM landing").format(
            features=features, casts=casts), (batch_id,))


def _load_landing(conn: psycopg.Connection, source: str, batch_id: str,
                  warnings: list[str]) -> IngestResult:
    """Checks and upsert shared by file and table ingest (inside the caller's transaction)."""
    count = conn.execute("SELECT count(*) FROM landing").fetchone()
    rows_in = int(count[0]) if count else 0
    if rows_in == 0:
        raise IngestError(f"{source}: no data rows (header only); nothing loaded")
    _check_ids(conn)
    erased = drop_erased(conn, "landing")  # an erased customer stays erased
    if erased:
        warnings = [*warnings, f"skipped {erased:,} row(s) of erased customers (`segmentation "
                    "customers readmit ID` lets one back in)"]
    conn.execute(
        "INSERT INTO ingest_batches (batch_id, source, rows_in, rows_inserted, rows_updated,"
        " warnings, rows_erased) VALUES (%s, %s, %s, 0, 0, %s::jsonb, %s)",
        (batch_id, source, rows_in, Json(warnings), erased),
    )
    try:  # the fast path casts directly; the slow diagnosis runs only when a cast fails
        with conn.transaction():
            _land(conn, batch_id)
    except psycopg.errors.InvalidTextRepresentation:
        _check_numbers(conn)
        raise
    except psycopg.errors.NumericValueOutOfRange:
        _check_ranges(conn)
    except psycopg.errors.UniqueViolation:
        _explain_duplicates(conn)
        raise
    # fresh statistics: without them the planner expects a few thousand rows per batch and
    # validates a million-row batch without parallel workers (2x slower, measured)
    conn.execute("ANALYZE customers_incoming")
    return IngestResult(batch_id, source, rows_in, warnings, erased)


def ingest_csv(url: str, path: Path, *, delimiter: str = ",", encoding: str = "utf-8",
               batch_id: str | None = None, progress: Update | None = None) -> IngestResult:
    """Load a CSV (original upper-case or snake_case headers) as one batch, all or nothing."""
    header, encoding = read_csv_header(path, delimiter, encoding)
    landing, warnings = map_columns(header)
    batch_id = batch_id or new_batch_id()
    with connection(url) as conn:
        require_schema(conn)
        _create_landing(conn, landing)
        _copy_file(conn, path, landing, delimiter, encoding, progress)
        return _load_landing(conn, str(path), batch_id, warnings)


def ingest_table(url: str, table: str, *, batch_id: str | None = None) -> IngestResult:
    """Load an existing table or view (schema.name) as one batch, all or nothing."""
    schema, _, name = table.rpartition(".")
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
        return _load_landing(conn, f"table:{table}", batch_id or new_batch_id(), warnings)
