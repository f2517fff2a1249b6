//! What the command line lists: devices, users and the audit log, one entry a line, every
//! name a device or an identity provider sent printed with its hidden characters escaped.

use crate::admin::printable;
use crate::error::ServerError;
use crate::storage::{AuditQuery, Storage};

/// `devices`: each device with its user, last sync, the changes it last said wait in its
/// outbox and when it said so, schema version, state and actor.
pub(super) fn devices(storage: &dyn Storage) -> Result<(), ServerError> {
    let row = |id: &dyn std::fmt::Display,
               user: &str,
               device: &str,
               last: &str,
               pending: [&str; 2],
               schema: &str,
               state: &str,
               actor: &str| {
        let [pending, pending_at] = pending;
        println!(
            "{id:>4}  {user:<20} {device:<24} {last:<26} {pending:>7}  {pending_at:<26} \
             {schema:<7} {state:<8} {actor}"
        );
    };
    let devices = storage.list_devices()?;
    row(
        &"id",
        "user",
        "device",
        "last sync (UTC)",
        ["pending", "pending as of (UTC)"],
        "schema",
        "state",
        "actor",
    );
    for device in devices {
        let last = device.last_sync_at.map_or("never".to_owned(), utc);
        let pending = device
            .pending_changes
            .map_or("-".to_owned(), |n| n.to_string());
        let pending_at = device.pending_reported_at.map_or("-".to_owned(), utc);
        let schema = device
            .schema_version
            .map_or("-".to_owned(), |v| v.to_string());
        let state = if device.revoked { "revoked" } else { "active" };
        row(
            &device.id,
            &printable(&device.user),
            &printable(&device.name),
            &last,
            [&pending, &pending_at],
            &schema,
            state,
            device.actor.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

/// `users`: each user with their role, how they sign in, and what the provider sent of them.
pub(super) fn users(storage: &dyn Storage) -> Result<(), ServerError> {
    println!(
        "{:>4}  {:<36} {:<7} {:<10} {:<24} email",
        "id", "name", "role", "sign-in", "display name"
    );
    for user in storage.list_users()? {
        println!(
            "{:>4}  {:<36} {:<7} {:<10} {:<24} {}",
            user.id,
            printable(&user.name),
            user.role.as_str(),
            if user.signs_in { "provider" } else { "token" },
            printable(user.display_name.as_deref().unwrap_or("-")),
            printable(user.email.as_deref().unwrap_or("-")),
        );
    }
    Ok(())
}

/// `audit`: the lines `query` selects, newest first.
pub(super) fn audit(storage: &dyn Storage, query: &AuditQuery) -> Result<(), ServerError> {
    for entry in storage.audit(query)? {
        if entry.collection == "admin" {
            println!(
                "{} {} {} {}",
                utc(entry.at),
                printable(&entry.user),
                printable(&entry.action),
                printable(&entry.record_id)
            );
            continue;
        }
        let code = entry
            .code
            .map(|code| format!(" ({code})"))
            .unwrap_or_default();
        let detail = entry
            .detail
            .map(|detail| format!(": {}", printable(&detail)))
            .unwrap_or_default();
        // Collections, ids and scopes of refused pushes are as the device sent them.
        println!(
            "{} {} device {} {} {}/{} in {}{code}{detail}",
            utc(entry.at),
            printable(&entry.user),
            entry.device_id,
            entry.action,
            printable(&entry.collection),
            printable(&entry.record_id),
            printable(&entry.scope)
        );
    }
    Ok(())
}

/// A time (ms since the epoch) in RFC 3339, UTC.
pub(super) fn utc(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// `webhook list`: each webhook with its owner, where its deliveries stand and, while they
/// fail, since when and why.
pub(super) fn webhooks(storage: &dyn Storage) -> Result<(), ServerError> {
    println!(
        "{:>4}  {:<20} {:>8}  {:<40} state",
        "id", "user", "cursor", "url"
    );
    for webhook in crate::admin::webhooks(storage)? {
        let state = match (&webhook.failing_since, &webhook.last_error) {
            (Some(since), error) => format!(
                "failing since {} ({} attempts): {}; next attempt {}",
                utc(*since),
                webhook.attempts,
                printable(error.as_deref().unwrap_or("?")),
                utc(webhook.next_attempt_at)
            ),
            (None, _) => "delivering".to_owned(),
        };
        println!(
            "{:>4}  {:<20} {:>8}  {:<40} {state}",
            webhook.id,
            printable(&webhook.user),
            webhook.cursor,
            printable(&webhook.url)
        );
    }
    Ok(())
}
