"""Erasure and retention: a customer can be forgotten everywhere at once and stays forgotten,
and raw rows, examples and history are kept only as long as configured."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.accepting import lock_accepts
from segmentation.errors import SegmentationError
from segmentation.rebuild import drop_tables, unattached_builds
from segmentation.runs import acquire_run_lock
from segmentation.summaries import subtract_erased

# Every table that holds a customer by id, in delete order (scoring_stage: the scratch of
# a partitioned run not yet published; validation_examples: ids quoted by a broken rule).
CUSTOMER_TABLES = ("segment_history", "segment_assignments", "scoring_stage",
                   "customers_quarantine", "customers_incoming", "customers",
                   "validation_examples", "customer_origins", "run_typical_customers")
RUN_WAIT_S = 1800  # an erasure queues behind a scoring run at most this long


@dataclass
class Erasure:
    """What one erasure removed."""

    erasure_id: str
    customers: int
    rows_removed: dict[str, int] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)  # asked for, held nowhere

    def summary(self) -> str:
        """What the CLI prints: how many ids were held, which were not, rows per table."""
        found = self.customers - len(self.not_found)
        removed = ", ".join(f"{table} {n:,}" for table, n in self.rows_removed.items() if n)
        lines = [f"erasure {self.erasure_id}: {found:,} of {self.customers:,} customer id(s) "
                 f"found and forgotten; rows removed: {removed or 'none'}"]
        if self.not_found:
            shown = ", ".join(repr(i) for i in self.not_found[:10])
            more = f" and {len(self.not_found) - 10:,} more" if len(self.not_found) > 10 else ""
            lines.append(f"not held anywhere: {shown}{more} (recorded all the same: a later "
                         "batch will not load them)")
        return "\n".join(lines)


def hash_id(salt: str, customer_id: str) -> str:
    """The audit's trace of an id: confirms a given id was erased, reveals none."""
    return hashlib.sha256((salt + customer_id).encode()).hexdigest()


def forget_customers(conn: psycopg.Connection, ids: list[str], requested_by: str) -> Erasure:
    """Remove these customers from every table that holds them, in one transaction, recorded
    in `erasures`; their keyed hashes go on the erased list, so no later batch brings them
    back (`readmit_customers` takes one off)."""
    ids = sorted({i for i in ids if i.strip()})
    if not ids:
        raise SegmentationError("no customer id to forget")
    erasure = Erasure(str(uuid.uuid4()), len(ids))
    salt = secrets.token_hex(16)
    held: set[str] = set()
    with conn.transaction():
        # A scoring run reads customers in a snapshot and publishes them later: an erasure
        # in between would be undone by the publish. So erasures wait for the run lock (a
        # partitioned run holds it from its start to its publish), and for any accept in
        # flight (which could otherwise insert the customer right after this commits).
        acquire_run_lock(conn, wait=True, wait_timeout_s=RUN_WAIT_S)
        lock_accepts(conn)
        drop_tables(conn, unattached_builds(conn))  # dead runs' builds may hold them too
        conn.execute("CREATE TEMP TABLE erased_incoming ON COMMIT DROP AS SELECT batch_id"
                     " FROM customers_incoming WHERE customer_id = ANY(%s)", (ids,))
        for table in CUSTOMER_TABLES:
            gone = conn.execute(sql.SQL(
                "DELETE FROM {} WHERE customer_id = ANY(%s) RETURNING customer_id, {}").format(
                sql.Identifier(table), sql.Identifier("segment_id")
                if table == "segment_assignments" else sql.NULL), (ids,)).fetchall()
            erasure.rows_removed[table] = len(gone)
            held.update(i for i, _ in gone)
            if table == "segment_assignments":
                subtract_erased(conn, [int(s) for _, s in gone])
        # a landed batch keeps its rows' account: rows_in = accepted + quarantined + erased
        conn.execute(
            "UPDATE ingest_batches b SET rows_erased = b.rows_erased + gone.n"
            " FROM (SELECT batch_id, count(*) AS n FROM erased_incoming GROUP BY batch_id) gone"
            " WHERE gone.batch_id = b.batch_id")
        erasure.not_found = [i for i in ids if i not in held]
        conn.execute(
            "INSERT INTO erasures (erasure_id, requested_by, customers, rows_removed, salt,"
            " id_hashes, customers_found) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (erasure.erasure_id, requested_by, len(ids), Json(erasure.rows_removed), salt,
             [hash_id(salt, i) for i in ids], len(held)))
        conn.execute(
            "INSERT INTO erased_customers (id_hash, erasure_id)"
            " SELECT erased_id_hash(i), %s FROM unnest(%s::text[]) i"
            " ON CONFLICT (id_hash) DO NOTHING", (erasure.erasure_id, ids))
    return erasure


