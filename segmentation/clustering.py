"""Impute + scale + KMeans, the k report, stable segment ids and human names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.metrics import davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from segmentation.features import FEATURES, feature_matrix

# Relative match distance: how far a new centroid is from the champion centroid it is matched
# to, divided by that champion centroid's distance to its nearest other champion centroid
# (both in the champion's standard deviations).  Above 0.5 the new segment has moved at
# least half-way towards a different one, so it is "another segment" and the retrain is not
# promoted automatically.  Measured on the real data: bootstrap resamples stay <= 0.4;
# shuffled features give > 1,000.
MAX_MATCH_DISTANCE = 0.5
SILHOUETTE_SAMPLE = 5_000


@dataclass
class SegmentationModel:
    """Everything needed to score and explain: saved as one skops file per version."""

    version: str
    pipeline: Pipeline  # mean imputer -> standard scaler -> KMeans
    pca: PCA  # two projections of the standardized features, for the tree and the scatter
    tree: DecisionTreeClassifier  # reproduces the segments with readable rules
    label_to_segment: np.ndarray  # KMeans label -> stable segment id
    names: dict[int, str]
    profiles: dict[int, str]
    features: tuple[str, ...] = FEATURES
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of segments."""
        return int(self.pipeline[-1].n_clusters)

    def standardize(self, df: pd.DataFrame) -> np.ndarray:
        """Impute with training means and standardize with training statistics."""
        return self.standardize_matrix(feature_matrix(df))

    def standardize_matrix(self, x: np.ndarray) -> np.ndarray:
        """standardize() of a float64 feature matrix the caller hands over (FEATURES order):
        done in place with the fitted fill values, means and scales when the pipeline is the
        usual imputer and standard scaler (their arithmetic, to the bit, without the input
        checks and copies that cost scoring several times the arithmetic), else by the
        pipeline itself."""
        imputer, scaler = self.pipeline[0], self.pipeline[1]
        fills: np.ndarray | None = getattr(imputer, "statistics_", None)
        usual = (len(self.pipeline) == 3 and isinstance(imputer, SimpleImputer)
                 and isinstance(scaler, StandardScaler) and not imputer.add_indicator
                 and fills is not None and not np.isnan(fills).any()  # no column dropped
                 and scaler.with_mean and scaler.with_std and x.dtype == np.float64
                 and x.ndim == 2 and x.shape[1] == len(fills))
        if not usual or fills is None:
            return np.asarray(self.pipeline[:-1].transform(x))
        if not x.flags.writeable:  # a read-only view (pandas' copy-on-write)
            x = x.copy()
        rows, cols = np.nonzero(np.isnan(x))
        x[rows, cols] = fills[cols]
        x -= scaler.mean_
        x /= scaler.scale_
        return x

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Stable segment id of each row (the KMeans assignment, remapped)."""
        return self.predict_matrix(feature_matrix(df))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """predict() of a float64 feature matrix the caller hands over (overwritten): what
        scoring calls on each chunk, straight from the columns it read."""
        labels = self.pipeline[-1].predict(self.standardize_matrix(x))
        return self.label_to_segment[labels]

    def tree_inputs(self, z: np.ndarray) -> np.ndarray:
        """The tree sees the 17 standardized features (a tree of an earlier release also
        saw the two PCA projections)."""
        if getattr(self.tree, "n_features_in_", len(FEATURES)) > len(FEATURES):
            return np.hstack([z, self.pca.transform(z)])
        return z

    def centroids_original(self) -> np.ndarray:
        """Centroids in original units, rows ordered by stable segment id."""
        scaler: StandardScaler = self.pipeline.named_steps["scale"]
        centres = scaler.inverse_transform(self.pipeline[-1].cluster_centers_)
        return centres[np.argsort(self.label_to_segment)]

    def centre_z(self, segment_id: int) -> np.ndarray:
        """One segment's centre in the scaled space the model classifies in, by its stable
        id (ids need not be 0..k-1: a retrain keeps the ids of the segments it matched)."""
        labels = [int(s) for s in self.label_to_segment]
        return np.asarray(self.pipeline[-1].cluster_centers_[labels.index(segment_id)])


def build_pipeline(k: int, random_state: int, n_init: int = 10) -> Pipeline:
    """The segmentation pipeline, unfitted."""
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="mean")),
            ("scale", StandardScaler()),
            ("kmeans", KMeans(n_clusters=k, init="k-means++", n_init=n_init,
                              random_state=random_state)),
        ]
    )


def sample_frame(df: pd.DataFrame, sample_size: int | None, random_state: int) -> pd.DataFrame:
    """A reproducible sample for training on large tables (the whole frame if small)."""
    if sample_size is None or len(df) <= sample_size:
        return df
    return df.sample(n=sample_size, random_state=random_state).sort_index()


def evaluate_k_range(z: np.ndarray, ks: range, random_state: int) -> list[dict[str, float]]:
    """Inertia (elbow), silhouette and Davies-Bouldin for each k, on standardized data."""
    rng = np.random.default_rng(random_state)
    pick = rng.choice(len(z), size=min(SILHOUETTE_SAMPLE, len(z)), replace=False)
    report = []
    for k in ks:
        km = KMeans(n_clusters=k, init="k-means++", n_init=4, random_state=random_state).fit(z)
        report.append({
            "k": k,
            "inertia": float(km.inertia_),
            "silhouette": float(silhouette_score(z[pick], km.labels_[pick])),
            "davies_bouldin": float(davies_bouldin_score(z, km.labels_)),
        })
    return report


def choose_k(report: list[dict[str, float]]) -> int:
    """`--k auto`: the best silhouette among k >= 3, ties to the lower Davies-Bouldin.

    k = 2 is excluded because on skewed spending data it almost always wins silhouette
    by splitting "active" from "inactive", which marketing cannot act on.
    """
    candidates = [r for r in report if r["k"] >= 3] or report
    best = max(candidates, key=lambda r: (round(r["silhouette"], 3), -r["davies_bouldin"]))
    return int(best["k"])


def align_segments(new_centres: np.ndarray, old_centres: np.ndarray | None,
                   old_ids: np.ndarray | None, old_scale: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Map new KMeans labels to the champion's segment ids (Hungarian on centroid distance).

    Centres are in original units, compared in the champion's standard deviations.
    Returns (label -> segment id, relative match distance per label; NaN if unmatched).
    New clusters beyond the champion's k get fresh ids.
    """
    k = len(new_centres)
    if old_centres is None or old_ids is None or old_scale is None:
        return np.arange(k), np.full(k, np.nan)
    a = new_centres / old_scale
    b = old_centres / old_scale
    cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    mapping = np.full(k, -1)
    distance = np.full(k, np.nan)
    separation = np.linalg.norm(b[:, None, :] - b[None, :, :], axis=2)
    np.fill_diagonal(separation, np.inf)
    nearest = separation.min(axis=1) if len(b) > 1 else np.ones(len(b))
    mapping[rows] = old_ids[cols]
    distance[rows] = cost[rows, cols] / nearest[cols]
    next_id = int(old_ids.max()) + 1
    for label in np.flatnonzero(mapping < 0):
        mapping[label] = next_id
        next_id += 1
    return mapping, distance


