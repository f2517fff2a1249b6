-- The audit log is kept as long as the law needs and pruned by date only: a line may be
-- deleted only once older than the horizon, which only moves forward.
CREATE TABLE audit_horizon (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    prunable_before INTEGER NOT NULL
);
INSERT INTO audit_horizon (only_row, prunable_before) VALUES (1, 0);
DROP TRIGGER audit_is_append_only_delete;
CREATE TRIGGER audit_is_pruned_by_date_only BEFORE DELETE ON audit
WHEN OLD.at >= (SELECT prunable_before FROM audit_horizon)
BEGIN SELECT RAISE(ABORT, 'the audit log is pruned by date only'); END;
CREATE TRIGGER audit_horizon_only_moves_forward BEFORE UPDATE ON audit_horizon
WHEN NEW.prunable_before < OLD.prunable_before OR NEW.only_row IS NOT OLD.only_row
BEGIN SELECT RAISE(ABORT, 'the audit horizon only moves forward'); END;
CREATE TRIGGER audit_horizon_stays BEFORE DELETE ON audit_horizon
BEGIN SELECT RAISE(ABORT, 'the audit horizon stays'); END;

-- The feed is pruned up to where every device in use has read: each device's position (how
-- far its pulls reached, written at least hourly while it moves), and how far the feed was
-- pruned. A cursor from before that starts its pull over with whole records.
ALTER TABLE devices ADD COLUMN feed_position INTEGER;
ALTER TABLE devices ADD COLUMN feed_position_at INTEGER;
CREATE TABLE feed_horizon (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    pruned_through INTEGER NOT NULL
);
INSERT INTO feed_horizon (only_row, pruned_through) VALUES (1, 0);
