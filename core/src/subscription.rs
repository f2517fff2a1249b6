//! Observers: callbacks told, after each commit, which records of a collection changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::query::Filter;
use crate::value::Fields;

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOrigin {
    /// A write on this device.
    Local,
    /// Changes merged from elsewhere (`apply_remote`, sync).
    Remote,
}

/// What a subscriber is told after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The collection subscribed to.
    pub collection: String,
    /// Ids of the records that changed and matched the filter before or after the change.
    pub ids: Vec<String>,
    /// Whether the change was local or merged from elsewhere.
    pub origin: ChangeOrigin,
}

/// A subscriber's callback. It runs on the thread that committed, after the commit, with no
/// store lock held, so it may read or write the store.
pub type Callback = dyn Fn(&ChangeEvent) + Send + Sync;

/// Keeps a subscription alive; dropping it (or calling [`Subscription::cancel`]) stops the
/// callbacks.
#[must_use = "dropping the subscription cancels it"]
pub struct Subscription {
    id: u64,
    registry: Weak<Registry>,
}

impl Subscription {
    /// Stops the callbacks now.
    pub fn cancel(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.lock().remove(&self.id);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

struct Entry {
    collection: String,
    filter: Filter,
    callback: Arc<Callback>,
}

/// One changed record, as the write path saw it.
pub(crate) struct Changed {
    pub collection: String,
    pub id: String,
    /// Materialized values before the change; `None` if the record did not exist or was deleted.
    pub before: Option<Fields>,
    /// Materialized values after; `None` if the record is now deleted or gone.
    pub after: Option<Fields>,
}

/// All subscriptions of one store.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panicking callback runs outside this lock, so the map is never left half-changed.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(
        self: &Arc<Self>,
        collection: &str,
        filter: Filter,
        callback: Arc<Callback>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                collection: collection.to_owned(),
                filter,
                callback,
            },
        );
        Subscription {
            id,
            registry: Arc::downgrade(self),
        }
    }

    /// Tells each subscriber about the changes that concern it.
    pub(crate) fn notify(&self, changes: &[Changed], origin: ChangeOrigin) {
        if changes.is_empty() {
            return;
        }
        let listeners: Vec<(String, Filter, Arc<Callback>)> = self
            .lock()
            .values()
            .map(|e| (e.collection.clone(), e.filter.clone(), e.callback.clone()))
            .collect();
        for (collection, filter, callback) in listeners {
            let matches =
                |fields: &Option<Fields>| fields.as_ref().is_some_and(|f| filter.matches(f));
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<String> = changes
                .iter()
                .filter(|c| c.collection == collection && (matches(&c.before) || matches(&c.after)))
                .filter(|c| seen.insert(c.id.as_str()))
                .map(|c| c.id.clone())
                .collect();
            if !ids.is_empty() {
                callback(&ChangeEvent {
                    collection,
                    ids,
                    origin,
                });
            }
        }
    }
}
