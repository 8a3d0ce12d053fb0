"""Retrain flow: load customers, fit, save a version, register it, promote if gates hold."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import database_url, db_task, finished, flow_settings, flow_timeout_s
from segmentation import registry, reports, training
from segmentation.clustering import SegmentationModel
from segmentation.db import connection
from segmentation.errors import LegacyModel
from segmentation.progress import track


@db_task
def load_training_frame(sample_size: int | None, random_state: int) -> pd.DataFrame:
    """Customers eligible for training."""
    return training.load_training_frame(database_url(), sample_size, random_state)


@db_task
def load_champion() -> tuple[SegmentationModel | None, str | None]:
    """The current champion, to align segment ids with (None on the first run), and why a
    champion could not be used (an earlier release's pickle, never loaded)."""
    with connection(database_url()) as conn:
        if registry.champion_version(conn) is None:
            return None, None
        try:
            return registry.load_version(conn), None
        except LegacyModel as exc:
            return None, (f"{exc}; its segment ids cannot be carried over, so this version "
                          "starts afresh and is promoted only with --force")


@task(cache_policy=NO_CACHE)
def fit_model(df: pd.DataFrame, k: int | Literal["auto"], sample_size: int | None,
              random_state: int, champion: SegmentationModel | None) -> training.TrainingResult:
    """Fit the pipeline and the rules tree."""
    with track("training", unit="steps", log=get_run_logger().info) as step:
        return training.train_model(df, registry.new_version(), k=k, sample_size=sample_size,
                                    random_state=random_state, champion=champion,
                                    progress=step)


@task(cache_policy=NO_CACHE)
def package_model(result: training.TrainingResult) -> registry.SavedVersion:
    """The version's files (model, rules, metadata), registered with it in one transaction."""
    return registry.package_version(result.model, result.metrics, result.sizes)


@db_task
def register_model(saved: registry.SavedVersion, result: training.TrainingResult,
                   force: bool) -> str:
    """Register the version and promote it when the gates hold (or --force)."""
    return training.register_and_gate(database_url(), saved, result, force,
                                      changed_by="retrain flow" + (" --force" if force else ""))


@db_task
def segment_names(version: str) -> dict[int, str]:
    """The version's segment names as readers see them (ops' renames applied)."""
    with connection(database_url()) as conn:
        return registry.segment_names(conn, version)


@flow(name="retrain", log_prints=True, timeout_seconds=flow_timeout_s())
def retrain(k: int | Literal["auto"] = 4, sample_size: int = 200_000,
            force: bool = False) -> str:
    """Retrain the segmentation; the new version becomes champion only through the gates."""
    settings = flow_settings()
    frame = load_training_frame(sample_size, settings.random_state)
    champion, unusable = load_champion()
    result = fit_model(frame, k, sample_size, settings.random_state, champion)
    if unusable:  # a gate like the others: ops decide with --force
        result.gate_failures.append(unusable)
    saved = package_model(result)
    status = register_model(saved, result, force)
    names = segment_names(saved.version)
    create_markdown_artifact(markdown=reports.retrain_markdown(result, status, names),
                             key="retrain-report", description="Latest retrain")
    create_table_artifact(table=reports.segment_rows(result, names), key="retrain-segments",
                          description="Segments of the latest retrained model")
    # the summary is the run's result (and the CLI's output), the report its artifact
    return finished(reports.retrain_summary(result, status, names))
