"""Ingest: COPY into a landing table, specific messages, all or nothing."""

from pathlib import Path

import pandas as pd
import pytest

from segmentation.errors import IngestError
from segmentation.features import COLUMNS, ORIGINAL_HEADERS
from segmentation.ingest import ingest_csv, ingest_table
from tests.helpers import load_batch, query

ROW = "C1,40.9,0.81,95.4,0,95.4,0,0.16,0,0.08,0,0,2,1000,201.8,139.5,0,12"


def write(tmp_path: Path, text: str, name: str = "in.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def csv_text(rows: list[str], header: tuple[str, ...] = ORIGINAL_HEADERS) -> str:
    return ",".join(header) + "\n" + "\n".join(rows) + "\n"


def nothing_written(url: str) -> bool:
    return query(url, "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM"
                      " customers_incoming) + (SELECT count(*) FROM ingest_batches)") == [(0,)]


def test_synthetic_file_lands_every_row_for_validation(db: str, synthetic_csv: Path) -> None:
    result = ingest_csv(db, synthetic_csv)
    assert result.rows_in == 5_000
    assert query(db, "SELECT count(*), count(DISTINCT batch_id) FROM customers_incoming") == \
        [(5_000, 1)]
    assert query(db, "SELECT rows_in, status FROM ingest_batches") == [(5_000, "loaded")]
    assert query(db, "SELECT count(*) FROM customers") == [(0,)], "not before validation"
    # analysed: the planner knows the batch's size (validation scans it on parallel workers)
    assert query(db, "SELECT reltuples FROM pg_class WHERE relname = 'customers_incoming'") \
        == [(5_000,)]


def test_accepting_the_same_file_twice_changes_nothing(db: str, synthetic_csv: Path) -> None:
    load_batch(db, synthetic_csv)
    first_batch = query(db, "SELECT batch_id FROM customers LIMIT 1")
    load_batch(db, synthetic_csv)
    assert query(db, "SELECT rows_inserted, rows_updated FROM ingest_batches"
                     " ORDER BY loaded_at") == [(5_000, 0), (0, 0)]
    assert query(db, "SELECT DISTINCT batch_id FROM customers") == first_batch
    assert query(db, "SELECT count(*) FROM customers_incoming") == [(0,)]


def test_changed_rows_are_updated_new_ones_inserted(db: str, tmp_path: Path) -> None:
    load_batch(db, write(tmp_path, csv_text([ROW, ROW.replace("C1,", "C2,")])))
    first = query(db, "SELECT batch_id, loaded_at FROM customers WHERE customer_id = 'C2'")
    load_batch(db, write(tmp_path, csv_text([ROW.replace(",40.9,", ",99.5,"),  # changed
                                             ROW.replace("C1,", "C2,"),  # unchanged
                                             ROW.replace("C1,", "C3,")]), "b.csv"))  # new
    assert query(db, "SELECT rows_inserted, rows_updated FROM ingest_batches"
                     " ORDER BY loaded_at") == [(2, 0), (1, 1)]
    assert query(db, "SELECT customer_id, balance FROM customers ORDER BY customer_id") == \
        [("C1", 99.5), ("C2", 40.9), ("C3", 40.9)]
    assert query(db, "SELECT batch_id, loaded_at FROM customers WHERE customer_id = 'C2'") \
        == first, "an unchanged row is not rewritten"


def test_snake_case_headers_and_nulls(db: str, tmp_path: Path) -> None:
    row = ROW.replace(",139.5,", ",,")  # empty minimum_payments -> NULL
    ingest_csv(db, write(tmp_path, csv_text([row], COLUMNS)))
    assert query(db, "SELECT minimum_payments, tenure FROM customers_incoming") == [(None, 12.0)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "absent.csv", "no such file"),
    (lambda p: p, "is a directory"),
    (lambda p: write(p, "\x00\x01\x02binary", "x.bin"), "not a CSV file"),
    (lambda p: write(p, "hello world\nthis is prose\n", "x.txt"), "not a CSV file"),
    (lambda p: write(p, "", "empty.csv"), "empty"),
])
def test_bad_paths_fail_with_one_line_and_write_nothing(db: str, tmp_path: Path, make,
                                                        message: str) -> None:
    with pytest.raises(IngestError, match=message) as info:
        ingest_csv(db, make(tmp_path))
    assert "\n" not in str(info.value)
    assert nothing_written(db)


