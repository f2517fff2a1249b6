use automerge::ActorId;
use fieldsync_record::erasure::{Erasure, next_epoch};
use serde_bytes::ByteBuf;
use serde_json::json;

use crate::protocol::{Payload, PullResponse, PulledRecord, PushResponse, PushResult};
use crate::store::rejected::RejectedWrite;
use crate::{Fields, Schema, Store, StoreOptions};

fn open(dir: &std::path::Path, name: &str) -> Store {
    let schema = Schema::from_json(
        r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "phone": {"type": "string"},
            "notes": {"type": "text"}}}}}"#,
    )
    .unwrap();
    Store::open(dir.join(name), schema, StoreOptions::default()).unwrap()
}

fn fields(value: serde_json::Value) -> Fields {
    value.as_object().unwrap().clone()
}

/// Answers every outbox entry as accepted.
fn push_everything(store: &Store) {
    let entries = store.outbox(100).unwrap();
    let results = entries
        .iter()
        .map(|entry| PushResult {
            collection: entry.collection.clone(),
            id: entry.record_id.clone(),
            rejected: None,
        })
        .collect();
    store
        .complete_push(&entries, &PushResponse { results })
        .unwrap();
}

/// The page an erasure of `erasure` from `id` as the server holds it (`server`'s copy) brings.
fn epoch_page(server: &Store, id: &str, erasure: &Erasure, epoch: u64) -> PullResponse {
    let doc = automerge::AutoCommit::load(&server.document("clients", id).unwrap()).unwrap();
    let schema = server.schema();
    let collection = schema.collection("clients").unwrap();
    let mut next = next_epoch(
        &doc,
        ("clients", collection),
        erasure,
        epoch - 1,
        &ActorId::random(),
        5,
    )
    .unwrap();
    PullResponse {
        records: vec![PulledRecord {
            collection: "clients".into(),
            id: id.into(),
            scope: "north".into(),
            payload: Payload::Document(ByteBuf::from(next.save())),
            fields: None,
            deleted: false,
            epoch,
        }],
        next_cursor: format!("after-epoch-{epoch}"),
        more: false,
        revoked_scopes: Vec::new(),
        authors: Vec::new(),
    }
}

/// A record with a note that names the wrong child, synced, on a device and as the server
/// has it.
fn synced_note(dir: &std::path::Path) -> (Store, Store, String) {
    let device = open(dir, "device.db");
    let id = device
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "Ada", "notes": "CANARY-9 is not Ada."})),
        )
        .unwrap();
    push_everything(&device);
    let server = open(dir, "server-copy.db");
    server
        .apply_remote(vec![crate::RemoteRecord {
            epoch: 0,
            collection: "clients".into(),
            id: id.clone(),
            scope: "north".into(),
            payload: crate::RemotePayload::Document(device.document("clients", &id).unwrap()),
        }])
        .unwrap();
    (device, server, id)
}

#[test]
fn a_new_epoch_replaces_the_copy_and_unsent_typing_is_made_again_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    // Offline, the therapist adds to the note and sets a phone number.
    device
        .splice_text("clients", &id, "notes", 20, 0, " Ada drew a cat.")
        .unwrap();
    device
        .update("clients", &id, fields(json!({"phone": "555"})))
        .unwrap();

    let erasure = Erasure::Fields(["notes".to_owned()].into());
    let report = device
        .apply_pull_page(epoch_page(&server, &id, &erasure, 1))
        .unwrap();
    assert_eq!((report.erased, report.rebased), (1, 1));
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["notes"], json!(" Ada drew a cat."));
    assert_eq!(record.fields["phone"], json!("555"));
    let [entry] = device.outbox(10).unwrap().try_into().unwrap();
    assert_eq!(
        entry.epoch, 1,
        "the rebased write is pushed on the new epoch"
    );
    assert_eq!(device.history("clients", &id).unwrap().len(), 2);
    let saved = device.document("clients", &id).unwrap();
    assert!(!saved.windows(8).any(|w| w == b"CANARY-9"));

    // A change of the old epoch that arrives later changes nothing.
    let old = server.document("clients", &id).unwrap();
    let stale = PullResponse {
        records: vec![PulledRecord {
            collection: "clients".into(),
            id: id.clone(),
            scope: "north".into(),
            payload: Payload::Document(ByteBuf::from(old)),
            fields: None,
            deleted: false,
            epoch: 0,
        }],
        next_cursor: "later".into(),
        more: false,
        revoked_scopes: Vec::new(),
        authors: Vec::new(),
    };
    let report = device.apply_pull_page(stale).unwrap();
    assert_eq!((report.changed, report.unchanged), (0, 1));
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["notes"], json!(" Ada drew a cat."));
}

