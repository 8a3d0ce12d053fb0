"""Human summaries and artifact bodies (markdown, tables) for runs; no Prefect here."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from segmentation.features import FEATURES

if TYPE_CHECKING:
    from segmentation.scoring import ScoreResult
    from segmentation.training import TrainingResult
    from segmentation.validation import ValidationReport


def retrain_summary(result: TrainingResult, status: str,
                    names: dict[int, str] | None = None) -> str:
    """One paragraph for the CLI and logs (names: as readers see them, renames applied)."""
    names = {**result.model.names, **(names or {})}
    m = result.metrics
    lines = [f"model {result.model.version}: {status}; k={m['k']}, silhouette "
             f"{m['silhouette']:.3f}, tree agreement {m['tree']['agreement']:.1%} on "
             f"{m['tree']['holdout_rows']:,} held-out rows; trained on {m['sample_rows']:,} "
             f"of {m['training_rows']:,} rows"]
    if result.gate_failures:
        lines.append("not promoted automatically: " + "; ".join(result.gate_failures)
                     if status != "champion" else
                     "promoted with --force despite: " + "; ".join(result.gate_failures))
    for seg in sorted(result.model.names):
        lines.append(f"  segment {seg}: {names[seg]} ({result.sizes.get(seg, 0):,})"
                     f" - {result.model.profiles[seg]}")
    if status != "champion":  # what ops do next, if they judge it better all the same
        lines.append(f"to make it the champion all the same: `segmentation models promote "
                     f"{result.model.version}` (the next night rescores everyone with it)")
    return "\n".join(lines)


def segment_rows(result: TrainingResult,
                 names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Table artifact rows: one per segment (names: as readers see them)."""
    total = sum(result.sizes.values()) or 1
    names = {**result.model.names, **(names or {})}
    return [{"segment_id": seg, "name": names[seg],
             "size": result.sizes.get(seg, 0), "share": round(result.sizes.get(seg, 0) / total, 4),
             "profile": result.model.profiles[seg]} for seg in sorted(result.model.names)]


def _png(fig: Any, title: str) -> str:
    """A matplotlib figure as an inline markdown image."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _k_plot(report: list[dict[str, float]]) -> str:
    """Elbow and silhouette plot."""
    if not report:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in report]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(ks, [r["inertia"] for r in report], marker="o")
    ax[0].set_title("inertia (elbow)")
    ax[1].plot(ks, [r["silhouette"] for r in report], marker="o")
    ax[1].set_title("silhouette")
    for a in ax:
        a.set_xlabel("k")
    return _png(fig, "k selection")


def _pca_plot(result: TrainingResult) -> str:
    """2-D PCA scatter of a training sample, coloured by segment."""
    if result.projection is None or not len(result.projection):
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    points = result.projection
    for seg in sorted(result.model.names):
        mine = points[points[:, 2] == seg]
        ax.scatter(mine[:, 0], mine[:, 1], s=4, label=f"{seg} {result.model.names[seg]}")
    ax.set_xlabel("pc1")
    ax.set_ylabel("pc2")
    ax.legend(fontsize=7, markerscale=3)
    return _png(fig, "PCA scatter")


def _exploration_plots(exploration: dict[str, Any]) -> str:
    """The training sample's feature distributions and their correlation heatmap."""
    if not exploration:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from segmentation.explain import label

    histograms = exploration.get("histograms", {})
    rows = (len(histograms) + 5) // 6
    fig, axes = plt.subplots(rows, 6, figsize=(14, 2.1 * rows))
    for ax, (feature, h) in zip(axes.flat, histograms.items(), strict=False):
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color="#4c78a8")
        ax.set_title(label(feature), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(histograms):]:
        ax.axis("off")
    fig.tight_layout()
    out = [_png(fig, "feature distributions")]
    corr = np.asarray(exploration.get("correlation") or [])
    if corr.size:
        fig, ax = plt.subplots(figsize=(7, 6))
        shown = ax.imshow(corr, cmap="RdBu", vmin=-1, vmax=1)  # centred on zero
        names = [label(f) for f in FEATURES]
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        fig.tight_layout()
        out.append(_png(fig, "feature correlations"))
    return "\n\n".join(out)


def retrain_markdown(result: TrainingResult, status: str,
                     names: dict[int, str] | None = None) -> str:
    """Markdown artifact: metrics, k report, segments (names as readers see them), rules."""
    from segmentation.tree import export_rules

    m = result.metrics
    out = [f"# Retrain {result.model.version}: {status}", "",
           "| metric | value |", "|---|---|",
           f"| k | {m['k']} |", f"| silhouette | {m['silhouette']:.3f} |",
           f"| Davies-Bouldin | {m['davies_bouldin']:.3f} |",
           f"| tree agreement (held-out) | {m['tree']['agreement']:.2%} |",
           f"| tree depth / leaves | {m['tree']['depth']} / {m['tree']['leaves']} |",
           f"| training rows (sample) | {m['training_rows']:,} ({m['sample_rows']:,}) |", ""]
    if result.gate_failures:
        out += ["**Gates:** " + "; ".join(result.gate_failures), ""]
    if m["k_report"]:
        out += ["## k selection", "", "| k | inertia | silhouette | Davies-Bouldin |",
                "|---|---|---|---|"]
        out += [f"| {r['k']} | {r['inertia']:.0f} | {r['silhouette']:.3f} | "
                f"{r['davies_bouldin']:.3f} |" for r in m["k_report"]]
        out += ["", _k_plot(m["k_report"]), ""]
    out += ["## The training sample", "", _exploration_plots(m.get("exploration", {})), ""]
    out += ["## Segments", "", _pca_plot(result), "", "| id | name | size | profile |",
            "|---|---|---|---|"]
    out += [f"| {r['segment_id']} | {r['name']} | {r['size']:,} | {r['profile']} |"
            for r in segment_rows(result, names)]
    out += ["", "## Rules", "", "```", export_rules(result.model), "```"]
    return "\n".join(out)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 row', '8,950 rows'."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def rescored(result: ScoreResult) -> int:
    """Customers whose segment stayed, newly scored by another model (a new champion)."""
    return max(0, result.rows_changed - result.rows_new - result.rows_moved)


