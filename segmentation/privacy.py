"""Erasure and retention: a customer can be forgotten everywhere at once, and raw rows and
history are kept only as long as configured."""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.errors import SegmentationError
from segmentation.rebuild import drop_tables, unattached_builds
from segmentation.runs import acquire_run_lock

# Every table that holds a customer by id, in delete order (scoring_stage: the scratch of
# a partitioned run not yet published).
CUSTOMER_TABLES = ("segment_history", "segment_assignments", "scoring_stage",
                   "customers_quarantine", "customers_incoming", "customers")
RUN_WAIT_S = 1800  # an erasure queues behind a scoring run at most this long
ERASED = "<erased>"


@dataclass
class Erasure:
    """What one erasure removed."""

    erasure_id: str
    customers: int
    rows_removed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per table, for the CLI."""
        removed = ", ".join(f"{table} {n:,}" for table, n in self.rows_removed.items())
        return (f"erasure {self.erasure_id}: {self.customers:,} customer id(s) forgotten; "
                f"rows removed: {removed}")


def hash_id(salt: str, customer_id: str) -> str:
    """The audit's trace of an id: confirms a given id was erased, reveals none."""
    return hashlib.sha256((salt + customer_id).encode()).hexdigest()


def forget_customers(conn: psycopg.Connection, ids: list[str], requested_by: str) -> Erasure:
    """Remove these customers from every table that holds them, and the quotes of their ids
    from validation summaries, in one transaction, recorded in `erasures`."""
    ids = sorted({i for i in ids if i.strip()})
    if not ids:
        raise SegmentationError("no customer id to forget")
    erasure = Erasure(str(uuid.uuid4()), len(ids))
    salt = secrets.token_hex(16)
    with conn.transaction():
        # A scoring run reads customers in a snapshot and publishes them later: an erasure
        # in between would be undone by the publish. So erasures wait for the run lock
        # (partition tasks hold it shared), and drop the build tables of partitioned runs
        # that have not published (their publish then refuses, asking for a new run).
        acquire_run_lock(conn, wait=True, wait_timeout_s=RUN_WAIT_S)
        drop_tables(conn, unattached_builds(conn))
        for table in CUSTOMER_TABLES:
            erasure.rows_removed[table] = conn.execute(
                sql.SQL("DELETE FROM {} WHERE customer_id = ANY(%s)").format(
                    sql.Identifier(table)), (ids,)).rowcount
        quoted = [json.dumps(repr(i))[1:-1] for i in ids]  # as the examples quote them
        scrubbed = 0
        for needle in quoted:
            scrubbed += conn.execute(
                "UPDATE validation_runs SET failures = replace(failures::text, %(n)s, %(e)s)"
                "::jsonb, warnings = replace(warnings::text, %(n)s, %(e)s)::jsonb,"
                " gx_summary = replace(gx_summary::text, %(n)s, %(e)s)::jsonb"
                " WHERE strpos(failures::text || warnings::text || gx_summary::text, %(n)s) > 0",
                {"n": needle, "e": ERASED}).rowcount
        erasure.rows_removed["validation_runs (examples scrubbed)"] = scrubbed
        conn.execute(
            "INSERT INTO erasures (erasure_id, requested_by, customers, rows_removed, salt,"
            " id_hashes) VALUES (%s, %s, %s, %s, %s, %s)",
            (erasure.erasure_id, requested_by, len(ids), Json(erasure.rows_removed), salt,
             [hash_id(salt, i) for i in ids]))
    return erasure


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
    """Delete quarantined raw rows and history past their retention (0 days: keep)."""
    result = Retention(quarantine_days, history_days)
    with conn.transaction():
        if quarantine_days:
            result.quarantined_removed = conn.execute(
                "DELETE FROM customers_quarantine WHERE quarantined_at < now() - make_interval("
                "days => %s)", (quarantine_days,)).rowcount
        if history_days:
            result.history_removed = conn.execute(
                "DELETE FROM segment_history WHERE changed_at < now() - make_interval("
                "days => %s)", (history_days,)).rowcount
    return result
