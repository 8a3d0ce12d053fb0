"""What a command costs a user, process start included: Prefect's temporary server per
command (the old default) against the kept local server, cold and warm.

    python benchmarks/bench_commands.py [--repeat 3]

Works like a new user: a fresh SEGMENTATION_HOME (embedded PostgreSQL, kept Prefect server),
`segmentation demo --rows 2000` once, then times whole commands with nothing to do:
`nightly` on the warm kept server, on a kept server it must start (cold), and with
SEGMENTATION_KEEP_PREFECT_SERVER=false (Prefect's temporary server, the baseline); and a
mistyped option, which must be answered before anything heavy is imported. Prints medians
and the ratios against the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "segmentation.cli"]


def timed(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """Seconds one command takes, start to exit (fails loudly on an unexpected exit)."""
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-1500:]}")
    return seconds


def median_of(repeat: int, args: list[str], env: dict[str, str], before: list[str] | None = None,
              ok: tuple[int, ...] = (0,)) -> float:
    """Median over `repeat` runs (each after `before`, untimed, if given)."""
    runs = []
    for _ in range(repeat):
        if before:
            timed(before, env)
        runs.append(timed(args, env, ok))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    home = Path(tempfile.mkdtemp(prefix="seg-bench-commands-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEGMENTATION_", "PREFECT_API_URL"))}
    env.update(SEGMENTATION_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    try:
        demo = timed(["demo", "--rows", "2000"], env)
        time.sleep(20)  # a new Prefect server is busy for its first minute (migrations, services)
        warm = median_of(repeat, ["nightly"], env)
        cold = median_of(repeat, ["nightly"], env, before=["prefect", "stop"])
        time.sleep(20)
        temporary = median_of(repeat, ["nightly"], {**env,
                                                    "SEGMENTATION_KEEP_PREFECT_SERVER": "false"})
        bad = median_of(repeat, ["nightly", "--mode", "bogus"], env, ok=(1,))
        help_s = median_of(repeat, ["--help"], env)
    finally:
        subprocess.run([*CLI, "prefect", "stop"], env=env, cwd=ROOT, capture_output=True)
        subprocess.run([*CLI, "db", "stop"], env=env, cwd=ROOT, capture_output=True)
    print(f"demo --rows 2000 on a fresh home (embedded PostgreSQL, starts the kept server): "
          f"{demo:.1f} s")
    print(f"{'command (median of ' + str(repeat) + ')':<58} {'seconds':>8} {'vs temporary':>13}")
    for label, seconds in (
            ("nightly, nothing to do, Prefect's temporary server", temporary),
            ("nightly, nothing to do, kept server cold (starts it)", cold),
            ("nightly, nothing to do, kept server warm", warm),
            ("nightly --mode bogus (refused before heavy imports)", bad),
            ("--help", help_s)):
        print(f"{label:<58} {seconds:>8.2f} {temporary / seconds:>12.1f}x")


if __name__ == "__main__":
    main()
