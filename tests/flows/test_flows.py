"""The Prefect flows on the session's test server: wiring, gates, artifacts."""

from pathlib import Path

import pytest

from tests.helpers import load_batch, query


@pytest.fixture
def flow_env(db: str, models_dir: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    return db


def test_retrain_then_score(flow_env: str, synthetic_csv: Path) -> None:
    from flows.nightly_scoring import score_flow
    from flows.retrain import retrain

    load_batch(flow_env, synthetic_csv)
    summary = retrain(k=4, sample_size=200_000, force=False)
    assert ": champion;" in summary
    version = query(flow_env, "SELECT version FROM model_versions WHERE status = 'champion'")
    assert len(version) == 1
    first = score_flow(mode="incremental")
    assert "5,000 in, 5,000 scored" in first
    second = score_flow(mode="incremental")
    assert "0 in, 0 scored" in second
    assert query(flow_env, "SELECT count(*), count(DISTINCT model_version) FROM"
                           " customer_segments") == [(5_000, 1)]

    # a second retrain on the same data keeps ids and names and replaces the champion
    retrain(k=4, sample_size=200_000, force=False)
    names = query(flow_env, "SELECT version, segment_id, name FROM segment_profiles"
                            " ORDER BY segment_id, version")
    by_version: dict[str, list[tuple[int, str]]] = {}
    for version_, seg, name in names:
        by_version.setdefault(version_, []).append((seg, name))
    first_names, second_names = by_version.values()
    assert first_names == second_names


def test_changed_k_stays_challenger_and_says_why(flow_env: str, synthetic_csv: Path) -> None:
    from flows.retrain import retrain

    load_batch(flow_env, synthetic_csv)
    retrain(k=4)
    summary = retrain(k=6)
    assert ": challenger;" in summary and "k changed from 4 to 6" in summary
    assert query(flow_env, "SELECT k FROM model_versions WHERE status = 'champion'") == [(4,)]
    # it ends with what to run to promote it anyway, and that command does
    command = summary.splitlines()[-1].split("`")[1].split()
    assert command[:3] == ["segmentation", "models", "promote"]
    from segmentation.db import connection
    from segmentation.registry import promote

    with connection(flow_env) as conn:
        promote(conn, command[3], reason="test", changed_by="test")
    assert query(flow_env, "SELECT k FROM model_versions WHERE status = 'champion'") == [(6,)]


def test_artifacts_have_stable_keys(flow_env: str, synthetic_csv: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retrain import retrain

    load_batch(flow_env, synthetic_csv)
    retrain(k=4)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["retrain-report", "retrain-segments"])))
    assert {a.key for a in artifacts} >= {"retrain-report", "retrain-segments"}
    report = next(a for a in artifacts if a.key == "retrain-report")
    assert "tree agreement" in str(report.data) and "-> segment" in str(report.data)