def readmit_customers(conn: psycopg.Connection, ids: list[str], requested_by: str) -> int:
    """Take ids off the erased list (ops' explicit decision, logged without the ids): the
    next batch that carries them loads them. Returns how many were on the list."""
    ids = sorted({i for i in ids if i.strip()})
    if not ids:
        raise SegmentationError("no customer id to re-admit")
    with conn.transaction():
        lock_accepts(conn)
        return conn.execute(
            "WITH gone AS (DELETE FROM erased_customers e USING unnest(%s::text[]) i"
            " WHERE e.id_hash = erased_id_hash(i) RETURNING e.id_hash, e.erasure_id)"
            " INSERT INTO erasure_readmissions (requested_by, id_hash, erasure_id)"
            " SELECT %s, id_hash, erasure_id FROM gone", (ids, requested_by)).rowcount


def was_erased(conn: psycopg.Connection, customer_id: str) -> bool:
    """Whether an erasure recorded this id (the audit answers for one id at a time)."""
    for salt, hashes in conn.execute("SELECT salt, id_hashes FROM erasures"):
        if hash_id(salt, customer_id) in hashes:
            return True
    return False


@dataclass
class Retention:
    """What one retention pass removed."""

    quarantine_days: int
    history_days: int
    quarantined_removed: int = 0
    history_removed: int = 0

    def summary(self) -> str:
        """One line for the nightly run."""
        parts = []
        if self.quarantine_days:
            parts.append(f"{self.quarantined_removed:,} quarantined row(s) older than "
                         f"{self.quarantine_days} days")
        if self.history_days:
            parts.append(f"{self.history_removed:,} history row(s) older than "
                         f"{self.history_days} days")
        return "retention: removed " + "; ".join(parts) if parts else "retention: off"


def apply_retention(conn: psycopg.Connection, quarantine_days: int,
                    history_days: int) -> Retention:
    """Delete quarantined raw rows and rule examples, and history, past their retention (0
    days: keep). History only gets shorter: a customer's first segment, and when they left
    it, are kept (customer_origins) before their first move goes."""
    result = Retention(quarantine_days, history_days)
    with conn.transaction():
        if quarantine_days:
            result.quarantined_removed = conn.execute(
                "DELETE FROM customers_quarantine WHERE quarantined_at < now() - make_interval("
                "days => %s)", (quarantine_days,)).rowcount
            conn.execute("DELETE FROM validation_examples WHERE recorded_at < now() -"
                         " make_interval(days => %s)", (quarantine_days,))
        if history_days:
            horizon = {"days": history_days}
            conn.execute(
                "INSERT INTO customer_origins (customer_id, segment_id, left_at)"
                " SELECT DISTINCT ON (customer_id) customer_id, old_segment_id, changed_at"
                " FROM segment_history WHERE changed_at < now() - make_interval(days =>"
                " %(days)s) ORDER BY customer_id, changed_at, run_id"
                " ON CONFLICT (customer_id) DO NOTHING", horizon)
            result.history_removed = conn.execute(
                "DELETE FROM segment_history WHERE changed_at < now() - make_interval("
                "days => %(days)s)", horizon).rowcount
    return result
