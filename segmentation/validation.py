"""Validate a landed batch with Great Expectations, pushed down to PostgreSQL.

GX evaluates the contract (segmentation.contract) on a view of one batch of
`customers_incoming`, so the data never leaves the database.  Row rules return the failing
customer ids; those rows go to `customers_quarantine` with every rule they broke, the rest
are accepted into `customers`.  A schema failure, or more than the allowed share
quarantined, fails the batch: nothing reaches `customers`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from segmentation.accepting import accept_batch, drop_erased, lock_accepts, quarantine_rows
from segmentation.contract import DERIVED, Rule, contract_rules, describe, format_value, violation
from segmentation.db import connect, connection, is_transient_text, require_schema
from segmentation.drift import MIN_DRIFT_ROWS, PSI_BANDS, drift_warnings, feature_psi, psi_band
from segmentation.errors import BatchBusy, DatabaseUnavailable, SegmentationError
from segmentation.progress import Update

EXAMPLES = 3
VALIDATION_LOCK = 7_421_004  # pg_advisory_lock(VALIDATION_LOCK, hashtext(batch)): one at a time


class AlreadyValidated(SegmentationError):
    """The batch was validated (by another run, or before): nothing to do."""


@dataclass
class RuleOutcome:
    """What one rule found in the batch."""

    rule: Rule
    success: bool
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    error: str | None = None  # GX could not evaluate the rule (e.g. a dropped connection)
    example_rows: list[tuple[str, str]] = field(default_factory=list)  # (id, value shown)

    def line(self, examples: bool = False) -> str:
        """One human line: what the broken rows are like (or the rule) and how many; with
        examples (ids and values: for the terminal only), a few of them."""
        if self.unexpected:
            text = f"[{self.rule.tier}] {violation(self.rule)}: {self.unexpected:,} row(s)"
        else:
            text = f"[{self.rule.tier}] {describe(self.rule)}"
        if examples and self.examples:
            text += f", e.g. {', '.join(self.examples)}"
        return text


@dataclass
class ValidationReport:
    """The outcome of validating one batch."""

    run_id: str
    batch_id: str
    success: bool
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    outcomes: list[RuleOutcome]
    failures: list[str]
    warnings: list[str]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    rows_erased: int = 0  # rows of erased customers, skipped (at landing or here)

    def major_drift(self) -> dict[str, float]:
        """Features whose PSI is in the 'major shift' band."""
        return {f: v for f, v in self.drift.items() if psi_band(v) == PSI_BANDS[0][1]}

    def summary(self, examples: bool = True) -> str:
        """What ops read: verdict, counts, then each failure and warning; examples (ids and
        values) only where asked: the terminal, never Prefect or the database."""
        shown = {o.line(): o.line(examples) for o in self.outcomes}
        verdict = "passed" if self.success else "FAILED"
        erased = f", {self.rows_erased:,} erased" if self.rows_erased else ""
        lines = [f"batch {self.batch_id}: validation {verdict}; {self.rows_in:,} rows in, "
                 f"{self.rows_accepted:,} accepted, {self.rows_quarantined:,} quarantined"
                 f"{erased} ({self.seconds:.1f}s)"]
        lines += [f"  failure: {shown.get(f, f)}" for f in self.failures]
        label = "quarantined by" if self.success else "row rule broken:"
        lines += [f"  {label} {o.line(examples)}" for o in self.outcomes
                  if o.rule.tier == "row" and not o.success]
        lines += [f"  warning: {shown.get(w, w).removeprefix('[warning] ')}"  # said once
                  for w in self.warnings]
        return "\n".join(lines)


VALIDATE_STEPS = ("checking every rule", "finding the failing rows", "quarantining and accepting")

def build_suite(context: Any, rules: list[Rule]) -> Any:
    """The GX ExpectationSuite for the rules (each expectation carries its rule in meta)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    # all at once: GX re-serialises the whole suite on every add_expectation (0.5 s here)
    return context.suites.add(gx.ExpectationSuite(name="customers_contract", expectations=[
        getattr(gxe, rule.expectation)(
            **rule.kwargs, meta={"rule": rule.key, "tier": rule.tier, "why": rule.why})
        for rule in rules]))


def view_name(batch_id: str) -> str:
    """The batch view's name: one per batch, a valid identifier whatever the batch id."""
    return "validation_batch_" + hashlib.md5(batch_id.encode()).hexdigest()[:16]


