"""Explanations in customer terms: they agree with the answer, and read without PCs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from segmentation.explain import explain_segment, in_units, label, merged_path
from segmentation.features import FEATURES
from segmentation.tree import export_rules, path_in_words


def test_every_explanation_names_the_segment_the_model_gave(trained, synthetic_frame) -> None:
    model = trained.model
    sample = synthetic_frame.sample(400, random_state=1)
    predicted = model.predict(sample)
    for i in range(len(sample)):
        row = sample.iloc[[i]]
        why = explain_segment(model, row)
        assert why.segment == predicted[i]
        assert why.runner_up != why.segment and why.margin > 0
        assert why.reasons and all(r.weight > 0 for r in why.reasons)
        assert [r.weight for r in why.reasons] == sorted((r.weight for r in why.reasons),
                                                         reverse=True)


def test_the_weights_are_the_margin_split_by_feature(trained, synthetic_frame) -> None:
    """All positive weights over all features sum to at least 1 (the negative ones pull
    the other way): nothing invented beyond the two distances."""
    row = synthetic_frame.iloc[[5]]
    why = explain_segment(trained.model, row, top=len(FEATURES))
    assert sum(r.weight for r in why.reasons) >= 1 - 1e-9


def test_a_sentence_quotes_units_and_both_segments(trained, synthetic_frame) -> None:
    why = explain_segment(trained.model, synthetic_frame.iloc[[0]])
    text = why.reasons[0].sentence("Instalment buyers", "Low-activity customers")
    assert re.search(r" vs typical .+ in Instalment buyers and .+ in Low-activity customers$",
                     text)
    assert "_" not in text.split(" vs ")[0]  # "cash advance", not cash_advance
    assert in_units("purchases_frequency", 0.5774) == "58%"
    assert in_units("cash_advance", 6443.27) == "6,443"
    assert in_units("minimum_payments", float("nan")) == "missing"
    assert label("prc_full_payment") == "months paid in full"


def test_the_tree_path_names_each_feature_once_and_no_component(trained, synthetic_frame
                                                                 ) -> None:
    model = trained.model
    for i in range(0, 300, 7):
        _, steps = path_in_words(model, synthetic_frame.iloc[[i]])
        names = [label(f) for f in FEATURES]
        used = [next(n for n in sorted(names, key=len, reverse=True) if s.startswith(n))
                for s in steps]
        assert len(used) == len(set(used)), steps
        assert not any(re.search(r"\bpc\d", s) for s in steps)
    assert "pc1" not in export_rules(model) and "z(" not in export_rules(model)
    assert trained.metrics["tree"]["agreement"] >= 0.9


def test_merged_path_reads_as_ranges() -> None:
    steps = [("balance", ">", 1200.4), ("purchases_trx", "<=", 10.5), ("balance", "<=", 5000.0),
             ("balance", ">", 1500.0), ("tenure", ">", 11.5)]
    assert merged_path(steps) == ["balance 1,500 to 5,000", "purchase transactions at most 10",
                                  "tenure (months) at least 12"]


def test_an_old_models_tree_with_components_still_predicts(trained, synthetic_frame) -> None:
    """Models saved by an earlier release have a tree over 17 features + 2 projections."""
    import dataclasses

    from sklearn.tree import DecisionTreeClassifier

    model = trained.model
    z = model.standardize(synthetic_frame)
    old_inputs = np.hstack([z, model.pca.transform(z)])
    old_tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(
        old_inputs, model.predict(synthetic_frame))
    old = dataclasses.replace(model, tree=old_tree)
    segment, steps = path_in_words(old, pd.DataFrame(synthetic_frame.iloc[[0]]))
    assert segment in model.names and steps
