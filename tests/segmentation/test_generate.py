"""The synthetic generator: the original schema, plausible values, deterministic by seed."""

import hashlib
from pathlib import Path

import pandas as pd

from segmentation.features import FREQUENCIES, MONEY, ORIGINAL_HEADERS
from segmentation.generate import generate_csv


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_header_is_the_original_one(synthetic_csv: Path) -> None:
    assert synthetic_csv.read_text().splitlines()[0] == ",".join(ORIGINAL_HEADERS)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    generate_csv(a, 2_000, seed=1)
    generate_csv(b, 2_000, seed=1)
    generate_csv(c, 2_000, seed=2)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_values_are_plausible(synthetic_csv: Path) -> None:
    df = pd.read_csv(synthetic_csv)
    assert len(df) == 5_000 and df["CUST_ID"].is_unique
    for col in (*FREQUENCIES, "PRC_FULL_PAYMENT"):
        values = df[col.upper()]
        assert values.between(0, 1).all(), col
    for col in MONEY:
        assert (df[col.upper()].dropna() >= 0).all(), col
    assert df["TENURE"].between(6, 12).all()
    assert (df["PURCHASES"] - df["ONEOFF_PURCHASES"] - df["INSTALLMENTS_PURCHASES"]).abs().max() \
        < 0.02
    # zero-inflated money columns and a few missing minimum payments, like the real file
    assert 0.2 < (df["CASH_ADVANCE"] == 0).mean() < 0.8
    assert 0.005 < df["MINIMUM_PAYMENTS"].isna().mean() < 0.1
    # correlated: cash-advance users carry higher balances
    assert df["BALANCE"].corr(df["CASH_ADVANCE"]) > 0.2
