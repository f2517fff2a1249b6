//! A record damaged as an older server left it (an appended change whose checksum no longer
//! matches, in the stored document and in the feed): found, and rebuilt from the feed or from
//! a device's copy.

use automerge::{ActorId, AutoCommit};
use fieldsync_record::protocol::{Payload, PushRecord};
use rusqlite::{Connection, params};
use serde_bytes::ByteBuf;

use super::*;
use crate::Limits;
use crate::merge::merge;
use crate::merge::tests::{caller, context, document, edit};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, AuditQuery, Batch, Role};

const SCHEMA: &str = r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
    "caseload_id": {"type": "string", "required": true},
    "name": {"type": "string", "required": true},
    "visits": {"type": "integer"},
    "note": {"type": "text"}
}}}}"#;

struct Server {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    storage: SqliteStorage,
    schema: fieldsync_record::Schema,
    device: ActorId,
}

impl Server {
    fn new() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let storage = SqliteStorage::open(&path).unwrap();
        let user = storage.create_user("ada", Role::Member).unwrap();
        assert_eq!(storage.create_device(user, "tablet").unwrap(), 1);
        storage.set_grant(user, "north", Access::Write).unwrap();
        Server {
            _dir: dir,
            path,
            storage,
            schema: fieldsync_record::Schema::from_json(SCHEMA).unwrap(),
            device: ActorId::random(),
        }
    }

    /// Pushes `change` for record "a" through the server's own merge.
    fn push(&self, batch: &str, change: Vec<u8>) {
        let records = [PushRecord {
            epoch: 0,
            collection: "clients".into(),
            id: "a".into(),
            scope: "north".into(),
            payload: Payload::Changes(vec![ByteBuf::from(change)]),
        }];
        let caller = caller(&self.device);
        let limits = Limits::default();
        let mut merger = |record: &PushRecord, stored| {
            let mut context = context(&caller, &limits);
            context.schema = &self.schema;
            merge(context, record, stored)
        };
        let response = self
            .storage
            .push(1, &Batch::new(batch, &records), &mut merger)
            .unwrap();
        assert!(response.results[0].rejected.is_none());
    }

    /// Flips a bit of `change`'s checksum wherever the database holds it, as an older server
    /// that appended changes unchecked could have stored it.
    fn damage(&self, change: &[u8]) {
        let conn = Connection::open(&self.path).unwrap();
        let flip = |bytes: Vec<u8>| {
            let at = bytes
                .windows(change.len())
                .position(|w| w == change)
                .expect("the change is stored");
            let mut bytes = bytes;
            bytes[at + 4] ^= 0x01;
            bytes
        };
        let (doc, feed): (Vec<u8>, Vec<u8>) = conn
            .query_row(
                "SELECT r.doc, f.changes FROM records r JOIN feed f ON f.seq = r.updated_seq",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        conn.execute("UPDATE records SET doc = ?1", [flip(doc)])
            .unwrap();
        conn.execute(
            "UPDATE feed SET changes = ?1 WHERE seq = (SELECT max(seq) FROM feed)",
            params![flip(feed)],
        )
        .unwrap();
    }

    fn values(&self) -> serde_json::Value {
        let stored = self.storage.stored_records(&[("clients", "a")]).unwrap();
        let stored = stored.records[0].clone().unwrap();
        serde_json::from_str(&stored.fields_json).unwrap()
    }
}

#[test]
fn a_damaged_record_is_found_and_rebuilt_from_the_feed_then_from_a_device_s_copy() {
    let server = Server::new();
    let mut doc = document(&server.device, "Ada");
    server.push("b1", doc.save_after(&[]));
    let second = edit(&mut doc, "visits", 3);
    server.push("b2", second.clone());
    assert_eq!(check(&server.storage).unwrap(), (1, Vec::new()));

    server.damage(&second);
    let (checked, damaged) = check(&server.storage).unwrap();
    assert_eq!(checked, 1);
    assert_eq!(
        damaged,
        vec![Damage {
            collection: "clients".into(),
            id: "a".into(),
            problem: "its stored bytes fail their checksums",
        }]
    );

    // From the feed: the damaged change is left out (in the document and in the feed), the
    // rest kept; the record loads again and devices get its whole history.
    let repaired = repair(&server.storage, &server.schema, ("clients", "a"), None).unwrap();
    assert_eq!(
        repaired,
        Repaired {
            changes: 1,
            left_out: 2
        }
    );
    assert_eq!(check(&server.storage).unwrap(), (1, Vec::new()));
    assert_eq!(server.values()["name"], "Ada");
    assert!(server.values().get("visits").is_none());

    // From the device that made the change, which holds it intact.
    let copy = doc.save();
    let repaired = repair(
        &server.storage,
        &server.schema,
        ("clients", "a"),
        Some(&copy),
    )
    .unwrap();
    assert_eq!(repaired.changes, 2);
    assert_eq!(check(&server.storage).unwrap(), (1, Vec::new()));
    assert_eq!(server.values()["visits"], 3);
    let stored = server.storage.stored_records(&[("clients", "a")]).unwrap();
    let mut loaded = AutoCommit::load(&stored.records[0].as_ref().unwrap().doc).unwrap();
    assert_eq!(loaded.get_heads(), doc.get_heads());

    // A later edit of the device follows the repaired record again.
    server.push("b3", edit(&mut doc, "visits", 4));
    assert_eq!(server.values()["visits"], 4);

    let audit = server
        .storage
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let repairs: Vec<_> = audit.iter().filter(|a| a.action == "repair").collect();
    assert_eq!(repairs.len(), 2);
    assert_eq!(repairs[0].user, "(server)");
}

#[test]
fn a_device_s_copy_that_is_not_intact_repairs_nothing() {
    let server = Server::new();
    let mut doc = document(&server.device, "Ada");
    server.push("b1", doc.save_after(&[]));
    let mut copy = doc.save();
    let last = copy.len() - 1;
    copy[last] ^= 0x01;
    let err = repair(
        &server.storage,
        &server.schema,
        ("clients", "a"),
        Some(&copy),
    )
    .unwrap_err();
    assert!(matches!(err, ServerError::BadRequest(_)), "{err}");
    let missing = repair(&server.storage, &server.schema, ("clients", "b"), None).unwrap_err();
    assert!(matches!(missing, ServerError::NotFound(_)), "{missing}");
}

/// A device's copy from before an erasure would bring the erased history back: refused.
#[test]
fn a_copy_from_before_an_erasure_repairs_nothing() {
    let server = Server::new();
    let mut doc = document(&server.device, "Ada");
    server.push("b1", doc.save_after(&[]));
    let before_erasure = doc.save();
    let request = crate::erasure::EraseRequest {
        collection: "clients",
        id: "a",
        erasure: fieldsync_record::erasure::Erasure::History,
        by: 0,
        reason: "test",
        scrub: true,
    };
    crate::erasure::erase(&server.storage, &server.schema, &request).unwrap();
    let refused = repair(
        &server.storage,
        &server.schema,
        ("clients", "a"),
        Some(&before_erasure),
    );
    assert!(
        matches!(refused, Err(ServerError::BadRequest(_))),
        "{refused:?}"
    );
}