#[test]
fn writes_to_a_record_erased_whole_wait_aside_without_the_erased_text() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    device
        .splice_text("clients", &id, "notes", 0, 0, "Seen today. ")
        .unwrap();
    let report = device
        .apply_pull_page(epoch_page(&server, &id, &Erasure::Record, 1))
        .unwrap();
    assert_eq!((report.erased, report.rebased), (1, 0));
    assert!(device.get("clients", &id).unwrap().is_none());
    assert_eq!(device.outbox_len().unwrap(), 0);
    let [write]: [RejectedWrite; 1] = device.rejected_writes().unwrap().try_into().unwrap();
    assert_eq!(write.code, super::RECORD_ERASED);
    assert_eq!(write.fields, fields(json!({"notes": "Seen today. "})));
}

#[test]
fn the_store_zeroes_what_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), "device.db");
    let db = store.shared.lock().unwrap();
    let secure: i64 = db
        .conn
        .query_row("PRAGMA secure_delete", [], |row| row.get(0))
        .unwrap();
    assert_eq!(secure, 1);
}

#[test]
fn a_kept_write_is_merged_with_the_new_epoch_so_that_retrying_it_brings_nothing_erased_back() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    device
        .splice_text("clients", &id, "notes", 0, 0, "Seen today. ")
        .unwrap();
    // The server refuses the edit: the record shows what the server has again, and the edit
    // waits for the app with the note as the user left it.
    let entries = device.outbox(10).unwrap();
    let refused = PushResponse {
        results: vec![PushResult {
            collection: "clients".into(),
            id: id.clone(),
            rejected: Some(crate::protocol::Rejection {
                code: crate::protocol::RejectCode::ForbiddenScope,
                message: "no write grant on this scope".into(),
            }),
        }],
    };
    device.complete_push(&entries, &refused).unwrap();
    let [kept]: [RejectedWrite; 1] = device.rejected_writes().unwrap().try_into().unwrap();
    assert_eq!(
        kept.fields["notes"],
        json!("Seen today. CANARY-9 is not Ada.")
    );

    let erasure = Erasure::Fields(["notes".to_owned()].into());
    device
        .apply_pull_page(epoch_page(&server, &id, &erasure, 1))
        .unwrap();
    let [kept]: [RejectedWrite; 1] = device.rejected_writes().unwrap().try_into().unwrap();
    assert_eq!(kept.fields["notes"], json!("Seen today. "));
    device.retry_rejected_write(kept.id).unwrap();
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["notes"], json!("Seen today. "));
}

/// A push the server stored but whose answer was lost stays in the outbox; the erasure erased
/// what it wrote with the rest, so the new epoch does not get it back, while a later unsent
/// write is made again.
#[test]
fn writes_the_server_had_before_the_erasure_are_not_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    device
        .splice_text("clients", &id, "notes", 0, 0, "CANARY-7 wrong child. ")
        .unwrap();
    // The server merges the push; its answer never comes back.
    server
        .apply_remote(vec![crate::RemoteRecord {
            epoch: 0,
            collection: "clients".into(),
            id: id.clone(),
            scope: "north".into(),
            payload: crate::RemotePayload::Document(device.document("clients", &id).unwrap()),
        }])
        .unwrap();
    device
        .update("clients", &id, fields(json!({"phone": "555"})))
        .unwrap();
    assert_eq!(device.outbox_len().unwrap(), 2);

    let erasure = Erasure::Fields(["notes".to_owned()].into());
    let report = device
        .apply_pull_page(epoch_page(&server, &id, &erasure, 1))
        .unwrap();
    assert_eq!(report.rebased, 1);
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(
        record.fields.get("notes"),
        None,
        "the erased note stays erased"
    );
    assert_eq!(record.fields["phone"], json!("555"));
}

