//! The merge of one pushed record, on every path, against what devices send.

use automerge::transaction::Transactable;
use automerge::{ActorId, ROOT};

use std::sync::LazyLock;

use super::*;
use crate::group_grants::ScopePattern;
use crate::storage::Access;

pub(crate) fn caller(actor: &ActorId) -> Caller {
    Caller {
        device_id: 1,
        user_id: 1,
        actor: Some(actor.to_hex_string()),
        grants: vec![(ScopePattern::Exact("north".into()), Access::Write)],
        admin: false,
    }
}

/// The schema of these tests: keys they set beyond these are unknown to it, and kept.
static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    Schema::from_json(
        r#"{"collections": {"clients": {"scope_field": "caseload_id", "fields": {
            "caseload_id": {"type": "string", "required": true},
            "name": {"type": "string", "required": true},
            "visits": {"type": "integer"},
            "note": {"type": "text"}
        }}}}"#,
    )
    .unwrap()
});

pub(crate) fn context<'a>(caller: &'a Caller, limits: &'a Limits) -> MergeContext<'a> {
    MergeContext {
        caller,
        actor: caller.actor.as_deref(),
        limits,
        schema: &SCHEMA,
    }
}

/// A new client record of scope "north" written by `actor`.
pub(crate) fn document(actor: &ActorId, name: &str) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    doc.put(ROOT, "caseload_id", "north").unwrap();
    doc.put(ROOT, "name", name).unwrap();
    doc.commit();
    doc
}

/// Sets `key` on `doc` and returns the change that did it.
pub(crate) fn edit(doc: &mut AutoCommit, key: &str, value: i64) -> Vec<u8> {
    let heads = doc.get_heads();
    doc.put(ROOT, key, value).unwrap();
    doc.commit();
    doc.get_changes(&heads)[0].raw_bytes().to_vec()
}

pub(crate) fn pushed(id: &str, scope: &str, payload: Payload) -> PushRecord {
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: scope.into(),
        payload,
    }
}

pub(crate) fn changes(change: Vec<u8>) -> Payload {
    Payload::Changes(vec![ByteBuf::from(change)])
}

/// `doc` as a record stored before lineages were kept.
pub(crate) fn stored(doc: &mut AutoCommit) -> StoredRecord {
    let (fields, deleted) = fieldsync_record::document::document_values(doc).unwrap();
    StoredRecord {
        epoch: 0,
        scope: "north".into(),
        doc: doc.save(),
        fields_json: serde_json::Value::Object(fields).to_string(),
        deleted,
        lineage: None,
        version: Some(1),
    }
}

#[test]
fn a_new_record_pushed_as_its_one_change_is_stored_as_sent() {
    let device = ActorId::random();
    let caller = caller(&device);
    let limits = Limits::default();
    let push_new = |id: &str, change: Vec<u8>| {
        let record = pushed(id, "north", changes(change));
        merge(context(&caller, &limits), &record, None)
    };
    let mut doc = document(&device, "Ada");
    let first = doc.save_after(&[]);
    let merged = push_new("a", first.clone()).unwrap();
    assert_eq!(merged.doc, first);
    assert_eq!(merged.new_changes, vec![first.clone()]);
    assert!(merged.fields_json.contains("Ada"));
    assert!(merged.doc.len() < doc.save().len());

    // A second change alone, for a record the server lacks, needs the first.
    let second = edit(&mut doc, "visits", 1);
    let missing = push_new("b", second);
    assert_eq!(missing.unwrap_err().code, RejectCode::MissingDependencies);

    // Another device's first change is refused as such.
    let colleague = document(&ActorId::random(), "Bo").save_after(&[]);
    let foreign = push_new("c", colleague);
    assert_eq!(foreign.unwrap_err().code, RejectCode::ForeignActor);
}

/// Pushes `change` for record "a" stored as `stored`, as `device`'s.
fn push_change(device: &ActorId, stored: &StoredRecord, change: &[u8]) -> MergedRecord {
    let caller = caller(device);
    let record = pushed("a", "north", changes(change.to_vec()));
    let limits = Limits::default();
    merge(context(&caller, &limits), &record, Some(stored.clone())).unwrap()
}

/// The values of a stored document, loaded whole.
fn loaded_values(doc: &[u8]) -> (Fields, bool) {
    fieldsync_record::document::document_values(&AutoCommit::load(doc).unwrap()).unwrap()
}

