-- Pull pages walk records and the feed in position order and find the scope in the index
-- entry: one pass over the positions per sync. Ranges per scope had to be merged and sorted
-- again on every page, a cost that grew with everything left to send (quadratic over a first
-- sync). `INDEXED BY` in the page queries keeps the planner on these.
DROP INDEX records_by_scope_seq;
DROP INDEX records_by_seq;
DROP INDEX feed_by_scope_seq;
CREATE INDEX records_by_seq_scope ON records (updated_seq, scope);
CREATE INDEX feed_by_seq_scope ON feed (seq, scope);