def create_batch_view(url: str, batch_id: str) -> str:
    """One batch of customers_incoming as a view, with the contract's derived columns.

    GX validates the view as a whole table: no partition discovery (a DISTINCT over the
    landing table), and cross-column rules are plain column rules GX bundles together.
    """
    name = view_name(batch_id)
    derived = sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.SQL(expr), sql.Identifier(col))
                                 for col, expr in DERIVED.items())
    with connection(url) as conn:
        conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT *, {} FROM customers_incoming"
                             " WHERE batch_id = {}").format(
            sql.Identifier(name), derived, sql.Literal(batch_id)))
    return name


def drop_batch_view(url: str, batch_id: str) -> None:
    """Remove the batch view (validation is over, or starting again)."""
    with connection(url) as conn:
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(view_name(batch_id))))


def run_gx(url: str, table: str, rules: list[Rule], id_limit: int = 0,
           docs_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run rules with a GX Checkpoint on the batch view: counts only (id_limit 0), or with
    examples and up to id_limit failing ids per rule; optionally writes Data Docs."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # the generic SQL source: it also takes Unix-socket URLs (the embedded server), which
    # the Postgres source's DSN validation rejects; the SQL is pushed down the same way. GX
    # warns that a Postgres source exists (GxDatasourceWarning): a choice made, not for ops.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using a generic SQLDatasource")
        source = context.data_sources.add_sql(name="segmentation", connection_string=url)
    # (A query asset per batch was tried: GX runs the whole query to learn its columns.)
    asset = source.add_table_asset(name="customers_batch", table_name=table)
    batches = asset.add_batch_definition_whole_table(name="batch")
    suite = build_suite(context, rules)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="customers_batch", data=batches, suite=suite))
    result_format: dict[str, Any]
    if id_limit:
        result_format = {
            "result_format": "COMPLETE", "unexpected_index_column_names": ["customer_id"],
            # GX truncates SQL id lists here: one more than the quarantine may hold is
            # enough to decide, and keeps memory bounded
            "partial_unexpected_count": max(EXAMPLES, id_limit)}
    elif docs_dir is not None:  # Data Docs show examples of every rule (off the hot path)
        result_format = {"result_format": "BASIC"}
    else:
        # counts without examples: GX bundles every count into one aggregate query, and an
        # examples query with LIMIT 0 ends before it reads a row (with examples, a clean
        # column's examples query scans the whole batch looking for one)
        result_format = {"result_format": "BASIC", "partial_unexpected_count": 0}
    actions: list[Any] = []
    if docs_dir is not None:
        from great_expectations.checkpoint import UpdateDataDocsAction

        context.add_data_docs_site(site_name="segmentation", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["segmentation"]))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="customers_contract", validation_definitions=[definition],
        result_format=result_format, actions=actions))
    result = checkpoint.run()
    outcomes = []
    for run in result.run_results.values():
        for item in run.results:
            config = item.expectation_config
            assert config is not None and config.meta is not None
            outcomes.append({"rule": config.meta["rule"],
                             "success": bool(item.success), "result": item.result,
                             "error": (item.exception_info or {}).get("exception_message")})
    return outcomes


def _interpret(rules: list[Rule], raw: list[dict[str, Any]]) -> list[RuleOutcome]:
    """GX results -> outcomes with counts, examples and (for row rules) every failing id."""
    by_key = {r.key: r for r in rules}
    outcomes = []
    for item in raw:
        rule = by_key[item["rule"]]
        result = item["result"] or {}
        outcome = RuleOutcome(rule, item["success"])
        outcome.unexpected = int(result.get("unexpected_count") or 0)
        index = result.get("unexpected_index_list") or []
        outcome.ids = [str(row["customer_id"]) for row in index]
        outcome.example_rows = [(str(row["customer_id"]), format_value(row.get(rule.column)))
                                for row in index[:EXAMPLES]]
        outcome.examples = [f"{cid!r} ({value})" for cid, value in outcome.example_rows]
        if item.get("error"):
            outcome.success = False
            outcome.error = str(item["error"]).strip().splitlines()[0][:300]
        outcomes.append(outcome)
    return outcomes


