"""Retraining as plain functions: fit, align ids to the champion, name, explain, gate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from psycopg import sql
from sklearn.decomposition import PCA
from sklearn.metrics import davies_bouldin_score, silhouette_score

from segmentation.clustering import (
    MAX_MATCH_DISTANCE,
    SILHOUETTE_SAMPLE,
    SegmentationModel,
    align_segments,
    build_pipeline,
    choose_k,
    evaluate_k_range,
    name_segments,
    sample_frame,
)
from segmentation.db import connection
from segmentation.errors import ModelError
from segmentation.features import COLUMNS, FEATURES, feature_frame, feature_matrix
from segmentation.progress import Update
from segmentation.reading import iter_chunks
from segmentation.registry import SavedVersion, promote, register_version
from segmentation.tree import fit_rules_tree

# The tree summarises the segments over the 17 features alone (no principal components),
# which caps its agreement near 0.94; each customer's exact reason comes from explain.py.
MIN_AGREEMENT = 0.90
MIN_SILHOUETTE = 0.10


@dataclass
class TrainingResult:
    """A fitted model plus everything the registry records about it."""

    model: SegmentationModel
    metrics: dict[str, Any]
    sizes: dict[int, int]
    gate_failures: list[str] = field(default_factory=list)
    projection: np.ndarray | None = None  # (pc1, pc2, segment) for a sample, for the scatter


TRAIN_STEPS = ("scaling", "choosing k", "fitting KMeans", "fitting the rules tree", "measuring")

def reference_distribution(x: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Decile edges and bucket shares per feature, the baseline for drift (PSI)."""
    reference = {}
    for j, feature in enumerate(FEATURES):
        values = x[:, j][~np.isnan(x[:, j])]
        if not len(values):
            continue
        edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
        # same buckets as PostgreSQL's width_bucket(value, edges)
        buckets = np.searchsorted(edges, values, side="right")
        shares = np.bincount(buckets, minlength=len(edges) + 1) / len(values)
        reference[feature] = {"edges": edges.tolist(), "proportions": shares.tolist()}
    return reference