fn values(merged: &MergedRecord) -> (Fields, bool) {
    (
        serde_json::from_str(&merged.fields_json).unwrap(),
        merged.deleted,
    )
}

/// A new record "a" as the server stores it from its first change, and the device's
/// document.
fn new_record(device: &ActorId) -> (AutoCommit, StoredRecord) {
    let mut doc = document(device, "Ada");
    let merged = push(device, None, changes(doc.save_after(&[])));
    (doc, merged.unwrap().to_stored("north"))
}

#[test]
fn changes_that_follow_the_stored_document_in_line_are_appended_unread() {
    let device = ActorId::random();
    let (mut doc, mut state) = new_record(&device);
    // A text field (merged the slow way), later replaced by a scalar.
    let heads = doc.get_heads();
    doc.put_object(ROOT, "notes", automerge::ObjType::Text)
        .unwrap();
    doc.commit();
    state = push_change(&device, &state, doc.get_changes(&heads)[0].raw_bytes()).to_stored("north");
    // Scalars of every kind, several keys per change, a key set twice in one change.
    for round in 0..5i64 {
        let heads = doc.get_heads();
        doc.put(ROOT, "visits", round).unwrap();
        doc.put(ROOT, "rate", 1.5 * round as f64).unwrap();
        doc.put(ROOT, "name", format!("Ada {round}")).unwrap();
        doc.put(ROOT, "name", format!("Ada L. {round}")).unwrap();
        doc.put(ROOT, "active", round % 2 == 0).unwrap();
        doc.put(
            ROOT,
            "since",
            ScalarValue::Timestamp(1_700_000_000_000 + round),
        )
        .unwrap();
        doc.put(ROOT, "gone", ScalarValue::Null).unwrap();
        if round == 3 {
            doc.put(ROOT, "notes", "a scalar now").unwrap();
        }
        doc.commit();
        let change = doc.get_changes(&heads)[0].raw_bytes().to_vec();
        let merged = push_change(&device, &state, &change);
        assert_eq!(
            merged.doc,
            [state.doc.as_slice(), &change].concat(),
            "appended"
        );
        assert_eq!(merged.lineage.appended, round as u32 + 1);
        assert_eq!(merged.new_changes, vec![change.clone()]);
        // The values derived from the change are the ones Automerge shows, and the ones
        // the slow merge finds.
        assert_eq!(values(&merged), loaded_values(&merged.doc));
        let without_lineage = StoredRecord {
            lineage: None,
            ..state.clone()
        };
        let slow = push_change(&device, &without_lineage, &change);
        assert_eq!(values(&slow), values(&merged));
        assert_eq!(slow.lineage.heads, merged.lineage.heads);
        assert_eq!(slow.lineage.max_op, merged.lineage.max_op);
        assert_eq!(slow.lineage.head_change, merged.lineage.head_change);
        assert_eq!(slow.lineage.root_ops, merged.lineage.root_ops);
        state = merged.to_stored("north");
    }
    assert_eq!(
        AutoCommit::load(&state.doc).unwrap().get_heads(),
        doc.get_heads()
    );
}

/// Every bit of an in-line edit flipped in turn: whatever is accepted is stored as bytes that
/// load with the heads and values the merge reports; a flipped checksum is refused.
#[test]
fn no_flipped_bit_of_an_edit_is_stored_as_bytes_that_do_not_load() {
    let device = ActorId::random();
    let (mut doc, state) = new_record(&device);
    let change = edit(&mut doc, "visits", 7);
    let caller = caller(&device);
    let limits = Limits::default();
    let mut accepted = 0;
    for byte in 0..change.len() {
        for bit in 0..8 {
            let mut damaged = change.clone();
            damaged[byte] ^= 1 << bit;
            let record = pushed("a", "north", changes(damaged));
            let Ok(merged) = merge(context(&caller, &limits), &record, Some(state.clone())) else {
                continue;
            };
            accepted += 1;
            let mut loaded = AutoCommit::load(&merged.doc)
                .unwrap_or_else(|_| panic!("bit {bit} of byte {byte}: stored bytes do not load"));
            assert_eq!(loaded.get_heads(), merged.lineage.heads);
            assert_eq!(loaded_values(&merged.doc), values(&merged));
        }
    }
    // A flip of the checksum itself leaves the change readable but unloadable once stored.
    let mut damaged = change.clone();
    damaged[4] ^= 1;
    let record = pushed("a", "north", changes(damaged));
    let refused = merge(context(&caller, &limits), &record, Some(state.clone())).unwrap_err();
    assert_eq!(refused.code, RejectCode::Malformed);
    assert_eq!(
        accepted, 0,
        "a change with any bit flipped fails its checksum"
    );
}

