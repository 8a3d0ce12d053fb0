"""The data contract for `customers`: one rule per business rule, each saying why.

Tiers: `schema` fails the whole batch; `row` quarantines the rows that break it; `warning`
is recorded and printed but blocks nothing.  The rules are plain data (cheap to import);
`validation.build_suite` turns them into a Great Expectations suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from segmentation.features import COUNTS, FEATURES, FREQUENCIES, MONEY

Tier = Literal["schema", "row", "warning"]
# PostgreSQL sorts NaN and Infinity above every number: an upper bound catches both.
FINITE_MAX = 1e9
IMPUTED = ("minimum_payments", "credit_limit")
# The source computes CASH_ADVANCE_FREQUENCY as months-with-advance / tenure and 8 of the
# 8,950 real customers exceed 1 (max 1.25).  Up to 1.5 is scored with a warning; beyond, or
# for any other frequency above 1, the row is quarantined.
CASH_ADVANCE_FREQUENCY_MAX = 1.5


@dataclass(frozen=True)
class Rule:
    """One expectation with its tier and its reason."""

    key: str
    tier: Tier
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def column(self) -> str | None:
        """The column the rule is about, if any."""
        return self.kwargs.get("column")


# Rules across columns are checked on derived columns of the batch view that validation
# builds, so GX bundles them into its one aggregate query like every other column rule
# (an UnexpectedRowsExpectation costs two more scans of the batch each).
DERIVED = {
    # the largest fractional part of the transaction counts: 0 for whole numbers
    "counts_fraction": "greatest(" + ", ".join(f"abs({c} - trunc({c}))" for c in COUNTS) + ")",
    # how far one-off + instalment purchases are from purchases
    "purchases_gap": "abs(oneoff_purchases + installments_purchases - purchases)",
}


def contract_rules() -> list[Rule]:
    """The customers data contract, in the order it is reported."""
    # The column set, numeric types, present and unique ids and a non-empty batch are not
    # GX rules: ingest enforces them (the 18 columns mapped by name, COPY into a typed
    # table keyed on (batch, id), no zero-row batch), naming the column, so no batch that
    # breaks them reaches validation; re-checking them here could never fail.
    rules = [Rule(f"schema.mostly_present.{f}", "schema", "ExpectColumnValuesToNotBeNull",
                   {"column": f, "mostly": 0.8},
                   "imputing more than a fifth of a column would invent the segments")
              for f in IMPUTED]
    rules += [Rule(f"row.present.{f}", "row", "ExpectColumnValuesToNotBeNull", {"column": f},
                   "only minimum_payments and credit_limit are imputed, as in the notebook")
              for f in FEATURES if f not in IMPUTED]
    rules += [Rule(f"row.money.{f}", "row", "ExpectColumnValuesToBeBetween",
                   {"column": f, "min_value": 0, "max_value": FINITE_MAX},
                   "amounts are non-negative and finite (NaN/inf are export errors)")
              for f in MONEY if f != "credit_limit"]
    rules.append(Rule("row.credit_limit_positive", "row", "ExpectColumnValuesToBeBetween",
                      {"column": "credit_limit", "min_value": 0, "strict_min": True,
                       "max_value": FINITE_MAX},
                      "a card with no limit cannot exist; missing limits are imputed"))
    rules += [Rule(f"row.share.{f}", "row", "ExpectColumnValuesToBeBetween",
                   {"column": f, "min_value": 0, "max_value": 1},
                   "a frequency or share of payments is a fraction of the period")
              for f in (*FREQUENCIES, "prc_full_payment") if f != "cash_advance_frequency"]
    rules.append(Rule("row.share.cash_advance_frequency", "row", "ExpectColumnValuesToBeBetween",
                      {"column": "cash_advance_frequency", "min_value": 0,
                       "max_value": CASH_ADVANCE_FREQUENCY_MAX},
                      "up to 1.5 is a known artifact of the source; beyond is an error"))
    rules.append(Rule("row.tenure", "row", "ExpectColumnValuesToBeBetween",
                      {"column": "tenure", "min_value": 6, "max_value": 12},
                      "the data set covers 6 to 12 months of history"))
    rules += [Rule(f"row.count.{f}", "row", "ExpectColumnValuesToBeBetween",
                   {"column": f, "min_value": 0, "max_value": FINITE_MAX},
                   "transaction counts are non-negative and finite") for f in COUNTS]
    rules.append(Rule("row.integer_counts", "row", "ExpectColumnValuesToBeBetween",
                      {"column": "counts_fraction", "min_value": 0, "max_value": 0,
                       "description": "cash_advance_trx and purchases_trx are whole numbers"},
                      "a count of transactions has no fractions"))
    rules += [Rule(f"warning.null.{f}", "warning", "ExpectColumnValuesToNotBeNull",
                   {"column": f}, "imputed at scoring from the model's training means")
              for f in IMPUTED]
    rules.append(Rule("warning.cash_advance_frequency_above_1", "warning",
                      "ExpectColumnValuesToBeBetween",
                      {"column": "cash_advance_frequency", "min_value": 0, "max_value": 1},
                      "scored as-is; see CASH_ADVANCE_FREQUENCY_MAX"))
    rules.append(Rule("warning.purchases_sum", "warning", "ExpectColumnValuesToBeBetween",
                      {"column": "purchases_gap", "min_value": 0, "max_value": 1,
                       "description": "one-off + instalment purchases equal purchases"},
                      "the parts should add up; a gap hints at a broken export"))
    return rules


def format_value(value: Any) -> str:
    """A number as people write it: 1,000,000,000 and 88.98, not 1e+09 and 88.97999999999996."""
    if value is None:
        return "null"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return str(number)
    if number.is_integer():
        return f"{number:,.0f}"
    if abs(number) >= 1000:
        return f"{number:,.2f}"
    return f"{number:.6g}" if abs(number) < 0.01 else f"{round(number, 4):g}"


def describe(rule: Rule) -> str:
    """A rule in words, for messages."""
    k = rule.kwargs
    if "description" in k:
        return str(k["description"])
    if rule.expectation == "ExpectColumnValuesToBeBetween":
        low = "(" if k.get("strict_min") else "["
        return (f"{rule.column} within {low}{format_value(k.get('min_value'))}, "
                f"{format_value(k.get('max_value'))}]")
    if rule.expectation == "ExpectColumnValuesToNotBeNull":
        mostly = k.get("mostly")
        return (f"{rule.column} present in at least {mostly:.0%} of rows" if mostly
                else f"{rule.column} is not null")
    if rule.expectation == "ExpectColumnValuesToBeUnique":
        return f"{rule.column} is unique within the batch"
    return rule.key


def violation(rule: Rule) -> str:
    """What the rows that break a rule are like, for counts: "minimum_payments is null",
    not the rule "minimum_payments is not null"."""
    k = rule.kwargs
    if rule.expectation == "ExpectColumnValuesToNotBeNull":
        mostly = k.get("mostly")
        return (f"{rule.column} is null in more than {1 - mostly:.0%} of rows" if mostly
                else f"{rule.column} is null")
    if rule.expectation == "ExpectColumnValuesToBeBetween" and "description" not in k:
        return f"{rule.column} outside {describe(rule).split(' within ', 1)[1]}"
    if rule.expectation == "ExpectColumnValuesToBeUnique":
        return f"{rule.column} repeats within the batch"
    return f"breaks: {describe(rule)}"


def check_values(values: dict[str, float | None]) -> dict[str, str]:
    """One customer's features against the row rules (the app's form); column -> message."""
    problems: dict[str, str] = {}
    for rule in contract_rules():
        column = rule.column
        if rule.tier != "row" or column not in values or column in problems:
            continue
        value = values[column]
        k = rule.kwargs
        if rule.expectation == "ExpectColumnValuesToNotBeNull":
            broken = value is None
        elif rule.expectation == "ExpectColumnValuesToBeBetween" and value is not None:
            low_ok = value > k["min_value"] if k.get("strict_min") else value >= k["min_value"]
            broken = not (low_ok and value <= k["max_value"]) or value != value  # NaN
        else:
            continue
        if broken:
            problems[column] = f"must satisfy: {describe(rule)} ({rule.why})"
    for column in COUNTS:
        value = values.get(column)
        if value is not None and column not in problems and value != int(value):
            problems[column] = "must be a whole number (a count of transactions)"
    return problems