def test_missing_column_is_named(db: str, tmp_path: Path) -> None:
    header = tuple(h for h in ORIGINAL_HEADERS if h != "TENURE")
    path = write(tmp_path, csv_text([ROW.rsplit(",", 1)[0]], header))
    with pytest.raises(IngestError, match=r"missing column\(s\): tenure"):
        ingest_csv(db, path)
    assert nothing_written(db)


def test_renamed_column_is_named_both_ways(db: str, tmp_path: Path) -> None:
    header = tuple("PURCHASE" if h == "PURCHASES" else h for h in ORIGINAL_HEADERS)
    with pytest.raises(IngestError, match=r"missing column\(s\): purchases; unexpected "
                                          r"column\(s\): PURCHASE \(renamed\?\)"):
        ingest_csv(db, write(tmp_path, csv_text([ROW], header)))
    assert nothing_written(db)


def test_extra_column_is_ignored_with_a_warning(db: str, tmp_path: Path) -> None:
    result = ingest_csv(db, write(tmp_path, csv_text([ROW + ",x"], (*ORIGINAL_HEADERS, "NOTE"))))
    assert result.rows_in == 1
    assert result.warnings == ["ignored unexpected column(s): NOTE"]


def test_text_in_numeric_column_names_column_and_value(db: str, tmp_path: Path) -> None:
    bad = ROW.replace(",95.4,0,95.4,", ",ninety,0,95.4,")
    with pytest.raises(IngestError, match=r"purchases: 1 value\(s\) are not numbers, "
                                          r"e\.g\. 'ninety'"):
        ingest_csv(db, write(tmp_path, csv_text([ROW.replace("C1,", "C2,"), bad])))
    assert nothing_written(db)


def test_nan_and_inf_strings_load_for_validation_to_judge(db: str, tmp_path: Path) -> None:
    row = ROW.replace(",40.9,", ",NaN,").replace(",1000,", ",inf,")
    ingest_csv(db, write(tmp_path, csv_text([row])))
    assert query(db, "SELECT balance::text, credit_limit::text FROM customers_incoming") == \
        [("NaN", "Infinity")]


def test_duplicate_ids_are_refused_with_examples(db: str, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"not unique within the batch: 1 duplicated id\(s\), "
                                          r"e\.g\. 'C1' \(2x\)"):
        ingest_csv(db, write(tmp_path, csv_text([ROW, ROW])))
    assert nothing_written(db)


def test_missing_id_is_refused(db: str, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="customer_id is empty on 1 row"):
        ingest_csv(db, write(tmp_path, csv_text([ROW.replace("C1,", ",")])))


def test_header_only_csv(db: str, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"no data rows \(header only\)"):
        ingest_csv(db, write(tmp_path, ",".join(ORIGINAL_HEADERS) + "\n"))
    assert nothing_written(db)


def test_semicolon_file_gets_a_hint_then_loads_with_delimiter(db: str, tmp_path: Path) -> None:
    path = write(tmp_path, csv_text([ROW]).replace(",", ";"))
    with pytest.raises(IngestError, match="semicolon-separated; pass --delimiter ';'"):
        ingest_csv(db, path)
    assert nothing_written(db)
    assert ingest_csv(db, path, delimiter=";").rows_in == 1


def test_latin1_file_gets_a_hint_then_loads_with_encoding(db: str, tmp_path: Path) -> None:
    path = write(tmp_path, csv_text([ROW.replace("C1,", "Cé1,")]), encoding="latin-1")
    with pytest.raises(IngestError, match="not valid utf-8.*--encoding latin1"):
        ingest_csv(db, path)
    assert nothing_written(db)
    ingest_csv(db, path, encoding="latin1")
    assert query(db, "SELECT customer_id FROM customers_incoming") == [("Cé1",)]


def test_ragged_row_names_the_line(db: str, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="line 3.*different number of fields"):
        ingest_csv(db, write(tmp_path, csv_text([ROW, ROW.replace("C1,", "C2,") + ",9"])))
    assert nothing_written(db)


@pytest.mark.parametrize("customer_id", [
    "'; DROP TABLE customer_segments; --", 'quote"inside', "semi;colon", "Ünïcødé-客户-🙂",
    "comma,inside", "x" * 256, "new\nline",
])
def test_hostile_ids_are_stored_verbatim(db: str, tmp_path: Path, customer_id: str) -> None:
    df = pd.read_csv(pd.io.common.StringIO(csv_text([ROW])))
    df["CUST_ID"] = [customer_id]
    path = tmp_path / "hostile.csv"
    df.to_csv(path, index=False)
    load_batch(db, path)
    assert query(db, "SELECT customer_id FROM customers") == [(customer_id,)]
    assert query(db, "SELECT to_regclass('customer_segments') IS NOT NULL") == [(True,)]


