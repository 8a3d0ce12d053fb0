"""Runs, batches and erasures that overlap: each defect of the overlap issue, reproduced."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from segmentation import privacy, scoring
from segmentation.accepting import ACCEPT_LOCK
from segmentation.db import connection
from segmentation.errors import RunLocked, SegmentationError, ValidationFailed
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch
from tests.helpers import (
    assert_history_is_a_chain,
    assert_published_as_scored,
    load_batch,
    partitioned,
    query,
    register_champion,
    stage_all,
    tables_holding,
)

pytestmark = pytest.mark.reliability


@pytest.fixture
def champion(db: str, trained, models_dir: Path, synthetic_csv: Path):  # type: ignore[no-untyped-def]
    """5,000 accepted customers and a champion."""
    load_batch(db, synthetic_csv)
    return register_champion(db, trained, models_dir, "m-overlap-1")


def write_batch(tmp_path: Path, synthetic_csv: Path, name: str, edits: dict[str, dict[str, str]],
                rows: slice = slice(1, 61)) -> Path:
    """A small batch of the synthetic file's rows (by default its first 60), with some ids'
    cells replaced: edits[id][HEADER] = value; an id not in the file is added."""
    lines = synthetic_csv.read_text().splitlines()
    header = lines[0].split(",")
    out, seen = [lines[0]], set()
    for line in lines[rows]:
        cells = line.split(",")
        cid = cells[0].strip('"')
        for column, value in edits.get(cid, {}).items():
            cells[header.index(column)] = value
        seen.add(cid)
        out.append(",".join(cells))
    template = lines[1].split(",")
    for cid, cells_edit in edits.items():
        if cid not in seen:
            cells = [f'"{cid}"', *template[1:]]
            for column, value in cells_edit.items():
                cells[header.index(column)] = value
            out.append(",".join(cells))
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


# 0. A batch that lands during a night does not fail it -------------------------------------

def test_a_batch_not_yet_validated_is_left_for_the_next_run(db: str, champion, tmp_path: Path,
                                                            synthetic_csv: Path) -> None:
    """Landed (or still validating) when the run starts: the run scores what is accepted,
    says the batch waits, and the next run after its validation scores it."""
    landed = ingest_csv(db, write_batch(tmp_path, synthetic_csv, "late",
                                        {"N0000001": {}}))  # a new customer, not validated
    for partitions in (1, 2):
        if partitions == 1:
            result = scoring.score_customers(db, champion, mode="full", wait=True)
        else:
            with partitioned(db, champion) as start:
                result = scoring.publish_staged(db, champion, start,
                                                stage_all(db, champion, start, 2))
        assert result.batches_waiting == 1 and result.rows_scored == 5_000
    assert query(db, "SELECT count(*) FROM customer_segments WHERE customer_id = 'N0000001'") \
        == [(0,)]
    validate_batch(db, landed.batch_id)
    again = scoring.score_customers(db, champion, mode="incremental")
    assert (again.batches_waiting, again.rows_new) == (0, 1)
    assert_published_as_scored(db, champion)


def test_a_failed_batch_still_stops_scoring(db: str, champion, tmp_path: Path,
                                            synthetic_csv: Path) -> None:
    bad = write_batch(tmp_path, synthetic_csv, "bad",
                      {f"C{i:08d}": {"TENURE": "99"} for i in range(10)}, slice(1, 21))
    report = validate_batch(db, ingest_csv(db, bad).batch_id)
    assert not report.success
    with pytest.raises(ValidationFailed, match=f"batch {report.batch_id} failed validation"):
        scoring.score_customers(db, champion, mode="full")
    with pytest.raises(ValidationFailed, match="failed validation"), \
            partitioned(db, champion):
        pass


# 1. A partitioned run holds the run lock until it has published ------------------------------

def test_a_single_run_waits_for_a_partitioned_run_to_publish(db: str, champion) -> None:
    """The single run cannot publish between the partitions' staging and their publish
    (it did: shared locks were released after staging). Without --wait it is refused in
    one line; with it, it runs after the publish, and history stays a chain."""
    moved = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    scoring.score_customers(db, champion, mode="full")
    done: list[object] = []

    def single() -> None:
        done.append(scoring.score_customers(db, champion, mode="full", wait=True))

    waiter = threading.Thread(target=single)
    with partitioned(db, moved) as start:
        staged = stage_all(db, moved, start, 2)
        with pytest.raises(RunLocked, match=r"another scoring run is in progress \(run "
                                            f"{start.run_id}\\); not starting a second one"):
            scoring.score_customers(db, champion, mode="full")
        waiter.start()
        time.sleep(1.5)
        assert done == [], "the waiting run must not run inside the partitioned one"
        night = scoring.publish_staged(db, moved, start, staged)
    waiter.join(120)
    assert night.rows_moved == 5_000 and done
    after = done[0]
    assert isinstance(after, scoring.ScoreResult) and after.rows_moved == 5_000
    assert query(db, "SELECT run_id::text FROM scoring_runs WHERE status = 'succeeded'"
                     " ORDER BY finished_at DESC LIMIT 1") == [(after.run_id,)]
    assert_published_as_scored(db, champion)
    assert_history_is_a_chain(db)


def test_a_stale_partitioned_publish_is_refused(db: str, champion) -> None:
    """Another run published after this one started (only a run whose flow lost the lock
    can let one in): its scores are diffs against older rows, never published."""
    scoring.score_customers(db, champion, mode="full")
    with partitioned(db, champion) as start:
        staged = stage_all(db, champion, start, 2)
        with connection(db) as conn:  # what a run that got in would have recorded
            conn.execute("INSERT INTO scoring_runs (run_id, model_version, mode, status,"
                         " started_at, finished_at) VALUES (gen_random_uuid(), %s, 'full',"
                         " 'succeeded', clock_timestamp(), clock_timestamp())",
                         (champion.version,))
        with pytest.raises(SegmentationError, match="published after this run started; its"
                                                    " scores are stale"):
            scoring.publish_staged(db, champion, start, staged)


def test_a_partition_task_of_a_dead_flow_writes_nothing(db: str, champion) -> None:
    with partitioned(db, champion) as start:
        pass  # the flow ended (its session closed): the lock is gone
    with pytest.raises(SegmentationError, match="no longer holds the run lock"):
        scoring.stage_partition(db, champion, start, 0, 2)


# 7. Scratch of dead runs is swept ---------------------------------------------------------

def test_staged_rows_of_a_dead_run_are_swept_by_the_next(db: str, champion) -> None:
    with partitioned(db, champion, build=False) as start:
        stage_all(db, champion, start, 2)
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(5_000,)]
    scoring.score_customers(db, champion, mode="full")
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


# 3. Erasure -----------------------------------------------------------------------------

def test_erasure_reaches_ids_with_any_characters(db: str, champion, tmp_path: Path,
                                                 synthetic_csv: Path) -> None:
    """Quoted in a warning's examples (CÉ1) and quarantined (Ωmega-3): gone everywhere
    (the scrub searched for the JSON-escaped form, and missed both)."""
    batch = write_batch(tmp_path, synthetic_csv, "unicode", {
        "CÉ1": {"CASH_ADVANCE_FREQUENCY": "1.25"}, "Ωmega-3": {"TENURE": "99"}})
    report = validate_batch(db, ingest_csv(db, batch).batch_id)
    assert report.success and report.rows_quarantined == 1
    assert "'CÉ1' (1.25)" in report.summary()  # the terminal shows examples
    assert tables_holding(db, "CÉ1") and tables_holding(db, "Ωmega-3")
    with connection(db) as conn:
        erasure = privacy.forget_customers(conn, ["CÉ1", "Ωmega-3"], "test")
    assert erasure.not_found == []
    assert tables_holding(db, "CÉ1") == {} and tables_holding(db, "Ωmega-3") == {}


def test_forgetting_an_unknown_id_says_so(db: str, champion) -> None:
    with connection(db) as conn:
        erasure = privacy.forget_customers(conn, ["NOPE123", "C00000001"], "test")
    assert erasure.not_found == ["NOPE123"]
    summary = erasure.summary()
    assert summary.startswith(f"erasure {erasure.erasure_id}: 1 of 2 customer id(s) found")
    assert "not held anywhere: 'NOPE123'" in summary
    assert query(db, "SELECT customers, customers_found FROM erasures") == [(2, 1)]


def test_an_erased_customer_stays_erased_until_readmitted(db: str, champion, tmp_path: Path,
                                                          synthetic_csv: Path) -> None:
    with connection(db) as conn:
        privacy.forget_customers(conn, ["C00000003"], "test")
    batch = write_batch(tmp_path, synthetic_csv, "again", {})  # carries C00000003
    landed = ingest_csv(db, batch)
    assert landed.rows_erased == 1 and any("skipped 1 row(s) of erased customers" in w
                                           for w in landed.warnings)
    report = validate_batch(db, landed.batch_id)
    assert (report.rows_in, report.rows_accepted, report.rows_erased) == (60, 59, 1)
    assert "1 erased" in report.summary()
    assert tables_holding(db, "C00000003") == {}  # the erased list holds keyed hashes only
    with connection(db) as conn:
        assert privacy.readmit_customers(conn, ["C00000003", "C00000004"], "test") == 1
    validate_batch(db, ingest_csv(db, batch).batch_id)
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id = 'C00000003'") == [(1,)]
    assert query(db, "SELECT count(*) FROM erasure_readmissions") == [(1,)]


def test_an_erasure_during_validation_is_neither_quarantined_nor_accepted(
        db: str, champion, tmp_path: Path, synthetic_csv: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch landed before the erasure (the customer is in it); the erasure commits
    while GX checks the batch: the validation takes the accept lock, then drops the
    erased rows, so the customer comes back neither as a customer nor in the quarantine."""
    batch = write_batch(tmp_path, synthetic_csv, "racing", {"C00000005": {"TENURE": "99"},
                                                            "N0000009": {}})
    landed = ingest_csv(db, batch)
    from segmentation import validation

    real = validation.run_gx

    def erase_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        with connection(db) as conn:
            privacy.forget_customers(conn, ["C00000005", "N0000009"], "test")
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "run_gx", erase_meanwhile)
    report = validate_batch(db, landed.batch_id)
    assert report.success and report.rows_erased == 2 and report.rows_quarantined == 0
    assert report.rows_accepted + report.rows_quarantined + report.rows_erased == 61
    assert tables_holding(db, "C00000005") == {} and tables_holding(db, "N0000009") == {}


