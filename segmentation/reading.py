"""Reading customers for a scoring run: select, stream out with COPY, predict per chunk,
stream the scores into the writer's table with COPY. Memory holds one chunk.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql

from segmentation.accepting import ACCEPT_LOCK
from segmentation.errors import SegmentationError
from segmentation.features import COLUMNS, FEATURES, ID_COLUMN
from segmentation.runs import Mode

Progress = Callable[[int, float], None]


if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# What a build's reader adds to each customer (rebuild.select_for_build): the published
# segment, the first run, and whether the same model scored it.
OLD_COLUMNS = ("old_segment_id", "old_first_run_id", "old_same_model")
# A scoring read brings each customer's features as one value (packed_features): ADBC
# decodes the stream a field at a time, and one fixed-width bytea per row costs it about
# half the time 17 double fields do; numpy then reads the matrix out of Arrow's buffer.
PACKED = "features"
SCORE_COLUMNS = (ID_COLUMN, PACKED)


@dataclass
class Comparison:
    """Tonight's segments against the published rows, counted while streaming."""

    new: int = 0  # no published row before
    moved: int = 0  # published in another segment
    switched: int = 0  # same segment, scored before by another model
    segments: dict[int, int] = field(default_factory=dict)  # every row streamed, by segment
    new_segments: dict[int, int] = field(default_factory=dict)  # the new ones, by segment

    def add(self, other: Comparison) -> None:
        """Sum partitions' counts."""
        self.new += other.new
        self.moved += other.moved
        self.switched += other.switched
        self.count_segments(other.segments)
        add_counts(self.new_segments, other.new_segments)

    def count_segments(self, counts: dict[int, int]) -> None:
        """Add customers per segment."""
        add_counts(self.segments, counts)


def add_counts(into: dict[int, int], counts: dict[int, int]) -> None:
    """Add per-segment counts into another such dict."""
    for segment, n in counts.items():
        into[segment] = into.get(segment, 0) + n


class Classifier(Protocol):
    """What a run scores with: a model's version and its predict of a feature matrix (a
    SegmentationModel, or a registry.DeferredModel that loads the model on the first
    chunk)."""

    version: str

    def predict_matrix(self, x: np.ndarray) -> Any: ...




def packed_features(alias: str = "c") -> sql.Composed:
    """The FEATURES of `alias`, in order, as one bytea named PACKED: 8 big-endian bytes each
    (float8send), NaN where null (the value the imputer fills in either way)."""
    return sql.SQL("{} AS {}").format(sql.SQL(" || ").join(
        sql.SQL("float8send(coalesce({}.{}, 'NaN'))").format(sql.Identifier(alias),
                                                            sql.Identifier(name))
        for name in FEATURES), sql.Identifier(PACKED))


def in_partition(part: int, parts: int) -> sql.Composed:
    """Customers c of hash partition (part, parts): PostgreSQL's own hash partitioning of
    segment_assignments, the one meaning of "partition i" for staging and for builds, so a
    partition's customers are those of partition i of an n-partition published table."""
    return sql.SQL("satisfies_hash_partition('segment_assignments'::regclass, {}, {},"
                   " c.customer_id)").format(sql.Literal(parts), sql.Literal(part))


def select_customers(mode: Mode, model_version: str,
                     partition: tuple[int, int] | None = None,
                     since: datetime | None = None) -> sql.Composed:
    """The customers a run reads: all, or those new/changed/scored by another model
    (loaded after `since`, when known: an index range instead of a join of both tables);
    optionally only partition (i, n) by a hash of customer_id. Rows are SCORE_COLUMNS."""
    columns = sql.SQL("c.{}, {}").format(sql.Identifier(ID_COLUMN), packed_features())
    where: list[sql.Composable] = []
    if mode == "full":
        source = sql.SQL("customers c")
    else:
        source = sql.SQL("customers c LEFT JOIN segment_assignments s USING (customer_id)")
        where.append(sql.SQL("(s.customer_id IS NULL OR s.model_version <> {}"
                             " OR c.loaded_at > s.scored_at)").format(sql.Literal(model_version)))
        if since is not None:
            where.append(sql.SQL("c.loaded_at > {}").format(sql.Literal(since)))
    if partition is not None:
        where.append(in_partition(*partition))
    query = sql.SQL("SELECT {} FROM {}").format(columns, source)
    if where:
        query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(where))
    return query


