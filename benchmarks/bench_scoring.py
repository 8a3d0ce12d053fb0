"""Scoring at N customers: raw COPY floor, the naive notebook path, the Spark peer and
ours, in one run.

    python benchmarks/bench_scoring.py [--rows 1000000] [--naive/--no-naive]
        [--spark /tmp/spark-venv/bin/python]

--spark runs ../shared/peers/spark_jdbc_scoring.py (its docstring has the set-up) with that
Python against the same `customers` table, after our stages, and reports its job time
(read + predict + write every customer: what a night that rewrites every customer does).

Each stage runs in its own process, process start included (with every module compiled to
bytecode first, as an install leaves them; see compile_bytecode); the peak RSS of its process
tree is sampled every 50 ms with psutil. "Ours" is the CLI a user or the deployment runs:
`segmentation nightly` (validate tonight's batch of N rows, then score every customer
into an empty customer_segments), then `segmentation score --mode full` in one process
and on a 2-worker local Dask cluster (threads, the default, then worker processes); then
two ordinary nights: a batch of the 1 % of customers that changed, and a full export of
every customer of which 1 % changed; last the night after a retrain, when every customer is
rescored by the new model, in one process and with 2 partitions (twice: the first
partitioned night also changes the published table's layout from one partition to two,
the second is every later partitioned night). Each dask/single pair runs twice, as on 2
cores a pair varies by a few seconds from run to run: both ratios are printed, and the
ratio of the pairs' sums. Prints seconds, rows/s, peak RSS, and the ratios floor/nightly,
naive/nightly, dask/single and floor over each of the later nights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import (  # noqa: E402
    CLI_STREAMS,
    free_port,
    throwaway_database,
    wait_for_http,
)
from segmentation.db import connection  # noqa: E402

FLOOR = """
import sys
from segmentation.db import connection
url, n = sys.argv[1], int(sys.argv[2])
with connection(url) as conn:
    received = 0  # the floor reads every byte and keeps none
    # customers' partitions, each copied out as the table it is (a parent cannot be)
    for (part,) in conn.execute("SELECT relid::text FROM pg_partition_tree('customers')"
                                " WHERE isleaf").fetchall():
        with conn.cursor().copy(f"COPY {part} TO STDOUT") as copy:
            for block in copy:
                received += len(block)
    conn.execute("CREATE TEMP TABLE floor_out (customer_id text, segment_id smallint,"
                 " model_version text, scored_at timestamptz)")
    with conn.cursor().copy("COPY floor_out FROM STDIN") as copy:
        row = b"C%08d\\t1\\tm1\\t2026-01-01 00:00:00+00\\n"
        for start in range(0, n, 100_000):
            copy.write(b"".join(row % i for i in range(start, min(n, start + 100_000))))
"""

NAIVE = """
import sys
import pandas as pd
from segmentation.db import connection, sa_engine
from segmentation.registry import load_version
url = sys.argv[1]
engine = sa_engine(url)
with connection(url) as conn:
    model = load_version(conn)
df = pd.read_sql("SELECT * FROM customers", engine)
out = pd.DataFrame({"customer_id": df["customer_id"], "segment_id": model.predict(df),
                    "model_version": model.version, "scored_at": pd.Timestamp.now(tz="UTC")})