def test_overlong_id_is_refused(db: str, tmp_path: Path) -> None:
    import secrets

    with pytest.raises(IngestError, match="longer than 256 characters on 1 row"):
        long_id = secrets.token_hex(2_000)
        ingest_csv(db, write(tmp_path, csv_text([ROW.replace("C1,", long_id + ",")])))
    assert nothing_written(db)


def test_ingest_from_an_existing_table(db: str, tmp_path: Path) -> None:
    from segmentation.db import connection

    with connection(db) as conn:
        conn.execute("DROP TABLE IF EXISTS public.raw_in")
        conn.execute("CREATE TABLE public.raw_in AS SELECT 'T1'::text AS \"CUST_ID\", "
                     + ", ".join(f"1.0::float8 AS \"{h}\"" for h in ORIGINAL_HEADERS[1:]))
    result = ingest_table(db, "public.raw_in")
    assert (result.rows_in, result.source) == (1, "table:public.raw_in")
    assert query(db, "SELECT customer_id, tenure FROM customers_incoming") == [("T1", 1.0)]
    with pytest.raises(IngestError, match="does not exist"):
        ingest_table(db, "public.no_such_table")


def test_empty_table_is_refused(db: str) -> None:
    from segmentation.db import connection

    with connection(db) as conn:
        conn.execute("DROP TABLE IF EXISTS public.raw_empty")
        conn.execute("CREATE TABLE public.raw_empty AS SELECT 'T1'::text AS \"CUST_ID\", "
                     + ", ".join(f"1.0::float8 AS \"{h}\"" for h in ORIGINAL_HEADERS[1:])
                     + " WHERE false")
    with pytest.raises(IngestError, match=r"table:public.raw_empty: no data rows"):
        ingest_table(db, "public.raw_empty")
    assert nothing_written(db)


def test_unreadable_file_is_one_clear_error(db: str, synthetic_csv: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the process may not read (as root, chmod cannot show it: the open fails as it
    would for another user)."""
    path = tmp_path / "locked.csv"
    path.write_bytes(synthetic_csv.read_bytes())
    real_open = Path.open

    def denied(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(IngestError, match=r"locked.csv: cannot be read \(Permission denied\)"):
        ingest_csv(db, path)
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(0,)]


def test_utf16_without_a_bom_is_named(db: str, synthetic_csv: Path, tmp_path: Path) -> None:
    path = tmp_path / "utf16le.csv"
    path.write_bytes(synthetic_csv.read_text().encode("utf-16-le"))
    with pytest.raises(IngestError, match="pass --encoding utf-16"):
        ingest_csv(db, path)
    assert ingest_csv(db, path, encoding="utf-16-le").rows_in == 5_000


def test_first_load_leaves_customers_indexed_as_before(db: str, synthetic_csv: Path) -> None:
    """The first load builds customers' indexes after its rows are in: the same indexes,
    valid, the key enforced."""
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'customers' ORDER BY 1"
    before = query(db, indexes)
    load_batch(db, synthetic_csv)
    assert query(db, indexes) == before
    assert query(db, "SELECT count(*) FROM pg_index WHERE indrelid = 'customers'::regclass"
                     " AND NOT indisvalid") == [(0,)]
    assert query(db, "SELECT count(*) FROM customers") == [(5_000,)]
    with pytest.raises(Exception, match="customers_pkey"):
        query(db, "INSERT INTO customers SELECT * FROM customers LIMIT 1")


def test_a_batch_lands_in_its_own_table_and_leaves_with_it(db: str, synthetic_csv: Path
                                                           ) -> None:
    """A batch is a partition of customers_incoming until accepted; then its table is gone."""
    from segmentation.validation import validate_batch

    batch = ingest_csv(db, synthetic_csv).batch_id
    partitions = ("SELECT inhrelid::regclass::text FROM pg_inherits"
                  " WHERE inhparent = 'customers_incoming'::regclass")
    (table,), = query(db, partitions)
    assert query(db, f"SELECT count(*), min(batch_id), max(batch_id) FROM {table}") == \
        [(5_000, batch, batch)]
    assert validate_batch(db, batch).success
    assert query(db, partitions) == []


def parallel(db: str, path: Path, streams: int = 3, **options: object):  # type: ignore[no-untyped-def]
    """ingest_csv on `streams` connections, whatever the file's size."""
    return ingest_csv(db, path, streams=streams, parallel_min_bytes=0, **options)  # type: ignore[arg-type]


def test_a_file_in_slices_lands_what_one_stream_lands(db: str, tmp_path: Path) -> None:
    """Slices start at records, never inside a quoted field: ids with line breaks, commas
    and quotes land as one stream lands them."""
    ids = [f"C{i}" for i in range(300)]
    ids[7], ids[150], ids[151] = 'quoted "id"', "line\nbreak", "comma, and\nbreak"
    rows = [",".join([f'"{i.replace(chr(34), 2 * chr(34))}"', *ROW.split(",")[1:]]) for i in ids]
    path = write(tmp_path, csv_text(rows))
    table = "SELECT customer_id, balance, tenure FROM customers_incoming ORDER BY 1"
    ingest_csv(db, path)
    one_stream = query(db, table)
    assert len(one_stream) == 300
    from tests.conftest import truncate_all

    truncate_all(db)
    result = parallel(db, path)
    assert result.rows_in == 300
    assert query(db, table) == one_stream
    # the batch's partition is partitioned into the three slices, each copied frozen
    assert query(db, "SELECT count(*), bool_and(c.relallvisible = c.relpages) FROM pg_inherits i"
                     " JOIN pg_class p ON p.oid = i.inhparent JOIN pg_class c"
                     " ON c.oid = i.inhrelid WHERE p.relname LIKE 'landing%%'") == [(3, True)]
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%'"
                     " AND relkind = 'r' AND NOT relispartition") == [(0,)]


