-- 005: publishing a million segments must not pay a per-row foreign-key trigger (4.4 s per
-- million rows measured). The publish writes the version it has just loaded from
-- model_versions, in the same transaction, and versions are never deleted (only retired).
ALTER TABLE customer_segments DROP CONSTRAINT customer_segments_model_version_fkey;

-- Partitioned scoring: each partition task (possibly on another machine) COPYs its scores
-- here under the run's id; the publish moves them into customer_segments in one
-- transaction and deletes them. Unlogged: a crash loses only an unpublished run's scratch.
CREATE UNLOGGED TABLE scoring_stage (
    run_id      uuid NOT NULL,
    part        smallint NOT NULL,
    customer_id text NOT NULL,
    segment_id  smallint NOT NULL
);