out.to_sql("naive_segments", engine, if_exists="replace", index=False, chunksize=100_000)
"""



def compile_bytecode() -> float:
    """Compile every module the stages import, as an install does (pip by default, `make
    install`, the image): where PYTHONDONTWRITEBYTECODE is set and nothing was compiled,
    each stage would otherwise compile Great Expectations, Prefect and scikit-learn from
    source, seconds a deployment never pays. Returns the seconds it took."""
    import compileall
    import sysconfig

    t0 = time.perf_counter()
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for path in [*sorted(paths), str(ROOT / "segmentation"), str(ROOT / "flows")]:
        compileall.compile_dir(path, quiet=2, workers=0)
    return time.perf_counter() - t0


def checkpoint(url: str) -> None:
    """Flush what earlier stages wrote: each stage is a night of its own, and a night does
    not start with the last one's checkpoint still writing (left running, it slows
    whichever stage follows a big write by a third, and the floor, which writes a
    temporary table, not at all)."""
    with connection(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def wait_peak_rss(child: subprocess.Popen[str]) -> int:
    """Wait for a child; the peak RSS of its process tree (Dask workers included), sampled
    every 50 ms."""
    import psutil

    process, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    return peak


def stage(label: str, argv: list[str], env: dict[str, str], rows: int) -> float:
    """Run one stage in a child process (after a checkpoint); print seconds, rows/s and the
    peak RSS of its process tree (Dask workers included)."""

    checkpoint(env["SEGMENTATION_DATABASE_URL"])
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    peak = wait_peak_rss(child)
    seconds = time.perf_counter() - t0
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        print(output[-3000:])
        raise SystemExit(f"{label} failed with status {child.returncode}")
    summary = [line for line in output.splitlines() if line.startswith("run ")]
    print(f"{label:<46} {seconds:>7.2f} s {rows / seconds:>11,.0f} rows/s "
          f"peak RSS {peak / 2**20:>7,.0f} MiB", flush=True)
    for line in summary:
        print(f"    {line}", flush=True)
    return seconds


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server for the stages, as production has one (no per-process start-up)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api"
        wait_for_http(f"{url}/health", 120)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def reset_segments(url: str) -> None:
    """Empty the published table and its history: the next stage scores from scratch."""
    with connection(url) as conn:
        conn.execute("TRUNCATE segment_assignments, segment_history")


PEER = ROOT.parent / "shared" / "peers" / "spark_jdbc_scoring.py"
REAL_CSV = ROOT.parent / "shared" / "data" / "customer_data.csv"


def spark_peer(python: str, url: str, rows: int) -> float:
    """The Spark peer's job seconds (read + predict + write), on this database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with connection(url) as conn:
        conn.execute("DROP TABLE IF EXISTS peer_spark_segments")
        conn.execute("CREATE TABLE peer_spark_segments (customer_id text PRIMARY KEY,"
                     " segment_id smallint, model_version text, scored_at timestamptz)")
    env = {**os.environ, "PGHOST": parsed.host or "127.0.0.1", "PGPORT": str(parsed.port or 5432),
           "PGUSER": parsed.username or "postgres"}
    checkpoint(url)
    t0 = time.perf_counter()
    out = subprocess.run([python, str(PEER), str(REAL_CSV), str(parsed.database)], env=env,
                         capture_output=True, text=True, check=False)
    total = time.perf_counter() - t0
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if out.returncode != 0 or line is None:
        print(out.stdout[-2000:], out.stderr[-3000:])
        raise SystemExit(f"the Spark peer failed with status {out.returncode}")
    fields = line.split()
    figures = dict(zip(fields[1::2], map(float, fields[2::2]), strict=True))
    with connection(url) as conn:
        written = conn.execute("SELECT count(*) FROM peer_spark_segments").fetchone()
    print(f"{'(s) Spark peer (local[2], JDBC): job':<46} {figures['job']:>7.2f} s "
          f"{rows / figures['job']:>11,.0f} rows/s  (start {figures['start']:.1f} s, fit "
          f"{figures['fit']:.1f} s, process {total:.1f} s; wrote {written[0] if written else 0:,})",
          flush=True)
    return figures["job"]


