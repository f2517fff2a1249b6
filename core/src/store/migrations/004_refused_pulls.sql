-- Records whose pulled changes this store refused (they did not merge or did not fit the
-- schema): its copy may lack changes the server has, so later changes to them are merged, never
-- appended with the server's values.
CREATE TABLE refused_pulls (
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    refused_at INTEGER NOT NULL,
    PRIMARY KEY (collection, record_id)
) WITHOUT ROWID;
