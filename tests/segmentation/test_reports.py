"""What runs say in words: summaries, progress lines and drift bands a reader can trust."""

import pytest

from segmentation.drift import drift_warnings, psi_band
from segmentation.progress import describe
from segmentation.reports import count, scoring_markdown, scoring_summary
from segmentation.runs import ScoreResult


def first_night() -> ScoreResult:
    return ScoreResult("r-1", "m-1", "full", rows_in=8_950, rows_scored=8_950,
                       rows_changed=8_950, rows_new=8_950, seconds=3.2, published_by="swap",
                       segment_counts={0: 3_367, 1: 1_198, 2: 3_976, 3: 409},
                       timings={"stream_s": 1.25, "predict_s": 0.5, "partitions": 1})


def test_a_first_night_says_new_customers_not_changed_ones() -> None:
    line = scoring_summary(first_night())
    assert "8,950 in, 8,950 scored (8,950 new, 0 moved)" in line
    assert "changed" not in line and "quarantined" not in line  # nothing to say: not said
    assert "0 steps/s" not in line and "batch" not in line


def test_a_night_after_a_promotion_says_who_kept_their_segment() -> None:
    night = ScoreResult("r-2", "m-2", "incremental", rows_in=100, rows_scored=100,
                        rows_changed=60, rows_new=5, rows_moved=15, rows_quarantined=1,
                        batches_waiting=2, seconds=1.0)
    line = scoring_summary(night)
    assert "(5 new, 15 moved, 40 rescored by this model in the same segment)" in line
    assert "1 row quarantined" in line and "2 batches landed but not validated" in line


def test_the_scoring_artifact_reads_as_a_report() -> None:
    text = scoring_markdown(first_night(), {0: "Instalment buyers", 3: "High spenders"})
    assert "| new (scored for the first time) | 8,950 |" in text
    assert "| 3 | High spenders | 409 | 4.6% |" in text  # the published segments, named
    assert "| stream | 1.25 |" in text  # timings as a table, not a Python dict
    assert "{" not in text and "segment_counts" not in text and "rows_changed" not in text


@pytest.mark.parametrize(("n", "said"), [(0, "0 rows"), (1, "1 row"), (8_950, "8,950 rows")])
def test_counts_agree_with_their_noun(n: int, said: str) -> None:
    assert count(n, "row") == said


def test_a_slow_rate_is_not_shown_as_zero() -> None:
    line = describe("validating", 3, 12, "steps", 9.0)
    assert "0.33 steps/s" in line and "about 27 s left" in line
    assert "(12,000 rows/s" in describe("loading", 12_000, None, "rows", 1.0)


def test_a_psi_shown_as_025_is_in_one_band_whichever_side_it_rounds_from() -> None:
    warnings = drift_warnings({"balance": 0.2496, "purchases": 0.2503, "tenure": 0.0951})
    assert warnings == [
        "drift: balance PSI 0.25 (major shift vs the champion's training data)",
        "drift: purchases PSI 0.25 (major shift vs the champion's training data)",
        "drift: tenure PSI 0.10 (moderate shift vs the champion's training data)"]
    assert psi_band(0.094) is None
