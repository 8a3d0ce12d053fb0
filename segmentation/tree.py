"""A decision tree that reproduces the segments, and its rules in words people can read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from segmentation.features import FEATURES

if TYPE_CHECKING:
    import pandas as pd

    from segmentation.clustering import SegmentationModel

MAX_DEPTH = 6  # deeper trees over the raw features agree no better, and read worse
MIN_SAMPLES_LEAF = 5
HOLDOUT = 0.25
PC_NAMES = ("pc1", "pc2")


def fit_rules_tree(inputs: np.ndarray, segments: np.ndarray, random_state: int
                   ) -> tuple[DecisionTreeClassifier, dict[str, Any]]:
    """Fit on 75 % and measure agreement with KMeans on the held-out 25 %."""
    stratify = segments if np.bincount(segments - segments.min()).min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, segments, test_size=HOLDOUT, random_state=random_state, stratify=stratify
    )
    tree = DecisionTreeClassifier(max_depth=MAX_DEPTH, min_samples_leaf=MIN_SAMPLES_LEAF,
                                  random_state=random_state).fit(x_train, y_train)
    predicted = tree.predict(x_test)
    labels = np.unique(segments)
    precision, recall, _, support = precision_recall_fscore_support(
        y_test, predicted, labels=labels, zero_division=0
    )
    metrics = {
        "agreement": float((predicted == y_test).mean()),
        "holdout_rows": len(y_test),
        "depth": int(tree.get_depth()),
        "leaves": int(tree.get_n_leaves()),
        "labels": [int(s) for s in labels],
        "confusion": confusion_matrix(y_test, predicted, labels=labels).tolist(),
        "precision": {int(s): float(p) for s, p in zip(labels, precision, strict=True)},
        "recall": {int(s): float(r) for s, r in zip(labels, recall, strict=True)},
        "support": {int(s): int(n) for s, n in zip(labels, support, strict=True)},
    }
    return tree, metrics


def _condition(model: SegmentationModel, feature: int, threshold: float, left: bool) -> str:
    """One split in words: original units for features, loadings named for projections."""
    op = "<=" if left else ">"
    if feature < len(FEATURES):
        scaler = model.pipeline.named_steps["scale"]
        value = threshold * scaler.scale_[feature] + scaler.mean_[feature]
        return f"{FEATURES[feature]} {op} {value:,.4g}"
    return f"{PC_NAMES[feature - len(FEATURES)]} {op} {threshold:.3g}"


def describe_projections(model: SegmentationModel) -> list[str]:
    """What pc1/pc2 mean: their three heaviest loadings."""
    lines = []
    for name, loadings in zip(PC_NAMES, model.pca.components_, strict=True):
        top = np.argsort(-np.abs(loadings))[:3]
        terms = " ".join(f"{loadings[i]:+.2f}*z({FEATURES[i]})" for i in top)
        lines.append(f"{name} ~ {terms} ...")
    return lines


def export_rules(model: SegmentationModel) -> str:
    """The whole tree as indented if/else text, thresholds in original units."""
    t = model.tree.tree_
    out = [f"# decision rules for model {model.version} "
           f"(depth {model.tree.get_depth()}, {model.tree.get_n_leaves()} leaves)"]
    if model.tree.n_features_in_ > len(FEATURES):  # a tree of an earlier release
        out += [f"# {line}" for line in describe_projections(model)]

    def walk(node: int, depth: int) -> None:
        pad = "  " * depth
        if t.children_left[node] == -1:
            counts = t.value[node][0]
            seg = int(model.tree.classes_[int(np.argmax(counts))])
            purity = float(counts.max() / counts.sum())
            out.append(f"{pad}-> segment {seg} ({model.names.get(seg, '?')}) "
                       f"[{int(t.n_node_samples[node])} customers, {purity:.0%}]")
            return
        feat, thr = int(t.feature[node]), float(t.threshold[node])
        out.append(f"{pad}if {_condition(model, feat, thr, True)}:")
        walk(int(t.children_left[node]), depth + 1)
        out.append(f"{pad}else:  # {_condition(model, feat, thr, False)}")
        walk(int(t.children_right[node]), depth + 1)

    walk(0, 0)
    return "\n".join(out) + "\n"


def path_in_words(model: SegmentationModel, row: pd.DataFrame) -> tuple[int, list[str]]:
    """The tree's segment for one customer and its path with each feature once, in the
    data's units ("months with purchases at most 58%", "cash advance 310 to 4,800")."""
    from segmentation.explain import merged_path

    inputs = model.tree_inputs(model.standardize(row))
    scaler = model.pipeline.named_steps["scale"]
    t = model.tree.tree_
    node, steps = 0, []
    while t.children_left[node] != -1:
        feat, thr = int(t.feature[node]), float(t.threshold[node])
        left = inputs[0, feat] <= thr
        if feat < len(FEATURES):
            value = thr * scaler.scale_[feat] + scaler.mean_[feat]
            steps.append((FEATURES[feat], "<=" if left else ">", float(value)))
        else:  # a projection, in trees of an earlier release
            steps.append((PC_NAMES[feat - len(FEATURES)], "<=" if left else ">", thr))
        node = int(t.children_left[node] if left else t.children_right[node])
    return int(model.tree.predict(inputs)[0]), merged_path(steps)
