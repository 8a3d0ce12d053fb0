"""The data contract: each kind of bad input gets its own message and loses nothing."""

import dataclasses
import re
from pathlib import Path

import pytest

from segmentation import registry, scoring
from segmentation.contract import contract_rules
from segmentation.db import connection
from segmentation.drift import feature_psi, psi
from segmentation.errors import IngestError, ValidationFailed
from segmentation.features import ORIGINAL_HEADERS
from segmentation.ingest import ingest_csv
from segmentation.reports import scoring_summary
from segmentation.validation import validate_batch
from tests.helpers import load_batch, query, register_champion, snapshot_segments

ROW = "C1,40.9,0.81,95.4,0,95.4,0,0.16,0,0.08,0,0,2,1000,201.8,139.5,0,12"
HEADER = ",".join(ORIGINAL_HEADERS)


def rows(n: int, start: int = 1, **overrides: str) -> list[str]:
    """n valid rows with ids N<start..>, optionally overriding columns by name."""
    out = []
    for i in range(start, start + n):
        values = ROW.split(",")
        values[0] = f"N{i}"
        for column, value in overrides.items():
            values[ORIGINAL_HEADERS.index(column.upper())] = value
        out.append(",".join(values))
    return out


@pytest.fixture
def scored(db: str, trained, models_dir: Path, synthetic_csv: Path) -> list[tuple]:
    """A scored baseline: 5,000 customers, a champion, customer_segments published."""
    load_batch(db, synthetic_csv)
    model = register_champion(db, trained, models_dir, "m-val-1")
    scoring.score_customers(db, model, mode="full")
    return snapshot_segments(db)


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "batch.csv"
    path.write_bytes(text.encode(encoding))
    return path


def attempt(db: str, path: Path, **kwargs) -> str:
    """Ingest + validate like `segmentation ingest`; the message ops would read."""
    try:
        batch = ingest_csv(db, path, **kwargs)
    except IngestError as exc:
        return f"rejected: {exc}"
    return validate_batch(db, batch.batch_id).summary()


def assert_unchanged_and_refused(db: str, before: list[tuple], trained) -> None:
    assert snapshot_segments(db) == before
    with pytest.raises(ValidationFailed, match="failed validation"):
        scoring.score_customers(db, trained.model)
    assert snapshot_segments(db) == before


