//! What pruning deletes, in PostgreSQL: the feed up to where every reader in use has read,
//! old push answers, and audit lines by date.

use postgres::Client;

use super::LOCK_FEED;
use crate::storage::{Pruned, Result, now_ms};

pub(super) fn feed_read_by_all(conn: &mut Client, active_since: i64) -> Result<i64> {
    Ok(conn
        .query_one(
            "SELECT coalesce(min(position), (SELECT coalesce(max(seq), 0) FROM feed)) FROM (
                 SELECT coalesce(feed_position, 0) AS position FROM devices
                 WHERE revoked_at IS NULL AND last_sync_at >= $1
                 UNION ALL SELECT cursor FROM webhooks) AS readers",
            &[&active_since],
        )?
        .get(0))
}

/// Per scope with feed entries, how far its slowest reader in use is behind its last entry
/// (see [`crate::storage::Storage::feed_lag`]): one query, a search of the feed's scope index
/// per scope.
pub(super) fn feed_lag(conn: &mut Client, active_since: i64) -> Result<Vec<(String, i64)>> {
    let rows = conn.query(
        "WITH readers AS (
                 SELECT user_id, coalesce(feed_position, 0) AS position FROM devices
                 WHERE revoked_at IS NULL AND last_sync_at >= $1
                 UNION ALL SELECT user_id, cursor FROM webhooks),
             heads AS (
                 SELECT name AS scope, (SELECT max(seq) FROM feed WHERE feed.scope = scopes.name) AS head
                 FROM scopes)
             SELECT h.scope, greatest(0, h.head - coalesce(min(r.position), h.head))
             FROM heads h LEFT JOIN grants g ON g.scope = h.scope
                 LEFT JOIN readers r ON r.user_id = g.user_id
             WHERE h.head IS NOT NULL
             GROUP BY h.scope, h.head ORDER BY h.scope",
        &[&active_since],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

pub(super) fn prune_feed(conn: &mut Client, through: i64, answers_before: i64) -> Result<Pruned> {
    let mut tx = conn.transaction()?;
    // Taken as pushes take it, so that no push is between drawing a position and committing.
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_FEED])?;
    tx.execute(
        "UPDATE feed_horizon SET pruned_through = greatest(pruned_through, $1)",
        &[&through],
    )?;
    let feed_entries = tx.execute("DELETE FROM feed WHERE seq <= $1", &[&through])?;
    let push_answers = tx.execute(
        "DELETE FROM push_batches WHERE created_at < $1",
        &[&answers_before],
    )?;
    tx.commit()?;
    Ok(Pruned {
        feed_entries,
        push_answers,
    })
}

pub(super) fn prune_audit(conn: &mut Client, before: i64, by: i64) -> Result<u64> {
    let mut tx = conn.transaction()?;
    tx.execute(
        "UPDATE audit_horizon SET prunable_before = greatest(prunable_before, $1)",
        &[&before],
    )?;
    let pruned = tx.execute("DELETE FROM audit WHERE at < $1", &[&before])?;
    tx.execute(
        "INSERT INTO audit (at, user_id, device_id, action, collection, record_id, scope, detail)
         VALUES ($1, $2, 0, 'audit-prune', 'admin', '', '', $3)",
        &[
            &now_ms(),
            &by,
            &format!("lines before {before} (ms since the epoch)"),
        ],
    )?;
    tx.commit()?;
    Ok(pruned)
}