def test_an_erasure_waits_for_an_accept_in_flight(db: str, champion) -> None:
    """An accept holds the accept lock until it commits; an erasure that did not wait for
    it would let the accept insert the customer right after the erasure."""
    done: list[privacy.Erasure] = []

    def forget() -> None:
        with connection(db) as conn:
            done.append(privacy.forget_customers(conn, ["C00000006"], "test"))

    with connection(db) as accepting:
        accepting.execute("SELECT pg_advisory_xact_lock(%s)", (ACCEPT_LOCK,))
        eraser = threading.Thread(target=forget)
        eraser.start()
        time.sleep(1.0)
        assert done == [], "the erasure waits for the accept"
        accepting.execute("UPDATE customers SET balance = balance + 1"
                          " WHERE customer_id = 'C00000006'")
    eraser.join(60)
    assert done and query(db, "SELECT count(*) FROM customers WHERE customer_id ="
                              " 'C00000006'") == [(0,)]


def test_rule_examples_expire_with_the_quarantine(db: str, champion, tmp_path: Path,
                                                  synthetic_csv: Path) -> None:
    batch = write_batch(tmp_path, synthetic_csv, "old", {"C00000002": {"TENURE": "99"}})
    validate_batch(db, ingest_csv(db, batch).batch_id)
    assert query(db, "SELECT count(*) FROM validation_examples") != [(0,)]
    with connection(db) as conn:
        conn.execute("UPDATE validation_examples SET recorded_at = now() - interval '91 days'")
        conn.execute("UPDATE customers_quarantine SET quarantined_at = now() - interval"
                     " '91 days'")
        privacy.apply_retention(conn, 90, 0)
    assert query(db, "SELECT count(*) FROM validation_examples") == [(0,)]
    assert tables_holding(db, "C00000002") == {"customers": 1}  # the accepted row only


