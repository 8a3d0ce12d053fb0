-- 008: the Streamlit app reads with a role of its own: SELECT on what it shows, nothing
-- else (no quarantine, no raw rule examples, no write). Exports are recorded through one
-- SECURITY DEFINER function, the app's only way to write anything. NOLOGIN until
-- `segmentation db migrate` finds SEGMENTATION_APP_PASSWORD; an owner URL switches its
-- sessions to this role instead (SET ROLE), so the migrating user is made a member.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'segmentation_app') THEN
        CREATE ROLE segmentation_app NOLOGIN;
    END IF;
END
$$;
GRANT segmentation_app TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO segmentation_app;
GRANT SELECT ON customer_segments, customer_segments_current, segment_summary, segment_names,
    segment_movement, segment_assignments, segment_profiles, segment_name_overrides,
    segment_history, model_versions, champion_log, scoring_runs, customers
    TO segmentation_app;
-- the runs table, without the per-rule examples (customer ids and values) of gx_summary
GRANT SELECT (run_id, batch_id, started_at, finished_at, success, rows_in, rows_accepted,
              rows_quarantined, failures, warnings) ON validation_runs TO segmentation_app;

-- Who exported which segments, how many rows; never the rows themselves.
CREATE TABLE export_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exported_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    exported_by  text NOT NULL,
    segments     smallint[] NOT NULL,
    rows         bigint NOT NULL CHECK (rows >= 0)
);

CREATE FUNCTION record_export(who text, segments smallint[], exported bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $fn$
    INSERT INTO export_log (exported_by, segments, rows) VALUES (who, segments, exported)
$fn$;
REVOKE ALL ON FUNCTION record_export(text, smallint[], bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION record_export(text, smallint[], bigint) TO segmentation_app;
