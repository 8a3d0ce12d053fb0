"""Why a customer is in their segment, in the data's units, from the model that decided it.

KMeans puts a customer in the segment whose centre is nearest (after imputing and scaling),
so the exact reason for "this segment rather than the next closest one" is how much each
feature brings the customer nearer to this centre than to that one. The explanation ranks
the features by that contribution and quotes the customer's value against both centres in
original units: it is computed from the same distances that made the decision, so it can
never point elsewhere than the answer. (The decision tree is the global summary; it agrees
with the segments for most customers, not all.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from segmentation.features import COUNTS, FEATURES, FREQUENCIES

if TYPE_CHECKING:
    import pandas as pd

    from segmentation.clustering import SegmentationModel

LABELS = {
    "balance": "balance",
    "balance_frequency": "how often the balance is updated",
    "purchases": "purchases",
    "oneoff_purchases": "one-off purchases",
    "installments_purchases": "instalment purchases",
    "cash_advance": "cash advance",
    "purchases_frequency": "months with purchases",
    "oneoff_purchases_frequency": "months with one-off purchases",
    "purchases_installments_frequency": "months with instalment purchases",
    "cash_advance_frequency": "months with a cash advance",
    "cash_advance_trx": "cash-advance transactions",
    "purchases_trx": "purchase transactions",
    "credit_limit": "credit limit",
    "payments": "payments",
    "minimum_payments": "minimum payments",
    "prc_full_payment": "months paid in full",
    "tenure": "tenure (months)",
}
SHARES = (*FREQUENCIES, "prc_full_payment")


def label(feature: str) -> str:
    """A feature as marketing says it."""
    return LABELS.get(feature, feature.replace("_", " "))


def in_units(feature: str, value: float | None) -> str:
    """A value as people read it: money without cents, shares as percentages, counts whole."""
    if value is None or value != value:
        return "missing"
    if feature in SHARES:
        return f"{value:.0%}"
    if feature in COUNTS or feature == "tenure":
        return f"{value:,.0f}"
    return f"{value:,.0f}"


@dataclass(frozen=True)
class Reason:
    """One feature's part in the decision."""

    feature: str
    value: float | None
    here: float  # the segment's centre, original units
    there: float  # the next closest segment's centre
    weight: float  # share of the margin this feature accounts for

    def sentence(self, segment_name: str, other_name: str) -> str:
        """'cash advance 6,443 vs typical 4,800 in this segment and 310 in Low-activity'."""
        return (f"{label(self.feature)} {in_units(self.feature, self.value)} vs typical "
                f"{in_units(self.feature, self.here)} in {segment_name} and "
                f"{in_units(self.feature, self.there)} in {other_name}")


@dataclass(frozen=True)
class Explanation:
    """A customer's segment, the next closest one, and the features that decide between them."""

    segment: int
    runner_up: int
    reasons: list[Reason]
    margin: float  # squared distance to the runner-up minus to the segment (> 0)


def explain_segment(model: SegmentationModel, row: pd.DataFrame, top: int = 3) -> Explanation:
    """The features that place one customer in its segment rather than the next closest."""
    z = model.standardize(row)[0]
    kmeans = model.pipeline[-1]
    segment_of_label = np.asarray(model.label_to_segment)
    distances = ((kmeans.cluster_centers_ - z) ** 2).sum(axis=1)
    order = np.argsort(distances)
    own, other = kmeans.cluster_centers_[order[0]], kmeans.cluster_centers_[order[1]]
    # per feature: how much nearer this centre is than the other one (they sum to the margin)
    gain = (z - other) ** 2 - (z - own) ** 2
    margin = float(gain.sum())
    scaler = model.pipeline.named_steps["scale"]
    own_units = scaler.inverse_transform(own.reshape(1, -1))[0]
    other_units = scaler.inverse_transform(other.reshape(1, -1))[0]
    raw = row.iloc[0]
    reasons = [Reason(feature=f, value=_value(raw, f), here=float(own_units[i]),
                      there=float(other_units[i]), weight=float(gain[i] / margin))
               for i, f in enumerate(FEATURES) if gain[i] > 0]
    reasons.sort(key=lambda r: -r.weight)
    return Explanation(int(segment_of_label[order[0]]), int(segment_of_label[order[1]]),
                       reasons[:top], margin)


def _value(raw: pd.Series, feature: str) -> float | None:
    """The customer's own value (None when missing and imputed)."""
    value = raw.get(feature)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def merged_path(steps: list[tuple[str, str, float]]) -> list[str]:
    """A tree path with each feature once: (feature, '<=' or '>', value) steps merged into
    'balance 1,200 to 5,000', 'balance above 1,200' or 'balance at most 5,000'."""
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    order: list[str] = []
    for feature, op, value in steps:
        if feature not in order:
            order.append(feature)
        if op == ">":
            low[feature] = max(low.get(feature, -np.inf), value)
        else:
            high[feature] = min(high.get(feature, np.inf), value)
    out = []
    for f in order:
        name = label(f)
        if f in COUNTS or f == "tenure":  # thresholds fall between whole numbers
            lo = f"at least {np.floor(low[f]) + 1:,.0f}" if f in low else ""
            hi = f"at most {np.floor(high[f]):,.0f}" if f in high else ""
            out.append(f"{name} {lo}{' and ' if lo and hi else ''}{hi}")
        elif f in low and f in high:
            out.append(f"{name} {in_units(f, low[f])} to {in_units(f, high[f])}")
        elif f in low:
            out.append(f"{name} above {in_units(f, low[f])}")
        else:
            out.append(f"{name} at most {in_units(f, high[f])}")
    return out
