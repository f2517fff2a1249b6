//! Webhooks: URLs of the clinic's systems that receive, in order, every change their owner (a
//! service account) may read, built on the change feed (`change_feed.rs`). The feed is the
//! durable queue: a webhook's cursor is the position delivered up to, moved only when its
//! receiver answered `2xx`, so a receiver that is down for a while gets every change once it
//! is back (a change may come twice if an answer was lost: receivers skip cursors they have
//! handled). Each delivery is signed: `fieldsync-webhook-signature: v1=<hex HMAC-SHA256 of
//! "{timestamp}.{body}" with the webhook's secret>`, with the timestamp (Unix seconds) in
//! `fieldsync-webhook-timestamp`. A failed delivery is tried again after 1, 2, 4... seconds, up
//! to `Limits::webhook_max_backoff`; while it fails, `webhook list`, the admin API and
//! `/metrics` show it. Every instance delivers; a lease in the database keeps two from
//! delivering one webhook at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use serde::Serialize;

use crate::AppState;
use crate::change_feed::{ChangeView, read_page_for};
use crate::error::ServerError;
use crate::http::blocking;
use crate::storage::{Delivery, Webhook, now_ms};

/// Changes one delivery carries at most.
const PAGE: u32 = 100;
/// How long an instance holds a webhook it is delivering (longer than a delivery takes).
const LEASE_MS: i64 = 60_000;
/// How long a receiver has to answer.
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often deliveries are looked for when no push woke them (another instance's push, a
/// retry coming due).
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// The header naming the webhook.
pub const ID_HEADER: &str = "fieldsync-webhook-id";
/// The header with the delivery's time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "fieldsync-webhook-timestamp";
/// The header with the delivery's signature.
pub const SIGNATURE_HEADER: &str = "fieldsync-webhook-signature";

/// What a delivery posts.
#[derive(Debug, Serialize)]
pub struct DeliveryBody<'a> {
    /// The webhook's id.
    pub webhook: i64,
    /// The changes, oldest first, as the change feed gives them.
    pub changes: &'a [ChangeView],
}

/// The signature of `body` sent at `timestamp` (Unix seconds) with `secret`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1={}", hex::encode(context.sign().as_ref()))
}

/// How long to wait after `attempts` failures in a row.
pub fn backoff(attempts: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempts.min(20)).min(max)
}

/// Delivers every webhook's changes, for as long as the server runs.
pub async fn deliver_forever(state: AppState) {
    let client = crate::outbound::Outbound {
        what: "a webhook's receiver",
        ca_pem: None,
        timeout: RECEIVER_TIMEOUT,
        connect_timeout: RECEIVER_TIMEOUT,
    }
    .client();
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "webhooks cannot be delivered");
            return;
        }
    };
    loop {
        // Registered before looking, so that a push stored meanwhile wakes the next look.
        let stored = state.feed_stored.notified();
        if let Err(err) = deliver_due(&state, &client).await {
            tracing::warn!(error = %err, "delivering webhooks failed");
        }
        let _ = tokio::time::timeout(LOOK_AGAIN, stored).await;
    }
}

/// One delivery of each webhook that is due and free.
async fn deliver_due(state: &AppState, client: &reqwest::Client) -> Result<(), ServerError> {
    let storage = state.storage.clone();
    let webhooks = blocking(move || storage.webhooks()).await?;
    let failing = webhooks
        .iter()
        .filter(|w| w.failing_since.is_some())
        .count();
    state.metrics.webhooks_failing.set(failing as i64);
    for webhook in webhooks {
        let now = now_ms();
        if webhook.next_attempt_at > now {
            continue;
        }
        let storage = state.storage.clone();
        let id = webhook.id;
        if !blocking(move || storage.lease_webhook(id, now, now + LEASE_MS)).await? {
            continue;
        }
        let ended = deliver(state, client, &webhook).await;
        let delivery = match &ended {
            Ok(Some(cursor)) => Delivery::Delivered { cursor: *cursor },
            Ok(None) => Delivery::Idle,
            Err(error) => {
                let wait = backoff(webhook.attempts, state.limits.webhook_max_backoff);
                tracing::warn!(webhook = id, %error, retry_in_ms = wait.as_millis() as u64,
                    "a webhook's delivery failed");
                state.metrics.webhook_failures.inc();
                Delivery::Failed {
                    error: error.clone(),
                    retry_at: now_ms() + wait.as_millis() as i64,
                }
            }
        };
        let storage = state.storage.clone();
        blocking(move || storage.end_webhook_delivery(id, &delivery, now_ms())).await?;
    }
    Ok(())
}

/// Posts the changes after the webhook's cursor: the new cursor once the receiver took them,
/// `None` when there were none, or why it failed.
async fn deliver(
    state: &AppState,
    client: &reqwest::Client,
    webhook: &Webhook,
) -> Result<Option<i64>, String> {
    let storage = state.storage.clone();
    let user_id = webhook.user_id;
    let caller = blocking(move || crate::auth::caller_of_user(&*storage, user_id))
        .await
        .map_err(|err| format!("its owner's grants could not be read: {err}"))?;
    let page = read_page_for(state, &Arc::new(caller), (webhook.cursor, PAGE), "webhook")
        .await
        .map_err(|err| format!("its changes could not be read: {err}"))?;
    if page.changes.is_empty() {
        return Ok(None);
    }
    let body = serde_json::to_vec(&DeliveryBody {
        webhook: webhook.id,
        changes: &page.changes,
    })
    .map_err(|_| "its changes could not be encoded".to_owned())?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    let answer = client
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(ID_HEADER, webhook.id)
        .header(TIMESTAMP_HEADER, timestamp)
        .header(
            SIGNATURE_HEADER,
            signature(&webhook.secret, timestamp, &body),
        )
        .body(body)
        .send()
        .await
        // The URL may hold a credential of the receiver's: never in a message.
        .map_err(|err| format!("the receiver could not be reached: {}", err.without_url()))?;
    if !answer.status().is_success() {
        return Err(format!("the receiver answered {}", answer.status()));
    }
    let cursor = page
        .next
        .parse()
        .map_err(|_| "the feed gave an unreadable cursor".to_owned())?;
    state.metrics.webhook_deliveries.inc();
    Ok(Some(cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        // Computed independently: printf '1765100000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            signature("whsec_test", 1_765_100_000, br#"{"a":1}"#),
            "v1=487b986a3fad11a332659b5e287935b6bd7f1377ddf163486b9287e96eced549"
        );
    }

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_the_most() {
        let max = Duration::from_secs(300);
        let waits: Vec<u64> = (0..12).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
