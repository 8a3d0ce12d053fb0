"""What must hold after any interleaving of nights, batches and erasures.

Hypothesis draws a sequence of operations, each started in a thread of its own and left
running while the next starts: partitioned full rescores (the flow's run lock held by this
process, its partitions on threads), single-process nights with and without --wait, batches
that move customers and bring new ones (landed, sometimes validated), erasures of customers
of the batch landing at that moment, and champion changes. Then everything settles, a last
quiet night runs, and the invariants are checked. The benchmark runs the same machine on a
few hundred thousand customers (benchmarks/bench_overlap.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from segmentation import privacy, registry, scoring
from segmentation.db import connection
from segmentation.generate import generate_csv
from segmentation.ingest import ingest_csv
from segmentation.validation import validate_batch
from tests.conftest import truncate_all
from tests.helpers import (
    Overlaps,
    assert_history_is_a_chain,
    assert_published_as_scored,
    partitioned_night,
    query,
    tables_holding,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

BASE = 300  # customers in the first batch; the variants add ids up to 400


def test_any_interleaving_keeps_the_published_table_true(database_url: str, trained,
                                                         models_dir: Path,
                                                         tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("overlap")
    files = {}
    for seed in (1, 2, 3):
        files[seed] = folder / f"seed{seed}.csv"
        generate_csv(files[seed], BASE + 100, seed=seed)
    lines = {seed: path.read_text().splitlines() for seed, path in files.items()}
    url = database_url
    counter = iter(range(1_000_000))

    def batch_file(seed: int, first: int, last: int, extra: list[str] | None = None) -> Path:
        rows = lines[seed][1 + first:1 + last]
        if extra:
            wanted = {f'"{i}"' for i in extra}
            rows += [r for r in lines[seed][1:] if r.split(",")[0] in wanted]
        path = folder / f"batch{next(counter)}.csv"
        path.write_text("\n".join([lines[seed][0], *rows]) + "\n")
        return path

    versions = []  # two champions to switch between: the night after each rescores everyone
    for version, mapping in (("m-il-a", trained.model.label_to_segment),
                             ("m-il-b", trained.model.label_to_segment[::-1])):
        model = dataclasses.replace(trained.model, version=version, label_to_segment=mapping)
        versions.append((model, registry.package_version(model, trained.metrics, trained.sizes)))

    class Machine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            truncate_all(url)
            self.ops = Overlaps()
            validate_batch(url, ingest_csv(url, batch_file(1, 0, BASE)).batch_id)
            for model, saved in versions:
                with connection(url) as conn:
                    registry.register_version(conn, saved, model, trained.metrics,
                                              trained.sizes, None)
            self.models = {m.version: m for m, _ in versions}
            self.promote(0)
            self.landing: list[str] = []  # ids of the batch landing now

        def champion(self):  # type: ignore[no-untyped-def]
            with connection(url) as conn:
                return self.models[registry.champion_version(conn) or ""]

        @rule(which=st.integers(0, 1))
        def promote(self, which: int) -> None:
            version = list(self.models)[which]
            with connection(url) as conn:
                if registry.champion_version(conn) != version:
                    registry.promote(conn, version)

        @rule()
        def partitioned_rescore(self) -> None:
            model = self.champion()
            self.ops.start("partitioned", lambda: partitioned_night(url, model))

        @rule(mode=st.sampled_from(["full", "incremental"]), wait=st.booleans())
        def single_night(self, mode: str, wait: bool) -> None:
            model = self.champion()
            self.ops.start(f"single {mode}", lambda: scoring.score_customers(
                url, model, mode=mode, wait=wait, wait_timeout_s=120, chunk_rows=150),  # type: ignore[arg-type]
                may_refuse=not wait)

        @rule(seed=st.sampled_from([2, 3]), first=st.integers(0, BASE), size=st.integers(1, 80),
              validate=st.booleans())
        def land_batch(self, seed: int, first: int, size: int, validate: bool) -> None:
            path = batch_file(seed, first, min(first + size, BASE + 100))
            self.landing = [r.split(",")[0].strip('"') for r in
                            path.read_text().splitlines()[1:]]

            def land() -> None:
                batch = ingest_csv(url, path).batch_id
                if validate:
                    validate_batch(url, batch, lock_wait_s=120, max_quarantine_share=1.0)

            self.ops.start("batch", land)

        @rule(pick=st.integers(0, 10_000), count=st.integers(1, 3))
        def erase(self, pick: int, count: int) -> None:
            pool = self.landing or [f"C{i:08d}" for i in range(BASE)]
            ids = sorted({pool[(pick + k * 7) % len(pool)] for k in range(count)})
            self.ops.erased.update(ids)

            def forget() -> None:
                with connection(url) as conn:
                    privacy.forget_customers(conn, ids, "interleavings")

            self.ops.start("erasure", forget)

        @rule()
        def settle(self) -> None:
            self.ops.settle()

        def teardown(self) -> None:
            if not hasattr(self, "ops"):
                return
            self.ops.settle()
            assert self.ops.errors == [], self.ops.errors
            assert all("\n" not in line for line in self.ops.refused)
            # the batches left for later are validated; a batch carrying every erased id
            pending = [b for (b,) in query(url, "SELECT batch_id FROM ingest_batches"
                                                " WHERE status = 'loaded' ORDER BY loaded_at")]
            for batch in pending:
                validate_batch(url, batch)
            if self.ops.erased:
                validate_batch(url, ingest_csv(url, batch_file(
                    2, 0, 1, extra=sorted(self.ops.erased))).batch_id)
            model = self.champion()
            scoring.score_customers(url, model, mode="full", wait=True)  # the quiet night
            assert_published_as_scored(url, model)
            assert_history_is_a_chain(url)
            for cid in self.ops.erased:
                assert tables_holding(url, cid) == {}, (cid, tables_holding(url, cid))
            bad = query(url, "SELECT b.batch_id FROM ingest_batches b JOIN validation_runs v"
                             " USING (batch_id) WHERE v.success AND b.rows_in <>"
                             " v.rows_accepted + v.rows_quarantined + v.rows_erased")
            assert bad == [], f"batches whose rows do not add up: {bad}"
            assert query(url, "SELECT count(*) FROM scoring_stage") == [(0,)]

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=10, stateful_step_count=10, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), database=None))
