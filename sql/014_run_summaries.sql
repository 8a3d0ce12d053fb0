-- 014: what the app shows, written by each scoring run once it has published, so that a
-- page visit reads small tables (or one indexed row), never a scan of the published table.
-- Sizes and movement are exact; the scatter, the typical customers and the feature
-- histograms come from a sample of the published customers (sample_rows of them).
CREATE TABLE run_summaries (
    run_id        uuid PRIMARY KEY REFERENCES scoring_runs (run_id) ON DELETE CASCADE,
    model_version text NOT NULL,
    customers     bigint NOT NULL,
    sample_rows   bigint NOT NULL,
    written_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_summaries_written_idx ON run_summaries (written_at DESC);

-- Customers per segment once the run had published.
CREATE TABLE run_segment_sizes (
    run_id      uuid NOT NULL REFERENCES run_summaries (run_id) ON DELETE CASCADE,
    segment_id  smallint NOT NULL,
    customers   bigint NOT NULL,
    PRIMARY KEY (run_id, segment_id)
);

-- The run's moves between segments (from_segment NULL: first scored by this run).
CREATE TABLE run_segment_moves (
    run_id        uuid NOT NULL REFERENCES run_summaries (run_id) ON DELETE CASCADE,
    from_segment  smallint,
    to_segment    smallint NOT NULL,
    customers     bigint NOT NULL
);
CREATE INDEX run_segment_moves_run_idx ON run_segment_moves (run_id);

-- Points of the scatter: the model's two principal axes (no customer id).
CREATE TABLE run_scatter_points (
    run_id      uuid NOT NULL REFERENCES run_summaries (run_id) ON DELETE CASCADE,
    segment_id  smallint NOT NULL,
    pc1         real NOT NULL,
    pc2         real NOT NULL
);
CREATE INDEX run_scatter_points_run_idx ON run_scatter_points (run_id);

-- The sampled customers nearest each segment's centre (erasure reaches them by id).
CREATE TABLE run_typical_customers (
    run_id      uuid NOT NULL REFERENCES run_summaries (run_id) ON DELETE CASCADE,
    segment_id  smallint NOT NULL,
    rank        smallint NOT NULL,
    customer_id text NOT NULL,
    distance    real NOT NULL,
    PRIMARY KEY (run_id, segment_id, rank)
);

-- Each feature's distribution, per segment and for everyone (segment_id NULL), in bins
-- shared by all of them: [lower, upper), the last bin closed, the ends open to outliers.
CREATE TABLE run_feature_bins (
    run_id      uuid NOT NULL REFERENCES run_summaries (run_id) ON DELETE CASCADE,
    feature     text NOT NULL,
    segment_id  smallint,
    bin         smallint NOT NULL,
    lower       double precision NOT NULL,
    upper       double precision NOT NULL,
    customers   bigint NOT NULL
);
CREATE INDEX run_feature_bins_run_idx ON run_feature_bins (run_id, feature);

GRANT SELECT ON run_summaries, run_segment_sizes, run_segment_moves, run_scatter_points,
    run_typical_customers, run_feature_bins TO segmentation_app;
