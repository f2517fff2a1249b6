-- The schema pushed records are validated against: one row per version, the newest in force,
-- each kept whole so that an administrator can see what changed and when.
CREATE TABLE schemas (
    version INTEGER PRIMARY KEY,
    schema TEXT NOT NULL,
    set_at BIGINT NOT NULL
);
