-- 009: erasure and retention. An erasure removes a customer from every table that holds
-- them, in one transaction, and leaves only this record: when, how many, and each id
-- hashed with the erasure's own random salt (enough to confirm that a given id was
-- erased, not to list who was).
CREATE TABLE erasures (
    erasure_id   uuid PRIMARY KEY,
    erased_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    requested_by text NOT NULL,
    customers    integer NOT NULL,
    rows_removed jsonb NOT NULL,          -- table -> rows deleted
    salt         text NOT NULL,
    id_hashes    text[] NOT NULL          -- sha256(salt || customer_id), hex
);
-- Retention runs every night: each pass is one range delete on the time column.
CREATE INDEX customers_quarantine_at_idx ON customers_quarantine (quarantined_at);
