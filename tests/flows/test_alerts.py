"""Alerts: automations installed from the repo's file; drift fails the run loudly."""

import pytest

from tests.helpers import load_batch, query


def test_automations_install_and_replace(prefect_api: str) -> None:
    from prefect.automations import Automation

    from flows.alerts import install_automations, save_webhook_block

    block = save_webhook_block("http://127.0.0.1:9/hook")
    names = install_automations(block)
    try:
        install_automations(block)  # idempotent: replaced, not duplicated
        assert names == ["segmentation: failed flow run", "segmentation: drift detected"]
        failed = Automation.read(name=names[0])
        assert set(failed.trigger.expect) == {"prefect.flow-run.Failed",
                                              "prefect.flow-run.Crashed"}
        assert failed.actions[0].block_document_id == block
        assert "{{ flow_run.name }}" in failed.actions[0].subject
    finally:  # the shared test server must not notify a dead webhook in later tests
        for name in names:
            Automation.read(name=name).delete()


def test_major_drift_fails_the_validate_run(db: str, models_dir, prefect_api: str,
                                            synthetic_csv, tmp_path, monkeypatch) -> None:
    import pandas as pd

    from flows.retrain import retrain
    from flows.validate import validate_flow
    from segmentation.errors import DriftDetected
    from segmentation.ingest import ingest_csv

    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    load_batch(db, synthetic_csv)
    retrain(k=4)
    shifted = pd.read_csv(synthetic_csv).head(500)
    shifted["BALANCE"] = shifted["BALANCE"] * 10  # everyone's balance moves up a lot
    path = tmp_path / "shifted.csv"
    shifted.to_csv(path, index=False)
    batch = ingest_csv(db, path).batch_id
    with pytest.raises(DriftDetected, match=r"balance \d+\.\d+"):
        validate_flow()
    # the data itself passed the contract: accepted, and the drift is on record
    assert query(db, "SELECT status FROM ingest_batches WHERE batch_id = %s", (batch,)) == \
        [("validated",)]
    assert "drift: balance PSI" in str(query(db, "SELECT warnings FROM validation_runs"
                                                 " WHERE batch_id = %s", (batch,)))


def shifted_batch(synthetic_csv, tmp_path):  # type: ignore[no-untyped-def]
    """500 known customers whose balance moved up tenfold: a major feature drift."""
    import pandas as pd

    shifted = pd.read_csv(synthetic_csv).head(500)
    shifted["BALANCE"] = shifted["BALANCE"] * 10
    path = tmp_path / "shifted.csv"
    shifted.to_csv(path, index=False)
    return path


def test_drift_never_stops_the_night(db: str, models_dir, prefect_api: str, synthetic_csv,
                                     tmp_path, monkeypatch) -> None:
    """A drifted batch is validated, scored and published; then the drift is reported (a
    row, an event, an artifact) and the run fails so ops notice, in that order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import flows.validate
    from flows.nightly_scoring import nightly
    from flows.retrain import retrain
    from segmentation.errors import DriftDetected
    from segmentation.ingest import ingest_csv

    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    load_batch(db, synthetic_csv)
    retrain(k=4)
    events: list[dict] = []
    monkeypatch.setattr(flows.validate, "emit_event", lambda **kw: events.append(kw))
    batch = ingest_csv(db, shifted_batch(synthetic_csv, tmp_path)).batch_id
    with pytest.raises(DriftDetected) as drifted:
        nightly()
    message = str(drifted.value)
    assert "5,000 in, 5,000 scored" in message  # the night's work is in the message too
    assert f"drift: batch {batch}: major drift (PSI >= 0.25) in balance" in message
    assert "retention: removed 0 quarantined row(s) older than 90 days; 0 history row(s)" \
        " older than 730 days" in message  # the nightly run applies retention, and says so
    # scored and published: every customer, the shifted ones with tonight's values
    assert query(db, "SELECT count(*) FROM customer_segments") == [(5_000,)]
    assert query(db, "SELECT status FROM scoring_runs") == [("succeeded",)]
    alerts = query(db, "SELECT kind, batch_id, (psi->>'balance')::float > 0.25,"
                       " detected_at > (SELECT finished_at FROM scoring_runs) FROM drift_alerts")
    assert alerts == [("feature", batch, True, True)]  # recorded after the publish
    assert [e["event"] for e in events] == ["segmentation.drift.detected"]
    assert events[0]["payload"]["kind"] == "feature"
    with get_client(sync_client=True) as client:
        report = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["drift-report"])))
    assert report and "balance" in str(report[0].data)
    # a lasting shift does not stop later nights either
    shifted_again = ingest_csv(db, shifted_batch(synthetic_csv, tmp_path)).batch_id
    with pytest.raises(DriftDetected):
        nightly()
    assert query(db, "SELECT status FROM ingest_batches WHERE batch_id = %s",
                 (shifted_again,)) == [("validated",)]
    assert query(db, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'") == [(2,)]


def test_ingest_of_a_drifted_batch_accepts_it_and_exits_3(db: str, models_dir, trained,
                                                         synthetic_csv, tmp_path) -> None:
    import os

    from tests.helpers import register_champion, run_cli

    load_batch(db, synthetic_csv)
    register_champion(db, trained, models_dir, "m-drift-cli")
    env = {**os.environ, "SEGMENTATION_DATABASE_URL": db,
           "SEGMENTATION_HOME": str(tmp_path / "home")}
    result = run_cli("ingest", str(shifted_batch(synthetic_csv, tmp_path)), env=env)
    assert result.returncode == 3, result.stderr
    assert "validation passed; 500 rows in, 500 accepted" in result.stdout
    assert "drift: batch " in result.stderr and "balance" in result.stderr
    assert "Traceback" not in result.stderr
    assert query(db, "SELECT kind, model_version FROM drift_alerts") == \
        [("feature", "m-drift-cli")]