# 4. Retention only shortens history --------------------------------------------------------

def test_retention_keeps_where_each_customer_started(db: str, champion) -> None:
    flipped = dataclasses.replace(champion, label_to_segment=champion.label_to_segment[::-1])
    first = scoring.score_customers(db, champion, mode="full")
    started = dict(query(db, "SELECT customer_id, segment_id FROM customer_segments"))
    scoring.score_customers(db, flipped, mode="full")
    with connection(db) as conn:
        conn.execute("UPDATE segment_history SET changed_at = changed_at - interval '10 days'")
        conn.execute("UPDATE scoring_runs SET started_at = started_at - interval '20 days'"
                     " WHERE run_id = %s", (first.run_id,))
    scoring.score_customers(db, champion, mode="full")
    movement = "SELECT to_segment, customers FROM segment_movement WHERE run_id = %s" \
               " AND from_segment IS NULL ORDER BY 1"
    new_before = query(db, movement, (first.run_id,))
    with connection(db) as conn:
        gone = privacy.apply_retention(conn, 0, 5).history_removed
    assert gone == 5_000
    assert dict(query(db, "SELECT customer_id, segment_id FROM customer_first_segments")) \
        == started
    assert query(db, movement, (first.run_id,)) == new_before
    # the first stretch ends when the customer first left it, not at the oldest move kept
    ends = query(db, "SELECT count(*) FROM segment_membership m JOIN customer_origins o"
                     " USING (customer_id) WHERE m.valid_from < o.left_at"
                     " AND m.valid_to = o.left_at")
    assert ends == [(5_000,)]
    with connection(db) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN DELETE FROM segment_history WHERE changed_at < now() - interval '5 days'"))
    assert "segment_history_changed_at_brin" in plan


