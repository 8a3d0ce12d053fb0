"""The structure of a landed batch, checked with messages that name the column and show an
example: ids present, short enough and unique; every feature a number that fits double
precision. A file that did not type as it streamed is landed as text (an unlogged table of
the batch's transaction, never committed: parallel workers can scan it, where a temporary
table is its session's alone) and checked here column by column before it is typed; a
typed batch has its ids checked and keyed here too."""

from __future__ import annotations

import psycopg
from psycopg import sql

from segmentation.accepting import landing_name
from segmentation.errors import IngestError
from segmentation.features import FEATURES

MAX_ID_LENGTH = 256  # ids are keys: btree entries must stay small
# What PostgreSQL's double precision accepts (NaN and infinities are left to validation).
NUMBER_RE = r"^\s*[-+]?((\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)\s*$"
# The magnitudes PostgreSQL's double precision holds (finite, non-zero): outside, the cast fails.
FLOAT8_MAX = "1.7976931348623157e308"
FLOAT8_MIN = "2.2250738585072014e-308"


def text_landing(batch_id: str) -> sql.Identifier:
    """The batch's all-text table: its name alone, no other batch's."""
    return sql.Identifier(landing_name(batch_id) + "_text")


def create_text_landing(conn: psycopg.Connection, text: sql.Composable,
                        landing: list[str]) -> None:
    """An all-text table with the incoming columns, in the caller's transaction (which
    drops it, or rolls it back with everything else)."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} text").format(sql.Identifier(name)) for name in landing
    )
    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(text, columns))


def type_landing(conn: psycopg.Connection, table: sql.Composable,
                 text: sql.Composable) -> None:
    """The text landing's rows, checked, into the batch's typed table."""
    check_ids(conn, text)
    casts = sql.SQL(", ").join(
        sql.SQL("NULLIF(btrim({c}), '')::double precision").format(c=sql.Identifier(n))
        for n in FEATURES
    )
    features = sql.SQL(", ").join(sql.Identifier(n) for n in FEATURES)
    try:  # the cast either works or fails; the slow diagnosis runs only when it fails
        with conn.transaction():
            conn.execute(sql.SQL("INSERT INTO {table} (customer_id, {features})"
                                 " SELECT customer_id, {casts} FROM {text}").format(
                table=table, features=features, casts=casts, text=text))
    except psycopg.errors.InvalidTextRepresentation:
        check_numbers(conn, text)
        raise
    except psycopg.errors.NumericValueOutOfRange:
        check_ranges(conn, text)


def key_batch(conn: psycopg.Connection, table: sql.Composable) -> None:
    """Ids present, short enough and unique within the batch: its key, built once."""
    check_ids(conn, table)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (customer_id)").format(table))
    except psycopg.errors.UniqueViolation:
        explain_duplicates(conn, table)
        raise


def check_ids(conn: psycopg.Connection, table: sql.Composable) -> None:
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


def explain_duplicates(conn: psycopg.Connection, table: sql.Composable) -> None:
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


def check_numbers(conn: psycopg.Connection, text: sql.Composable) -> None:
    """Every feature value parses as a number (or is empty), naming each offending column."""
    checks = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE NULLIF(btrim({c}), '') !~* {re}), "
                "min({c}) FILTER (WHERE NULLIF(btrim({c}), '') !~* {re})").format(
            c=sql.Identifier(name), re=sql.Literal(NUMBER_RE)
        )
        for name in FEATURES
    )
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(checks, text)).fetchone()
    assert row is not None
    problems = [
        f"{name}: {row[2 * i]} value(s) are not numbers, e.g. {row[2 * i + 1]!r}"
        for i, name in enumerate(FEATURES)
        if row[2 * i]
    ]
    if problems:
        raise IngestError("non-numeric values in numeric column(s): " + "; ".join(problems))


def check_ranges(conn: psycopg.Connection, text: sql.Composable) -> None:
    """Every number fits PostgreSQL's double precision, naming each offending column."""
    def outside(name: str) -> sql.Composable:
        v = sql.SQL("NULLIF(btrim({}), '')::numeric").format(sql.Identifier(name))
        return sql.SQL("({v} NOT IN ('NaN', 'Infinity', '-Infinity') AND (abs({v}) > {hi}"
                       " OR ({v} <> 0 AND abs({v}) < {lo})))").format(
            v=v, hi=sql.Literal(FLOAT8_MAX), lo=sql.Literal(FLOAT8_MIN))
    checks = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE {o}), min(btrim({c})) FILTER (WHERE {o})").format(
            o=outside(name), c=sql.Identifier(name)) for name in FEATURES)
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(checks, text)).fetchone()
    assert row is not None
    problems = [f"{name}: {row[2 * i]} value(s) too large or too small for a number, e.g. "
                f"{row[2 * i + 1]!r}" for i, name in enumerate(FEATURES) if row[2 * i]]
    raise IngestError("numbers out of range in column(s): " + "; ".join(problems or
                      ["a value does not fit a double precision number"]))
