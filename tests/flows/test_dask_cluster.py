"""Scoring on a real Dask cluster whose workers share nothing with the flow but the database:
a `dask scheduler` and two `dask worker` processes, each with a home and environment of its
own (as on other hosts), no shared folder."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from segmentation import registry
from segmentation.db import connection
from segmentation.features import FEATURES
from tests.helpers import (
    assert_history_is_a_chain,
    free_port,
    load_batch,
    query,
    register_champion,
)

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).parent / "dask"


@dataclasses.dataclass
class Cluster:
    address: str
    workers: dict[str, subprocess.Popen[bytes]]


def host_env(home: Path, db: str, prefect_api: str) -> dict[str, str]:
    """What another host would have: the locked install, the database URL, the Prefect API;
    a home of its own and nothing of the flow's (no models folder, no SEGMENTATION_HOME)."""
    home.mkdir(parents=True)
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "HOME": str(home),
            "SEGMENTATION_HOME": str(home / ".segmentation"), "SEGMENTATION_DATABASE_URL": db,
            "PREFECT_API_URL": prefect_api, "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false",
            "DASK_DISTRIBUTED__WORKER__DAEMON": "false"}


@pytest.fixture
def cluster(db: str, prefect_api: str, tmp_path: Path) -> Iterator[Cluster]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"], env=host_env(tmp_path / "scheduler", db, prefect_api),
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = subprocess.Popen(
                [str(DASK), "worker", address, "--name", name, "--nthreads", "1",
                 "--no-dashboard", "--host", "127.0.0.1", "--local-directory",
                 str(tmp_path / name / "dask")],
                env=host_env(tmp_path / name, db, prefect_api), cwd=tmp_path / name,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append(workers[name])
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield Cluster(address, workers)
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def expected_segments(db: str, model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """What a single process scores: the model's prediction for every customer."""
    frame = pd.DataFrame(query(db, f"SELECT customer_id, {', '.join(FEATURES)} FROM customers"),
                         columns=["customer_id", *FEATURES])
    return dict(zip(frame["customer_id"], map(int, model.predict(frame)), strict=True))


def published(db: str) -> dict[str, tuple[int, str]]:
    return {cid: (seg, version) for cid, seg, version in query(
        db, "SELECT customer_id, segment_id, model_version FROM customer_segments")}


def assert_scored_as_one_process(db: str, model) -> None:  # type: ignore[no-untyped-def]
    expected = expected_segments(db, model)
    assert published(db) == {cid: (seg, model.version) for cid, seg in expected.items()}


def promote_flipped(db: str, trained, version: str):  # type: ignore[no-untyped-def]
    """A retrain promoted: the shared model with its segment ids reversed, so that every
    customer's published segment changes."""
    flipped = dataclasses.replace(trained.model, version=version,
                                  label_to_segment=trained.model.label_to_segment[::-1])
    with connection(db) as conn:
        registry.register_version(conn, registry.package_version(
            flipped, trained.metrics, trained.sizes), flipped, trained.metrics,
            trained.sizes, None)
        registry.promote(conn, version)
    return flipped


def night(mode: str = "incremental") -> str:
    """A night on the cluster; its summary. A champion whose segment ids were flipped moves
    the segment mix on purpose: drift is reported after the publish, as exit 3 would be."""
    from flows.nightly_scoring import score_flow
    from segmentation.errors import DriftDetected

    try:
        return str(score_flow(mode=mode, partitions=2))
    except DriftDetected as drifted:
        return str(drifted)


def test_nights_on_a_cluster_of_other_hosts_equal_one_process(
        db: str, cluster: Cluster, trained, models_dir: Path, synthetic_csv: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    monkeypatch.setenv("SEGMENTATION_DASK_ADDRESS", cluster.address)
    monkeypatch.setenv("SEGMENTATION_HOME", str(tmp_path / "flow-home"))
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-cluster-1")
    # the flow's models folder is not the workers': the files come from the database
    first = night("full")
    assert "5,000 in, 5,000 scored (5,000 new, 0 moved)" in first
    assert_scored_as_one_process(db, model)

    # an ordinary night: 50 customers changed
    lines = synthetic_csv.read_text().splitlines()
    header = lines[0].split(",")
    balance = header.index("BALANCE")
    changed = []
    for line in lines[1:51]:
        fields = line.split(",")
        fields[balance] = str(float(fields[balance] or 0) * 40 + 9_000)
        changed.append(",".join(fields))
    batch = tmp_path / "changed.csv"
    batch.write_text("\n".join([lines[0], *changed]) + "\n")
    load_batch(db, batch)
    assert "50 scored" in night()
    assert_scored_as_one_process(db, model)

    # the night after a retrain promoted: everyone rescored by the new champion
    flipped = promote_flipped(db, trained, "m-cluster-2")
    assert "5,000 scored (0 new, 5,000 moved)" in night()
    assert_scored_as_one_process(db, flipped)
    assert_history_is_a_chain(db)


def test_a_worker_killed_mid_run_leaves_the_published_table_whole(
        db: str, cluster: Cluster, trained, models_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from distributed import Client

    from segmentation.generate import generate_csv

    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", db)
    monkeypatch.setenv("SEGMENTATION_DASK_ADDRESS", cluster.address)
    monkeypatch.setenv("SEGMENTATION_HOME", str(tmp_path / "flow-home"))
    monkeypatch.setenv("SEGMENTATION_CHUNK_ROWS", "2000")  # partitions long enough to hit
    csv = tmp_path / "customers.csv"
    generate_csv(csv, 200_000, 7)
    load_batch(db, csv)
    model = register_champion(db, trained, models_dir, "m-kill-1")
    night("full")
    assert_scored_as_one_process(db, model)
    before = published(db)

    flipped = promote_flipped(db, trained, "m-kill-2")
    outcome: dict[str, object] = {}

    def killed_night() -> None:
        try:
            outcome["summary"] = night()
        except Exception as exc:  # the run may fail: it must say why in one line
            outcome["error"] = exc

    run = threading.Thread(target=killed_night)
    run.start()
    killed = False
    with Client(cluster.address, timeout=30) as client:
        deadline = time.monotonic() + 120
        while run.is_alive() and time.monotonic() < deadline and not killed:
            names = {addr: w["name"] for addr, w in client.scheduler_info()["workers"].items()}
            for addr, tasks in client.processing().items():
                if names.get(addr) == "w1" and any("score_partition" in str(t) for t in tasks):
                    cluster.workers["w1"].send_signal(signal.SIGKILL)
                    killed = True
            time.sleep(0.05)
    run.join(300)
    assert killed, "the partition task was never seen on w1"
    assert not run.is_alive()
    now = published(db)
    if "error" in outcome:  # failed: nothing of it published, said in one line
        assert now == before
        assert "\n" not in str(outcome["error"]).strip()
    else:  # rescheduled on the other worker: published whole, by the new champion
        assert "200,000 scored" in str(outcome["summary"])
        assert_scored_as_one_process(db, flipped)
    assert_history_is_a_chain(db)

    night()  # the next night works, on w2 alone
    assert_scored_as_one_process(db, flipped)
    assert_history_is_a_chain(db)
