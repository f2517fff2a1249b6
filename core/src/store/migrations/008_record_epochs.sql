-- The epoch of each record the server erased content from (a record absent here is at epoch
-- 0). An erased record comes back from the server as a new document, its next epoch, which
-- replaces the store's copy; changes are only ever merged within one epoch.
CREATE TABLE record_epochs (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (collection, record_id)
) WITHOUT ROWID;
