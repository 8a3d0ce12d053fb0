-- 007: day-2 operations. Segment names have one source of truth, read at query time; every
-- champion change is logged; drift is a row ops can query.

-- Names: a segment's name is its model's generated name unless ops renamed the segment id
-- (segment_name_overrides). Published rows no longer carry a copy of the name, so a rename
-- is one row written and every reader sees it at once: the published table becomes
-- segment_assignments and customer_segments a view over it with the name resolved.
DROP VIEW segment_summary;
DROP VIEW customer_segments_current;

ALTER TABLE customer_segments RENAME TO segment_assignments;
ALTER TABLE customer_segments_p RENAME TO segment_assignments_p;
ALTER INDEX customer_segments_pkey RENAME TO segment_assignments_pkey;
ALTER INDEX customer_segments_segment_idx RENAME TO segment_assignments_segment_idx;
ALTER INDEX customer_segments_p_pkey RENAME TO segment_assignments_p_pkey;
ALTER INDEX customer_segments_p_segment_idx RENAME TO segment_assignments_p_segment_idx;
ALTER TABLE segment_assignments DROP COLUMN segment_name;
COMMENT ON TABLE segment_assignments IS
    'Current segment of every scored customer (no names: read customer_segments). One'
    ' partition (segment_assignments_p), swapped whole by a bulk publish.';

-- Every version's segments with the name and profile readers see.
CREATE VIEW segment_names AS
SELECT p.version AS model_version, p.segment_id,
       coalesce(o.name, p.name)       AS segment_name,
       coalesce(o.profile, p.profile) AS profile,
       p.name                         AS generated_name,
       o.updated_at                   AS renamed_at
FROM segment_profiles p
LEFT JOIN segment_name_overrides o ON o.segment_id = p.segment_id;

-- The published segments, as marketing has always queried them.
CREATE VIEW customer_segments AS
SELECT a.customer_id, a.segment_id, coalesce(o.name, p.name) AS segment_name,
       a.model_version, a.scored_at, a.run_id
FROM segment_assignments a
LEFT JOIN segment_profiles p ON p.version = a.model_version AND p.segment_id = a.segment_id
LEFT JOIN segment_name_overrides o ON o.segment_id = a.segment_id;

CREATE VIEW customer_segments_current AS
SELECT a.customer_id, a.segment_id, coalesce(o.name, p.name) AS segment_name,
       coalesce(o.profile, p.profile) AS profile, a.model_version, a.scored_at, a.run_id
FROM segment_assignments a
LEFT JOIN segment_profiles p ON p.version = a.model_version AND p.segment_id = a.segment_id
LEFT JOIN segment_name_overrides o ON o.segment_id = a.segment_id;

-- One row per segment and scoring model: the champion's segments, and the segments of any
-- earlier model that still scores published rows. model_version is the model that scored
-- the rows; rescore_pending says it is not the champion (the next nightly run rescores them).
CREATE VIEW segment_summary AS
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
       s.model_version IS DISTINCT FROM ch.version     AS rescore_pending
FROM segments s
LEFT JOIN counts c USING (model_version, segment_id)
LEFT JOIN segment_names n USING (model_version, segment_id)
LEFT JOIN champion ch ON true
ORDER BY s.model_version IS DISTINCT FROM ch.version, s.model_version, s.segment_id;

-- A segment's name under the champion, for SQL users: segment_name(segment_for(...)).
CREATE FUNCTION segment_name(segment smallint) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    SELECT n.segment_name FROM segment_names n
    JOIN model_versions m ON m.version = n.model_version AND m.status = 'champion'
    WHERE n.segment_id = segment
$fn$;

-- Champions: every change, why and by what; rollback walks back through it.
CREATE TABLE champion_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version          text NOT NULL REFERENCES model_versions (version),
    previous_version text REFERENCES model_versions (version),
    action           text NOT NULL CHECK (action IN ('promote', 'rollback')),
    changed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason           text NOT NULL,
    changed_by       text NOT NULL
);
-- What the registry knew before the log: the champions in the order they were promoted.
INSERT INTO champion_log (version, previous_version, action, changed_at, reason, changed_by)
SELECT version, lag(version) OVER (ORDER BY promoted_at), 'promote', promoted_at,
       coalesce(status_reason, 'promoted'), 'before the champion log (migration 007)'
FROM model_versions WHERE promoted_at IS NOT NULL AND status IN ('champion', 'retired')
ORDER BY promoted_at;

-- Drift found by a validation (feature PSI) or after a scoring run (segment mix).
CREATE TABLE drift_alerts (
    alert_id        uuid PRIMARY KEY,
    detected_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind            text NOT NULL CHECK (kind IN ('feature', 'segment-mix')),
    batch_id        text,
    run_id          uuid,
    model_version   text,
    psi             jsonb NOT NULL,
    message         text NOT NULL
);
CREATE INDEX drift_alerts_detected_idx ON drift_alerts (detected_at DESC);

-- Marketing reads the views and the logs; the storage table is not theirs to read.
REVOKE ALL ON segment_assignments, segment_assignments_p FROM marketing_ro;
GRANT SELECT ON customer_segments, customer_segments_current, segment_summary, segment_names,
    champion_log TO marketing_ro;
GRANT EXECUTE ON FUNCTION segment_name(smallint) TO marketing_ro;

-- Each validated batch's quarantine is counted by exactly one scoring run: the first whose
-- snapshot holds the batch claims it. Batches scored before this migration are claimed by
-- the last successful run.
ALTER TABLE ingest_batches ADD COLUMN scored_by uuid;
UPDATE ingest_batches SET scored_by = (SELECT run_id FROM scoring_runs WHERE status = 'succeeded'
                                       ORDER BY started_at DESC LIMIT 1)
WHERE status = 'validated';