def test_a_word_in_a_later_slice_is_named_as_with_one_stream(db: str, tmp_path: Path) -> None:
    rows = [ROW.replace("C1,", f"C{i},") for i in range(200)]
    rows[180] = rows[180].replace(",95.4,0,95.4,", ",ninety,0,95.4,")
    with pytest.raises(IngestError, match=r"purchases: 1 value\(s\) are not numbers, "
                                          r"e\.g\. 'ninety'"):
        parallel(db, write(tmp_path, csv_text(rows)))
    assert nothing_written(db)
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%'"
                     " AND relkind = 'r'") == [(0,)]


def test_duplicates_across_slices_are_refused(db: str, tmp_path: Path) -> None:
    rows = [ROW.replace("C1,", f"C{i},") for i in range(200)]
    rows[199] = rows[0]
    with pytest.raises(IngestError, match=r"1 duplicated id\(s\), e\.g\. 'C0' \(2x\)"):
        parallel(db, write(tmp_path, csv_text(rows)), streams=2)
    assert nothing_written(db)
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%'"
                     " AND relkind = 'r'") == [(0,)]


@pytest.mark.parametrize("streams", [1, 2])
def test_an_orphan_of_a_crashed_parallel_ingest_is_dropped_by_the_next(db: str, tmp_path: Path,
                                                                       streams: int) -> None:
    """A parallel ingest whose process died leaves its table attached to nothing, its lock
    free: the next ingest (either kind) drops it; a table whose ingest still runs (its lock
    held) stays."""
    import psycopg

    from segmentation.db import conninfo
    from segmentation.landing import LANDING_LOCK

    with psycopg.connect(conninfo(db), autocommit=True) as conn:
        conn.execute("CREATE TABLE landing_00000000dead0000 (customer_id text)")
        conn.execute("CREATE TABLE landing_00000000a1b20000 (customer_id text)")
    with psycopg.connect(conninfo(db), autocommit=True) as alive:
        alive.execute("SELECT pg_advisory_lock(%s, hashtext('landing_00000000a1b20000'))",
                      (LANDING_LOCK,))
        parallel(db, write(tmp_path, csv_text([ROW, ROW.replace("C1,", "C2,")])),
                 streams=streams)
        left = query(db, "SELECT relname FROM pg_class WHERE relname LIKE 'landing%%'"
                         " AND relkind = 'r' AND NOT relispartition")
    assert left == [("landing_00000000a1b20000",)]


