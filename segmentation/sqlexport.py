"""The champion as a SQL function, so SQL users can score a row without Python.

`segment_for(<17 features>)` imputes missing values with the training means, standardizes
with the training statistics and returns the id of the nearest centroid: the same
arithmetic as the KMeans pipeline, so it agrees with Python's prediction.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from segmentation.clustering import SegmentationModel
from segmentation.features import FEATURES


def segment_for_sql(model: SegmentationModel) -> sql.Composed:
    """CREATE OR REPLACE FUNCTION segment_for(...) for this model (numbers as literals)."""
    imputer = model.pipeline.named_steps["impute"]
    scaler = model.pipeline.named_steps["scale"]
    centres = model.pipeline[-1].cluster_centers_
    args = sql.SQL(", ").join(sql.SQL("{} double precision").format(sql.Identifier(f))
                              for f in FEATURES)
    z = [sql.SQL("((coalesce({f}, {m}) - {mu}) / {s})").format(
            f=sql.Identifier(f), m=sql.Literal(float(imputer.statistics_[j])),
            mu=sql.Literal(float(scaler.mean_[j])), s=sql.Literal(float(scaler.scale_[j])))
         for j, f in enumerate(FEATURES)]
    distances = sql.SQL(", ").join(
        sql.SQL("({}::smallint, {})").format(
            sql.Literal(int(model.label_to_segment[label])),
            sql.SQL(" + ").join(sql.SQL("power({} - {}, 2)").format(z[j],
                                                                     sql.Literal(float(c)))
                                for j, c in enumerate(centre)))
        for label, centre in enumerate(centres))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION segment_for({args}) RETURNS smallint"
        " LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$"
        " SELECT segment FROM (VALUES {distances}) AS d(segment, distance)"
        " ORDER BY distance, segment LIMIT 1 $fn$;"
        " COMMENT ON FUNCTION segment_for({types}) IS {comment};"
        " GRANT EXECUTE ON FUNCTION segment_for({types}) TO marketing_ro"
    ).format(args=args, distances=distances,
             types=sql.SQL(", ").join(sql.SQL("double precision") for _ in FEATURES),
             comment=sql.Literal(f"segment of a customer under model {model.version}"))


def install_segment_for(conn: psycopg.Connection, model: SegmentationModel) -> None:
    """Install (or replace) segment_for for `model`."""
    conn.execute(segment_for_sql(model))
