-- 015: segment_summary reads the counts the publishing run wrote (run_segment_sizes) instead
-- of counting the published table on every query; erasures keep those counts exact. Until
-- the latest run has a summary (a database from before 014, or the moment between a
-- publish and its summary) the view counts, as before: the one-time filter below skips
-- that scan whenever the summary is there. last_scored_at is when the publishing run
-- finished.
CREATE OR REPLACE VIEW segment_summary AS
WITH champion AS (SELECT version FROM model_versions WHERE status = 'champion'),
last_run AS (SELECT run_id, model_version, finished_at FROM scoring_runs
             WHERE status = 'succeeded' ORDER BY finished_at DESC LIMIT 1),
published AS (SELECT coalesce((SELECT model_version FROM last_run),
                              (SELECT version FROM champion)) AS version),
counts AS (
    SELECT z.segment_id, z.customers, (SELECT finished_at FROM last_run) AS last_scored_at
    FROM run_segment_sizes z WHERE z.run_id = (SELECT run_id FROM last_run)
    UNION ALL
    SELECT segment_id, count(*), max(scored_at) FROM segment_assignments
    WHERE NOT EXISTS (SELECT FROM run_summaries s
                      WHERE s.run_id = (SELECT run_id FROM last_run))
    GROUP BY segment_id),
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