/// The device's own write to a field that a concurrent write won on this device is what the
/// rebase makes again, not the winner, which the erasure removed.
#[test]
fn a_field_s_own_write_is_made_again_even_where_a_concurrent_write_won() {
    use automerge::transaction::Transactable;
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    // A colleague's concurrent phone number, by the actor that wins every conflict.
    let synced = server.document("clients", &id).unwrap();
    let mut colleague = automerge::AutoCommit::load(&synced)
        .unwrap()
        .with_actor(ActorId::from([0xff; 16]));
    let heads = colleague.get_heads();
    colleague
        .put(automerge::ROOT, "phone", "555-SECRET")
        .unwrap();
    colleague.commit();
    let change = colleague.get_changes(&heads)[0].raw_bytes().to_vec();
    device
        .update("clients", &id, fields(json!({"phone": "111-OWN"})))
        .unwrap();
    for store in [&device, &server] {
        store
            .apply_remote(vec![crate::RemoteRecord {
                epoch: 0,
                collection: "clients".into(),
                id: id.clone(),
                scope: "north".into(),
                payload: crate::RemotePayload::Changes(vec![change.clone()]),
            }])
            .unwrap();
    }
    let shown = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(
        shown.fields["phone"],
        json!("555-SECRET"),
        "the colleague's won"
    );

    let erasure = Erasure::Fields(["phone".to_owned()].into());
    device
        .apply_pull_page(epoch_page(&server, &id, &erasure, 1))
        .unwrap();
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["phone"], json!("111-OWN"));
}

/// Typing into a note that is then erased keeps exactly the typed characters, even where they
/// repeat characters of the erased text.
#[test]
fn typing_into_an_erased_note_keeps_every_typed_character() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    device
        .update("clients", &id, fields(json!({"notes": "Visit."})))
        .unwrap();
    push_everything(&device);
    server
        .apply_remote(vec![crate::RemoteRecord {
            epoch: 0,
            collection: "clients".into(),
            id: id.clone(),
            scope: "north".into(),
            payload: crate::RemotePayload::Document(device.document("clients", &id).unwrap()),
        }])
        .unwrap();
    // The user writes over "Visit.", which is then erased, words sharing its letters.
    device
        .splice_text("clients", &id, "notes", 0, 6, "Sam is fine, he visited.")
        .unwrap();
    let erasure = Erasure::Fields(["notes".to_owned()].into());
    device
        .apply_pull_page(epoch_page(&server, &id, &erasure, 1))
        .unwrap();
    let record = device.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["notes"], json!("Sam is fine, he visited."));
}

/// Changes carried from store to store (`into_remote`) name their epoch: a peer on the same
/// epoch merges them.
#[test]
fn changes_carried_between_stores_keep_their_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (device, server, id) = synced_note(dir.path());
    let peer = open(dir.path(), "peer.db");
    let erasure = Erasure::Fields(["notes".to_owned()].into());
    let page = epoch_page(&server, &id, &erasure, 1);
    for store in [&device, &peer] {
        store.apply_pull_page(page.clone()).unwrap();
    }
    device
        .update("clients", &id, fields(json!({"phone": "555"})))
        .unwrap();
    let carried: Vec<crate::RemoteRecord> = device
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(crate::OutboxEntry::into_remote)
        .collect();
    assert_eq!(carried[0].epoch, 1);
    let report = peer.apply_remote(carried).unwrap();
    assert_eq!(report.changed, 1);
    assert_eq!(
        peer.get("clients", &id).unwrap().unwrap().fields["phone"],
        json!("555")
    );
}