def test_a_duplicate_where_two_slices_meet_is_refused(db: str, tmp_path: Path) -> None:
    """Slices of a file in id order are not merged to find duplicates (their ranges cannot
    overlap), unless they touch: the same id ending one slice and starting the next."""
    from segmentation.csvfile import split_points

    rows = [ROW.replace("C1,", f"C{i:04d},") for i in range(400)]
    path = write(tmp_path, csv_text(rows))
    cut = split_points(path, 2)[1]
    first_of_second = path.read_bytes()[:cut].count(b"\n") - 1  # the header is line 1
    rows[first_of_second] = rows[first_of_second - 1]  # same length: the cut stays put
    path = write(tmp_path, csv_text(rows))
    assert split_points(path, 2)[1] == cut
    with pytest.raises(IngestError, match=rf"1 duplicated id\(s\), e\.g\. "
                                          rf"'C{first_of_second - 1:04d}' \(2x\)"):
        parallel(db, path, streams=2)
    assert nothing_written(db)
    rows[first_of_second] = ROW.replace("C1,", f"C{first_of_second:04d},")
    assert parallel(db, write(tmp_path, csv_text(rows)), streams=2).rows_in == 400


def slice_tables(db: str) -> list[tuple[int, int]]:
    """The tables holding a landed batch's rows (its slices, or its one table), as OIDs and
    row counts."""
    return query(db, "SELECT c.oid::int, c.reltuples::int FROM pg_class c"
                     " WHERE c.relname LIKE 'landing%%' AND c.relkind = 'r' ORDER BY c.relname")


