//! Webhooks added, listed and removed by administrators (see `webhooks.rs` for delivery).

use super::{By, audited, user};
use crate::error::ServerError;
use crate::storage::{Storage, Webhook};

/// A webhook added.
#[derive(Debug, Clone)]
pub struct AddedWebhook {
    /// Its id.
    pub id: i64,
    /// The secret its deliveries are signed with (shown once; the receiver keeps it).
    pub secret: String,
}

/// Adds a webhook posting to `url` the changes `user_name` (a service account) may read: from
/// now on, or with `from_start` every change the server holds.
pub fn add_webhook(
    storage: &dyn Storage,
    by: By,
    url: &str,
    user_name: &str,
    from_start: bool,
) -> Result<AddedWebhook, ServerError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| ServerError::BadRequest("the webhook's url is not a URL".into()))?;
    if !crate::outbound::secure_or_loopback(&parsed) {
        return Err(ServerError::BadRequest(
            "the webhook's url must be https (http only to this machine)".into(),
        ));
    }
    let user_id = user(storage, user_name)?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|_| ServerError::Internal("no randomness".into()))?;
    let secret = format!("whsec_{}", hex::encode(key));
    let cursor = if from_start { 0 } else { storage.feed_head()? };
    let id = storage.create_webhook(url, &secret, user_id, cursor)?;
    // The URL is left out of the audit log: it may hold a credential of the receiver's.
    audited(storage, by, &format!("add-webhook {id}"), user_name)?;
    Ok(AddedWebhook { id, secret })
}

/// Every webhook, with how its deliveries go.
pub fn webhooks(storage: &dyn Storage) -> Result<Vec<Webhook>, ServerError> {
    storage.webhooks()
}

/// Removes a webhook.
pub fn remove_webhook(storage: &dyn Storage, by: By, id: i64) -> Result<(), ServerError> {
    let owner = storage
        .webhooks()?
        .into_iter()
        .find(|webhook| webhook.id == id)
        .map(|webhook| webhook.user)
        .ok_or_else(|| ServerError::NotFound(format!("no webhook {id}")))?;
    storage.delete_webhook(id)?;
    audited(storage, by, &format!("remove-webhook {id}"), &owner)
}
