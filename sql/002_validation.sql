-- 002: the data contract. Batches land in customers_incoming, are validated (Great
-- Expectations), and only then reach customers; broken rows go to customers_quarantine.

ALTER TABLE ingest_batches DROP CONSTRAINT ingest_batches_status_check;
ALTER TABLE ingest_batches ADD CONSTRAINT ingest_batches_status_check
    CHECK (status IN ('loaded', 'validated', 'failed', 'discarded'));
ALTER TABLE ingest_batches ADD COLUMN rows_quarantined bigint NOT NULL DEFAULT 0;
ALTER TABLE ingest_batches ADD COLUMN validated_at timestamptz;

-- A landed batch, typed, before validation. Rows leave when the batch is accepted.
CREATE TABLE customers_incoming (LIKE customers INCLUDING DEFAULTS);
ALTER TABLE customers_incoming ADD PRIMARY KEY (batch_id, customer_id);
ALTER TABLE customers_incoming ADD FOREIGN KEY (batch_id) REFERENCES ingest_batches (batch_id);

-- Rows that broke a row rule: kept with their raw values and every rule they broke.
CREATE TABLE customers_quarantine (
    customer_id     text NOT NULL,
    batch_id        text NOT NULL REFERENCES ingest_batches (batch_id),
    raw             jsonb NOT NULL,
    rules           text[] NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, customer_id)
);

-- One row per validation of a batch.
CREATE TABLE validation_runs (
    run_id          uuid PRIMARY KEY,
    batch_id        text NOT NULL REFERENCES ingest_batches (batch_id),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    success         boolean NOT NULL,
    rows_in         bigint NOT NULL,
    rows_accepted   bigint NOT NULL,
    rows_quarantined bigint NOT NULL,
    counts          jsonb NOT NULL,      -- rule -> failing rows
    failures        jsonb NOT NULL,      -- why the batch failed (empty when success)
    warnings        jsonb NOT NULL,
    gx_summary      jsonb NOT NULL       -- GX statistics and per-expectation outcome
);
CREATE INDEX validation_runs_batch_idx ON validation_runs (batch_id, started_at DESC);
