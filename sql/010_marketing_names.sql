-- Names wherever marketing reads segments: movement with from/to names, shares as
-- percentages, and each customer's timeline of segments.

-- The champion's name for a segment id (ids are stable across models), or "segment N" for
-- an id the champion does not have; joined, not called per row, so it scales to 10 M rows.
CREATE VIEW champion_segment_names AS
SELECT n.segment_id, n.segment_name
FROM segment_names n JOIN model_versions m ON m.version = n.model_version
WHERE m.status = 'champion';

-- Customers moving between segments, per scoring run (from_segment NULL: a new customer).
CREATE OR REPLACE VIEW segment_movement AS
SELECT h.run_id, r.started_at, h.old_segment_id AS from_segment,
       h.new_segment_id AS to_segment, count(*) AS customers,
       CASE WHEN h.old_segment_id IS NULL THEN 'new customer'
            ELSE coalesce(f.segment_name, 'segment ' || h.old_segment_id) END
           AS from_segment_name,
       coalesce(t.segment_name, 'segment ' || h.new_segment_id) AS to_segment_name
FROM segment_history h JOIN scoring_runs r USING (run_id)
LEFT JOIN champion_segment_names f ON f.segment_id = h.old_segment_id
LEFT JOIN champion_segment_names t ON t.segment_id = h.new_segment_id
GROUP BY h.run_id, r.started_at, h.old_segment_id, h.new_segment_id, f.segment_name,
         t.segment_name;

-- share stays a fraction for programs; share_pct is what people read (37.6, not 0.376201...).
CREATE OR REPLACE VIEW segment_summary AS
WITH champion AS (SELECT version FROM model_versions WHERE status = 'champion'),
counts AS (SELECT model_version, segment_id, count(*) AS customers,
                  max(scored_at) AS last_scored_at
           FROM segment_assignments GROUP BY model_version, segment_id),
segments AS (SELECT model_version, segment_id FROM counts
             UNION SELECT n.model_version, n.segment_id FROM segment_names n
                   JOIN champion ch ON ch.version = n.model_version)
SELECT s.segment_id, n.segment_name, n.profile,
       coalesce(c.customers, 0)                        AS customers,
       coalesce(c.customers, 0)::double precision
           / nullif(sum(coalesce(c.customers, 0)) OVER (), 0) AS share,
       s.model_version,
       c.last_scored_at,
       s.model_version IS DISTINCT FROM ch.version     AS rescore_pending,
       round(100 * coalesce(c.customers, 0)::numeric
             / nullif(sum(coalesce(c.customers, 0)) OVER (), 0), 1) AS share_pct
FROM segments s
LEFT JOIN counts c USING (model_version, segment_id)
LEFT JOIN segment_names n USING (model_version, segment_id)
LEFT JOIN champion ch ON true
ORDER BY s.model_version IS DISTINCT FROM ch.version, s.model_version, s.segment_id;

-- One row per stretch of time a customer spent in a segment; valid_to NULL for the current
-- one. A model switch that keeps the customer in the same segment is no new stretch.
-- "Who was in segment X on date D":
--   SELECT customer_id FROM segment_membership
--   WHERE segment_name = 'X' AND valid_from <= D AND (valid_to > D OR valid_to IS NULL);
-- A customer whose history was deleted by retention starts at their oldest kept change,
-- or at their last scoring when none is kept.
CREATE VIEW segment_membership AS
WITH changes AS (
    SELECT customer_id, new_segment_id AS segment_id, changed_at,
           lag(new_segment_id) OVER (PARTITION BY customer_id ORDER BY changed_at, run_id)
               AS before
    FROM segment_history
), stretches AS (
    SELECT customer_id, segment_id, changed_at AS valid_from
    FROM changes WHERE before IS DISTINCT FROM segment_id
    UNION ALL
    SELECT a.customer_id, a.segment_id, a.scored_at
    FROM segment_assignments a
    WHERE NOT EXISTS (SELECT 1 FROM segment_history h WHERE h.customer_id = a.customer_id)
)
SELECT s.customer_id, s.segment_id,
       coalesce(n.segment_name, 'segment ' || s.segment_id) AS segment_name,
       s.valid_from,
       lead(s.valid_from) OVER (PARTITION BY s.customer_id ORDER BY s.valid_from) AS valid_to
FROM stretches s LEFT JOIN champion_segment_names n USING (segment_id);

GRANT SELECT ON champion_segment_names, segment_membership TO marketing_ro, segmentation_app;