# 5 and 8. Roles --------------------------------------------------------------------------

def test_the_app_role_reads_no_example_and_no_erased_list(db: str, champion, tmp_path: Path,
                                                          synthetic_csv: Path) -> None:
    import psycopg

    batch = write_batch(tmp_path, synthetic_csv, "warn",
                        {"C00000008": {"CASH_ADVANCE_FREQUENCY": "1.25"}})
    validate_batch(db, ingest_csv(db, batch).batch_id)
    with connection(db) as conn:
        conn.execute("SET ROLE segmentation_app")
        lines = conn.execute("SELECT warnings::text, failures::text FROM validation_runs"
                             ).fetchall()
        assert lines and "cash_advance_frequency outside [0, 1]: 1 row(s)" in str(lines)
        assert "C00000008" not in str(lines)
    for table in ("validation_examples", "erased_customers", "erasure_key"):
        for role in ("segmentation_app", "marketing_ro"):
            with connection(db) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SET ROLE {role}")
                conn.execute(f"SELECT * FROM {table}")


def test_segment_name_is_not_for_everyone(db: str, champion) -> None:
    import psycopg

    with connection(db) as conn:
        conn.execute("DROP ROLE IF EXISTS seg_test_nobody")
        conn.execute("CREATE ROLE seg_test_nobody")
    try:
        with connection(db) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE seg_test_nobody")
            conn.execute("SELECT segment_name(0::smallint)")
        with connection(db) as conn:
            conn.execute("SET ROLE marketing_ro")
            conn.execute("SELECT segment_name(0::smallint)")
    finally:
        with connection(db) as conn:
            conn.execute("DROP ROLE seg_test_nobody")