def test_nightly_validates_then_scores_and_stops_on_a_bad_batch(
        flow_env: str, synthetic_csv: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.nightly_scoring import nightly
    from flows.retrain import retrain
    from segmentation.errors import ValidationFailed
    from segmentation.ingest import ingest_csv
    from tests.helpers import snapshot_segments

    load_batch(flow_env, synthetic_csv)
    retrain(k=4)
    lines = synthetic_csv.read_text().splitlines()
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("\n".join([lines[0]] + [line.replace("C0", "F0", 1) for line in lines[1:11]])
                     + "\n")
    ingest_csv(flow_env, fresh)  # landed, not validated: the nightly run validates it
    summary = nightly()
    assert "5,010 in, 5,010 scored" in summary  # first run: everyone, incl. the new 10
    assert query(flow_env, "SELECT status FROM ingest_batches ORDER BY loaded_at") == \
        [("validated",), ("validated",)]
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["validation-report", "validation-rules"])))}
    assert keys == {"validation-report", "validation-rules"}

    before = snapshot_segments(flow_env)
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([lines[0]] + [line.replace("C0", "X0", 1)
                                              .replace(",12\n", ",\n") for line in lines[1:11]])
                      .replace(",12", ",99") + "\n")  # tenure 99 on every row: > 5 % broken
    ingest_csv(flow_env, broken)
    with pytest.raises(ValidationFailed, match="failed validation"):
        nightly()
    assert snapshot_segments(flow_env) == before


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_local_dask_cluster_listens_on_the_loopback_only(processes: bool,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The local cluster the partitioned run starts opens no port on another interface
    (in-process workers default to every interface) and no fixed one (8787)."""
    import distributed.comm.inproc as inproc
    import psutil
    from distributed import LocalCluster

    from flows.common import dask_task_runner
    from segmentation.config import load_settings

    settings = load_settings().model_copy(update={"dask_processes": processes})
    kwargs = dask_task_runner(settings, 2).cluster_kwargs
    if processes:  # the workers need no Prefect API here
        kwargs = {**kwargs, "env": {}}
    looked_out: list[str] = []  # the in-process transport asks for the route to 8.8.8.8
    monkeypatch.setattr(inproc, "get_ip", lambda *a: looked_out.append("8.8.8.8") or "x")
    monkeypatch.setattr(inproc.global_manager, "_ip", None)
    with LocalCluster(**kwargs):
        me = psutil.Process()
        listening = [c.laddr for p in [me, *me.children(recursive=True)]
                     for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert all(addr.port != 8787 for addr in listening)
    assert looked_out == []  # nothing reached for the internet


def test_partition_workers_run_without_the_stack_sampling_profiler() -> None:
    """The workers of the partitioned run's local cluster do not sample the task threads'
    stacks every 10 ms (Dask's default), which would take the GIL from the scoring."""
    from distributed import LocalCluster

    from flows.common import dask_task_runner, quiet_workers
    from segmentation.config import load_settings

    kwargs = dask_task_runner(load_settings(), 2).cluster_kwargs
    with LocalCluster(**kwargs) as default:
        assert all("profile" in w.periodic_callbacks for w in default.workers.values())
    with quiet_workers(), LocalCluster(**kwargs) as quiet:
        assert quiet.workers
        assert not any("profile" in w.periodic_callbacks for w in quiet.workers.values())


def test_partition_tasks_of_one_process_share_one_loaded_model(db: str, trained,
                                                               models_dir: Path,
                                                               monkeypatch) -> None:
    """Partition tasks on one worker's threads load the night's model once between them;
    another version replaces it."""
    import threading

    from flows import nightly_scoring
    from tests.helpers import register_champion

    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    register_champion(db, trained, models_dir, "m-shared-1")
    register_champion(db, trained, models_dir, "m-shared-2")
    loads: list[str] = []
    real_load = nightly_scoring.load_model
    monkeypatch.setattr(nightly_scoring, "load_model",
                        lambda v=None: loads.append(v) or real_load(v))
    monkeypatch.setattr(nightly_scoring, "_LOADED", {})
    models = []
    threads = [threading.Thread(target=lambda: models.append(
        nightly_scoring.deferred_model("m-shared-1").model())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["m-shared-1"] and len({id(m) for m in models}) == 1
    assert nightly_scoring.deferred_model("m-shared-2").model().version == "m-shared-2"
    assert loads == ["m-shared-1", "m-shared-2"]


@pytest.mark.parametrize("processes", ["false", "true"], ids=["threads", "processes"])
def test_dask_partitions_give_the_single_process_result(flow_env: str, synthetic_csv: Path,
                                                        trained, models_dir: Path,
                                                        monkeypatch, processes: str) -> None:
    """A 2-worker local Dask cluster (worker threads, the default, or worker processes)
    scores 3 hash partitions; the published table, the history and the run's counts equal
    the single-process run's."""
    monkeypatch.setenv("SEGMENTATION_DASK_PROCESSES", processes)
    from flows.nightly_scoring import score_flow
    from segmentation.db import connection
    from tests.helpers import register_champion, snapshot_segments

    load_batch(flow_env, synthetic_csv)
    register_champion(flow_env, trained, models_dir, "m-dask-1")
    single = score_flow(mode="full")
    expected = [(cid, seg, name) for cid, seg, name, *_ in snapshot_segments(flow_env)]
    with connection(flow_env) as conn:
        conn.execute("TRUNCATE segment_assignments, segment_history")

    summary = score_flow(mode="full", partitions=3)
    assert "model m-dask-1): 5,000 in, 5,000 scored" in single
    assert "model m-dask-1): 5,000 in, 5,000 scored" in summary
    assert [(cid, seg, name) for cid, seg, name, *_ in snapshot_segments(flow_env)] == expected
    assert query(flow_env, "SELECT count(*) FROM segment_history") == [(0,)]  # no one moved
    last_run = query(flow_env, "SELECT timings->>'partitions', rows_in, rows_changed, rows_new,"
                               " published_by FROM scoring_runs ORDER BY started_at DESC"
                               " LIMIT 1")
    assert last_run == [("3", 5_000, 5_000, 5_000, "swap")]
    # every partition's rows carry the run's start, as a single-process run's do
    assert query(flow_env, "SELECT DISTINCT scored_at, first_scored_at FROM customer_segments")\
        == [(started, started) for (started,) in query(
            flow_env, "SELECT started_at FROM scoring_runs ORDER BY started_at DESC LIMIT 1")]
    # each partition built its own table, now the published table's 3 hash partitions
    assert query(flow_env, "SELECT count(*) FROM pg_inherits"
                           " WHERE inhparent = 'segment_assignments'::regclass") == [(3,)]
    assert query(flow_env, "SELECT count(*) FROM scoring_stage") == [(0,)]  # scratch dropped


def test_a_champion_from_an_earlier_release_does_not_block_the_retrain(
        flow_env: str, synthetic_csv: Path, models_dir: Path) -> None:
    """After an upgrade the champion is a pickle, which is never loaded: the retrain still
    fits, says why it cannot carry the ids over, and is promoted only with --force."""
    from flows.retrain import retrain

    load_batch(flow_env, synthetic_csv)
    retrain(k=4)
    (old,), = query(flow_env, "SELECT version FROM model_versions WHERE status = 'champion'")
    from tests.segmentation.test_registry import as_earlier_release

    folder = as_earlier_release(flow_env, old, models_dir)  # as an earlier release left it:
    (folder / "model.skops").rename(folder / "model.joblib")  # a folder with a pickle
    held = retrain(k=4)
    assert ": challenger;" in held and "pickle from an earlier release" in held
    assert query(flow_env, "SELECT version FROM model_versions WHERE status = 'champion'") \
        == [(old,)]
    forced = retrain(k=4, force=True)
    assert ": champion;" in forced


def test_a_flow_run_ends_with_its_summary_and_a_readable_report(
        flow_env: str, synthetic_csv: Path) -> None:
    import warnings

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.nightly_scoring import nightly
    from flows.retrain import retrain

    load_batch(flow_env, synthetic_csv)
    retrain(k=4)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        summary = nightly()
    assert not [w for w in seen if "SQLDatasource" in str(w.message)]  # GX's, not for ops
    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["nightly"])),
                                    sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        report, = client.read_artifacts(artifact_filter=ArtifactFilter(  # this run's own
            key=ArtifactFilterKey(any_=["scoring-report"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    # the run's last log line is "Finished in state Completed('<its summary>')"
    assert run.state is not None and run.state.message
    assert summary.splitlines()[0] in run.state.message
    text = str(report.data)
    assert "| new (scored for the first time) | 5,000 |" in text
    assert "## Published segments" in text and "segment_counts" not in text
    names = query(flow_env, "SELECT segment_name FROM segment_names n JOIN model_versions m"
                            " ON m.version = n.model_version AND m.status = 'champion'")
    assert all(name in text for (name,) in names)
