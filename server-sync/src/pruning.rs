//! Pruning what the server keeps only for readers that are behind: feed entries every reader
//! in use has read past (the devices that synced within the keep period, and webhooks), and
//! push answers kept for replays older than the keep period; by `fieldsync-server prune` and
//! once a day while `serve` runs. A device that did not sync for longer starts its next pull
//! over with whole records (the server tells it so by restarting its cursor), and a change
//! feed consumer that far behind gets `cursor_expired`. Audit lines are pruned only when an
//! administrator asks, by date (`prune-audit`).

use std::sync::Arc;

use crate::error::ServerError;
use crate::storage::{Pruned, Storage, now_ms};

/// How often `serve` prunes.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Prunes the feed up to where every reader in use has read, counting as in use the devices
/// that synced within the last `keep_days` (as at `now`, ms since the epoch), and the push
/// answers older than that.
pub fn prune(storage: &dyn Storage, keep_days: u32, now: i64) -> Result<Pruned, ServerError> {
    let since = now.saturating_sub(i64::from(keep_days).saturating_mul(DAY_MS));
    let through = storage.feed_read_by_all(since)?;
    storage.prune_feed(through, since)
}

/// Prunes once every [`EVERY`], the first ten minutes after the server started (a server
/// restarted more often than daily still prunes), for as long as the server runs.
pub async fn periodically(storage: Arc<dyn Storage>, keep_days: u32) {
    let mut wait = crate::retention::FIRST_AFTER;
    loop {
        tokio::time::sleep(wait).await;
        wait = EVERY;
        let storage = storage.clone();
        match crate::http::blocking(move || prune(&*storage, keep_days, now_ms())).await {
            Ok(pruned) => tracing::info!(
                feed_entries = pruned.feed_entries,
                push_answers = pruned.push_answers,
                "pruned the feed and push answers"
            ),
            Err(err) => tracing::warn!(error = %err, "pruning failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{accept, record};
    use crate::storage::sqlite::SqliteStorage;
    use crate::storage::{Batch, Role};

    #[test]
    fn the_feed_is_pruned_up_to_the_device_furthest_behind_among_those_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(&dir.path().join("server.db")).unwrap();
        let user = storage.create_user("ada", Role::Member).unwrap();
        // The third device never syncs: it holds nothing back.
        let [phone, tablet, lost] =
            ["phone", "tablet", "lost"].map(|name| storage.create_device(user, name).unwrap());
        for n in 0..6 {
            let batch = format!("b{n}");
            let id = format!("r{n}");
            storage
                .push(
                    phone,
                    &Batch::new(&batch, &[record(&id, "north")]),
                    &mut accept,
                )
                .unwrap();
        }
        let head = storage.feed_head().unwrap();
        let audit_line = ("clients".to_owned(), "r0".to_owned(), "north".to_owned());
        storage
            .record_pull(phone, std::slice::from_ref(&audit_line), None, head)
            .unwrap();
        storage
            .record_pull(tablet, &[audit_line], None, head - 2)
            .unwrap();
        // Every device synced just now: the one behind holds the feed back.
        assert_eq!(prune(&storage, 30, now_ms()).unwrap().feed_entries, 4);
        assert_eq!(
            storage.device_sync(lost).unwrap().feed_pruned_through,
            head - 2
        );
        assert!(storage.feed_changes_of("clients", "r3").unwrap().is_empty());
        assert_eq!(storage.feed_changes_of("clients", "r4").unwrap().len(), 1);
        // A month on, nobody synced within the last day: the whole feed goes, and so do the
        // push answers.
        let later = now_ms() + 31 * DAY_MS;
        let pruned = prune(&storage, 1, later).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                feed_entries: 2,
                push_answers: 6
            }
        );
        assert_eq!(
            storage.device_sync(tablet).unwrap().feed_pruned_through,
            head
        );
    }
}