def test_a_role_password_is_sent_as_a_verifier(db: str, monkeypatch) -> None:
    """ALTER ROLE ... PASSWORD is logged by a server with log_statement = 'ddl': what is
    sent is the SCRAM verifier, never the password."""
    import psycopg

    from segmentation.db import set_role_password

    sent: list[str] = []
    real = psycopg.Connection.execute

    def keep(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(query if isinstance(query, str) else query.as_string(self))
        return real(self, query, params, **kwargs)

    with connection(db) as conn:
        conn.execute("DROP ROLE IF EXISTS seg_test_login")
        conn.execute("CREATE ROLE seg_test_login NOLOGIN")
    try:
        monkeypatch.setattr(psycopg.Connection, "execute", keep)
        set_role_password(db, "seg_test_login", "Tr0ub4dor&3-horse")
        monkeypatch.undo()
        assert any("ALTER ROLE" in s for s in sent)
        assert all("Tr0ub4dor" not in s for s in sent)
        assert any("SCRAM-SHA-256$" in s for s in sent)
        assert query(db, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'seg_test_login'"
                     ) == [(True,)]
    finally:
        with connection(db) as conn:
            conn.execute("DROP ROLE seg_test_login")


# 9. Who may open the app ---------------------------------------------------------------

def test_only_listed_accounts_may_use_the_app() -> None:
    from segmentation.config import user_allowed

    listed = "ops@bank.example, @marketing.bank.example"
    assert user_allowed("ops@bank.example", listed)
    assert user_allowed("Ana@Marketing.Bank.Example", listed)
    assert not user_allowed("someone@gmail.com", listed)  # signed in, not on the list
    assert not user_allowed("eve@evil-marketing.bank.example", listed)
    assert not user_allowed("ops@bank.example", "")  # an empty list admits nobody
    assert not user_allowed(None, listed)


def test_the_app_is_not_served_beyond_the_loopback_without_a_login(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    env = {**os.environ, "HOME": str(tmp_path), "SEGMENTATION_HOME": str(tmp_path / "home"),
           "SEGMENTATION_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    refused = run_cli("app", "--address", "0.0.0.0", "--port", "8599", env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: --address 0.0.0.0 serves the app beyond")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_app_logs_in_as_its_own_role_on_the_owners_server(db: str, tmp_path: Path) -> None:
    """Given only the owner's URL, the app gets a login of its own (RESET ROLE cannot undo
    a login, as it undid SET ROLE), its password kept in the home, mode 0600."""
    import psycopg

    from segmentation.db import conninfo, ensure_app_login

    url = ensure_app_login(db, tmp_path)
    assert (tmp_path / "app.password").stat().st_mode & 0o777 == 0o600
    assert ensure_app_login(db, tmp_path) == url  # the same password next time
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("RESET ROLE")
        assert conn.execute("SELECT current_user").fetchone() == ("segmentation_app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM customers_quarantine")


# 2. The kept Prefect server's stop signals only its own process --------------------------

def test_a_stale_server_pid_is_never_signalled(tmp_path: Path) -> None:
    """After a reboot the recorded pid may lead another process group: `prefect stop`
    (and a start replacing a dead server) must leave it alone."""
    import json
    import subprocess

    from segmentation.prefect_server import (
        STATE_FILE,
        PrefectServer,
        is_our_server,
        process_started,
        server_folder,
        stop_prefect_server,
    )

    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        folder = server_folder(tmp_path)
        folder.mkdir(parents=True)
        for record in ({"pid": other.pid, "port": 4200},  # an older release's record
                       {"pid": other.pid, "port": 4200, "started": 12345.0}):
            (folder / STATE_FILE).write_text(json.dumps(record))
            stop_prefect_server(tmp_path)
            assert other.poll() is None, "another program's process was signalled"
        ours = PrefectServer(other.pid, 4200, process_started(other.pid))
        assert is_our_server(ours)  # the same start time proves it
    finally:
        other.kill()
        other.wait()


# 3. Prefect keeps counts and rule names, never a customer id --------------------------------

@pytest.mark.slow
def test_prefect_keeps_no_customer_id(db: str, champion, tmp_path: Path, synthetic_csv: Path,
                                      prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly validates a batch whose warnings and quarantine name customers, then
    scores: every flow run, task run, artifact, log and event Prefect holds is read back;
    the ids are in none of them (erasure could not reach them there)."""
    import logging

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from flows.nightly_scoring import nightly
    from tests.reliability.test_concurrency_and_retries import read_all_events

    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    named = {"C00000011": {"CASH_ADVANCE_FREQUENCY": "1.25"}, "C00000012": {"TENURE": "99"}}
    ingest_csv(db, write_batch(tmp_path, synthetic_csv, "named", named))
    summary = nightly(mode="full")
    assert "cash_advance_frequency outside [0, 1]: 1 row(s)" in summary
    assert "quarantined" in summary
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, APILogHandler):
                handler.flush()
    with get_client(sync_client=True) as client:
        stored = {
            "flow runs": [r.model_dump_json() for r in client.read_flow_runs()],
            "task runs": [r.model_dump_json() for r in client.read_task_runs()],
            "artifacts": [a.model_dump_json() for a in client.read_artifacts()],
            "logs": [log.message for log in client.read_logs()],
            "events": read_all_events(client),
        }
    assert stored["artifacts"] and stored["logs"]
    leaks = {where: cid for where, values in stored.items() for cid in named
             if cid in str(values)}
    assert leaks == {}, f"customer ids stored by Prefect: {leaks}"


# 7. A failed partitioned run is discarded once every partition has ended ----------------------

@pytest.mark.slow
def test_a_failed_partition_is_discarded_after_its_siblings_end(
        db: str, champion, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partition 0 fails at once while partition 1 is still building: the flow discards
    the run's scratch only after partition 1 has ended, so nothing of it is left behind."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.nightly_scoring import partitioned_scoring
    from segmentation.rebuild import unattached_builds

    real = scoring.stage_partition

    def stage(url, model, start, part, parts, chunk_rows=100_000, progress=None):  # type: ignore[no-untyped-def]
        if part == 0:
            raise SegmentationError("partition 0 lost its worker")
        time.sleep(2.0)
        return real(url, model, start, part, parts, chunk_rows, progress)

    monkeypatch.setattr(scoring, "stage_partition", stage)
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    with pytest.raises(SegmentationError, match="partition 0 lost its worker"):
        partitioned_scoring.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(
            champion.version, "full", 2, 10_000, False, 5.0)
    with connection(db) as conn:
        assert unattached_builds(conn) == []
    assert query(db, "SELECT count(*) FROM scoring_stage") == [(0,)]


# 6. Readers wait only for the detach and the attach ------------------------------------------

@pytest.mark.parametrize("night", ["rebuild", "staged"])
def test_the_swap_lock_covers_no_analyze_and_no_drop(db: str, champion, monkeypatch,
                                                     night: str) -> None:
    """From the DETACH (which locks readers out) to the commit, the publishing session runs
    only the detach, renames and attach: the builds are analyzed before, the old partition
    dropped and the parent analyzed after the commit."""
    import psycopg

    scoring.score_customers(db, champion, mode="full")
    if night == "rebuild":  # a new champion: every row rewritten into a build table
        model = register_copy_of(db, champion, "m-overlap-2")
    else:  # the same champion, every customer moved: a staged diff that swaps
        with connection(db) as conn:
            conn.execute("UPDATE customers SET balance = balance * 50 + 10000,"
                         " cash_advance = cash_advance * 40 + 5000, loaded_at = now()")
        model = champion
    sent: list[tuple[int, str]] = []
    real = psycopg.Connection.execute

    def keep(self, query, params=None, **kwargs):  # type: ignore[no-untyped-def]
        sent.append((id(self), query if isinstance(query, str) else query.as_string(self)))
        return real(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", keep)
    result = scoring.score_customers(db, model, mode="full")
    monkeypatch.undo()
    assert result.published_by == "swap"
    detach = next(i for i, (_, text) in enumerate(sent) if "DETACH PARTITION" in text)
    writer = sent[detach][0]
    window = [text for conn, text in sent[detach:] if conn == writer]
    assert any("ATTACH PARTITION" in text for text in window)
    assert not [t for t in window if t.lstrip().upper().startswith(("ANALYZE", "DROP"))], window
    after = [text for conn, text in sent[detach:] if conn != writer]
    assert any(t.startswith("ANALYZE segment_assignments") for t in after)
    assert any(t.startswith("DROP TABLE") for t in after)


def register_copy_of(db: str, model, version: str):  # type: ignore[no-untyped-def]
    """The same model under another version, registered and promoted."""
    from segmentation import registry

    other = dataclasses.replace(model, version=version)
    with connection(db) as conn:
        row = conn.execute("SELECT metrics FROM model_versions WHERE version = %s",
                           (model.version,)).fetchone()
    assert row is not None
    saved = registry.package_version(other, row[0], {})
    with connection(db) as conn:
        registry.register_version(conn, saved, other, row[0], {}, None)
        registry.promote(conn, version)
    return other
