-- 004: what marketing reads, and the read-only role it reads with.

-- One row per segment of the champion: name (ops' override wins), profile, size, share.
CREATE VIEW segment_summary AS
SELECT p.segment_id,
       coalesce(o.name, p.name)                        AS segment_name,
       coalesce(o.profile, p.profile)                  AS profile,
       coalesce(c.customers, 0)                        AS customers,
       coalesce(c.customers, 0)::double precision
           / nullif(sum(coalesce(c.customers, 0)) OVER (), 0) AS share,
       p.version                                       AS model_version,
       c.last_scored_at
FROM segment_profiles p
JOIN model_versions m ON m.version = p.version AND m.status = 'champion'
LEFT JOIN segment_name_overrides o ON o.segment_id = p.segment_id
LEFT JOIN (SELECT segment_id, count(*) AS customers, max(scored_at) AS last_scored_at
           FROM customer_segments GROUP BY segment_id) c ON c.segment_id = p.segment_id;

-- Every scored customer with the segment's profile.
CREATE VIEW customer_segments_current AS
SELECT s.customer_id, s.segment_id, s.segment_name, p.profile, s.model_version,
       s.scored_at, s.run_id
FROM customer_segments s
LEFT JOIN segment_profiles p ON p.version = s.model_version AND p.segment_id = s.segment_id;

-- Customers moving between segments, per scoring run (from_segment NULL: new customer).
CREATE VIEW segment_movement AS
SELECT h.run_id, r.started_at, h.old_segment_id AS from_segment,
       h.new_segment_id AS to_segment, count(*) AS customers
FROM segment_history h JOIN scoring_runs r USING (run_id)
GROUP BY h.run_id, r.started_at, h.old_segment_id, h.new_segment_id;

-- Roles are cluster-wide: create once, grant per database. NOLOGIN until
-- `segmentation db migrate` finds SEGMENTATION_MARKETING_PASSWORD and sets it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'marketing_ro') THEN
        CREATE ROLE marketing_ro NOLOGIN;
    END IF;
END
$$;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO marketing_ro;
GRANT SELECT ON segment_summary, customer_segments_current, segment_movement,
    customer_segments, segment_profiles, segment_history, scoring_runs TO marketing_ro;
