"""Ingest of a file beside the COPY floor of the same file, in one run: 1 M and 10 M.

    python benchmarks/bench_ingest.py [--rows 1000000,10000000]

At each scale, in a throwaway database of its own, each stage as ops run it (a child
process), as a night of its own: after a VACUUM (autovacuum visits a table that many rows
were inserted into; by the next night it has, and the stage after a first load would
otherwise set the hint bits of ten million rows the first load wrote) and a CHECKPOINT:
  floor:        COPY of the file into an unlogged table of the 18 typed columns (best of 2);
  first load:   `segmentation ingest FILE` into an empty database (land, check, validate,
                accept);
  daily export: `segmentation ingest` of the same customers with 1 % of them changed;
  delta file:   `segmentation ingest` of just the 1 % that changed (reported beside them).
For each: seconds, floor/seconds (the targets: >= 0.5 for the first load and the daily
export), the peak RSS of the process (target <= 1 GiB), and where the time went (landing,
then the contract, drift and accept as validation_runs records them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import throwaway_database  # noqa: E402
from benchmarks.bench_scoring import checkpoint, compile_bytecode, wait_peak_rss  # noqa: E402
from segmentation.db import connection  # noqa: E402
from segmentation.features import FEATURES  # noqa: E402

FLOOR_TABLE = ("CREATE UNLOGGED TABLE bench_floor (customer_id text, "
               + ", ".join(f"{f} double precision" for f in FEATURES) + ")")


@dataclass
class Measured:
    seconds: float
    rss: int
    detail: str = ""


def write_files(folder: Path, rows: int) -> dict[str, Path]:
    """The first file, the daily export (its first 1 % changed) and the 1 % alone."""
    from segmentation.generate import generate_csv

    base, delta, daily = folder / "base.csv", folder / "delta.csv", folder / "daily.csv"
    generate_csv(base, rows, 5)
    changed = max(1, rows // 100)
    generate_csv(delta, changed, 6)  # the same first ids, new values
    with daily.open("wb") as out, delta.open("rb") as head, base.open("rb") as rest:
        out.writelines(head)
        for _ in range(changed + 1):  # the header and the rows replaced
            rest.readline()
        while block := rest.read(1 << 24):
            out.write(block)
    return {"first load": base, "daily export": daily, "delta file": delta}


def floor_seconds(url: str, path: Path) -> float:
    """COPY of the file into an unlogged typed table: what parsing and storing it costs."""
    best = float("inf")
    for _ in range(2):
        checkpoint(url)
        with connection(url) as conn:
            conn.execute("DROP TABLE IF EXISTS bench_floor")
            conn.execute(FLOOR_TABLE)
            t0 = time.perf_counter()
            with conn.cursor().copy("COPY bench_floor FROM STDIN (FORMAT csv, HEADER true)"
                                    ) as copy, path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    copy.write(block)
            best = min(best, time.perf_counter() - t0)
            conn.execute("DROP TABLE bench_floor")
    return best


def run_ingest(url: str, path: Path, env: dict[str, str]) -> Measured:
    """`segmentation ingest PATH` in a child process; its time, RSS and the validation's
    own timings."""
    with connection(url, autocommit=True) as conn:
        conn.execute("VACUUM")
    checkpoint(url)
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "segmentation.cli", "ingest", str(path)],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    rss = wait_peak_rss(child)
    seconds = time.perf_counter() - t0
    output = child.stdout.read() if child.stdout else ""
    if child.returncode not in (0, 3):
        print(output[-3000:])
        raise SystemExit(f"ingest of {path} failed with status {child.returncode}")
    with connection(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM finished_at - started_at),"
                           " gx_summary -> 'timings' FROM validation_runs"
                           " ORDER BY finished_at DESC LIMIT 1").fetchone()
    detail = ""
    if row:
        validation_s, timings = float(row[0]), row[1] or {}
        detail = (f"landing {seconds - validation_s:.1f} s, validation {validation_s:.1f} s ("
                  + ", ".join(f"{k} {v}" for k, v in timings.items()) + ")")
    return Measured(seconds, rss, detail)


def one_scale(rows: int, folder: Path) -> dict[str, Measured]:
    """Every stage at one scale, in its own database."""
    folder.mkdir()
    files = write_files(folder, rows)
    size = files["first load"].stat().st_size
    print(f"{rows:,} customers: file {size / 2**30:.2f} GiB", flush=True)
    with throwaway_database() as url:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SEGMENTATION_DATABASE_URL": url,
               "SEGMENTATION_HOME": str(folder), "DO_NOT_TRACK": "1",
               "GX_ANALYTICS_ENABLED": "false"}
        out = {"floor": Measured(floor_seconds(url, files["first load"]), 0)}
        print(f"  {'floor':<14} {out['floor'].seconds:>8.2f} s", flush=True)
        for name, path in files.items():
            m = out[name] = run_ingest(url, path, env)
            ratio = ("" if name == "delta file"  # the floor is the whole file's
                     else f"  floor/x {out['floor'].seconds / m.seconds:.2f}")
            print(f"  {name:<14} {m.seconds:>8.2f} s{ratio}  RSS {m.rss / 2**20:,.0f} MiB"
                  f"  ({m.detail})", flush=True)
    return out


def report(results: dict[int, dict[str, Measured]]) -> None:
    """One table: a row per stage, a column per scale."""
    scales = sorted(results)
    print(f"\n| ingest | {' | '.join(f'{n:,}' for n in scales)} |")
    print("|---|" + "---|" * len(scales))
    for name in ("floor", "first load", "daily export", "delta file"):
        cells = []
        for n in scales:
            m, floor = results[n][name], results[n]["floor"].seconds
            extra = ("" if name == "floor" else
                     f" ({n // 100:,} rows; RSS {m.rss / 2**20:,.0f} MiB)" if name == "delta file"
                     else f" (floor/x **{floor / m.seconds:.2f}**, RSS {m.rss / 2**20:,.0f} MiB)")
            cells.append(f"{m.seconds:.1f} s{extra}")
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated scales")
    args = parser.parse_args()
    scales = [int(n) for n in args.rows.split(",")]
    compiled = compile_bytecode()
    print(f"scales {', '.join(f'{n:,}' for n in scales)}; {os.cpu_count()} CPUs; bytecode "
          f"compiled first ({compiled:.1f} s); {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: one_scale(n, Path(tmp) / f"rows-{n}") for n in scales}
    report(results)


if __name__ == "__main__":
    main()
