-- Retention policies: per collection, records whose `age_field` (a timestamp) is more than
-- `older_than_days` old are erased, whole (`erase_fields` NULL) or only the fields listed
-- (a JSON array).
CREATE TABLE retention_policies (
    collection TEXT PRIMARY KEY NOT NULL,
    age_field TEXT NOT NULL,
    older_than_days INTEGER NOT NULL,
    erase_fields TEXT,
    set_at INTEGER NOT NULL
) WITHOUT ROWID;
