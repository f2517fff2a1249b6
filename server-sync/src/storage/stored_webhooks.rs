//! Webhooks and their deliveries, as storage keeps them.

/// A webhook: a URL that receives, in order, the changes its owner may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: i64,
    /// Where changes are posted.
    pub url: String,
    /// The key its deliveries are signed with.
    pub secret: String,
    /// The user (a service account) whose grants say which scopes' changes it receives.
    pub user_id: i64,
    /// That user's name.
    pub user: String,
    /// The feed position delivered up to.
    pub cursor: i64,
    /// When it was added (ms since the epoch).
    pub created_at: i64,
    /// Failed deliveries in a row.
    pub attempts: u32,
    /// Since when deliveries fail, while they do.
    pub failing_since: Option<i64>,
    /// Why the last one failed, while they do.
    pub last_error: Option<String>,
    /// The earliest the next delivery is tried.
    pub next_attempt_at: i64,
}

/// How a webhook's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver took every change up to `cursor`.
    Delivered {
        /// The feed position now delivered up to.
        cursor: i64,
    },
    /// The receiver did not take them; tried again from `retry_at`.
    Failed {
        /// Why, for administrators (never a record's value).
        error: String,
        /// When to try again (ms since the epoch).
        retry_at: i64,
    },
    /// There was nothing to deliver.
    Idle,
}