#[test]
fn a_document_that_took_enough_appended_changes_is_saved_whole() {
    let device = ActorId::random();
    let (mut doc, mut state) = new_record(&device);
    let mut appended_counts = Vec::new();
    for round in 0..APPENDED_AT_MOST as i64 + 3 {
        let merged = push_change(&device, &state, &edit(&mut doc, "visits", round));
        appended_counts.push(merged.lineage.appended);
        assert_eq!(values(&merged), loaded_values(&merged.doc));
        state = merged.to_stored("north");
    }
    let at_most = APPENDED_AT_MOST as usize;
    assert_eq!(appended_counts[at_most - 1], APPENDED_AT_MOST);
    assert_eq!(appended_counts[at_most], 0, "saved whole");
    assert_eq!(appended_counts[at_most + 1], 1, "then appended again");
}

#[test]
fn changes_out_of_line_merge_the_slow_way() {
    let device = ActorId::random();
    let colleague = ActorId::random();
    let (mut doc, state) = new_record(&device);
    let slow = |merged: &MergedRecord| merged.lineage.appended == 0;

    // Text edits, nested values and tombstones are not derived from the change.
    let mut text = doc.fork().with_actor(device.clone());
    let heads = text.get_heads();
    let notes = text
        .put_object(ROOT, "notes", automerge::ObjType::Text)
        .unwrap();
    text.splice_text(&notes, 0, 0, "hello").unwrap();
    text.commit();
    let merged = push_change(&device, &state, text.get_changes(&heads)[0].raw_bytes());
    assert!(slow(&merged));
    assert_eq!(values(&merged).0["notes"], "hello");
    let mut tombstone = doc.fork().with_actor(device.clone());
    let heads = tombstone.get_heads();
    tombstone
        .put(ROOT, fieldsync_record::DELETED_KEY, true)
        .unwrap();
    tombstone.commit();
    let merged = push_change(
        &device,
        &state,
        tombstone.get_changes(&heads)[0].raw_bytes(),
    );
    assert!(slow(&merged) && merged.deleted);

    // A change concurrent with one the server has: its dependencies are not the heads.
    let mut elsewhere = doc.fork().with_actor(colleague.clone());
    let first = edit(&mut doc, "visits", 1);
    let state = push_change(&device, &state, &first).to_stored("north");
    assert_eq!(state.lineage.as_ref().unwrap().appended, 1);
    let concurrent = edit(&mut elsewhere, "phone", 555);
    let merged = push_change(&colleague, &state, &concurrent);
    assert!(slow(&merged));
    let (fields, _) = values(&merged);
    assert_eq!(
        (fields["visits"].as_i64(), fields["phone"].as_i64()),
        (Some(1), Some(555))
    );

    // After another device's change, this device's next one is not known to be next in
    // its own line.
    let mut theirs = AutoCommit::load(&state.doc)
        .unwrap()
        .with_actor(colleague.clone());
    let from_colleague = edit(&mut theirs, "phone", 1);
    let after_colleague = push_change(&colleague, &state, &from_colleague).to_stored("north");
    let mut mine = AutoCommit::load(&after_colleague.doc)
        .unwrap()
        .with_actor(device.clone());
    let merged = push_change(&device, &after_colleague, &edit(&mut mine, "phone", 2));
    assert!(slow(&merged));
    assert_eq!(values(&merged).0["phone"], 2);
    // ...and once this device's change is the head, its next one is in line again.
    let state = merged.to_stored("north");
    let merged = push_change(&device, &state, &edit(&mut mine, "phone", 3));
    assert_eq!(merged.lineage.appended, 1);
}

