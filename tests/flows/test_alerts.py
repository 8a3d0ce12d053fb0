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
