-- 018: each batch lands in a table of its own, a partition of customers_incoming. Ingest
-- copies a file straight into the batch's typed table, builds its key once and attaches it;
-- accepting or discarding the batch drops the table. The key is each partition's own
-- (customer_id): ids are unique within a batch, and a key led by the batch id (a constant
-- in a partition) made its build half as slow again. Batches landed before this migration
-- move into partitions named as ingest names them (landing_ + 16 hex digits of md5).
ALTER TABLE customers_incoming RENAME TO customers_incoming_017;

CREATE TABLE customers_incoming (LIKE customers_incoming_017 INCLUDING DEFAULTS,
    -- a big file lands in slices at once, each a table of its own (frozen as it is
    -- copied, keyed on its own): the batch's partition is then partitioned by slice
    slice smallint NOT NULL DEFAULT 0)
    PARTITION BY LIST (batch_id);

DO $$
DECLARE
    batch text;
    landing text;
BEGIN
    FOR batch IN SELECT DISTINCT batch_id FROM customers_incoming_017 LOOP
        landing := 'landing_' || left(md5(batch), 16);
        EXECUTE format('CREATE TABLE %I PARTITION OF customers_incoming FOR VALUES IN (%L)',
                       landing, batch);
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (customer_id)', landing);
    END LOOP;
END $$;

INSERT INTO customers_incoming SELECT *, 0 FROM customers_incoming_017;
DROP TABLE customers_incoming_017;
