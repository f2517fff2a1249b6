-- The person and device behind each actor, as the server names them with pulled pages, so
-- that history and conflicts show "Ben, Ben's tablet" instead of an actor id. A later page
-- naming an actor again replaces what it said (a renamed user or device).
CREATE TABLE authors (
    actor TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    device_name TEXT NOT NULL
) WITHOUT ROWID;
