-- 013: segment_summary is what is published: one row per segment, named by the model that
-- published the rows, with rescore_pending when a newer champion has not scored them yet.
-- The per-model detail (a row per segment and model) stays for ops as
-- segment_summary_by_model.
ALTER VIEW segment_summary RENAME TO segment_summary_by_model;

CREATE VIEW segment_summary AS
WITH champion AS (SELECT version FROM model_versions WHERE status = 'champion'),
published AS (SELECT coalesce(
    (SELECT model_version FROM scoring_runs WHERE status = 'succeeded'
     ORDER BY finished_at DESC LIMIT 1),
    (SELECT version FROM champion)) AS version),
counts AS (SELECT segment_id, count(*) AS customers, max(scored_at) AS last_scored_at
           FROM segment_assignments GROUP BY segment_id),
named AS (SELECT n.segment_id, n.segment_name, n.profile FROM segment_names n
          JOIN published p ON p.version = n.model_version),
segments AS (SELECT segment_id FROM counts UNION SELECT segment_id FROM named)
SELECT s.segment_id,
       coalesce(n.segment_name, 'segment ' || s.segment_id)  AS segment_name,
       n.profile,
       coalesce(c.customers, 0)                              AS customers,
       coalesce(c.customers, 0)::double precision
           / nullif(sum(coalesce(c.customers, 0)) OVER (), 0) AS share,
       p.version                                             AS model_version,
       c.last_scored_at,
       p.version IS DISTINCT FROM ch.version                 AS rescore_pending,
       round(100 * coalesce(c.customers, 0)::numeric
             / nullif(sum(coalesce(c.customers, 0)) OVER (), 0), 1) AS share_pct
FROM segments s
LEFT JOIN counts c USING (segment_id)
LEFT JOIN named n USING (segment_id)
CROSS JOIN published p
LEFT JOIN champion ch ON true
ORDER BY s.segment_id;

GRANT SELECT ON segment_summary, segment_summary_by_model TO marketing_ro, segmentation_app;
