-- 012: runs that overlap, erasure that lasts, retention that only shortens history.

-- An erased customer stays erased: a later batch that carries them skips them (counted), until
-- ops re-admit the id. The list holds keyed hashes only: sha256(key || id), the key a random
-- value in a table that only the owner reads (not marketing_ro, not segmentation_app), so the
-- list cannot be read back as ids, while ingest can still test an incoming id against it.
CREATE TABLE erasure_key (
    only_one  boolean PRIMARY KEY DEFAULT true CHECK (only_one),
    key       bytea NOT NULL
);
INSERT INTO erasure_key (key)
SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');

CREATE FUNCTION erased_id_hash(customer_id text) RETURNS bytea
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $fn$
    SELECT sha256(k.key || convert_to(customer_id, 'UTF8')) FROM erasure_key k
$fn$;
REVOKE ALL ON FUNCTION erased_id_hash(text) FROM PUBLIC;

CREATE TABLE erased_customers (
    id_hash     bytea PRIMARY KEY,
    erasure_id  uuid NOT NULL REFERENCES erasures (erasure_id),
    erased_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Re-admissions: when and by whom an erased id was allowed back (its keyed hash, no id).
CREATE TABLE erasure_readmissions (
    readmitted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    requested_by   text NOT NULL,
    id_hash        bytea NOT NULL,
    erasure_id     uuid NOT NULL
);
-- How many of the ids an erasure asked for were held anywhere (the rest: recorded, nothing
-- to remove). Earlier erasures did not count it.
ALTER TABLE erasures ADD COLUMN customers_found integer;
-- Rows of a batch skipped because their customer was erased: rows_in = accepted +
-- quarantined + erased.
ALTER TABLE ingest_batches ADD COLUMN rows_erased bigint NOT NULL DEFAULT 0;
ALTER TABLE validation_runs ADD COLUMN rows_erased bigint NOT NULL DEFAULT 0;

-- Examples of broken rules (ids and raw values) live here, one row each, and nowhere else:
-- erasure deletes them by id, retention by age, and only the owner reads them. The lines
-- kept in validation_runs say the rule and the count.
CREATE TABLE validation_examples (
    run_id       uuid NOT NULL REFERENCES validation_runs (run_id) ON DELETE CASCADE,
    rule         text NOT NULL,
    customer_id  text NOT NULL,
    value        text,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX validation_examples_run_idx ON validation_examples (run_id);
-- The examples already written into the lines and the GX summary go (they cannot be told
-- apart from the text reliably enough to move, and they had no retention).
UPDATE validation_runs SET
    warnings = (SELECT coalesce(jsonb_agg(regexp_replace(w, ', e\.g\. .*$', '')), '[]'::jsonb)
                FROM jsonb_array_elements_text(warnings) w),
    failures = (SELECT coalesce(jsonb_agg(regexp_replace(f, ', e\.g\. .*$', '')), '[]'::jsonb)
                FROM jsonb_array_elements_text(failures) f),
    gx_summary = CASE WHEN jsonb_typeof(gx_summary -> 'results') = 'array' THEN
        jsonb_set(gx_summary, '{results}',
                  (SELECT coalesce(jsonb_agg(r - 'examples'), '[]'::jsonb)
                   FROM jsonb_array_elements(gx_summary -> 'results') r))
        ELSE gx_summary END;

-- Retention only shortens history: before a customer's oldest moves are deleted, the
-- segment they started in, and when they first left it, are kept here (once: the first
-- retention pass that reaches them still holds their first move).
CREATE TABLE customer_origins (
    customer_id  text PRIMARY KEY,
    segment_id   smallint NOT NULL,
    left_at      timestamptz NOT NULL
);
-- Retention's range delete on the time column: history is appended in time order, so a
-- block range index serves it for almost nothing on the publish's side.
CREATE INDEX segment_history_changed_at_brin ON segment_history USING brin (changed_at);

CREATE OR REPLACE VIEW customer_first_segments AS
SELECT a.customer_id, coalesce(o.segment_id, m.old_segment_id, a.segment_id) AS segment_id,
       a.first_run_id AS run_id, coalesce(f.started_at, a.scored_at) AS first_scored_at
FROM segment_assignments a
LEFT JOIN customer_origins o USING (customer_id)
LEFT JOIN (SELECT DISTINCT ON (customer_id) customer_id, old_segment_id FROM segment_history
           ORDER BY customer_id, changed_at, run_id) m USING (customer_id)
LEFT JOIN scoring_runs f ON f.run_id = a.first_run_id;

-- The first stretch ends when the customer first left it (known from customer_origins when
-- retention removed that move); the stretches between then and the oldest move kept are
-- past the retention horizon and are not shown.
CREATE OR REPLACE VIEW segment_membership AS
WITH stretches AS (
    SELECT f.customer_id, f.segment_id, f.first_scored_at AS valid_from,
           o.left_at AS ends_at
    FROM customer_first_segments f LEFT JOIN customer_origins o USING (customer_id)
    UNION ALL
    SELECT customer_id, new_segment_id, changed_at, NULL FROM segment_history
)
SELECT s.customer_id, s.segment_id,
       coalesce(n.segment_name, 'segment ' || s.segment_id) AS segment_name,
       s.valid_from,
       coalesce(s.ends_at,
                lead(s.valid_from) OVER (PARTITION BY s.customer_id ORDER BY s.valid_from))
           AS valid_to
FROM stretches s LEFT JOIN champion_segment_names n USING (segment_id);

-- Partitioned runs' scratch rows, found by run (the publish, the sweep of dead runs).
CREATE INDEX scoring_stage_run_idx ON scoring_stage (run_id, part);

-- segment_name() reads as its owner (SECURITY DEFINER): only the roles that need it run it.
REVOKE EXECUTE ON FUNCTION segment_name(smallint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segment_name(smallint) TO marketing_ro, segmentation_app;

-- The app reads validation runs without their examples (now in validation_examples, which it
-- cannot read); the lines it reads name rules and counts.
GRANT SELECT (rows_erased) ON validation_runs TO segmentation_app;
