-- Keystrokes not yet made into an Automerge change: each splice of a text field made by
-- `Store::splice_text` commits here and in its record's row at once, and the run of them is
-- made into one change later (before a sync, another write, or after enough keystrokes).
-- The document stays as it was before the run until then; its row already shows the text.
CREATE TABLE typing (
    seq INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    record_id TEXT NOT NULL,
    field TEXT NOT NULL,
    position INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    inserted TEXT NOT NULL,
    typed_at INTEGER NOT NULL
);