#[test]
fn a_crafted_change_numbered_out_of_line_is_never_appended() {
    let device = ActorId::random();
    let caller = caller(&device);
    let (mut doc, state) = new_record(&device);
    let heads = doc.get_heads();
    doc.put(ROOT, "visits", 1).unwrap();
    doc.commit();
    let change = doc.get_changes(&heads)[0].clone();
    // Automerge fails to load (or panics on) a document whose changes skip a sequence
    // number or an operation counter: such a change must go through a real merge.
    for craft in 0..3 {
        let mut expanded = change.decode();
        match craft {
            0 => expanded.seq += 1,
            1 => expanded.start_op = expanded.start_op.saturating_add(5),
            _ => expanded.seq = 1,
        }
        expanded.hash = None;
        let crafted: Change = expanded.into();
        let record = pushed("a", "north", changes(crafted.raw_bytes().to_vec()));
        let result = merge(
            context(&caller, &Limits::default()),
            &record,
            Some(state.clone()),
        );
        if let Ok(merged) = result {
            assert_eq!(
                merged.lineage.appended, 0,
                "craft {craft} merged, not appended"
            );
            assert!(AutoCommit::load(&merged.doc).is_ok());
        }
    }
}

/// `change` with the first operation's overwritten operations replaced by `pred`.
fn overwriting(change: &[u8], pred: Vec<OpId>) -> Vec<u8> {
    let mut expanded = Change::try_from(change).unwrap().decode();
    expanded.operations[0].pred = pred.into();
    expanded.hash = None;
    Change::from(expanded).raw_bytes().to_vec()
}

fn push(
    device: &ActorId,
    stored: Option<StoredRecord>,
    payload: Payload,
) -> Result<MergedRecord, Rejection> {
    let caller = caller(device);
    let record = pushed("a", "north", payload);
    merge(context(&caller, &Limits::default()), &record, stored)
}

#[test]
fn a_change_overwriting_operations_the_document_lacks_is_refused() {
    let device = ActorId::random();
    let (mut doc, in_line) = new_record(&device);
    let legacy = stored(&mut doc);
    let change = edit(&mut doc, "visits", 1);
    // An operation the document does not have, and the name's operation (another key's),
    // where the change merges and where it would otherwise be appended.
    let cases = [
        (OpId::new(99, &device), &legacy),
        (OpId::new(1, &device), &legacy),
        (OpId::new(99, &device), &in_line),
        (OpId::new(1, &device), &in_line),
    ];
    for (pred, state) in cases {
        let crafted = overwriting(&change, vec![pred.clone()]);
        let result = push(&device, Some(state.clone()), changes(crafted));
        let rejection = result.expect_err(&format!("{pred:?} was stored"));
        assert_eq!(rejection.code, RejectCode::Malformed);
    }
    // The change as made is appended.
    assert_eq!(
        push(&device, Some(in_line), changes(change))
            .unwrap()
            .lineage
            .appended,
        1
    );
}

#[test]
fn a_new_record_overwriting_operations_it_lacks_is_refused() {
    let device = ActorId::random();
    let mut doc = document(&device, "Ada");
    let first = doc.save_after(&[]);
    for pred in [OpId::new(5, &device), OpId::new(1, &ActorId::random())] {
        let crafted = overwriting(&first, vec![pred]);
        let rejection = push(&device, None, changes(crafted.clone())).unwrap_err();
        assert_eq!(rejection.code, RejectCode::Malformed);
        // Automerge loads a change chunk as a document, too.
        let as_document = Payload::Document(ByteBuf::from(crafted));
        let rejection = push(&device, None, as_document).unwrap_err();
        assert_eq!(rejection.code, RejectCode::Malformed);
    }
}

#[test]
fn a_new_record_editing_its_own_text_is_stored() {
    let device = ActorId::random();
    let mut doc = document(&device, "Ada");
    let notes = doc
        .put_object(ROOT, "notes", automerge::ObjType::Text)
        .unwrap();
    doc.splice_text(&notes, 0, 0, "hello there").unwrap();
    doc.commit();
    // Deleting and replacing characters overwrites the insertions of the change before.
    doc.splice_text(&notes, 0, 5, "HELLO").unwrap();
    doc.put(ROOT, "name", "Ada L.").unwrap();
    doc.commit();
    let merged = push(&device, None, Payload::Document(ByteBuf::from(doc.save()))).unwrap();
    let loaded = AutoCommit::load(&merged.doc).unwrap();
    assert_eq!(
        automerge::ReadDoc::text(&loaded, &notes).unwrap(),
        "HELLO there"
    );
    // The same in one change.
    let mut single = AutoCommit::new().with_actor(ActorId::random());
    single.put(ROOT, "caseload_id", "north").unwrap();
    single.put(ROOT, "name", "Bo").unwrap();
    let notes = single
        .put_object(ROOT, "notes", automerge::ObjType::Text)
        .unwrap();
    single.splice_text(&notes, 0, 0, "abc").unwrap();
    single.splice_text(&notes, 1, 1, "B").unwrap();
    single.commit();
    let actor = single.get_actor().clone();
    let merged = push(&actor, None, changes(single.save_after(&[])));
    assert!(merged.is_ok(), "{merged:?}");
}