@contextmanager
def batch_lock(url: str, batch_id: str, wait_s: float) -> Iterator[None]:
    """Hold the batch's validation lock for the block: a second validation of the same batch
    waits up to wait_s (0: not at all), then is told the batch is being validated."""
    conn = connect(url, autocommit=True)  # a session of its own: the lock lives as long
    try:
        key = (VALIDATION_LOCK, batch_id)
        if wait_s > 0:
            conn.execute("SELECT set_config('lock_timeout', %s, false)",
                         (f"{int(wait_s * 1000)}ms",))
            try:
                conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
                got = True
            except psycopg.errors.LockNotAvailable:
                got = False
        else:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", key).fetchone()
            got = bool(row and row[0])
        if not got:
            raise BatchBusy(f"batch {batch_id} is being validated by another run; try again "
                            "when it has finished (`segmentation batches list`)")
        yield
    finally:
        # closing releases the lock; a connection lost meanwhile (a restart) released it
        # already, and its error must not hide the validation's outcome
        conn.close()


def validate_batch(url: str, batch_id: str, *, max_quarantine_share: float = 0.05,
                   reference: dict[str, dict[str, list[float]]] | None = None,
                   docs_dir: Path | None = None, lock_wait_s: float = 600,
                   progress: Update | None = None) -> ValidationReport:
    """Validate a landed batch; accept its good rows or fail it. Records a validation_runs row.

    One validation per batch at a time (batch_lock); a batch found validated once the lock
    is held raises AlreadyValidated. With docs_dir, GX Data Docs for the batch are written
    there (slower: GX looks for examples of every rule).
    """
    with batch_lock(url, batch_id, lock_wait_s):
        return _validate_locked(url, batch_id, max_quarantine_share, reference, docs_dir,
                                progress or (lambda *_, **__: None))


