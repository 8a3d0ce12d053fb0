-- 017: a version's files live in the database, written in the transaction that registers
-- it, so a version and its files never disagree and any process with the database URL (a
-- Dask worker on another host, the app) loads them. Loading stays safe through skops'
-- trusted types alone: whoever can write these rows can write their digests too.
CREATE TABLE model_files (
    version  text NOT NULL REFERENCES model_versions (version) ON DELETE CASCADE,
    name     text NOT NULL CHECK (name IN ('model.skops', 'rules.txt', 'metadata.json')),
    content  bytea NOT NULL,
    sha256   text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (version, name)
);
-- path: the folder of a version from before this release (imported by `db migrate`), else
-- NULL.
ALTER TABLE model_versions ALTER COLUMN path DROP NOT NULL;
-- the app predicts with the model; marketing never reads model bytes
GRANT SELECT ON model_files TO segmentation_app;
