-- 001: the core schema. Names and columns are a contract with marketing and the other
-- modules: add columns in later migrations, never rename these.

-- One row per loaded batch (a CSV file or a copied table).
CREATE TABLE ingest_batches (
    batch_id        text PRIMARY KEY,
    source          text NOT NULL,
    rows_in         bigint NOT NULL,
    rows_inserted   bigint NOT NULL,
    rows_updated    bigint NOT NULL,
    warnings        jsonb NOT NULL DEFAULT '[]'::jsonb,
    status          text NOT NULL DEFAULT 'loaded'
                    CHECK (status IN ('loaded', 'validated', 'failed', 'scored')),
    loaded_at       timestamptz NOT NULL DEFAULT now()
);

-- The customers as last loaded: the 17 features of CC GENERAL, lower-cased.
-- Values are stored as loaded; the data contract (validation) decides what is scored.
CREATE TABLE customers (
    customer_id                       text PRIMARY KEY,
    balance                           double precision,
    balance_frequency                 double precision,
    purchases                         double precision,
    oneoff_purchases                  double precision,
    installments_purchases            double precision,
    cash_advance                      double precision,
    purchases_frequency               double precision,
    oneoff_purchases_frequency        double precision,
    purchases_installments_frequency  double precision,
    cash_advance_frequency            double precision,
    cash_advance_trx                  double precision,
    purchases_trx                     double precision,
    credit_limit                      double precision,
    payments                          double precision,
    minimum_payments                  double precision,
    prc_full_payment                  double precision,
    tenure                            double precision,
    batch_id                          text NOT NULL REFERENCES ingest_batches (batch_id),
    loaded_at                         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_batch_idx ON customers (batch_id);
CREATE INDEX customers_loaded_at_idx ON customers (loaded_at);

-- The model registry: one row per trained version; exactly one champion.
CREATE TABLE model_versions (
    version         text PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL CHECK (status IN ('champion', 'challenger', 'retired')),
    k               smallint NOT NULL CHECK (k >= 2),
    metrics         jsonb NOT NULL,
    path            text NOT NULL,
    sha256          text NOT NULL,
    status_reason   text,
    promoted_at     timestamptz
);
CREATE UNIQUE INDEX model_versions_one_champion ON model_versions (status)
    WHERE status = 'champion';

-- Each version's segments: stable id, name and profile, size, centroid in original units.
CREATE TABLE segment_profiles (
    version         text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    segment_id      smallint NOT NULL,
    name            text NOT NULL,
    profile         text NOT NULL,
    size            bigint NOT NULL,
    share           double precision NOT NULL,
    centroid        jsonb NOT NULL,
    centroid_z      jsonb NOT NULL,
    PRIMARY KEY (version, segment_id)
);

-- Ops can rename a segment; the override wins over the generated name.
CREATE TABLE segment_name_overrides (
    segment_id      smallint PRIMARY KEY,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
    profile         text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every scoring run, successful or not.
CREATE TABLE scoring_runs (
    run_id          uuid PRIMARY KEY,
    model_version   text NOT NULL REFERENCES model_versions (version),
    mode            text NOT NULL CHECK (mode IN ('full', 'incremental')),
    status          text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    rows_in         bigint NOT NULL DEFAULT 0,
    rows_scored     bigint NOT NULL DEFAULT 0,
    rows_quarantined bigint NOT NULL DEFAULT 0,
    rows_changed    bigint NOT NULL DEFAULT 0,
    timings         jsonb NOT NULL DEFAULT '{}'::jsonb,
    error           text
);
CREATE INDEX scoring_runs_started_idx ON scoring_runs (started_at DESC);

-- The current segment of every scored customer; published atomically by a scoring run.
CREATE TABLE customer_segments (
    customer_id     text PRIMARY KEY,
    segment_id      smallint NOT NULL,
    segment_name    text NOT NULL,
    model_version   text NOT NULL REFERENCES model_versions (version),
    scored_at       timestamptz NOT NULL,
    run_id          uuid NOT NULL
);
CREATE INDEX customer_segments_segment_idx ON customer_segments (segment_id);

-- Every change of a customer's segment or model version, appended by the run that made it.
CREATE TABLE segment_history (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id         text NOT NULL,
    old_segment_id      smallint,
    new_segment_id      smallint NOT NULL,
    old_model_version   text,
    new_model_version   text NOT NULL,
    changed_at          timestamptz NOT NULL,
    run_id              uuid NOT NULL
);
CREATE INDEX segment_history_customer_idx ON segment_history (customer_id, changed_at);
CREATE INDEX segment_history_run_idx ON segment_history (run_id);
