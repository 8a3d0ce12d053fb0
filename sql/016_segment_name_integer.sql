-- 016: segment_name(2) works as typed: an integer literal resolves to int, and the function
-- took only smallint. This overload is plain SQL over the smallint one (SECURITY INVOKER: it
-- grants nothing that function does not), executable by the same roles.
CREATE FUNCTION segment_name(segment integer) RETURNS text
    LANGUAGE sql STABLE
    RETURN CASE WHEN segment BETWEEN -32768 AND 32767 THEN segment_name(segment::smallint) END;
REVOKE EXECUTE ON FUNCTION segment_name(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION segment_name(integer) TO marketing_ro, segmentation_app;