CASES = {
    "missing column": (lambda: HEADER.replace(",TENURE", "") + "\n" + ROW.rsplit(",", 1)[0],
                       r"missing column\(s\): tenure"),
    "renamed column": (lambda: HEADER.replace("PURCHASES,", "PURCHASE,", 1) + "\n" + ROW,
                       r"missing column\(s\): purchases; unexpected column\(s\): PURCHASE"),
    "text in numeric column": (lambda: HEADER + "\n" + ROW.replace(",1000,", ",lots,"),
                               r"credit_limit: 1 value\(s\) are not numbers, e\.g\. 'lots'"),
    "duplicate ids": (lambda: HEADER + "\n" + ROW + "\n" + ROW,
                      r"not unique within the batch: 1 duplicated id\(s\), e\.g\. 'C1' \(2x\)"),
    "empty file": (lambda: "", "the file is empty"),
    "header only": (lambda: HEADER + "\n", r"no data rows \(header only\)"),
    "semicolons": (lambda: (HEADER + "\n" + ROW).replace(",", ";"),
                   "semicolon-separated; pass --delimiter ';'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_file_is_rejected_whole(db: str, scored, tmp_path: Path, case: str) -> None:
    make, message = CASES[case]
    text = attempt(db, write(tmp_path, make()))
    assert text.startswith("rejected: ")
    assert re.search(message, text), text
    assert snapshot_segments(db) == scored
    assert query(db, "SELECT count(*) FROM ingest_batches") == [(1,)], "nothing was written"


def test_other_encoding_is_named(db: str, scored, tmp_path: Path) -> None:
    text = attempt(db, write(tmp_path, HEADER + "\nCé1" + ROW[2:] + "\n", "latin-1"))
    assert "not valid utf-8" in text and "--encoding latin1" in text
    assert snapshot_segments(db) == scored


@pytest.mark.parametrize(("override", "rule"), [
    ({"balance": "NaN"}, "balance within [0, 1,000,000,000]"),
    ({"payments": "inf"}, "payments within [0, 1,000,000,000]"),
    ({"cash_advance": "-12.5"}, "cash_advance within [0, 1,000,000,000]"),
    ({"purchases_frequency": "1.2"}, "purchases_frequency within [0, 1]"),
    ({"tenure": "3"}, "tenure within [6, 12]"),
    ({"purchases_trx": "2.5"}, "cash_advance_trx and purchases_trx are whole numbers"),
    ({"credit_limit": "0"}, "credit_limit within (0, 1,000,000,000]"),
])
def test_bad_rows_are_quarantined_with_their_rule(db: str, scored, tmp_path: Path,
                                                  override: dict[str, str], rule: str) -> None:
    text = HEADER + "\n" + "\n".join(rows(1, 1, **override) + rows(99, 2)) + "\n"
    summary = attempt(db, write(tmp_path, text))
    assert "validation passed; 100 rows in, 99 accepted, 1 quarantined" in summary, summary
    broken = rule.replace(" within ", " outside ") if " within " in rule else f"breaks: {rule}"
    assert f"quarantined by [row] {broken}: 1 row(s)" in summary  # what the row is like
    assert query(db, "SELECT customer_id, rules FROM customers_quarantine") == [("N1", [rule])]
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id = 'N1'") == [(0,)]
    assert snapshot_segments(db) == scored  # nothing published until the next scoring run
    result = scoring.score_customers(db, scoring_model(db),
                                     mode="incremental")
    assert (result.rows_scored, result.rows_quarantined) == (99, 1)  # 99 + 1 = 100 incoming


def scoring_model(db: str):
    with connection(db) as conn:
        return registry.load_version(conn)


def test_too_many_bad_rows_fail_the_batch(db: str, scored, tmp_path: Path, trained) -> None:
    text = HEADER + "\n" + "\n".join(rows(40, 1, balance="") + rows(60, 41)) + "\n"
    summary = attempt(db, write(tmp_path, text))
    assert "validation FAILED" in summary
    assert "at least 40 of 100 rows (40.0%) break row rules, more than the allowed 5%" in summary
    assert "row rule broken: [row] balance is null: 40 row(s)" in summary
    assert query(db, "SELECT count(*) FROM customers_quarantine") == [(0,)]
    assert query(db, "SELECT count(*) FROM customers WHERE customer_id LIKE 'N%%'") == [(0,)]
    assert_unchanged_and_refused(db, scored, trained)


def test_mostly_missing_imputed_column_fails_the_batch(db: str, scored, tmp_path: Path,
                                                       trained) -> None:
    text = HEADER + "\n" + "\n".join(rows(40, 1, minimum_payments="") + rows(60, 41)) + "\n"
    summary = attempt(db, write(tmp_path, text))
    assert "failure: [schema] minimum_payments is null in more than 20% of rows: 40 row(s)" \
        in summary
    assert_unchanged_and_refused(db, scored, trained)


def test_unvalidated_batch_is_left_for_the_next_run(db: str, scored, tmp_path: Path,
                                                    trained) -> None:
    """A batch landed but not validated (or still validating) does not stop a run: the run
    scores what was accepted, and says the batch waits."""
    ingest_csv(db, write(tmp_path, HEADER + "\n" + "\n".join(rows(5)) + "\n"))
    model = dataclasses.replace(trained.model, version="m-val-1")
    result = scoring.score_customers(db, model)
    assert result.batches_waiting == 1 and "1 batch landed but not validated yet" in \
        scoring_summary(result)
    assert snapshot_segments(db) == scored


def test_hostile_ids_survive_validation_verbatim(db: str, scored, tmp_path: Path) -> None:
    hostile = ["'; DROP TABLE customer_segments; --", 'q"uote', "semi;colon", "客户-🙂"]
    lines = [f'"{h.replace(chr(34), chr(34) * 2)}"' + ROW[2:] for h in hostile]
    summary = attempt(db, write(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n"))
    assert "4 accepted" in summary
    stored = {r[0] for r in query(db, "SELECT customer_id FROM customers")}
    assert set(hostile) <= stored


def test_real_file_passes_with_warnings(db: str, real_data: Path) -> None:
    report = validate_batch(db, ingest_csv(db, real_data).batch_id)
    assert report.success and report.rows_in == 8_950
    assert report.rows_accepted + report.rows_quarantined == 8_950
    text = report.summary()
    assert "cash_advance_frequency outside [0, 1]: 8 row(s)" in text  # scored, documented
    # examples as people write numbers (the gap was 88.97999999999996)
    assert "'C10533' (88.98)" in text and "999999" not in text
    assert "minimum_payments is null: 313 row(s)" in text
    assert "credit_limit is null: 1 row(s)" in text
    assert query(db, "SELECT success, rows_in, rows_accepted FROM validation_runs") == \
        [(True, 8_950, 8_950)]


def test_every_rule_says_why() -> None:
    rules = contract_rules()
    assert len({r.key for r in rules}) == len(rules)
    assert all(r.why for r in rules)
    assert {r.tier for r in rules} == {"schema", "row", "warning"}


def test_psi_bands() -> None:
    same = [0.1] * 10
    assert psi(same, same) == pytest.approx(0)
    assert psi(same, [0.3, 0.3] + [0.05] * 8) > 0.25


def test_feature_psi_counts_the_buckets_of_width_bucket(db: str, synthetic_csv: Path,
                                                       synthetic_frame) -> None:
    import numpy as np

    from segmentation.features import feature_frame
    from segmentation.training import reference_distribution

    # the reference: the same customers with balance doubled, so balance drifts
    shifted = feature_frame(synthetic_frame)
    shifted["balance"] *= 2
    reference = reference_distribution(shifted.to_numpy())
    batch = ingest_csv(db, synthetic_csv)
    with connection(db) as conn:
        exact = feature_psi(conn, batch.batch_id, reference, batch.rows_in, sample_rows=10**9)
        sampled = feature_psi(conn, batch.batch_id, reference, batch.rows_in, sample_rows=2_000)
    for feature, ref in reference.items():  # the same buckets, computed in numpy
        values = synthetic_frame[feature].dropna().to_numpy(dtype=float)
        shares = np.bincount(np.searchsorted(ref["edges"], values, side="right"),
                             minlength=len(ref["proportions"])) / len(values)
        assert exact[feature] == pytest.approx(psi(ref["proportions"], list(shares)))
        assert sampled[feature] == pytest.approx(exact[feature], abs=0.05)
    assert exact["balance"] > 0.25 and sampled["balance"] > 0.25
    assert max(v for f, v in exact.items() if f != "balance") < 0.01


def test_a_clean_batch_takes_one_gx_pass_and_counts_its_warnings(
        db: str, synthetic_csv: Path, synthetic_frame, monkeypatch: pytest.MonkeyPatch) -> None:
    from segmentation import validation

    passes: list[int] = []
    real = validation.run_gx
    monkeypatch.setattr(validation, "run_gx",
                        lambda *a, **k: passes.append(len(a[2])) or real(*a, **k))
    report = validate_batch(db, ingest_csv(db, synthetic_csv).batch_id)
    nulls = int(synthetic_frame["minimum_payments"].isna().sum())
    assert nulls and f"[warning] minimum_payments is null: {nulls:,} row(s)" in report.warnings
    assert passes == [len(contract_rules())], "the null counts come from the first pass"


def test_small_batches_do_not_claim_drift(db: str, scored, tmp_path: Path) -> None:
    reference = {"balance": {"edges": [1.0, 2.0], "proportions": [0.9, 0.05, 0.05]}}
    batch = ingest_csv(db, write(tmp_path, HEADER + "\n" + "\n".join(rows(10)) + "\n"))
    report = validate_batch(db, batch.batch_id, reference=reference)
    assert report.drift == {} and "drift not measured: 10 rows < 500" in report.summary()


def test_data_docs_are_written_when_asked(db: str, tmp_path: Path) -> None:
    batch = ingest_csv(db, write(tmp_path, HEADER + "\n" + "\n".join(rows(20)) + "\n"))
    docs = tmp_path / "gx_docs"
    validate_batch(db, batch.batch_id, docs_dir=docs)
    assert (docs / "index.html").is_file()
    pages = list((docs / "validations").rglob("*.html"))
    assert pages and "cash_advance_frequency" in pages[0].read_text()


def test_batch_view_is_dropped_after_validation(db: str, tmp_path: Path) -> None:
    """GX reads a per-batch view; none is left behind, whether the batch passes or fails."""
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("\n".join([HEADER, *rows(50)]) + "\n")
    bad.write_text("\n".join([HEADER, *rows(50, start=100, tenure="40")]) + "\n")
    assert validate_batch(db, ingest_csv(db, good).batch_id).success
    assert not validate_batch(db, ingest_csv(db, bad).batch_id).success
    assert query(db, "SELECT count(*) FROM pg_views WHERE viewname LIKE 'validation_batch%%'") \
        == [(0,)]
