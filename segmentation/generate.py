"""Synthetic customers shaped like CC GENERAL, so the demo never needs the real file.

Four latent behaviours (revolvers living on cash advances, transactors who pay in full,
instalment buyers, dormant accounts) drive correlated, zero-inflated columns.  Output is
deterministic by seed and chunk size, and streamed chunk by chunk, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from segmentation.features import FEATURES, ORIGINAL_HEADERS

CHUNK_ROWS = 100_000
# behaviour: share, credit-limit median, utilisation beta(a, b), P(one-off), P(instalment),
# P(cash advance), P(pays in full)
BEHAVIOURS = np.array(
    [
        # share  limit   util_a util_b  p_one  p_inst p_cash p_full
        [0.30, 6500.0, 5.0, 3.0, 0.30, 0.30, 0.90, 0.05],  # revolvers on cash advances
        [0.15, 9500.0, 1.2, 6.0, 0.95, 0.75, 0.15, 0.60],  # transactors, high spend
        [0.30, 3500.0, 2.0, 5.0, 0.25, 0.95, 0.10, 0.25],  # instalment buyers
        [0.25, 2500.0, 1.0, 8.0, 0.20, 0.15, 0.20, 0.10],  # dormant / low activity
    ]
)


def _chunk(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    """One chunk of n customers numbered from start."""
    b = rng.choice(len(BEHAVIOURS), size=n, p=BEHAVIOURS[:, 0])
    p = BEHAVIOURS[b]
    credit_limit = np.round(p[:, 1] * rng.lognormal(0.0, 0.45, n) / 50.0) * 50.0
    credit_limit = np.maximum(credit_limit, 50.0)
    balance = credit_limit * rng.beta(p[:, 2], p[:, 3]) * rng.uniform(0.6, 1.4, n)
    balance = np.where(rng.random(n) < 0.03, 0.0, balance)
    balance_frequency = np.where(
        balance > 0, np.clip(1.0 - rng.exponential(0.08, n), 0.0, 1.0), rng.uniform(0, 0.3, n)
    )

    has_one = rng.random(n) < p[:, 4]
    has_inst = rng.random(n) < p[:, 5]
    has_cash = rng.random(n) < p[:, 6]
    spend_scale = np.where(b == 1, 2500.0, np.where(b == 2, 700.0, 300.0))
    oneoff = np.where(has_one, spend_scale * rng.lognormal(0.0, 0.9, n), 0.0)
    inst = np.where(has_inst, 0.6 * spend_scale * rng.lognormal(0.0, 0.8, n), 0.0)
    oneoff, inst = np.round(oneoff, 2), np.round(inst, 2)
    purchases = np.round(oneoff + inst, 2)
    cash_scale = np.where(b == 0, 2200.0, 500.0)
    cash_advance = np.where(has_cash, cash_scale * rng.lognormal(0.0, 0.8, n), 0.0)

    base_freq = np.where(b == 1, 0.85, np.where(b == 2, 0.8, 0.25))
    purchases_frequency = np.where(
        purchases > 0, np.clip(rng.normal(base_freq, 0.15, n), 1 / 12, 1.0), 0.0
    )
    oneoff_frequency = np.where(has_one, purchases_frequency * rng.uniform(0.2, 1.0, n), 0.0)
    inst_frequency = np.where(has_inst, purchases_frequency * rng.uniform(0.4, 1.0, n), 0.0)
    cash_frequency = np.where(has_cash, np.clip(rng.beta(2.0, 5.0, n), 1 / 12, 1.0), 0.0)
    cash_trx = np.where(has_cash, rng.poisson(cash_frequency * 18) + 1, 0)
    purchases_trx = np.where(purchases > 0, rng.poisson(purchases_frequency * 24) + 1, 0)

    payments = (
        0.35 * balance + 0.9 * purchases + 0.5 * cash_advance
    ) * rng.lognormal(0.0, 0.35, n) + rng.exponential(50.0, n)
    minimum_payments = np.minimum(balance, payments) * rng.beta(1.5, 4.0, n) + rng.exponential(
        20.0, n
    )
    pays_full = rng.random(n) < p[:, 7]
    prc_full_payment = np.where(pays_full, np.clip(rng.beta(4.0, 1.5, n), 0.0, 1.0), 0.0)
    tenure = np.where(rng.random(n) < 0.85, 12, rng.integers(6, 12, n))

    min_pay_null = rng.random(n) < 0.035
    limit_null = rng.random(n) < 0.0002
    columns = {
        "balance": np.round(balance, 6),
        "balance_frequency": np.round(balance_frequency, 6),
        "purchases": purchases,
        "oneoff_purchases": oneoff,
        "installments_purchases": inst,
        "cash_advance": np.round(cash_advance, 6),
        "purchases_frequency": np.round(purchases_frequency, 6),
        "oneoff_purchases_frequency": np.round(oneoff_frequency, 6),
        "purchases_installments_frequency": np.round(inst_frequency, 6),
        "cash_advance_frequency": np.round(cash_frequency, 6),
        "cash_advance_trx": cash_trx.astype(np.int64),
        "purchases_trx": purchases_trx.astype(np.int64),
        "credit_limit": credit_limit,
        "payments": np.round(payments, 6),
        "minimum_payments": np.round(minimum_payments, 6),
        "prc_full_payment": np.round(prc_full_payment, 6),
        "tenure": tenure.astype(np.int64),
    }
    ids = pa.array([f"C{i:08d}" for i in range(start, start + n)], type=pa.string())
    arrays = [ids]
    for name in FEATURES:
        values = columns[name]
        mask = min_pay_null if name == "minimum_payments" else None
        mask = limit_null if name == "credit_limit" else mask
        arrays.append(pa.array(values, mask=mask))
    return pa.Table.from_arrays(arrays, names=list(ORIGINAL_HEADERS))


def iter_chunks(rows: int, seed: int, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """Yield the synthetic table chunk by chunk; chunk i is seeded by (seed, i)."""
    for index, start in enumerate(range(0, rows, chunk_rows)):
        rng = np.random.default_rng([seed, index])
        yield _chunk(rng, start + 1, min(chunk_rows, rows - start))


def generate_csv(out: Path, rows: int, seed: int = 42) -> int:
    """Write `rows` synthetic customers to `out` with the original headers; returns rows."""
    if rows < 0:
        raise ValueError("rows must be >= 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    schema = next(iter_chunks(1, seed)).schema
    written = 0
    with out.open("wb") as sink:
        sink.write((",".join(ORIGINAL_HEADERS) + "\n").encode())  # exactly the original header
        with pacsv.CSVWriter(sink, schema, write_options=options) as writer:
            for table in iter_chunks(rows, seed):
                writer.write_table(table)
                written += table.num_rows
    return written