def rate(result: ScoreResult) -> float:
    return result.rows_scored / result.seconds if result.seconds else 0.0


def scoring_parts(result: ScoreResult) -> list[tuple[str, str]]:
    """What a run did, in words, for its artifact."""
    parts = [("customers read", f"{result.rows_in:,}"), ("scored", f"{result.rows_scored:,}"),
             ("new (scored for the first time)", f"{result.rows_new:,}"),
             ("moved to another segment", f"{result.rows_moved:,}")]
    if rescored(result):
        parts.append(("same segment, now by this model", f"{rescored(result):,}"))
    if result.rows_quarantined:
        parts.append(("quarantined in the batches it scored", f"{result.rows_quarantined:,}"))
    parts.append(("took", f"{result.seconds:.1f} s ({rate(result):,.0f} rows/s)"))
    if result.published_by:
        parts.append(("published by", {"swap": "swapping in a new table",
                                       "upsert": "updating the changed rows"}.get(
                                           result.published_by, result.published_by)))
    return parts


def scoring_summary(result: ScoreResult) -> str:
    """One line for the CLI and logs."""
    what = [f"{result.rows_new:,} new", f"{result.rows_moved:,} moved"]
    if rescored(result):
        what.append(f"{rescored(result):,} rescored by this model in the same segment")
    quarantined = (f"; {count(result.rows_quarantined, 'row')} quarantined in the batches it "
                   "scored" if result.rows_quarantined else "")
    return (f"run {result.run_id} ({result.mode}, model {result.model_version}): "
            f"{result.rows_in:,} in, {result.rows_scored:,} scored ({', '.join(what)}){quarantined}"
            f" in {result.seconds:.1f} s ({rate(result):,.0f} rows/s"
            + (f", published by {result.published_by}" if result.published_by else "") + ")"
            + (f"\n{count(result.batches_waiting, 'batch', 'batches')} landed but not "
               "validated yet: left for the next run" if result.batches_waiting else ""))


def scoring_markdown(result: ScoreResult, names: dict[int, str] | None = None) -> str:
    """Markdown artifact for a scoring run: what it did, the published segments, where the
    time went."""
    names = names or {}
    out = [f"# Scoring run `{result.run_id}`", "",
           f"{result.mode} run, model `{result.model_version}`", "",
           "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in scoring_parts(result))]
    if result.batches_waiting:
        out.append(f"| batches left for the next run (not validated yet) | "
                   f"{result.batches_waiting:,} |")
    total = sum(result.segment_counts.values())
    if total:
        out += ["", "## Published segments", "", "| id | segment | customers | share |",
                "|---|---|---|---|"]
        out += [f"| {seg} | {names.get(seg, '')} | {n:,} | {n / total:.1%} |"
                for seg, n in sorted(result.segment_counts.items())]
    timings = {k: v for k, v in result.timings.items() if k.endswith("_s")}
    if timings:
        out += ["", "## Where the time went", "", "| step | seconds |", "|---|---|"]
        out += [f"| {k.removesuffix('_s').replace('_', ' ')} | {float(v):.2f} |"
                for k, v in timings.items()]
    return "\n".join(out) + "\n"


def validation_rows(report: ValidationReport) -> list[dict[str, Any]]:
    """Table artifact rows: one per rule, with its outcome (counts only: Prefect keeps
    artifacts beyond erasure and retention, so examples stay in validation_examples)."""
    from segmentation.contract import describe

    return [{"tier": o.rule.tier, "rule": describe(o.rule), "passed": o.success,
             "rows": o.unexpected, "why": o.rule.why} for o in report.outcomes]


def validation_markdown(report: ValidationReport) -> str:
    """Markdown artifact for a validation run."""
    out = [f"# Validation of batch {report.batch_id}: "
           f"{'passed' if report.success else 'FAILED'}", "",
           f"{report.rows_in:,} rows in, {report.rows_accepted:,} accepted, "
           f"{report.rows_quarantined:,} quarantined, {report.seconds:.1f}s", ""]
    out += [f"- **failure**: {f}" for f in report.failures]
    out += [f"- warning: {w}" for w in report.warnings]
    out += ["", "| tier | rule | passed | rows |", "|---|---|---|---|"]
    out += [f"| {r['tier']} | {r['rule']} | {'yes' if r['passed'] else 'no'} | {r['rows']:,} |"
            for r in validation_rows(report)]
    return "\n".join(out)
