"""Progress: log lines off a terminal, a bar on one, nothing for quick work."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from segmentation.progress import describe, track


def test_a_line_says_rows_rate_and_time_left() -> None:
    assert describe("scoring", 250_000, 1_000_000, "rows", 5.0) == (
        "scoring: 250,000 of 1,000,000 rows (50,000 rows/s, about 15 s left)")
    assert describe("scoring", 10, None, "rows", 2.0) == "scoring: 10 rows (5 rows/s)"


def test_off_a_terminal_progress_is_periodic_log_lines() -> None:
    lines: list[str] = []
    with track("loading", 100, log=lines.append, bar=False, every_s=0.05) as update:
        for done in range(0, 101, 10):
            update(done)
            time.sleep(0.02)
    assert 2 <= len(lines) <= 8, lines  # periodic: neither every update nor none
    assert all(line.startswith("loading: ") and "rows/s" in line for line in lines)


def test_quick_work_prints_nothing() -> None:
    lines: list[str] = []
    with track("loading", 100, log=lines.append, bar=False) as update:
        update(100)
    assert lines == []


def test_on_a_terminal_a_bar_shows_rows_and_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    import rich.console

    screen = io.StringIO()
    real = rich.console.Console
    monkeypatch.setattr(rich.console, "Console", lambda **kw: real(
        file=screen, force_terminal=True, width=120, **{k: v for k, v in kw.items()
                                                         if k != "stderr"}))
    with track("scoring", 1000, bar=True, show_after_s=0) as update:
        for done in (100, 500, 1000):
            update(done)
            time.sleep(0.05)
    drawn = screen.getvalue()
    assert "scoring" in drawn and "/1000" in drawn and "rows" in drawn


def test_ingest_reports_rows_as_it_loads(db: str, tmp_path: Path) -> None:
    from segmentation.generate import generate_csv
    from segmentation.ingest import ingest_csv

    path = tmp_path / "c.csv"
    generate_csv(path, 30_000, seed=3)  # several 1 MiB blocks
    seen: list[tuple[int, int]] = []
    result = ingest_csv(db, path, progress=lambda done, total=None, note=None:
                        seen.append((done, total or 0)))
    assert len(seen) >= 2 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == result.rows_in + 1  # every line, the header included
    assert all(abs(total - 30_001) < 3_000 for _, total in seen[1:])  # a fair estimate


def test_training_and_validation_report_their_steps(db: str, synthetic_frame,
                                                    synthetic_csv: Path) -> None:
    from segmentation.ingest import ingest_csv
    from segmentation.training import TRAIN_STEPS, train_model
    from segmentation.validation import VALIDATE_STEPS, validate_batch

    steps: list[tuple[int, int, str]] = []
    train_model(synthetic_frame, "m-progress", k=4, k_range=range(0),
                progress=lambda done, total, note: steps.append((done, total, note)))
    assert steps[-1] == (len(TRAIN_STEPS), len(TRAIN_STEPS), "done")
    assert "fitting KMeans" in [n for _, _, n in steps]
    checked: list[str] = []
    validate_batch(db, ingest_csv(db, synthetic_csv).batch_id,
                   progress=lambda done, total, note: checked.append(note))
    assert checked == list(VALIDATE_STEPS)
