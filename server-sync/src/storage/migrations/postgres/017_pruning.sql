-- The audit log is kept as long as the law needs and pruned by date only: a line may be
-- deleted only once older than the horizon, which only moves forward.
CREATE TABLE audit_horizon (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    prunable_before BIGINT NOT NULL
);
INSERT INTO audit_horizon (prunable_before) VALUES (0);
DROP TRIGGER audit_is_append_only_rows ON audit;
CREATE TRIGGER audit_is_append_only_updates BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
CREATE FUNCTION audit_is_pruned_by_date_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.at >= (SELECT prunable_before FROM audit_horizon) THEN
        RAISE EXCEPTION 'the audit log is pruned by date only';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER audit_is_pruned_by_date_only BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_pruned_by_date_only();
CREATE FUNCTION audit_horizon_only_moves_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.prunable_before < OLD.prunable_before THEN
        RAISE EXCEPTION 'the audit horizon only moves forward';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_horizon_only_moves_forward BEFORE UPDATE OR DELETE ON audit_horizon
    FOR EACH ROW EXECUTE FUNCTION audit_horizon_only_moves_forward();
CREATE TRIGGER audit_horizon_is_not_truncated BEFORE TRUNCATE ON audit_horizon
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();

-- The feed is pruned up to where every device in use has read: each device's position (how
-- far its pulls reached, written at least hourly while it moves), and how far the feed was
-- pruned. A cursor from before that starts its pull over with whole records.
ALTER TABLE devices ADD COLUMN feed_position BIGINT;
ALTER TABLE devices ADD COLUMN feed_position_at BIGINT;
CREATE TABLE feed_horizon (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_horizon (pruned_through) VALUES (0);
