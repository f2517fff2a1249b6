//! What the sync engine needs from the store: finishing a push, the pull cursor, merging a
//! pulled page, and the records the server refused.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::remote::{Incoming, PageEffects};
use super::{OutboxEntry, Store, now_ms, remote};
use crate::error::Result;
use crate::protocol::{Payload, PullResponse, PushResponse};
use crate::store::ApplyReport;
use crate::subscription::ChangeOrigin;

/// A local record the server refused; it stays on the device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerRejection {
    /// Collection of the record.
    pub collection: String,
    /// Record id.
    pub id: String,
    /// The record's scope.
    pub scope: String,
    /// The server's stable code (`forbidden_scope`, `malformed`, ...).
    pub code: String,
    /// The server's message.
    pub message: String,
    /// When it was refused (ms since the epoch).
    pub rejected_at_ms: i64,
}

impl Store {
    /// Records the server's answer to a push of `entries`: they leave the outbox, and the
    /// rejected ones are remembered with their reason. One transaction.
    pub(crate) fn complete_push(
        &self,
        entries: &[OutboxEntry],
        response: &PushResponse,
    ) -> Result<()> {
        let mut db = self.shared.lock();
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        for (entry, result) in entries.iter().zip(&response.results) {
            tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
                .execute([entry.seq])?;
            if let Some(rejection) = &result.rejected {
                let code = serde_json::to_value(rejection.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                tx.prepare_cached(
                    "INSERT INTO server_rejections (collection, record_id, scope, code, message, rejected_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (collection, record_id) DO UPDATE SET code = excluded.code,
                         message = excluded.message, rejected_at = excluded.rejected_at",
                )?
                .execute(params![entry.collection, entry.record_id, entry.scope, code, rejection.message, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The pull cursor stored with the last merged page, if any.
    pub(crate) fn sync_cursor(&self) -> Result<Option<String>> {
        let db = self.shared.lock();
        Ok(db
            .conn
            .query_row(
                "SELECT value FROM sync_state WHERE key = 'cursor'",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Merges a pulled page, purges revoked scopes and stores the page's cursor, in one
    /// transaction; then tells subscribers.
    pub(crate) fn apply_pull_page(&self, page: PullResponse) -> Result<ApplyReport> {
        let incoming: Vec<Incoming> = page
            .records
            .into_iter()
            .map(|record| {
                let values = match (&record.payload, &record.fields) {
                    (Payload::Document(_), Some(fields)) => Some((fields.clone(), record.deleted)),
                    _ => None,
                };
                Incoming {
                    record: record.into(),
                    values,
                }
            })
            .collect();
        let effects = PageEffects {
            purge_scopes: &page.revoked_scopes,
            cursor: Some(&page.next_cursor),
        };
        let (report, changed) = {
            let mut db = self.shared.lock();
            remote::apply(&self.shared, &mut db, incoming, effects)?
        };
        self.shared
            .subscriptions
            .notify(&changed, ChangeOrigin::Remote);
        Ok(report)
    }

    /// Local records the server refused, newest first. They stay on the device; writing them
    /// again sends them again.
    pub fn server_rejections(&self) -> Result<Vec<ServerRejection>> {
        let db = self.shared.lock();
        let mut stmt = db.conn.prepare_cached(
            "SELECT collection, record_id, scope, code, message, rejected_at FROM server_rejections
             ORDER BY rejected_at DESC, collection, record_id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(ServerRejection {
                collection: row.get(0)?,
                id: row.get(1)?,
                scope: row.get(2)?,
                code: row.get(3)?,
                message: row.get(4)?,
                rejected_at_ms: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
