"""Runs, batches and erasures that overlap, on a few hundred thousand customers: the
invariants of tests/reliability/test_interleavings.py at a size where each operation takes
seconds, so they really overlap.

    python benchmarks/bench_overlap.py [--rows 300000] [--ops 30] [--seed 7]

A seeded random schedule starts each operation on a thread of its own, shortly after the
previous one (0-1.5 s): partitioned full rescores (2 partitions, the flow's lock held by this
process), single-process nights (full or incremental, with --wait, and some without, which
may be refused), batches of 1-10 % of the customers that move some and bring new ones
(validated, or left landed), erasures of customers of the batch landing at that moment,
and champion changes. Then everything settles, the batches left are validated, a batch
carrying every erased id is loaded, and a last quiet night runs. It prints what ran, how
long each kind took and waited, and checks: every customer published once in the segment
the champion gives them, history a chain of real moves, every erased id in no table, every
validated batch adding up, no waiting run failed, every refusal one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import throwaway_database  # noqa: E402
from segmentation import privacy, registry, scoring  # noqa: E402
from segmentation.db import connection  # noqa: E402
from segmentation.features import normalize_columns  # noqa: E402
from segmentation.generate import generate_csv  # noqa: E402
from segmentation.ingest import ingest_csv  # noqa: E402
from segmentation.training import train_model  # noqa: E402
from segmentation.validation import validate_batch  # noqa: E402
from tests.helpers import (  # noqa: E402
    Overlaps,
    assert_history_is_a_chain,
    assert_published_as_scored,
    partitioned_night,
    query,
    tables_holding,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--ops", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="seg-bench-overlap-"))
    os.environ["SEGMENTATION_MODELS_DIR"] = str(folder / "models")  # the registry's own
    extra = args.rows // 10
    files = {seed: folder / f"seed{seed}.csv" for seed in (1, 2)}
    for seed, path in files.items():
        generate_csv(path, args.rows + extra, seed=seed)
    header, *base_rows = files[1].read_text().splitlines()
    variant = files[2].read_text().splitlines()[1:]
    counter = iter(range(1_000_000))

    def batch_file(rows: list[str]) -> Path:
        path = folder / f"batch{next(counter)}.csv"
        path.write_text("\n".join([header, *rows]) + "\n")
        return path

    with throwaway_database() as url:
        t0 = time.perf_counter()
        validate_batch(url, ingest_csv(url, batch_file(base_rows[:args.rows])).batch_id)
        import pandas as pd

        sample = normalize_columns(pd.read_csv(files[1], nrows=20_000))
        trained = train_model(sample, "m-ovl-a", k=4, k_range=range(0), random_state=1)
        models = {}
        for version, mapping in (("m-ovl-a", trained.model.label_to_segment),
                                 ("m-ovl-b", trained.model.label_to_segment[::-1])):
            model = dataclasses.replace(trained.model, version=version, label_to_segment=mapping)
            saved = registry.package_version(model, trained.metrics, trained.sizes)
            with connection(url) as conn:
                registry.register_version(conn, saved, model, trained.metrics, trained.sizes,
                                          None)
            models[version] = model
        with connection(url) as conn:
            registry.promote(conn, "m-ovl-a")
        scoring.score_customers(url, models["m-ovl-a"], mode="full")
        print(f"set-up: {args.rows:,} customers ingested, validated and scored in "
              f"{time.perf_counter() - t0:.1f} s")

        ops = Overlaps()
        timings: dict[str, list[float]] = {}
        landing: list[str] = []

        def champion():  # type: ignore[no-untyped-def]
            with connection(url) as conn:
                return models[registry.champion_version(conn) or ""]

        def timed(kind: str, work):  # type: ignore[no-untyped-def]
            def run() -> None:
                started = time.perf_counter()
                try:
                    work()
                finally:
                    timings.setdefault(kind, []).append(time.perf_counter() - started)
            return run

        started = time.perf_counter()
        for _ in range(args.ops):
            kind = rng.choice(["partitioned", "single", "single", "refusable", "batch", "batch",
                               "erase", "promote"])
            model = champion()
            if kind == "partitioned":
                ops.start(kind, timed(kind, lambda m=model: partitioned_night(url, m, 2, 100_000)))
            elif kind in ("single", "refusable"):
                mode = rng.choice(["full", "incremental"])
                ops.start(kind, timed(kind, lambda m=model, mode=mode, w=kind == "single":
                                      scoring.score_customers(url, m, mode=mode, wait=w,
                                                              wait_timeout_s=1800)),
                          may_refuse=kind == "refusable")
            elif kind == "batch":
                size = rng.randint(args.rows // 100, args.rows // 10)
                first = rng.randint(0, args.rows + extra - size)
                rows = variant[first:first + size]
                landing = [r.split(",")[0].strip('"') for r in rows]
                path, check = batch_file(rows), rng.random() < 0.8

                def land(path: Path = path, check: bool = check) -> None:
                    batch = ingest_csv(url, path).batch_id
                    if check:
                        validate_batch(url, batch, lock_wait_s=1800, max_quarantine_share=1.0)
                ops.start(kind, timed(kind, land))
            elif kind == "erase":
                pool = landing or [f"C{i:08d}" for i in range(args.rows)]
                ids = sorted(set(rng.sample(pool, min(3, len(pool)))))
                ops.erased.update(ids)

                def forget(ids: list[str] = ids) -> None:
                    with connection(url) as conn:
                        privacy.forget_customers(conn, ids, "bench_overlap")
                ops.start(kind, timed(kind, forget))
            else:
                version = rng.choice(list(models))
                with connection(url) as conn:
                    if registry.champion_version(conn) != version:
                        registry.promote(conn, version)
            time.sleep(rng.uniform(0, 1.5))
        ops.settle()
        overlapped = time.perf_counter() - started
        for batch in [b for (b,) in query(url, "SELECT batch_id FROM ingest_batches WHERE"
                                               " status = 'loaded' ORDER BY loaded_at")]:
            validate_batch(url, batch)
        wanted = {f'"{i}"' for i in ops.erased}
        validate_batch(url, ingest_csv(url, batch_file(
            [r for r in variant if r.split(",")[0] in wanted])).batch_id)
        model = champion()
        quiet = time.perf_counter()
        scoring.score_customers(url, model, mode="full", wait=True)
        quiet = time.perf_counter() - quiet
        print(f"{args.ops} operations overlapped for {overlapped:.1f} s; the quiet night "
              f"{quiet:.1f} s")
        for kind, seconds in sorted(timings.items()):
            print(f"  {kind:<12} {len(seconds):>2} x, {min(seconds):6.1f}-{max(seconds):6.1f} s"
                  " (waits included)")
        print(f"  refused (no --wait): {len(ops.refused)}; errors: {len(ops.errors)}")
        for error in ops.errors:
            print(f"    {error}")
        checks = {
            "every run that waits completed": not ops.errors,
            "each refusal is one line": all("\n" not in r for r in ops.refused),
        }
        for name, check in (("published = segment_for(current data), once each",
                             lambda: assert_published_as_scored(url, model)),
                            ("history is a chain of real moves",
                             lambda: assert_history_is_a_chain(url))):
            try:
                check()
                checks[name] = True
            except AssertionError as exc:
                print(f"    {exc}")
                checks[name] = False
        checks[f"{len(ops.erased)} erased ids in no table"] = all(
            tables_holding(url, cid) == {} for cid in ops.erased)
        checks["every validated batch adds up"] = query(
            url, "SELECT count(*) FROM ingest_batches b JOIN validation_runs v USING (batch_id)"
                 " WHERE v.success AND b.rows_in <> v.rows_accepted + v.rows_quarantined"
                 " + v.rows_erased") == [(0,)]
        published = query(url, "SELECT count(*) FROM segment_assignments")[0][0]
        moves = query(url, "SELECT count(*) FROM segment_history")[0][0]
        print(f"published {published:,} customers, {moves:,} moves in history")
        for name, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        if not all(checks.values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
