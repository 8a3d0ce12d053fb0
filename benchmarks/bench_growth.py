"""How a night's cost grows with the customers: 1 M, 10 M and 30 M in one run.

    python benchmarks/bench_growth.py [--rows 1000000,10000000,30000000]

At each scale, in a throwaway database built for it (generate, ingest, validate, train and
promote a champion; not timed), each stage runs as ops run it, in a child process against a
running Prefect server, after a CHECKPOINT:
  (a) the floor: COPY every customer out, and N rows of a published row into a table;
  (d) the first night: `segmentation score --mode full` into an empty published table;
  (f) a 1 % night: `segmentation nightly` with a batch of the 1 % of customers that changed
      (validate it, accept it, score those);
  (h) the night after a retrain: `segmentation nightly` after a promotion, every customer
      rescored by the new champion (a few thousand move).
For each: seconds, the floor's ratio, seconds per million customers against the 10 M
scale's, the peak RSS of the stage's process tree, the database's peak size on disk during
the stage (the database, its WAL and its temporary files) and how much more than before the
stage that peak was: the free space the night needs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import CLI_STREAMS, throwaway_database  # noqa: E402
from benchmarks.bench_scoring import (  # noqa: E402
    FLOOR,
    checkpoint,
    compile_bytecode,
    prefect_server,
    promote_retrain,
    wait_peak_rss,
)
from segmentation.db import connection  # noqa: E402

GiB = 2**30
# What the database holds on disk: its files, the server's WAL and its temporary files.
ON_DISK = ("SELECT pg_database_size(current_database())"
           " + coalesce((SELECT sum(size) FROM pg_ls_waldir()), 0)"
           " + coalesce((SELECT sum(size) FROM pg_ls_tmpdir()), 0)")


@dataclass
class Measured:
    seconds: float
    rss: int  # peak RSS of the stage's process tree, bytes
    disk_before: int  # bytes on disk when the stage started
    disk_peak: int


def on_disk(url: str) -> int:
    with connection(url, autocommit=True) as conn:
        row = conn.execute(ON_DISK).fetchone()
    return int(row[0]) if row else 0


def run_stage(label: str, argv: list[str], env: dict[str, str]) -> Measured:
    """One stage in a child process: its time, peak RSS (process tree, Dask workers too)
    and the database's size on disk, sampled every half second while it runs."""
    url = env["SEGMENTATION_DATABASE_URL"]
    checkpoint(url)
    before = on_disk(url)
    peak_disk, done = [before], threading.Event()

    def sample_disk() -> None:
        with connection(url, autocommit=True) as conn:
            while not done.wait(0.5):
                row = conn.execute(ON_DISK).fetchone()
                peak_disk[0] = max(peak_disk[0], int(row[0]) if row else 0)

    sampler = threading.Thread(target=sample_disk, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    peak = wait_peak_rss(child)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    output = child.stdout.read() if child.stdout else ""
    if child.returncode not in (0, 3):  # 3: published, and the segment mix drifted
        print(output[-3000:])
        raise SystemExit(f"{label} failed with status {child.returncode}")
    measured = Measured(seconds, peak, before, max(peak_disk[0], on_disk(url)))
    print(f"  {label:<34} {seconds:>8.2f} s  RSS {peak / 2**20:>6,.0f} MiB  disk "
          f"{measured.disk_peak / GiB:>6.2f} GiB (+{(measured.disk_peak - before) / GiB:.2f})",
          flush=True)
    with connection(url) as conn:  # where a scoring stage's time went, as the run recorded it
        row = conn.execute("SELECT timings FROM scoring_runs WHERE finished_at >="
                           " now() - make_interval(secs => %s) ORDER BY finished_at DESC"
                           " LIMIT 1", (seconds,)).fetchone()
    if row and row[0]:
        print("    " + ", ".join(f"{k} {v}" for k, v in row[0].items()), flush=True)
    return measured


def build(url: str, rows: int, folder: Path) -> tuple[Path, object]:
    """Customers landed, validated and accepted, a champion trained and promoted."""
    from segmentation import registry
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv
    from segmentation.training import load_training_frame, register_and_gate, train_model
    from segmentation.validation import validate_batch

    path = folder / "customers.csv"
    generate_csv(path, rows, 5)
    validate_batch(url, ingest_csv(url, path, streams=CLI_STREAMS).batch_id)
    result = train_model(load_training_frame(url, 200_000, 42), registry.new_version(),
                         k=4, k_range=range(0))
    register_and_gate(url, registry.package_version(result.model, result.metrics,
                                                    result.sizes), result, force=True)
    return path, result.model


def one_scale(rows: int, api: str, tmp: Path) -> dict[str, Measured]:
    """Every stage at one scale, in its own database."""
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv

    folder = tmp / f"rows-{rows}"
    folder.mkdir()
    with throwaway_database() as url:
        t0 = time.perf_counter()
        _, champion = build(url, rows, folder)
        print(f"{rows:,} customers: built in {time.perf_counter() - t0:.0f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGMENTATION_DATABASE_URL": url,
               "PREFECT_API_URL": api, "DO_NOT_TRACK": "1", "SEGMENTATION_HOME": str(folder),
               "GX_ANALYTICS_ENABLED": "false"}
        py, cli = [sys.executable, "-c"], [sys.executable, "-m", "segmentation.cli"]
        out = {"floor": run_stage("(a) floor", [*py, FLOOR, url, str(rows)], env)}
        out["first night"] = run_stage("(d) first night", [*cli, "score", "--mode", "full"],
                                       env)
        delta = folder / "delta.csv"
        generate_csv(delta, max(1, rows // 100), 6)  # the first 1 %'s ids, new values
        ingest_csv(url, delta)
        out["1 % night"] = run_stage("(f) 1 % night", [*cli, "nightly"], env)
        promote_retrain(url, 43, champion, folder)
        out["after a retrain"] = run_stage("(h) night after a retrain", [*cli, "nightly"], env)
    return out


def report(results: dict[int, dict[str, Measured]]) -> None:
    """One table: a row per stage and figure, a column per scale."""
    scales = sorted(results)
    base = 10_000_000 if 10_000_000 in results else scales[0]
    print(f"\n| stage | {' | '.join(f'{n:,}' for n in scales)} |")
    print("|---|" + "---|" * len(scales))
    for name in ("floor", "first night", "1 % night", "after a retrain"):
        cells = []
        for n in scales:
            m, floor = results[n][name], results[n]["floor"]
            per_million = m.seconds / n * 1e6
            growth = per_million / (results[base][name].seconds / base * 1e6)
            ratio = "" if name == "floor" else f", floor/x **{floor.seconds / m.seconds:.2f}**"
            cells.append(f"{m.seconds:.1f} s{ratio}; {per_million:.2f} s/M ({growth:.2f}x "
                         f"{base // 1_000_000} M's); RSS {m.rss / 2**20:,.0f} MiB; disk peak "
                         f"{m.disk_peak / GiB:.1f} GiB, +{(m.disk_peak - m.disk_before) / GiB:.1f}")
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1000000,10000000,30000000",
                        help="comma-separated scales")
    args = parser.parse_args()
    scales = [int(n) for n in args.rows.split(",")]
    compiled = compile_bytecode()
    print(f"scales {', '.join(f'{n:,}' for n in scales)}; {os.cpu_count()} CPUs; bytecode "
          f"compiled first ({compiled:.1f} s); {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, prefect_server(Path(tmp) / "prefect") as api:
        results = {n: one_scale(n, api, Path(tmp)) for n in scales}
    report(results)
    subprocess.run(["df", "-h", tempfile.gettempdir()], check=False)


if __name__ == "__main__":
    main()