#[test]
fn a_record_stored_before_lineages_gets_one_on_its_next_merge() {
    let device = ActorId::random();
    let mut doc = document(&device, "Ada");
    edit(&mut doc, "visits", 1);
    let legacy = stored(&mut doc);
    let merged = push_change(&device, &legacy, &edit(&mut doc, "visits", 2));
    assert_eq!(merged.lineage.appended, 0);
    assert_eq!(merged.lineage.heads, doc.get_heads());
    // Two puts creating the record, then one per edit.
    assert_eq!(merged.lineage.max_op, 4);
    let heads = doc.get_heads();
    let head = doc.get_change_by_hash(&heads[0]).unwrap();
    assert_eq!(
        merged.lineage.head_change,
        Some((device.clone(), head.seq()))
    );
    // From then on, in line.
    let next = push_change(
        &device,
        &merged.to_stored("north"),
        &edit(&mut doc, "visits", 3),
    );
    assert_eq!(next.lineage.appended, 1);
}

/// Refused as `invalid_record` with its rule, which never quotes the value.
fn refused_rule(result: Result<MergedRecord, Rejection>, value: &str) -> String {
    let rejection = result.unwrap_err();
    assert_eq!(rejection.code, RejectCode::InvalidRecord, "{rejection:?}");
    assert!(
        value.is_empty() || !rejection.message.contains(value),
        "{rejection:?}"
    );
    rejection.message
}

#[test]
fn a_new_record_that_breaks_the_schema_is_refused_with_its_rule() {
    let device = ActorId::random();
    let cases: [(&str, &str, serde_json::Value, &str); 5] = [
        (
            "caseload_id",
            "south-caseload",
            serde_json::json!("south-caseload"),
            "the scope field must hold the record's scope",
        ),
        (
            "name",
            "",
            serde_json::Value::Null,
            "field `name` is required",
        ),
        (
            "visits",
            "many-visits",
            serde_json::json!("many-visits"),
            "field `visits` must be of type integer",
        ),
        (
            "note",
            "scalar-note",
            serde_json::json!("scalar-note"),
            "field `note` must be of type text",
        ),
        (
            "_deleted",
            "yes-deleted",
            serde_json::json!("yes-deleted"),
            "field `_deleted` must be of type boolean",
        ),
    ];
    for (key, value, json, rule) in cases {
        let mut doc = AutoCommit::new().with_actor(device.clone());
        doc.put(ROOT, "caseload_id", "north").unwrap();
        doc.put(ROOT, "name", "Ada").unwrap();
        match json {
            serde_json::Value::Null => doc.delete(ROOT, key).unwrap(),
            serde_json::Value::String(text) => doc.put(ROOT, key, text).unwrap(),
            _ => unreachable!(),
        }
        doc.commit();
        let as_change = push(&device, None, changes(doc.save_after(&[])));
        assert_eq!(refused_rule(as_change, value), rule, "{key} as its change");
        let as_document = push(&device, None, Payload::Document(ByteBuf::from(doc.save())));
        assert_eq!(
            refused_rule(as_document, value),
            rule,
            "{key} as a document"
        );
    }
    let mut doc = document(&device, "Ada");
    let caller = caller(&device);
    let record = PushRecord {
        collection: "visits".into(),
        ..pushed("a", "north", changes(doc.save_after(&[])))
    };
    let unknown = merge(context(&caller, &Limits::default()), &record, None);
    assert_eq!(
        refused_rule(unknown, "Ada"),
        "collection `visits` is not declared"
    );
}