def fingerprint_frame(df: pd.DataFrame) -> str:
    """A short hash of the training data, to tell which data a model saw."""
    hashed = pd.util.hash_pandas_object(feature_frame(df), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def train_model(df: pd.DataFrame, version: str, *, k: int | str = 4,
                k_range: range = range(2, 11), sample_size: int | None = 200_000,
                random_state: int = 42, champion: SegmentationModel | None = None,
                progress: Update | None = None) -> TrainingResult:
    """Fit impute+scale+KMeans and the rules tree; ids aligned to `champion` if any.
    progress(step, total, note) follows the stages."""
    steps = len(TRAIN_STEPS)

    def step(name: str) -> None:
        if progress is not None:
            progress(TRAIN_STEPS.index(name), steps, name)

    if len(df) < 50:
        raise ModelError(f"need at least 50 customers to train, got {len(df)}")
    sample = sample_frame(df, sample_size, random_state)
    x = feature_matrix(sample)
    step("choosing k" if k == "auto" else "scaling")
    prep = build_pipeline(2, random_state)[:-1].fit(x)
    z = np.asarray(prep.transform(x))
    k_report = evaluate_k_range(z, k_range, random_state) if k_range else []
    chosen = choose_k(k_report) if k == "auto" else int(k)

    step("fitting KMeans")
    pipeline = build_pipeline(chosen, random_state).fit(x)
    labels = pipeline[-1].labels_
    scaler = pipeline.named_steps["scale"]
    centres = scaler.inverse_transform(pipeline[-1].cluster_centers_)
    if champion is not None:
        old_scaler = champion.pipeline.named_steps["scale"]
        mapping, distance = align_segments(
            centres, champion.centroids_original(), np.sort(champion.label_to_segment),
            old_scaler.scale_)
    else:
        mapping, distance = align_segments(centres, None, None, None)
    segments = mapping[labels]

    step("fitting the rules tree")
    pca = PCA(n_components=2, random_state=random_state).fit(z)
    order = np.argsort(mapping)
    names, profiles = name_segments(pipeline[-1].cluster_centers_[order], mapping[order])
    if champion is not None:  # same id -> same name, through the alignment
        names.update({s: champion.names[s] for s in names if s in champion.names})
    tree, tree_metrics = fit_rules_tree(z, segments, random_state)  # the 17 features only
    model = SegmentationModel(version=version, pipeline=pipeline, pca=pca, tree=tree,
                              label_to_segment=mapping, names=names, profiles=profiles)

    step("measuring")
    rng = np.random.default_rng(random_state)
    pick = rng.choice(len(z), size=min(SILHOUETTE_SAMPLE, len(z)), replace=False)
    sizes = {int(s): int(n) for s, n in zip(*np.unique(segments, return_counts=True),
                                             strict=True)}
    metrics: dict[str, Any] = {
        "k": chosen,
        "k_requested": k,
        "k_report": k_report,
        "inertia": float(pipeline[-1].inertia_),
        "silhouette": float(silhouette_score(z[pick], labels[pick])),
        "davies_bouldin": float(davies_bouldin_score(z, labels)),
        "tree": tree_metrics,
        "training_rows": int(df.attrs.get("population", len(df))),
        "sample_rows": len(sample),
        "random_state": random_state,
        "data_fingerprint": fingerprint_frame(sample),
        "reference": reference_distribution(x),
        "imputation_means": dict(zip(FEATURES, map(float, pipeline[0].statistics_),
                                     strict=True)),
        "medians": dict(zip(FEATURES, map(float, np.nanmedian(x, axis=0)), strict=True)),
        "exploration": explore_sample(x),
        "alignment": {
            "champion": champion.version if champion else None,
            "label_to_segment": [int(m) for m in mapping],
            "match_distance": [None if np.isnan(d) else round(float(d), 4) for d in distance],
            "max_match_distance": MAX_MATCH_DISTANCE,
        },
    }
    model.info = {"metrics": metrics}
    shown = pick[:2_000]
    projection = np.column_stack([pca.transform(z[shown]), segments[shown]])
    if progress is not None:
        progress(steps, steps, "done")
    return TrainingResult(model, metrics, sizes, gate_failures(metrics, champion), projection)


def explore_sample(x: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """The notebook's exploratory views of the training sample, small enough to keep in the
    registry: each feature's histogram (equal bins between its 1st and 99th percentile, the
    ends taking the outliers) and the features' correlations (pairwise complete)."""
    import pandas as pd

    histograms = {}
    for j, feature in enumerate(FEATURES):
        values = x[:, j][~np.isnan(x[:, j])]
        if not len(values):
            continue
        low, high = (float(v) for v in np.percentile(values, [1, 99]))
        high = high if high > low else low + 1.0
        counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
        histograms[feature] = {"edges": [round(float(e), 6) for e in edges],
                               "counts": [int(c) for c in counts]}
    corr = pd.DataFrame(x, columns=list(FEATURES)).corr().fillna(0.0)
    return {"histograms": histograms,
            "correlation": [[round(float(v), 4) for v in row] for row in corr.to_numpy()]}


def gate_failures(metrics: dict[str, Any], champion: SegmentationModel | None) -> list[str]:
    """Why this model must not replace the champion automatically (empty: promote)."""
    failures = []
    agreement = metrics["tree"]["agreement"]
    if agreement < MIN_AGREEMENT:
        failures.append(f"tree agreement {agreement:.3f} < {MIN_AGREEMENT}")
    if metrics["silhouette"] < MIN_SILHOUETTE:
        failures.append(f"silhouette {metrics['silhouette']:.3f} < {MIN_SILHOUETTE}")
    if champion is not None:
        if metrics["k"] != champion.k:
            failures.append(f"k changed from {champion.k} to {metrics['k']}: segment ids "
                            "cannot all be carried over")
        distances = [d for d in metrics["alignment"]["match_distance"] if d is not None]
        if distances and max(distances) > MAX_MATCH_DISTANCE:
            failures.append(f"relative segment match distance {max(distances):.2f} > "
                            f"{MAX_MATCH_DISTANCE}: the segments moved too far to keep ids")
    return failures


def load_training_frame(url: str, sample_size: int | None, random_state: int) -> pd.DataFrame:
    """Customers to train on; a reproducible hash-ordered sample when the table is large."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
    query = sql.SQL("SELECT {} FROM customers").format(columns)
    if sample_size:
        query = sql.SQL("{} ORDER BY md5(customer_id || {}) LIMIT {}").format(
            query, sql.Literal(str(random_state)), sql.Literal(int(sample_size)))
    with connection(url) as conn:
        chunks = list(iter_chunks(conn, query, 100_000))
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
    if not chunks:
        raise ModelError("no customers to train on: run `segmentation ingest` first")
    frame = pd.concat(chunks, ignore_index=True)
    frame.attrs["population"] = int(row[0]) if row else len(frame)  # what the sample is of
    return frame


def register_and_gate(url: str, saved: SavedVersion, result: TrainingResult,
                      force: bool, changed_by: str = "retrain") -> str:
    """Register the saved version; promote it if the gates hold or `force`. Returns status."""
    failures = result.gate_failures
    reason = "; ".join(failures) if failures else None
    with connection(url) as conn:
        register_version(conn, saved, result.model, result.metrics, result.sizes, reason)
        conn.commit()
        if failures and not force:
            return "challenger"
        promote(conn, saved.version,
                reason=f"forced past: {reason}" if failures else "passed the quality gates",
                changed_by=changed_by)
    return "champion"