def _validate_locked(url: str, batch_id: str, max_quarantine_share: float,
                     reference: dict[str, dict[str, list[float]]] | None,
                     docs_dir: Path | None, progress: Update) -> ValidationReport:
    """validate_batch, under the batch's lock."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    with connection(url) as conn:
        require_schema(conn)
        row = conn.execute("SELECT status, rows_in FROM ingest_batches WHERE batch_id = %s",
                           (batch_id,)).fetchone()
    if row is None:
        raise SegmentationError(f"no batch {batch_id!r}")
    status, rows_in = row
    if status == "validated":
        raise AlreadyValidated(f"batch {batch_id} is already validated")
    if status not in ("loaded", "failed"):
        raise SegmentationError(f"batch {batch_id} is already {status}")
    rules = contract_rules()
    allowed = int(max_quarantine_share * rows_in)
    progress(0, len(VALIDATE_STEPS), VALIDATE_STEPS[0])
    table = create_batch_view(url, batch_id)
    try:
        first = {o.rule.key: o for o in _interpret(rules, run_gx(url, table, rules,
                                                                 docs_dir=docs_dir))}
        failing = [rule for rule in rules if not first[rule.key].success]
        # A second pass only where the first pass's counts are not enough: every failing
        # id of a row rule (for the quarantine), examples of a failing value rule. A null
        # check's examples would only say "None": its count is the message.
        shown = [r for r in failing if r.tier != "row" and r.column
                 and r.expectation != "ExpectColumnValuesToNotBeNull"]
        progress(1, len(VALIDATE_STEPS), VALIDATE_STEPS[1])
        for group, limit in (([r for r in failing if r.tier == "row"], allowed + 1),
                             (shown, EXAMPLES)):
            if group:
                found = _interpret(group, run_gx(url, table, group, limit))
                first.update({o.rule.key: o for o in found})
    finally:
        drop_batch_view(url, batch_id)
    progress(2, len(VALIDATE_STEPS), VALIDATE_STEPS[2])
    outcomes = [first[rule.key] for rule in rules]
    lost = [o.error for o in outcomes if o.error and is_transient_text(o.error)]
    if lost:  # the server went away (a restart, a failover): not a verdict on the data
        raise DatabaseUnavailable(f"batch {batch_id}: the database connection was lost during "
                                  f"validation ({lost[0]}); nothing was written, validate it "
                                  "again")
    gx_seconds = time.perf_counter() - started
    failures = [o.line() for o in outcomes if o.rule.tier == "schema" and not o.success]
    # A rule GX could not evaluate proves nothing: the batch cannot count as validated.
    failures += [f"{describe(o.rule)} could not be evaluated: {o.error}" for o in outcomes
                 if o.error]
    worst = max((o.unexpected for o in outcomes if o.rule.tier == "row"), default=0)
    warnings = [o.line() for o in outcomes if o.rule.tier == "warning" and not o.success]
    run_id = str(uuid.uuid4())
    with connection(url) as conn:
        drift_started = time.perf_counter()
        drift = (feature_psi(conn, batch_id, reference or {}, rows_in)
                 if rows_in >= MIN_DRIFT_ROWS else {})
        drift_seconds = time.perf_counter() - drift_started
        warnings += drift_warnings(drift)
        if reference and rows_in < MIN_DRIFT_ROWS:
            warnings.append(f"drift not measured: {rows_in} rows < {MIN_DRIFT_ROWS}")
        # From here to the commit no accept, erasure or scoring snapshot runs: a customer
        # erased meanwhile is neither quarantined nor accepted (nor quoted as an example).
        lock_accepts(conn)
        erased_row = conn.execute(  # skipped at landing, by an erasure since, and now
            "UPDATE ingest_batches SET rows_erased = rows_erased + %s WHERE batch_id = %s"
            " RETURNING rows_erased",
            (drop_erased(conn, "customers_incoming", batch_id), batch_id)).fetchone()
        erased = int(erased_row[0]) if erased_row else 0
        quarantined = 0
        if worst <= allowed and not failures:  # every id list is complete
            quarantined = quarantine_rows(conn, batch_id, outcomes)
        broken = max(worst, quarantined)
        if broken > allowed:
            failures.append(f"at least {broken:,} of {rows_in:,} rows ({broken / rows_in:.1%}) "
                            f"break row rules, more than the allowed {max_quarantine_share:.0%}")
        success = not failures
        accepted = 0
        accept_started = time.perf_counter()
        if success:
            accept_batch(conn, batch_id)
            accepted = rows_in - quarantined - erased
        else:  # nothing of a failed batch reaches customers or the quarantine
            conn.execute("DELETE FROM customers_quarantine WHERE batch_id = %s", (batch_id,))
            quarantined = 0
        conn.execute(
            "UPDATE ingest_batches SET status = %s, rows_quarantined = %s,"
            " validated_at = clock_timestamp() WHERE batch_id = %s",
            ("validated" if success else "failed", quarantined, batch_id))
        report = ValidationReport(run_id, batch_id, success, rows_in, accepted, quarantined,
                                  outcomes, failures, warnings,
                                  round(time.perf_counter() - started, 3),
                                  {"gx_s": round(gx_seconds, 3),
                                   "drift_s": round(drift_seconds, 3),
                                   "accept_s": round(time.perf_counter() - accept_started, 3)},
                                  drift, erased)
        conn.execute(
            "INSERT INTO validation_runs (run_id, batch_id, started_at, finished_at, success,"
            " rows_in, rows_accepted, rows_quarantined, counts, failures, warnings, gx_summary,"
            " rows_erased) VALUES (%s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)",
            (run_id, batch_id, started_at, success, rows_in, accepted, quarantined,
             Json({o.rule.key: o.unexpected for o in outcomes}), Json(failures),
             Json(warnings),
             Json({"expectations": len(outcomes), "timings": report.timings,
                   "successful": sum(o.success for o in outcomes),
                   "results": [{"rule": o.rule.key, "tier": o.rule.tier, "success": o.success,
                                "unexpected": o.unexpected} for o in outcomes]}), erased))
        record_examples(conn, run_id, outcomes)
    return report


def record_examples(conn: psycopg.Connection, run_id: str, outcomes: list[RuleOutcome]) -> None:
    """Each rule's examples as rows of validation_examples (owner-only; erasure and retention
    reach them), skipping any customer erased meanwhile."""
    rows = [(o.rule.key, cid, value) for o in outcomes for cid, value in o.example_rows]
    if not rows:
        return
    conn.execute(
        "INSERT INTO validation_examples (run_id, rule, customer_id, value)"
        " SELECT %s, e.rule, e.customer_id, e.value"
        " FROM unnest(%s::text[], %s::text[], %s::text[]) e(rule, customer_id, value)"
        " WHERE NOT EXISTS (SELECT FROM erased_customers x"
        "  WHERE x.id_hash = erased_id_hash(e.customer_id))",
        (run_id, *map(list, zip(*rows, strict=True))))


def waiting_batches(conn: psycopg.Connection) -> list[str]:
    """Batches landed but not validated yet, oldest first."""
    return [str(b) for (b,) in conn.execute(
        "SELECT batch_id FROM ingest_batches WHERE status = 'loaded' ORDER BY loaded_at")]


def pending_batches(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Batches that block scoring: never validated, or failed and not discarded."""
    return [(str(b), str(s)) for b, s in conn.execute(
        "SELECT batch_id, status FROM ingest_batches WHERE status IN ('loaded', 'failed')"
        " ORDER BY loaded_at")]