#[test]
fn an_edit_that_breaks_the_schema_is_refused_in_line_or_not() {
    let device = ActorId::random();
    let (doc, in_line) = new_record(&device);
    let legacy = stored(&mut doc.clone());
    type Write = fn(&mut AutoCommit);
    let edits: [(&str, Write, &str); 5] = [
        (
            "south-caseload",
            |d| d.put(ROOT, "caseload_id", "south-caseload").unwrap(),
            "the scope field must hold the record's scope",
        ),
        (
            "",
            |d| d.put(ROOT, "name", ScalarValue::Null).unwrap(),
            "field `name` is required",
        ),
        (
            "",
            |d| d.delete(ROOT, "name").unwrap(),
            "field `name` is required",
        ),
        (
            "many-visits",
            |d| d.put(ROOT, "visits", "many-visits").unwrap(),
            "field `visits` must be of type integer",
        ),
        (
            "yes-deleted",
            |d| d.put(ROOT, "_deleted", "yes-deleted").unwrap(),
            "field `_deleted` must be of type boolean",
        ),
    ];
    for (value, write, rule) in edits {
        for stored in [&in_line, &legacy] {
            let mut edited = doc.clone();
            let heads = edited.get_heads();
            write(&mut edited);
            edited.commit();
            let change = edited.get_changes(&heads)[0].raw_bytes().to_vec();
            let result = push(&device, Some(stored.clone()), changes(change));
            assert_eq!(refused_rule(result, value), rule);
        }
    }
    // A valid edit on both paths still goes through.
    let mut edited = doc.clone();
    let change = edit(&mut edited, "visits", 2);
    assert!(push(&device, Some(in_line.clone()), changes(change.clone())).is_ok());
    assert!(push(&device, Some(legacy), changes(change)).is_ok());
}

#[test]
fn a_change_numbered_again_by_a_restored_store_is_refused_as_actor_reused() {
    let device = ActorId::random();
    let (mut doc, _) = new_record(&device);
    let backup = doc.fork().with_actor(device.clone());
    edit(&mut doc, "visits", 1);
    let stored = stored(&mut doc);
    // The store, restored from before that edit, numbers its next change the same.
    let mut restored = backup;
    let again = edit(&mut restored, "visits", 7);
    let result = push(&device, Some(stored.clone()), changes(again));
    assert_eq!(result.unwrap_err().code, RejectCode::ActorReused);
    // A change that follows what the server has is the device's own as before.
    let next = edit(&mut doc, "visits", 2);
    assert!(push(&device, Some(stored), changes(next)).is_ok());
}

/// The document limit is on what a record inflates to: a few kilobytes that inflate past it
/// are refused before Automerge parses them, as a document, as a change, and appended.
#[test]
fn a_record_that_inflates_past_the_document_limit_is_refused() {
    let device = ActorId::random();
    let caller = caller(&device);
    let limits = Limits {
        max_document_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut doc = AutoCommit::new().with_actor(device.clone());
    doc.put(ROOT, "caseload_id", "north").unwrap();
    doc.put(ROOT, "name", "a".repeat(2 << 20)).unwrap();
    doc.commit();
    let saved = doc.save();
    let change = doc
        .get_last_local_change()
        .unwrap()
        .clone()
        .bytes()
        .to_vec();
    assert!(saved.len() < 10_000 && change.len() < 10_000);
    for payload in [
        Payload::Document(ByteBuf::from(saved)),
        changes(change.clone()),
    ] {
        let record = pushed("big", "north", payload);
        let refused = merge(context(&caller, &limits), &record, None).unwrap_err();
        assert_eq!(refused.code, RejectCode::TooLarge, "{}", refused.message);
    }
    // Appended to a stored record that fits, the same change is refused too.
    let (_, state) = new_record(&device);
    let record = pushed("a", "north", changes(change));
    let refused = merge(context(&caller, &limits), &record, Some(state)).unwrap_err();
    assert_eq!(refused.code, RejectCode::TooLarge);
}

/// A push stored whose answer was lost comes again after the device's grant became read-only:
/// the server has its changes, so it says so, whatever the grant says now; new changes are
/// refused as before.
#[test]
fn changes_the_server_has_are_accepted_again_whatever_the_checks_say_now() {
    let device = ActorId::random();
    let mut doc = document(&device, "Ada");
    let mut state = stored(&mut doc);
    let change = edit(&mut doc, "visits", 1);
    state = push_change(&device, &state, &change).to_stored("north");
    let mut reader = caller(&device);
    reader.grants = vec![(ScopePattern::Exact("north".into()), Access::Read)];
    let limits = Limits::default();
    let again = pushed("a", "north", changes(change));
    let merged = merge(context(&reader, &limits), &again, Some(state.clone())).unwrap();
    assert!(merged.new_changes.is_empty(), "nothing is written");

    let newer = pushed("a", "north", changes(edit(&mut doc, "visits", 2)));
    let refused = merge(context(&reader, &limits), &newer, Some(state)).unwrap_err();
    assert_eq!(refused.code, RejectCode::ForbiddenScope);
}
