-- 019: customers is partitioned by ranges of customer_id. A first load (customers empty)
-- then becomes customers by attaching the batch's validated tables as its partitions (one
-- per slice of the file, each already keyed): its rows are written once, where copying
-- them wrote them twice and built the key again. Every other load merges into it as
-- before. Rows already here stay in one partition that spans every id.
-- customers_batch_idx goes: nothing reads customers by batch since its foreign key went
-- (003), and every accept maintained it.
ALTER TABLE customers RENAME TO customers_all;
ALTER INDEX customers_pkey RENAME TO customers_pkey_all;  -- a duplicate names customers' key
ALTER INDEX customers_loaded_at_idx RENAME TO customers_all_loaded_at_idx;
DROP INDEX customers_batch_idx;

CREATE TABLE customers (LIKE customers_all INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (customer_id);
ALTER TABLE customers ADD CONSTRAINT customers_pkey PRIMARY KEY (customer_id);
CREATE INDEX customers_loaded_at_idx ON customers (loaded_at);
-- the key's NOT NULL implies the bounds: no scan of the rows
ALTER TABLE customers ATTACH PARTITION customers_all FOR VALUES FROM (MINVALUE) TO (MAXVALUE);

-- the app reads customers through the parent (008); the partition needs no grant of its own
GRANT SELECT ON customers TO segmentation_app;
REVOKE ALL ON customers_all FROM segmentation_app;