def customer_partitions(db: str) -> list[tuple[str, int, str]]:
    return query(db, "SELECT c.relname::text, c.oid::int, pg_get_expr(c.relpartbound, c.oid)"
                     " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                     " WHERE i.inhparent = 'customers'::regclass ORDER BY 1")


def test_a_first_load_in_slices_becomes_customers_without_a_copy(db: str, tmp_path: Path
                                                                  ) -> None:
    """A first load's slices, validated, are attached as customers' partitions: the very
    tables the file was copied into (their OIDs), its quarantined rows out, the key whole;
    later batches merge into them, whatever their ids."""
    from segmentation.validation import validate_batch

    rows = [ROW.replace("C1,", f"C{i:04d},") for i in range(400)]
    rows[7] = rows[7].replace(",40.9,", ",-5,")  # a negative balance: quarantined
    batch = parallel(db, write(tmp_path, csv_text(rows)), streams=2).batch_id
    landed = slice_tables(db)
    assert len(landed) == 2
    report = validate_batch(db, batch)
    assert report.success and (report.rows_accepted, report.rows_quarantined) == (399, 1)
    partitions = customer_partitions(db)
    assert sorted(oid for _, oid, _ in partitions) == sorted(oid for oid, _ in landed)
    assert partitions[0][2].startswith("FOR VALUES FROM (MINVALUE)")
    assert partitions[-1][2].endswith("TO (MAXVALUE)")
    assert query(db, "SELECT count(*), count(DISTINCT batch_id) FROM customers") == [(399, 1)]
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id = 'C0007'") == [(0,)]
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%'") == [(0,)]
    assert query(db, "SELECT count(*) FROM pg_index i JOIN pg_inherits p ON p.inhrelid ="
                     " i.indrelid WHERE p.inhparent = 'customers'::regclass AND i.indisvalid"
                     ) == [(4,)]  # each partition: the key and loaded_at
    with pytest.raises(Exception, match="customers_pkey"):
        query(db, "INSERT INTO customers SELECT * FROM customers LIMIT 1")
    # a later batch: ids below, between and above the first load's, and a changed row
    later = [ROW.replace("C1,", f"{i},") for i in ("A1", "C0199a", "Z9")]
    later.append(ROW.replace("C1,40.9,", "C0300,41.9,"))
    load_batch(db, write(tmp_path, csv_text(later), "later.csv"))
    assert query(db, "SELECT count(*) FROM customers") == [(402,)]
    assert query(db, "SELECT balance FROM customers WHERE customer_id = 'C0300'") == [(41.9,)]
    assert [name for name, _, _ in customer_partitions(db)] == [n for n, _, _ in partitions]


@pytest.mark.parametrize("case", ["ids not in order", "a run in flight", "a night since"])
def test_a_first_load_is_copied_when_its_tables_cannot_be_attached(
        db: str, tmp_path: Path, case: str, request: pytest.FixtureRequest) -> None:
    """Slices whose id ranges overlap cannot be ranges of customers. And attached rows keep
    their COPY's stamp: a scoring run that may have read customers after it (one in
    flight, or a night that ran since) would break what incremental runs rely on, that a
    row a run did not see is stamped after that run started (reading.open_snapshot). Then
    the rows are copied, stamped as they are accepted, into one partition of every id."""
    import psycopg

    from segmentation import scoring
    from segmentation.db import conninfo
    from segmentation.runs import SCORE_LOCK
    from segmentation.validation import validate_batch
    from tests.helpers import register_champion

    ids = [f"C{i:04d}" for i in range(400)]
    if case == "ids not in order":
        ids = ids[::2] + ids[1::2]
    rows = [ROW.replace("C1,", f"{i},") for i in ids]
    batch = parallel(db, write(tmp_path, csv_text(rows)), streams=2).batch_id
    landed = slice_tables(db)
    champion = None
    if case == "a night since":  # on a database whose file has landed, not been accepted
        champion = register_champion(db, request.getfixturevalue("trained"),
                                     request.getfixturevalue("models_dir"), "m-stamp")
        assert scoring.score_customers(db, champion, mode="full").rows_in == 0
    with psycopg.connect(conninfo(db), autocommit=True) as run:
        if case == "a run in flight":
            run.execute("SELECT pg_advisory_lock(%s)", (SCORE_LOCK,))
        assert validate_batch(db, batch).success
    if champion is not None:
        assert scoring.score_customers(db, champion, mode="incremental").rows_scored == 400
    (_, oid, bound), = customer_partitions(db)
    assert oid not in [o for o, _ in landed] and bound == "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"
    assert query(db, "SELECT count(*) FROM customers") == [(400,)]
    with pytest.raises(Exception, match="customers_pkey"):
        query(db, "INSERT INTO customers SELECT * FROM customers LIMIT 1")


def test_a_slice_left_empty_by_the_quarantine_is_dropped_not_attached(db: str, tmp_path: Path
                                                                       ) -> None:
    """Every row of a first load's last slice quarantined: the other slices become
    customers, the empty one goes, and no table of the batch is left behind."""
    from segmentation.csvfile import split_points
    from segmentation.validation import validate_batch

    rows = [ROW.replace("C1,", f"C{i:04d},") for i in range(300)]
    cuts = split_points(write(tmp_path, csv_text(rows)), 3)
    last = write(tmp_path, csv_text(rows)).read_bytes()[cuts[2]:].count(b"\n")
    rows[-last:] = [r.replace(",40.9,", ",-5.0,") for r in rows[-last:]]  # same length
    path = write(tmp_path, csv_text(rows))
    assert split_points(path, 3) == cuts
    batch = parallel(db, path, streams=3).batch_id
    assert len(slice_tables(db)) == 3
    report = validate_batch(db, batch, max_quarantine_share=0.5)
    assert report.success and (report.rows_accepted, report.rows_quarantined) == (300 - last, last)
    bounds = [bound for _, _, bound in customer_partitions(db)]
    assert len(bounds) == 2 and bounds[0].startswith("FOR VALUES FROM (MINVALUE) TO ('C0")
    assert bounds[1].endswith("TO (MAXVALUE)")
    assert query(db, "SELECT count(*), min(customer_id), max(customer_id) FROM customers") == \
        [(300 - last, "C0000", f"C{299 - last:04d}")]
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%'") == [(0,)]


def test_a_file_that_does_not_type_is_diagnosed_on_parallel_workers(db: str) -> None:
    """The text a file is landed as, to name what does not type, is an unlogged table of
    the ingest's transaction (a temporary table is its session's alone, scanned on one
    core): the per-column scan can run on parallel workers, and a rollback leaves nothing."""
    import psycopg
    from psycopg import sql

    from segmentation.db import conninfo
    from segmentation.features import FEATURES
    from segmentation.structure import NUMBER_RE, create_text_landing, text_landing

    text = text_landing("b-text")
    with psycopg.connect(conninfo(db)) as conn:
        create_text_landing(conn, text, ["customer_id", *FEATURES])
        conn.execute(sql.SQL("INSERT INTO {} (customer_id, purchases) SELECT 'C' || i,"
                             " i::text FROM generate_series(1, 2000) i").format(text))
        for setting in ("SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0",
                        "SET LOCAL min_parallel_table_scan_size = 0"):
            conn.execute(setting)
        plan = "\n".join(r[0] for r in conn.execute(sql.SQL(
            "EXPLAIN SELECT count(*) FILTER (WHERE purchases !~* {}) FROM {}").format(
                sql.Literal(NUMBER_RE), text)))
        assert "Gather" in plan, plan
        conn.rollback()
    assert query(db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'landing%%text'") == \
        [(0,)]