def reader_settings(compare: bool) -> list[str]:
    """The reading session's plan settings: a build's reader (compare) merges customers with
    the published rows by two key scans, in one process, with nothing worth compiling.
    Hashed, a night's rows spill to disk in batches; once a night's updates have moved rows
    out of key order the planner prices the key scans above sorting, and each parallel
    worker then sorted the whole published table again."""
    if not compare:
        return []
    return ["SET LOCAL enable_hashjoin = off", "SET LOCAL enable_sort = off",
            "SET LOCAL max_parallel_workers_per_gather = 0", "SET LOCAL jit = off"]


def iter_chunks(conn: psycopg.Connection, query: sql.Composed, chunk_rows: int
                ) -> Iterator[pd.DataFrame]:
    """Stream a query of COLUMNS (see iter_tables) and yield DataFrames of chunk_rows rows."""
    for table in iter_tables(conn, query, chunk_rows, COLUMNS):
        yield table.to_pandas()


def iter_tables(conn: psycopg.Connection, query: sql.Composed, chunk_rows: int,
                columns: tuple[str, ...] = SCORE_COLUMNS, compare: bool = False
                ) -> Iterator[Any]:
    """Stream a query in conn's snapshot and yield Arrow tables of chunk_rows rows (the
    last one shorter), columns named `columns` (then OLD_COLUMNS when compare).

    The rows come through a second session (ADBC's PostgreSQL driver) that imports conn's
    snapshot: it reads the server's binary COPY into Arrow natively, where reading it row
    by row in Python costs more than parsing and predicting together. A thread pulls the
    batches while the caller predicts, so the server never stalls on a full socket; at
    most two batches wait in memory. It is closed (its snapshot and locks released) once
    the rows are read or the caller stops."""
    from segmentation.db import arrow_reader_session

    names = list(columns) + (list(OLD_COLUMNS) if compare else [])
    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert snapshot is not None
    settings = reader_settings(compare)
    # the driver sizes its batches in bytes: about a chunk's worth
    batch_bytes = max(chunk_rows, 1) * (16 + 9 * len(names))
    batches: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Queue an item unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def drain() -> None:
        try:
            with arrow_reader_session(conn, snapshot[0], settings) as session:
                for batch in session.stream(query.as_string(conn), batch_bytes):
                    if not offer(batch):
                        return
            offer(None)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=drain, name="copy-out", daemon=True)
    reader.start()
    try:
        yield from rechunk(iter(batches.get, None), chunk_rows, names)
    finally:
        stop.set()
        reader.join()


