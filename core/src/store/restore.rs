//! A store restored from an older copy of its file (phones restore apps' files from backups).
//!
//! Such a store numbers its next changes as it numbered changes the server already has, and
//! its cursor is from before changes it pushed (a pull leaves a device's own entries out). The
//! server says so (`batch_conflict`, `actor_reused`), and the sync engine then:
//! 1. takes a new Automerge actor, takes its unsent writes back out of their records (as
//!    rejected writes coded `store_restored`, with the values the user gave) and forgets its
//!    cursor ([`Store::take_new_actor`]);
//! 2. pulls every record whole again, which brings back what it pushed after the copy was
//!    made;
//! 3. writes the kept writes again as new edits on top of that ([`Store::write_restored_again`])
//!    and pushes them under the new actor.
//!
//! Nothing written is lost, the user's writes land on top of everything the server has, and
//! nothing is sent twice.

use automerge::ActorId;
use rusqlite::TransactionBehavior;

use super::{Db, Store, now_ms, rejected};
use crate::error::Result;

/// The code of the writes a restored store keeps aside while it syncs again.
pub const STORE_RESTORED: &str = "store_restored";

impl Store {
    /// Step 1 of the way out of a restore: a new actor, the unsent writes kept aside, no
    /// cursor. One transaction; the store's device id is the new actor's.
    pub(crate) fn take_new_actor(&self) -> Result<()> {
        let device_id = uuid::Uuid::new_v4().simple().to_string();
        let actor = ActorId::try_from(device_id.as_str()).expect("a UUID is 16 bytes of hex");
        let changed = {
            let mut db = self.shared.lock()?;
            let Db { conn, cache, .. } = &mut *db;
            // Every cached document writes as the old actor.
            cache.clear();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'device_id'",
                [&device_id],
            )?;
            let now = now_ms();
            let message = "kept while the store, restored from an older copy, syncs again";
            let mut changed = Vec::new();
            for (collection, id, scope, payloads) in rejected::unsent_by_record(&tx, None)? {
                if self.shared.schema.collections.contains_key(&collection) {
                    let key = (collection.as_str(), id.as_str(), scope.as_str());
                    let reason = (STORE_RESTORED, message);
                    changed.extend(rejected::take_back(
                        &self.shared,
                        &tx,
                        cache,
                        key,
                        &payloads,
                        reason,
                        now,
                    )?);
                }
            }
            tx.execute("DELETE FROM outbox", [])?;
            tx.execute("DELETE FROM sync_state WHERE key = 'cursor'", [])?;
            tx.commit()?;
            *self
                .shared
                .identity
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = (actor, device_id);
            changed
        };
        rejected::notify(self, &changed);
        Ok(())
    }

    /// Step 3, once the store has caught up under its new actor: writes the writes
    /// [`Store::take_new_actor`] kept aside again, each as a new edit on top of the record as
    /// it is now; how many. One that cannot be written (its record was deleted meanwhile,
    /// say) stays listed for the app, and is tried again at the next sync.
    pub(crate) fn write_restored_again(&self) -> Result<usize> {
        let kept = self
            .rejected_writes()?
            .into_iter()
            .filter(|write| write.code == STORE_RESTORED);
        let mut written = 0;
        for write in kept {
            match self.retry_rejected_write(write.id) {
                Ok(()) => written += 1,
                Err(err) => {
                    tracing::warn!(error = %err, "a write kept through a restore could not be written again");
                }
            }
        }
        Ok(written)
    }
}
