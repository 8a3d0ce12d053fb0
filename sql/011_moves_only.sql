-- 011: segment_history records moves only. A customer's first assignment is a fact of
-- their published row (first_run_id: the run that first scored them, whose started_at is
-- when); a model switch that leaves a customer in the same segment is a fact of the run
-- (scoring_runs.model_version, champion_log), not one history row per customer. A night
-- that rescores every customer then writes history only for those who moved.

-- The first-assignment fact, from the history that says it today: the oldest row kept for
-- each customer (a first assignment unless retention removed it), else the run that
-- published the row.
ALTER TABLE segment_assignments ADD COLUMN first_run_id uuid;
UPDATE segment_assignments a SET first_run_id = f.run_id
FROM (SELECT DISTINCT ON (customer_id) customer_id, run_id FROM segment_history
      ORDER BY customer_id, changed_at, run_id) f
WHERE f.customer_id = a.customer_id;
UPDATE segment_assignments SET first_run_id = run_id WHERE first_run_id IS NULL;
ALTER TABLE segment_assignments ALTER COLUMN first_run_id SET NOT NULL;
COMMENT ON COLUMN segment_assignments.first_run_id IS
    'The scoring run that first published this customer (its started_at: first scored).';

-- Per-run counts, recorded by each run from now on; for earlier runs, from their history.
ALTER TABLE scoring_runs ADD COLUMN rows_new bigint NOT NULL DEFAULT 0,
                         ADD COLUMN rows_moved bigint NOT NULL DEFAULT 0;
UPDATE scoring_runs r SET rows_new = h.new, rows_moved = h.moved
FROM (SELECT run_id, count(*) FILTER (WHERE old_segment_id IS NULL) AS new,
             count(*) FILTER (WHERE old_segment_id <> new_segment_id) AS moved
      FROM segment_history GROUP BY run_id) h
WHERE h.run_id = r.run_id;
COMMENT ON COLUMN scoring_runs.rows_changed IS
    'Customers whose published row changed: new, moved, or scored by another model.';

-- What history keeps from here on: moves, and the constraint says so.
DELETE FROM segment_history WHERE old_segment_id IS NULL OR old_segment_id = new_segment_id;
ALTER TABLE segment_history ALTER COLUMN old_segment_id SET NOT NULL,
                            ALTER COLUMN old_model_version SET NOT NULL,
                            ADD CONSTRAINT segment_history_is_a_move
                                CHECK (old_segment_id <> new_segment_id);
COMMENT ON TABLE segment_history IS
    'One row per customer who changed segment in a run (moves only; first assignments are'
    ' segment_assignments.first_run_id, model switches are scoring_runs).';

-- Nothing filters the published rows by segment through an index (a segment is a quarter
-- of the table: a sequential scan), and a bulk publish would build it for nothing.
DROP INDEX IF EXISTS segment_assignments_segment_idx;

-- The published segments, now with when each customer was first scored.
CREATE OR REPLACE VIEW customer_segments AS
SELECT a.customer_id, a.segment_id, coalesce(o.name, p.name) AS segment_name,
       a.model_version, a.scored_at, a.run_id, f.started_at AS first_scored_at,
       a.first_run_id
FROM segment_assignments a
LEFT JOIN segment_profiles p ON p.version = a.model_version AND p.segment_id = a.segment_id
LEFT JOIN segment_name_overrides o ON o.segment_id = a.segment_id
LEFT JOIN scoring_runs f ON f.run_id = a.first_run_id;

-- A customer's first segment: where their first move started from, or, if they never
-- moved, where they are now.
CREATE VIEW customer_first_segments AS
SELECT a.customer_id, coalesce(m.old_segment_id, a.segment_id) AS segment_id,
       a.first_run_id AS run_id, coalesce(f.started_at, a.scored_at) AS first_scored_at
FROM segment_assignments a
LEFT JOIN (SELECT DISTINCT ON (customer_id) customer_id, old_segment_id FROM segment_history
           ORDER BY customer_id, changed_at, run_id) m USING (customer_id)
LEFT JOIN scoring_runs f ON f.run_id = a.first_run_id;

-- Movement per run: the moves in history, and each run's new customers (from NULL).
CREATE OR REPLACE VIEW segment_movement AS
WITH moves AS (
    SELECT run_id, old_segment_id, new_segment_id FROM segment_history
    UNION ALL
    SELECT run_id, NULL::smallint, segment_id FROM customer_first_segments
)
SELECT h.run_id, r.started_at, h.old_segment_id AS from_segment,
       h.new_segment_id AS to_segment, count(*) AS customers,
       CASE WHEN h.old_segment_id IS NULL THEN 'new customer'
            ELSE coalesce(f.segment_name, 'segment ' || h.old_segment_id) END
           AS from_segment_name,
       coalesce(t.segment_name, 'segment ' || h.new_segment_id) AS to_segment_name
FROM moves h JOIN scoring_runs r USING (run_id)
LEFT JOIN champion_segment_names f ON f.segment_id = h.old_segment_id
LEFT JOIN champion_segment_names t ON t.segment_id = h.new_segment_id
GROUP BY h.run_id, r.started_at, h.old_segment_id, h.new_segment_id, f.segment_name,
         t.segment_name;

-- One row per stretch a customer spent in a segment: the first from when they were first
-- scored, then one per move. (Before the retention horizon, moves deleted by retention
-- are missing: the first stretch then runs to the oldest move kept.)
CREATE OR REPLACE VIEW segment_membership AS
WITH stretches AS (
    SELECT customer_id, segment_id, first_scored_at AS valid_from FROM customer_first_segments
    UNION ALL
    SELECT customer_id, new_segment_id, changed_at FROM segment_history
)
SELECT s.customer_id, s.segment_id,
       coalesce(n.segment_name, 'segment ' || s.segment_id) AS segment_name,
       s.valid_from,
       lead(s.valid_from) OVER (PARTITION BY s.customer_id ORDER BY s.valid_from) AS valid_to
FROM stretches s LEFT JOIN champion_segment_names n USING (segment_id);

GRANT SELECT ON customer_first_segments TO marketing_ro, segmentation_app;

-- Partitioned runs build one table per hash partition outside the publish transaction;
-- the publish attaches them. A run that died before its publish leaves them behind, and
-- the next run drops them (they are named segment_assignments_build_<run>_<part>).
