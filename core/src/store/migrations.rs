//! The store's own SQL schema as numbered steps, tracked by `PRAGMA user_version`.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Every step in order; step `n` (1-based) brings the file to version `n`.
const STEPS: &[&str] = &[
    include_str!("migrations/001_init.sql"),
    include_str!("migrations/002_pending_changes.sql"),
    include_str!("migrations/003_sync_state.sql"),
    include_str!("migrations/004_refused_pulls.sql"),
    include_str!("migrations/005_rejected_writes.sql"),
    include_str!("migrations/006_attachments.sql"),
    include_str!("migrations/007_attachment_uploads.sql"),
    include_str!("migrations/008_record_epochs.sql"),
    include_str!("migrations/009_authors.sql"),
    include_str!("migrations/010_typing.sql"),
];

/// The format version a fully migrated file has.
pub(crate) const LATEST: u32 = STEPS.len() as u32;

/// The first version whose stores zero deleted content (`secure_delete`, set at open).
const ZEROES_DELETED_CONTENT: u32 = 8;

/// Brings the file up to [`LATEST`], one transaction per step. A file from before stores
/// zeroed what they deleted is then rewritten without its free pages (`VACUUM`, once), which
/// may still hold records' earlier bytes.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let before: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    migrate_to(conn, LATEST)?;
    if (1..ZEROES_DELETED_CONTENT).contains(&before) {
        conn.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// Brings the file up to `target`; older steps already applied are skipped.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<()> {
    loop {
        // The version is read inside the step's write transaction: two processes opening the
        // same file at once apply each step once, the second seeing the first's version.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if current > LATEST {
            return Err(Error::NewerFormat {
                found: current,
                supported: LATEST,
            });
        }
        if current >= target {
            return Ok(());
        }
        let version = current + 1;
        tx.execute_batch(STEPS[version as usize - 1])?;
        // PRAGMA takes no parameters; `version` is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn upgraded_file_equals_fresh_file() {
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh).unwrap();
        for start in 0..LATEST {
            let mut old = Connection::open_in_memory().unwrap();
            migrate_to(&mut old, start).unwrap();
            migrate(&mut old).unwrap();
            assert_eq!(
                schema_of(&old),
                schema_of(&fresh),
                "upgrade from version {start}"
            );
            let version: u32 = old
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, LATEST);
        }
    }

    #[test]
    fn records_refused_before_writes_were_taken_back_are_listed_as_not_reverted() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 4).unwrap();
        conn.execute(
            "INSERT INTO server_rejections (collection, record_id, scope, code, message, rejected_at)
             VALUES ('clients', 'c1', 'south', 'forbidden_scope', 'no write grant', 7)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let row: (String, String, String, i64, bool) = conn
            .query_row(
                "SELECT record_id, fields, code, rejected_at, reverted FROM rejected_writes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            ("c1".into(), "{}".into(), "forbidden_scope".into(), 7, false)
        );
    }

    #[test]
    fn a_newer_file_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {}", LATEST + 1))
            .unwrap();
        assert!(matches!(migrate(&mut conn), Err(Error::NewerFormat { .. })));
    }
}