def rechunk(batches: Iterator[Any], chunk_rows: int, names: list[str]) -> Iterator[Any]:
    """Arrow tables of exactly chunk_rows rows (the last one shorter) from record batches
    of any size, columns renamed to `names`; an exception among the batches is raised."""
    import pyarrow as pa

    pending: list[Any] = []
    held = 0
    for batch in batches:
        if isinstance(batch, BaseException):
            raise batch
        batch = batch.rename_columns(names)
        while held + batch.num_rows >= chunk_rows:
            take = chunk_rows - held
            pending.append(batch.slice(0, take))
            yield pa.Table.from_batches(pending)
            pending, held, batch = [], 0, batch.slice(take)
        if batch.num_rows:
            pending.append(batch)
            held += batch.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def encode_scores(ids: Any, segments: Any, old: Any = None, run_id: str = "") -> bytes:
    """(customer_id, segment_id) as CSV for COPY FROM STDIN; with the old rows (an Arrow
    table of OLD_COLUMNS), also the old segment and the first run (this run's for a new
    customer)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = pa.array(ids, type=pa.string())
    columns = {"customer_id": ids, "segment_id": pa.array(segments, type=pa.int16())}
    if old is not None:
        columns["old_segment_id"] = old["old_segment_id"]
        columns["first_run_id"] = pc.fill_null(old["old_first_run_id"], run_id)
    table = pa.table(columns)
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=False,
                                                                 quoting_style="needed"))
    return sink.getvalue()


def open_snapshot(reader: psycopg.Connection) -> datetime:
    """Take the reader's snapshot while no accept into customers is in flight; returns the
    database time of the snapshot.

    Accepts hold ACCEPT_LOCK exclusively until they commit, so a row this snapshot misses
    was stamped (loaded_at) after it, and after the run's start: the next incremental run
    finds it above its watermark. Likewise every batch validated before the returned time
    is in the snapshot, and none validated after it.
    """
    reader.execute("SELECT pg_advisory_lock_shared(%s)", (ACCEPT_LOCK,))
    reader.commit()
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    row = reader.execute("SELECT clock_timestamp()").fetchone()  # the snapshot, under the lock
    reader.execute("SELECT pg_advisory_unlock_shared(%s)", (ACCEPT_LOCK,))
    assert row is not None
    taken: datetime = row[0]
    return taken


def segment_counts(segments: Any) -> dict[int, int]:
    """Customers per segment in a chunk's predictions."""
    import numpy as np

    values, counts = np.unique(np.asarray(segments), return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


def compare_chunk(old: Any, segments: Any) -> Comparison:
    """Count a chunk's new customers, movers and same-segment model switches (old: an
    Arrow table of OLD_COLUMNS)."""
    import numpy as np

    before = old["old_segment_id"].to_numpy(zero_copy_only=False)  # float, NaN: new
    known = ~np.isnan(before)
    moved = known & (before != segments)
    same_model = old["old_same_model"].fill_null(False).to_numpy(zero_copy_only=False)
    return Comparison(new=int((~known).sum()), moved=int(moved.sum()),
                      switched=int((known & ~moved & ~same_model).sum()),
                      new_segments=segment_counts(np.asarray(segments)[~known]))


def feature_matrix_of(table: Any) -> np.ndarray:
    """The PACKED features of an Arrow table as one float64 matrix (NaN where null), in
    FEATURES order: read where Arrow holds the bytes, copied once into native order."""
    import numpy as np
    import pyarrow as pa

    width = len(FEATURES)
    x = np.empty((table.num_rows, width), dtype=np.float64)
    row = 0
    for chunk in table[PACKED].chunks:
        n = len(chunk)
        if not n:
            continue
        kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=kind, count=n + 1,
                                offset=chunk.offset * np.dtype(kind).itemsize)
        if chunk.null_count or not (np.diff(offsets) == 8 * width).all():
            raise SegmentationError(f"the features read back are not {width} numbers a row "
                                    "(a query without packed_features?)")
        x[row:row + n] = np.frombuffer(chunk.buffers()[2], dtype=">f8", count=n * width,
                                       offset=int(offsets[0])).reshape(n, width)
        row += n
    return x


def has_rows(conn: psycopg.Connection, query: sql.Composed) -> bool:
    """Whether the query returns anything, in conn's snapshot (the planner stops at the
    first row)."""
    row = conn.execute(sql.SQL("SELECT EXISTS ({})").format(query)).fetchone()
    return bool(row and row[0])


def stream_scores(reader: psycopg.Connection, writer: psycopg.Connection,
                  copy_sql: str | sql.Composed, query: sql.Composed, model: Classifier,
                  chunk_rows: int, progress: Progress | None = None,
                  compare_run: str | None = None,
                  comparison: Comparison | None = None) -> tuple[int, float, datetime]:
    """Reader COPY out -> predict per chunk -> writer COPY in; returns (rows, predict
    seconds, snapshot time). With compare_run, the query brings each customer's published
    row (OLD_COLUMNS), which goes into the COPY and is counted into `comparison`."""
    rows, predict_s, started = 0, 0.0, time.perf_counter()
    snapshot_at = open_snapshot(reader)
    if not has_rows(reader, query):  # a night with nothing to score loads no Arrow, no ADBC
        reader.commit()
        return rows, predict_s, snapshot_at
    compare = compare_run is not None
    with writer.cursor().copy(copy_sql) as sink:
        for table in iter_tables(reader, query, chunk_rows, compare=compare):
            t0 = time.perf_counter()
            segments = model.predict_matrix(feature_matrix_of(table))
            predict_s += time.perf_counter() - t0
            old = table.select(list(OLD_COLUMNS)) if compare else None
            if old is not None and comparison is not None:
                comparison.add(compare_chunk(old, segments))
            if comparison is not None:
                comparison.count_segments(segment_counts(segments))
            sink.write(encode_scores(table[ID_COLUMN], segments, old, compare_run or ""))
            rows += table.num_rows
            if progress:
                progress(rows, time.perf_counter() - started)
    reader.commit()  # release the snapshot and its locks: a swap must not wait for them
    return rows, predict_s, snapshot_at
