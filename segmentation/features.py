"""The 17 features of CC GENERAL and the mapping from the original upper-case headers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the flows import this module to start in < 1 s
    import numpy as np
    import pandas as pd

ID_COLUMN = "customer_id"
FEATURES: tuple[str, ...] = (
    "balance",
    "balance_frequency",
    "purchases",
    "oneoff_purchases",
    "installments_purchases",
    "cash_advance",
    "purchases_frequency",
    "oneoff_purchases_frequency",
    "purchases_installments_frequency",
    "cash_advance_frequency",
    "cash_advance_trx",
    "purchases_trx",
    "credit_limit",
    "payments",
    "minimum_payments",
    "prc_full_payment",
    "tenure",
)
COLUMNS: tuple[str, ...] = (ID_COLUMN, *FEATURES)
# The original file's headers, in the original order.
ORIGINAL_HEADERS: tuple[str, ...] = ("CUST_ID", *(f.upper() for f in FEATURES))
MONEY = (
    "balance",
    "purchases",
    "oneoff_purchases",
    "installments_purchases",
    "cash_advance",
    "credit_limit",
    "payments",
    "minimum_payments",
)
FREQUENCIES = (
    "balance_frequency",
    "purchases_frequency",
    "oneoff_purchases_frequency",
    "purchases_installments_frequency",
    "cash_advance_frequency",
)
COUNTS = ("cash_advance_trx", "purchases_trx")


def normalize_name(header: str) -> str:
    """Map an incoming header (CUST_ID, BALANCE, Balance, balance) to our column name."""
    name = header.strip().strip('"').strip().lower().replace(" ", "_")
    return ID_COLUMN if name in ("cust_id", "customer_id") else name


def normalize_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The same frame with its source headers (CUST_ID, BALANCE, ...) as our column names."""
    return df.rename(columns={c: normalize_name(c) for c in df.columns})


def feature_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The 17 features as float64 in canonical order (NaN where missing)."""
    import pandas as pd

    return pd.DataFrame(
        {name: pd.to_numeric(df[name], errors="coerce").astype("float64") for name in FEATURES},
        index=df.index,
    )


def feature_matrix(df: pd.DataFrame) -> np.ndarray:
    """A float64 matrix of the features, in canonical order, for the models."""
    import numpy as np

    return feature_frame(df).to_numpy(dtype=np.float64)