def full_snapshot(original: Path, out: Path, rows: int) -> None:
    """Every customer of the original file, the first 1 % with new values (another seed)."""
    from segmentation.generate import generate_csv

    changed = max(1, rows // 100)
    generate_csv(out, changed, 7)  # ids C1..: the first 1 % of the original's
    with original.open("rb") as source, out.open("ab") as sink:
        for _ in range(changed + 1):  # the header and the rows replaced above
            source.readline()
        while block := source.read(1 << 20):
            sink.write(block)


def promote_retrain(url: str, seed: int, champion: Any, models: Path) -> Any:
    """Train on another sample (ids aligned with the champion's) and promote it: the next
    night rescores every customer. Returns the new model."""
    from segmentation import registry
    from segmentation.training import load_training_frame, register_and_gate, train_model

    retrained = train_model(load_training_frame(url, 200_000, seed), registry.new_version(),
                            k=4, k_range=range(0), random_state=seed, champion=champion)
    register_and_gate(url, registry.package_version(retrained.model, retrained.metrics,
                                                 retrained.sizes), retrained,
                      force=True)
    return retrained.model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--spark", default=None,
                        help="a Python with pyspark: also run the Spark peer")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=None,
                        help="run the naive path (default: only up to 2 M rows, it needs "
                             "about 2.2 GB per million)")
    args = parser.parse_args()
    naive_too = args.naive if args.naive is not None else args.rows <= 2_000_000
    from segmentation import registry
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv
    from segmentation.training import load_training_frame, register_and_gate, train_model
    from segmentation.validation import validate_batch

    compiled = compile_bytecode()
    with throwaway_database() as url, tempfile.TemporaryDirectory() as tmp:
        os.environ["SEGMENTATION_MODELS_DIR"] = str(Path(tmp) / "models")  # here and children
        path = Path(tmp) / "customers.csv"
        generate_csv(path, args.rows, 5)
        validate_batch(url, ingest_csv(url, path, streams=CLI_STREAMS).batch_id)
        result = train_model(load_training_frame(url, 200_000, 42), registry.new_version(),
                             k=4, k_range=range(0))
        saved = registry.package_version(result.model, result.metrics, result.sizes)
        register_and_gate(url, saved, result, force=True)
        ingest_csv(url, path)  # tonight's batch: loaded, not yet validated
        with prefect_server(Path(tmp) / "prefect") as api:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGMENTATION_DATABASE_URL": url,
                   "PREFECT_API_URL": api, "DO_NOT_TRACK": "1", "PREFECT_HOME": tmp,
                   "SEGMENTATION_HOME": tmp, "GX_ANALYTICS_ENABLED": "false"}
            py, cli = [sys.executable, "-c"], [sys.executable, "-m", "segmentation.cli"]
            print(f"rows {args.rows:,}  (child processes; Prefect server running; "
                  f"{os.cpu_count()} CPUs; bytecode compiled first, {compiled:.1f} s)")
            floor = stage("(a) floor: COPY out + COPY in", [*py, FLOOR, url, str(args.rows)],
                          env, args.rows)
            naive = (stage("(b) naive: read_sql -> predict -> to_sql", [*py, NAIVE, url], env,
                           args.rows) if naive_too else None)
            nightly = stage("(c) segmentation nightly (validate + score)",
                            [*cli, "nightly"], env, args.rows)
            stage("(c') segmentation nightly again (no-op)", [*cli, "nightly"], env, args.rows)
            reset_segments(url)
            single = stage("(d) segmentation score --mode full, empty table",
                           [*cli, "score", "--mode", "full"], env, args.rows)
            reset_segments(url)
            dask = stage("(e) same, --partitions 2 (local Dask, 2 threads)",
                         [*cli, "score", "--mode", "full", "--partitions", "2"], env, args.rows)
            reset_segments(url)
            processes = stage("(e') same, worker processes instead of threads",
                              [*cli, "score", "--mode", "full", "--partitions", "2"],
                              {**env, "SEGMENTATION_DASK_PROCESSES": "true"}, args.rows)
            # the (e)/(d) pair again: on 2 cores a pair varies by a few seconds run to run
            reset_segments(url)
            dask_again = stage("(e2) (e) again", [*cli, "score", "--mode", "full",
                                                  "--partitions", "2"], env, args.rows)
            reset_segments(url)  # (f) onwards start from the one-process publish
            single_again = stage("(d2) (d) again, which (f) starts from",
                                 [*cli, "score", "--mode", "full"], env, args.rows)
            delta = Path(tmp) / "delta.csv"  # a typical night: 1 % of customers changed
            generate_csv(delta, max(1, args.rows // 100), 6)  # same ids, new values
            ingest_csv(url, delta)
            typical = stage("(f) nightly, 1 % changed (typical night)", [*cli, "nightly"],
                            env, args.rows // 100)
            # the same night when the source exports every customer: validate all N rows,
            # find the 1 % that changed, score those
            full_snapshot(path, Path(tmp) / "snapshot.csv", args.rows)
            ingest_csv(url, Path(tmp) / "snapshot.csv")
            snapshot = stage("(g) nightly, full snapshot, 1 % changed", [*cli, "nightly"],
                             env, args.rows)
            # the night after ops promote a retrained model: every customer is rescored
            # (a few thousand move: the new model's ids are aligned with the champion's)
            champion = promote_retrain(url, 43, result.model, Path(tmp) / "models")
            after_retrain = stage("(h) nightly after a retrain (all rescored)",
                                  [*cli, "nightly"], env, args.rows)
            champion = promote_retrain(url, 44, champion, Path(tmp) / "models")
            layout_change = stage("(i) (h) with --partitions 2, after a 1-partition night",
                                  [*cli, "nightly", "--partitions", "2"], env, args.rows)
            champion = promote_retrain(url, 45, champion, Path(tmp) / "models")
            retrain_dask = stage("(j) (h) with --partitions 2, after a 2-partition night",
                                 [*cli, "nightly", "--partitions", "2"], env, args.rows)
            # the (j)/(h) pair again: another later partitioned night, then one process
            champion = promote_retrain(url, 46, champion, Path(tmp) / "models")
            dask_retrain_again = stage("(j2) (j) again", [*cli, "nightly", "--partitions",
                                                          "2"], env, args.rows)
            promote_retrain(url, 47, champion, Path(tmp) / "models")
            retrain_again = stage("(h2) (h) again, after a 2-partition night",
                                  [*cli, "nightly"], env, args.rows)
            spark = spark_peer(args.spark, url, args.rows) if args.spark else None
        ratios = [f"floor/(c) first nightly {floor / nightly:.2f}",
                  f"floor/(d) first scoring {floor / single:.2f}",
                  f"floor/(h) after retrain {floor / after_retrain:.2f}",
                  f"(e)/(d) dask/single {dask / single:.2f} and {dask_again / single_again:.2f}"
                  f" (both pairs {(dask + dask_again) / (single + single_again):.2f})",
                  f"(e')/(d) processes/single {processes / single:.2f}",
                  f"(i)/(h) {layout_change / after_retrain:.2f}",
                  f"(j)/(h) dask/single {retrain_dask / after_retrain:.2f} and "
                  f"{dask_retrain_again / retrain_again:.2f} (both pairs "
                  f"{(retrain_dask + dask_retrain_again) / (after_retrain + retrain_again):.2f})",
                  f"floor/(f) typical {floor / typical:.2f}",
                  f"floor/(g) snapshot {floor / snapshot:.2f}"]
        if naive is not None:
            ratios.insert(1, f"naive/nightly {naive / nightly:.2f}")
        if spark is not None:
            ratios += [f"spark/(d) {spark / single:.2f}", f"spark/(h) {spark / after_retrain:.2f}",
                       f"spark/(c) {spark / nightly:.2f}"]
        print("   ".join(ratios))


if __name__ == "__main__":
    main()