PHRASES = {
    "purchases": ("big spenders", "low spend"),
    "oneoff_purchases": ("one-off purchases", "few one-off purchases"),
    "installments_purchases": ("instalment buyers", "no instalments"),
    "cash_advance": ("cash-advance users", "no cash advances"),
    "balance": ("high balances", "low balances"),
    "credit_limit": ("high limits", "low limits"),
    "payments": ("large payments", "small payments"),
    "prc_full_payment": ("pay in full", "rarely pay in full"),
    "purchases_frequency": ("frequent buyers", "rare buyers"),
    "purchases_installments_frequency": ("regular instalments", "rarely pay by instalment"),
    "cash_advance_frequency": ("frequent cash advances", "rare cash advances"),
    "balance_frequency": ("active balances", "dormant balances"),
    "tenure": ("long tenure", "new accounts"),
}


def name_segments(centres_z: np.ndarray, ids: np.ndarray) -> tuple[dict[int, str], dict[int, str]]:
    """A short name and a one-line profile per segment, from its centroid's z-scores."""
    names: dict[int, str] = {}
    profiles: dict[int, str] = {}
    index = {f: i for i, f in enumerate(FEATURES)}
    for row, seg in zip(centres_z, ids, strict=True):
        z = {f: float(row[i]) for f, i in index.items()}
        if z["cash_advance"] > 0.7 and z["cash_advance"] >= z["purchases"]:
            base = "Cash-advance revolvers"
        elif z["purchases"] > 0.9:
            base = "High spenders"
        elif z["installments_purchases"] > 0.2 or z["purchases_installments_frequency"] > 0.5:
            base = "Instalment buyers"
        elif max(z["purchases"], z["cash_advance"], z["balance"]) < 0:
            base = "Low-activity customers"
        else:
            base = "Moderate users"
        suffix = ""
        if z["prc_full_payment"] > 0.5:
            suffix = ", pay in full"
        elif base != "Cash-advance revolvers" and z["balance"] > 0.7:
            suffix = ", carry balances"
        names[int(seg)] = base + suffix
        ranked = sorted((f for f in PHRASES), key=lambda f: -abs(z[f]))[:3]
        profiles[int(seg)] = "; ".join(
            f"{PHRASES[f][0] if z[f] > 0 else PHRASES[f][1]} ({z[f]:+.1f} sd)" for f in ranked
        )
    seen: dict[str, int] = {}
    for seg in sorted(names):
        seen[names[seg]] = seen.get(names[seg], 0) + 1
        if seen[names[seg]] > 1:
            names[seg] = f"{names[seg]} ({seen[names[seg]]})"
    return names, profiles
