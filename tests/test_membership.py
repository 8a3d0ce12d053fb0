"""segment_membership and segment_movement against a replay in Python of what each run
published (the segment of every customer after every run), over real scoring runs: first
night, a model switch that moves nobody, movers, movers back. History holds moves only, so
the views must rebuild first assignments from the published rows' first runs."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pandas as pd

from segmentation import scoring
from segmentation.features import FEATURES
from tests.helpers import load_batch, query, register_champion


def move_customers(frame: pd.DataFrame, model, ids: list[str], to_segment: int,  # type: ignore[no-untyped-def]
                   path: Path) -> Path:
    """A batch where these customers look exactly like another segment's centre."""
    centre = model.centroids_original()[to_segment]
    moved = frame[frame["customer_id"].isin(ids)].copy()
    for i, f in enumerate(FEATURES):
        moved[f] = round(float(centre[i]), 2)
    for f in ("cash_advance_trx", "purchases_trx", "tenure"):
        moved[f] = moved[f].round()
    moved["tenure"] = moved["tenure"].clip(6, 12)
    moved["installments_purchases"] = moved["purchases"] - moved["oneoff_purchases"]
    moved.to_csv(path, index=False)
    return path


def replay(published: list[tuple[datetime, dict[str, int]]]
           ) -> dict[str, list[tuple[int, datetime]]]:
    """Stretches per customer from the published segments after each run (run start,
    customer -> segment), in order: a new stretch only where the segment changes."""
    stretches: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    for started_at, segments in published:
        for customer, segment in segments.items():
            if not stretches[customer] or stretches[customer][-1][0] != segment:
                stretches[customer].append((segment, started_at))
    return stretches


def score_and_record(db: str, model, mode: str,  # type: ignore[no-untyped-def]
                     published: list[tuple[datetime, dict[str, int]]]) -> None:
    """A scoring run, and what it left published, stamped with the run's start."""
    result = scoring.score_customers(db, model, mode=mode)
    started_at = query(db, "SELECT started_at FROM scoring_runs WHERE run_id = %s",
                       (result.run_id,))[0][0]
    published.append((started_at, dict(query(
        db, "SELECT customer_id, segment_id FROM segment_assignments"))))


def test_membership_and_movement_replay_the_history(db: str, trained, models_dir: Path,
                                                    synthetic_csv: Path, synthetic_frame,
                                                    tmp_path: Path) -> None:
    published: list[tuple[datetime, dict[str, int]]] = []
    load_batch(db, synthetic_csv)
    first = register_champion(db, trained, models_dir, "m-tl-1")
    score_and_record(db, first, "full", published)
    same = register_champion(db, trained, models_dir, "m-tl-2")  # same segments, new model
    score_and_record(db, same, "incremental", published)
    segments = published[-1][1]
    in_zero = sorted(c for c, s in segments.items() if s == 0)[:120]
    load_batch(db, move_customers(synthetic_frame, same, in_zero, 3, tmp_path / "a.csv"))
    time.sleep(0.01)
    score_and_record(db, same, "incremental", published)
    between = query(db, "SELECT now()")[0][0]
    back = in_zero[:40]
    original = synthetic_frame[synthetic_frame["customer_id"].isin(back)]
    original.to_csv(tmp_path / "b.csv", index=False)
    load_batch(db, tmp_path / "b.csv")
    score_and_record(db, same, "incremental", published)

    # history holds the moves and nothing else: 120 there, 40 back
    history = query(db, "SELECT customer_id, new_segment_id, changed_at FROM segment_history")
    assert len(history) == 160
    expected = replay(published)
    rows = query(db, "SELECT customer_id, segment_id, segment_name, valid_from, valid_to"
                     " FROM segment_membership ORDER BY customer_id, valid_from")
    got: dict[str, list[tuple[int, datetime, datetime | None]]] = defaultdict(list)
    for customer, segment, _name, valid_from, valid_to in rows:
        got[customer].append((segment, valid_from, valid_to))
    assert set(got) == set(expected) == set(segments)
    for customer, stretches in expected.items():
        ends = [start for _, start in stretches[1:]] + [None]
        assert got[customer] == [(s, start, end) for (s, start), end
                                 in zip(stretches, ends, strict=True)], customer
    # the model switch moved nobody: most customers have one stretch, and every last
    # stretch is the published segment
    assert sum(len(s) == 1 for s in got.values()) == len(got) - len(in_zero)
    now = dict(query(db, "SELECT customer_id, segment_id FROM segment_assignments"))
    assert all(got[c][-1][0] == now[c] and got[c][-1][2] is None for c in got)
    assert all(len(got[c]) == 3 for c in back) and all(len(got[c]) == 2 for c in in_zero[40:])
    # "who was in segment 3 at time D", one query, equals the replay
    names = dict(query(db, "SELECT segment_id, segment_name FROM customer_segments"
                           " GROUP BY 1, 2"))
    who = {c for (c,) in query(
        db, "SELECT customer_id FROM segment_membership WHERE segment_name = %s"
            " AND valid_from <= %s AND (valid_to > %s OR valid_to IS NULL)",
        (names[3], between, between))}
    assert who == {c for c, s in expected.items()
                   if [seg for seg, start in s if start <= between][-1] == 3}
    assert set(in_zero) <= who
    assert {name for _, _, name, _, _ in rows} == set(names.values())

    movement = query(db, "SELECT run_id, from_segment, to_segment, customers,"
                         " from_segment_name, to_segment_name FROM segment_movement")
    assert sum(m[3] for m in movement) == len(history) + len(segments)  # moves + arrivals
    first_run = query(db, "SELECT run_id FROM scoring_runs ORDER BY started_at LIMIT 1")[0][0]
    arrivals = {m[2]: m[3] for m in movement if m[1] is None}
    assert {m[0] for m in movement if m[1] is None} == {first_run}
    assert arrivals == {s: sum(v[0][0] == s for v in expected.values()) for s in arrivals}
    moved_run = [m for m in movement if m[1] == 0 and m[2] == 3]
    assert moved_run and moved_run[0][3] == 120
    assert moved_run[0][4:] == (names[0], names[3])
    assert {m[4] for m in movement if m[1] is None} == {"new customer"}
    shares = query(db, "SELECT share_pct, share FROM segment_summary")
    assert all(float(pct) == round(100 * share, 1) for pct, share in shares)
    assert round(sum(float(p) for p, _ in shares)) == 100


def test_a_customer_who_never_moved_has_one_open_stretch_from_the_first_run(
        db: str, trained, models_dir: Path, synthetic_csv: Path) -> None:
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-tl-3")
    scoring.score_customers(db, model, mode="full")
    first_at = query(db, "SELECT started_at FROM scoring_runs")[0][0]
    again = register_champion(db, trained, models_dir, "m-tl-4")  # rescored, nobody moves
    scoring.score_customers(db, again, mode="full")
    customer, segment, scored_at = query(
        db, "SELECT customer_id, segment_id, scored_at FROM segment_assignments"
            " ORDER BY customer_id LIMIT 1")[0]
    assert scored_at > first_at  # rescored by the second run, a member since the first
    assert query(db, "SELECT segment_id, valid_from, valid_to FROM segment_membership"
                     " WHERE customer_id = %s", (customer,)) == [(segment, first_at, None)]
    assert query(db, "SELECT first_scored_at, segment_id FROM customer_first_segments"
                     " WHERE customer_id = %s", (customer,)) == [(first_at, segment)]
