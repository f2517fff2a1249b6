//! The conformance suite every [`Storage`] backend must pass, run by each backend's tests
//! (`server-sync/tests/storage_sqlite.rs`, and `tests/tests/postgres.rs` on a throwaway
//! PostgreSQL cluster).
//!
//! Each check takes a fresh, empty storage and panics with a message on failure.

mod attachments;
mod authors;
mod back_office;
mod erasure;
mod identity;
mod pending_changes;
mod pruning;

use std::sync::atomic::{AtomicBool, Ordering};

use automerge::{ActorId, ChangeHash};
use fieldsync_record::protocol::{Payload, PushRecord, RejectCode, Rejection};
use serde_bytes::ByteBuf;

use super::{
    Access, AuditQuery, Batch, Lineage, Merge, MergedRecord, Role, SnapshotMark, Storage,
    StoredRecord, StoredVersion, now_ms,
};

/// Runs every check, each on a new storage from `fresh`.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn Storage>) {
    users_devices_and_tokens(&*fresh());
    grants(&*fresh());
    actor_binding(&*fresh());
    concurrent_bindings_give_an_actor_to_one_device(&*fresh());
    push_writes_accepted_records_only(&*fresh());
    stored_records_as_named(&*fresh());
    merges_made_ahead_are_asked_for_by_stored_version(&*fresh());
    only_a_snapshot_nothing_changed_since_is_current(&*fresh());
    replayed_batches_change_nothing(&*fresh());
    feed_pages_in_order_by_scope(&*fresh());
    feed_entries_carry_their_record_s_values_when_latest(&*fresh());
    a_reader_s_feed_pages_leave_out_its_own_entries(&*fresh());
    documents_page_in_creation_order(&*fresh());
    feed_head_is_the_last_position(&*fresh());
    audit_and_activity(&*fresh());
    a_record_s_audit_lines_among_many(&*fresh());
    idle_pulls_move_the_last_sync_at_most_once_a_minute(&*fresh());
    pending_changes::a_reported_count_of_pending_changes_is_kept_and_listed(&*fresh());
    a_record_pushed_twice_in_one_batch_keeps_both(&*fresh());
    concurrent_pushes_lose_nothing_and_readers_skip_nothing(&*fresh());
    refused_records_are_audited_with_their_code(&*fresh());
    schema_versions_are_kept_in_order(&*fresh());
    a_batch_id_names_one_batch(&*fresh());
    records_are_listed_and_rewritten(&*fresh());
    a_push_binds_its_actor_only_if_it_stores_something(&*fresh());
    identity::users_sign_in_by_subject(&*fresh());
    identity::devices_are_found_by_id_and_listed_by_user(&*fresh());
    identity::scopes_are_found_by_prefix(&*fresh());
    identity::users_are_listed_and_admin_actions_audited(&*fresh());
    identity::group_grants_are_replaced_whole(&*fresh());
    attachments::attachments_are_received_in_chunks_per_scope(&*fresh());
    attachments::chunks_in_the_bucket_are_recorded_without_bytes(&*fresh());
    attachments::attachments_are_listed_in_order(&*fresh());
    back_office::a_scopes_live_records_are_listed_by_id(&*fresh());
    back_office::webhooks_are_leased_and_their_deliveries_recorded(&*fresh());
    erasure::an_erased_record_s_feed_entries_give_way_to_its_new_epoch(&*fresh());
    erasure::retention_policies_are_kept_and_aged_records_listed(&*fresh());
    pruning::the_feed_push_answers_and_audit_lines_are_pruned(&*fresh());
    pruning::feed_lag_is_per_scope_from_the_slowest_reader_granted_it(&*fresh());
    authors::a_record_s_writers_are_named_by_actor_until_it_is_erased(&*fresh());
}

/// A pushed record of `clients` in `scope`, whose one change is its id's bytes.
pub(crate) fn record(id: &str, scope: &str) -> PushRecord {
    record_with(id, scope, id.as_bytes())
}

pub(crate) fn record_with(id: &str, scope: &str, change: &[u8]) -> PushRecord {
    PushRecord {
        epoch: 0,
        collection: "clients".into(),
        id: id.into(),
        scope: scope.into(),
        payload: Payload::Changes(vec![ByteBuf::from(change.to_vec())]),
    }
}

/// A merge that accepts everything, appending the pushed bytes to the stored "document".
pub(crate) fn accept(
    record: &PushRecord,
    stored: Option<StoredRecord>,
) -> Result<MergedRecord, Rejection> {
    let Payload::Changes(changes) = &record.payload else {
        unreachable!("tests push changes")
    };
    let epoch = stored.as_ref().map_or(0, |s| s.epoch);
    let mut doc = stored.map(|s| s.doc).unwrap_or_default();
    doc.extend(changes.iter().flat_map(|c| c.iter().copied()));
    Ok(MergedRecord {
        epoch,
        fields_json: format!("{{\"id\": \"{}\"}}", record.id),
        deleted: false,
        new_changes: changes.iter().map(|c| c.to_vec()).collect(),
        lineage: lineage_of(&doc),
        doc,
    })
}

/// A lineage the stored "document" determines, so that reading it back can be checked.
pub(crate) fn lineage_of(doc: &[u8]) -> Lineage {
    Lineage {
        heads: vec![ChangeHash([doc.len() as u8; 32])],
        max_op: doc.len() as u64,
        appended: doc.len() as u32 % 32,
        head_change: Some((ActorId::from(doc), doc.len() as u64)),
        root_ops: Some(
            [(
                "name".to_owned(),
                vec![
                    (doc.len() as u64, ActorId::from(doc)),
                    (1, ActorId::from(&[7u8][..])),
                ],
            )]
            .into(),
        ),
    }
}

fn device(storage: &dyn Storage, user: &str) -> i64 {
    let user_id = storage
        .user_id(user)
        .unwrap()
        .unwrap_or_else(|| storage.create_user(user, Role::Member).unwrap());
    storage.create_device(user_id, "device").unwrap()
}

fn users_devices_and_tokens(storage: &dyn Storage) {
    assert_eq!(storage.count_users().unwrap(), 0);
    let ada = storage.create_user("ada", Role::Admin).unwrap();
    assert!(
        storage.create_user("ada", Role::Member).is_err(),
        "user names are unique"
    );
    assert_eq!(storage.user_id("ada").unwrap(), Some(ada));
    assert_eq!(storage.user_id("nobody").unwrap(), None);
    let phone = storage.create_device(ada, "phone").unwrap();
    storage.insert_token("t1", phone, &[1, 2, 3], None).unwrap();
    storage.insert_token("t2", phone, &[4], Some(1)).unwrap();
    let token = storage.token("t1").unwrap().expect("the token exists");
    assert_eq!(
        (token.device_id, token.user_id, token.secret_hash.as_slice()),
        (phone, ada, &[1u8, 2, 3][..])
    );
    assert!(!token.revoked);
    assert_eq!(storage.token("t2").unwrap().unwrap().expires_at, Some(1));
    assert!(storage.token("t3").unwrap().is_none());
    assert!(storage.revoke_token("t1").unwrap());
    assert!(
        !storage.revoke_token("t1").unwrap(),
        "revoking twice reports nothing to do"
    );
    assert!(storage.token("t1").unwrap().unwrap().revoked);
    assert!(storage.revoke_device(phone).unwrap());
    assert!(
        storage.token("t2").unwrap().unwrap().revoked,
        "a revoked device revokes its tokens"
    );
    let devices = storage.list_devices().unwrap();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].revoked && devices[0].user == "ada");
}

fn grants(storage: &dyn Storage) {
    let ada = storage.create_user("ada", Role::Member).unwrap();
    storage.set_grant(ada, "north", Access::Read).unwrap();
    storage.set_grant(ada, "north", Access::Write).unwrap();
    storage.set_grant(ada, "south", Access::Read).unwrap();
    let grants = storage.grants(ada).unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(
        grants.iter().find(|g| g.scope == "north").unwrap().access,
        Access::Write
    );
    assert!(storage.revoke_grant(ada, "south").unwrap());
    assert!(!storage.revoke_grant(ada, "south").unwrap());
    assert_eq!(storage.grants(ada).unwrap().len(), 1);
}

fn actor_binding(storage: &dyn Storage) {
    let bound = |device, actor| storage.bind_actor(device, actor).unwrap();
    let phone = device(storage, "ada");
    assert_eq!(bound(phone, "aa").as_deref(), Some("aa"));

    // Another device, of the same user or another, cannot take a live device's actor, and
    // stays free to bind its own.
    let tablet = device(storage, "ada");
    let bobs = device(storage, "bob");
    assert_eq!(
        bound(tablet, "aa"),
        None,
        "another device's actor is refused"
    );
    assert_eq!(bound(bobs, "aa"), None, "another user's actor is refused");
    assert_eq!(bound(tablet, "cc").as_deref(), Some("cc"));
    assert_eq!(
        bound(tablet, "aa").as_deref(),
        Some("cc"),
        "a bound device keeps its actor when the new one is taken"
    );
    let listed = storage.list_devices().unwrap();
    let actor_of = |id| listed.iter().find(|d| d.id == id).unwrap().actor.clone();
    assert_eq!(actor_of(phone).as_deref(), Some("aa"));
    assert_eq!(actor_of(bobs), None, "a refused binding writes nothing");

    // A restored store takes a new actor; the one it had stays its own, and its outbox
    // positions start over.
    let batch = Batch {
        outbox_seq: Some(9),
        ..Batch::new("p1", &[])
    };
    storage.push(phone, &batch, &mut accept).unwrap();
    assert_eq!(storage.device_sync(phone).unwrap().outbox_seq, Some(9));
    assert_eq!(bound(phone, "aa").as_deref(), Some("aa"));
    assert_eq!(
        storage.device_sync(phone).unwrap().outbox_seq,
        Some(9),
        "same actor, same positions"
    );
    assert_eq!(bound(phone, "bb").as_deref(), Some("bb"));
    assert_eq!(storage.device_sync(phone).unwrap().outbox_seq, None);
    assert_eq!(
        bound(bobs, "aa"),
        None,
        "a retired actor stays its device's"
    );
    assert!(storage.retired_actor(phone, "aa").unwrap());
    assert!(
        !storage.retired_actor(phone, "bb").unwrap(),
        "the current one is not retired"
    );
    assert!(!storage.retired_actor(tablet, "aa").unwrap());
    assert_eq!(
        bound(phone, "aa").as_deref(),
        Some("bb"),
        "an older copy's actor is not taken again"
    );

    // A revoked token keeps its device's actor; a revoked device's actors may be taken over
    // (an app reinstalled with the same store, enrolled again).
    storage
        .insert_token("phone-token", phone, &[1], None)
        .unwrap();
    storage.revoke_token("phone-token").unwrap();
    assert_eq!(bound(bobs, "aa"), None, "a revoked token frees nothing");
    storage.revoke_device(phone).unwrap();
    let reinstalled = device(storage, "ada");
    assert_eq!(bound(reinstalled, "aa").as_deref(), Some("aa"));
    assert_eq!(
        bound(bobs, "aa"),
        None,
        "the actor is taken again, by the live device"
    );
    assert_eq!(
        bound(bobs, "bb").as_deref(),
        Some("bb"),
        "a revoked device's actor"
    );
}

/// Devices binding one actor at once, as requests on several connections or instances would:
/// exactly one gets it.
fn concurrent_bindings_give_an_actor_to_one_device(storage: &dyn Storage) {
    for round in 0..5 {
        let actor = format!("shared-{round}");
        let devices: Vec<i64> = (0..6)
            .map(|i| device(storage, &format!("user{i}")))
            .collect();
        let winners = std::thread::scope(|scope| {
            let binders: Vec<_> = devices
                .iter()
                .map(|&device| {
                    let actor = &actor;
                    scope.spawn(move || storage.bind_actor(device, actor).unwrap())
                })
                .collect();
            binders
                .into_iter()
                .filter_map(|binder| binder.join().unwrap())
                .count()
        });
        assert_eq!(winners, 1, "round {round}: {winners} devices bound {actor}");
    }
}

fn push_writes_accepted_records_only(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let records = [record("a", "north"), record("b", "north")];
    let mut merge = |r: &PushRecord, stored: Option<StoredRecord>| {
        if r.id == "b" {
            Err(Rejection {
                code: RejectCode::Malformed,
                message: "no".into(),
            })
        } else {
            accept(r, stored)
        }
    };
    let response = storage
        .push(phone, &Batch::new("batch", &records), &mut merge)
        .unwrap();
    assert!(response.results[0].rejected.is_none());
    assert_eq!(
        response.results[1].rejected.as_ref().unwrap().code,
        RejectCode::Malformed
    );
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    assert_eq!(page.entries.len(), 1, "the rejected record was not written");
    assert_eq!(page.entries[0].record_id, "a");
    // The merge sees the stored state of a record pushed before.
    let mut seen = None;
    let mut remember = |r: &PushRecord, stored: Option<StoredRecord>| {
        seen = stored.clone();
        accept(r, stored)
    };
    storage
        .push(
            phone,
            &Batch::new("batch2", &[record("a", "north")]),
            &mut remember,
        )
        .unwrap();
    let seen = seen.expect("the stored record was handed to the merge");
    assert_eq!(
        (seen.scope.as_str(), seen.doc.as_slice()),
        ("north", &b"a"[..])
    );
}

fn stored_records_as_named(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    storage
        .push(
            phone,
            &Batch::new("batch", &[record("a", "north"), record("b", "south")]),
            &mut accept,
        )
        .unwrap();
    // A record's version is the feed position of the push that wrote it.
    let page = storage
        .documents_page(&["north".into(), "south".into()], 0, i64::MAX, 10)
        .unwrap();
    let version = |id: &[u8]| {
        page.entries
            .iter()
            .find(|e| e.record_id.as_bytes() == id)
            .map(|e| e.seq)
    };
    let stored = |scope: &str, doc: &[u8]| {
        Some(StoredRecord {
            epoch: 0,
            scope: scope.into(),
            doc: doc.to_vec(),
            fields_json: format!("{{\"id\": \"{}\"}}", String::from_utf8_lossy(doc)),
            deleted: false,
            lineage: Some(lineage_of(doc)),
            version: Some(version(doc).expect("a written record is on a page")),
        })
    };
    let found = storage
        .stored_records(&[
            ("clients", "b"),
            ("clients", "missing"),
            ("notes", "a"),
            ("clients", "a"),
            ("clients", "b"),
            ("clients", "nul\0"),
        ])
        .unwrap()
        .records;
    assert_eq!(
        found,
        vec![
            stored("south", b"b"),
            None,
            None,
            stored("north", b"a"),
            stored("south", b"b"),
            None
        ],
        "each key in order, a key named twice twice, unknown ones as None"
    );
    assert!(storage.stored_records(&[]).unwrap().records.is_empty());
}

/// Offers [`accept`]'s merge as made ahead against the version it expects next for each
/// record, and records what the storage asked with and what it read.
#[derive(Default)]
struct ExpectingMerge {
    expected: Vec<StoredVersion>,
    asked: Vec<StoredVersion>,
    read: Vec<Option<StoredRecord>>,
    /// The snapshot mark it names.
    mark: Option<SnapshotMark>,
}

impl Merge for ExpectingMerge {
    fn merged_ahead(
        &mut self,
        record: &PushRecord,
        now: StoredVersion,
    ) -> Option<Result<MergedRecord, Rejection>> {
        let expected = self.expected.get(self.asked.len()).copied();
        self.asked.push(now);
        // Built on nothing: a result the storage can only have taken from here.
        (expected == Some(now)).then(|| accept(record, None))
    }

    fn merge(
        &mut self,
        record: &PushRecord,
        stored: Option<StoredRecord>,
    ) -> Result<MergedRecord, Rejection> {
        self.read.push(stored.clone());
        accept(record, stored)
    }

    fn snapshot_mark(&self) -> Option<SnapshotMark> {
        self.mark
    }
}

/// A merge that names its snapshot's mark is told that the records it has not written are
/// [`StoredVersion::Current`] only when nothing changed since the snapshot was read (and only
/// by a storage that marks its snapshots); otherwise it is told their stored versions.
fn only_a_snapshot_nothing_changed_since_is_current(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    storage
        .push(
            phone,
            &Batch::new("seed", &[record("a", "north")]),
            &mut accept,
        )
        .unwrap();
    let keys = [("clients", "a"), ("clients", "b")];

    let snapshot = storage.stored_records(&keys).unwrap();
    let mut quiet = ExpectingMerge {
        mark: snapshot.mark,
        ..ExpectingMerge::default()
    };
    let pushed = [record_with("a", "north", b"2"), record("b", "north")];
    storage
        .push(phone, &Batch::new("quiet", &pushed), &mut quiet)
        .unwrap();
    if snapshot.mark.is_some() {
        assert_eq!(quiet.asked, [StoredVersion::Current; 2]);
    } else {
        assert!(matches!(quiet.asked[0], StoredVersion::Written(_)));
        assert_eq!(quiet.asked[1], StoredVersion::Absent);
    }
    // A copy pushed after one this push wrote is still as this push left it.
    let snapshot = storage.stored_records(&[("clients", "e")]).unwrap();
    let mut twice = ExpectingMerge {
        mark: snapshot.mark,
        ..ExpectingMerge::default()
    };
    let pushed = [record("e", "north"), record_with("e", "north", b"2")];
    storage
        .push(phone, &Batch::new("twice", &pushed), &mut twice)
        .unwrap();
    assert_eq!(twice.asked[1], StoredVersion::ThisPush);

    // Another push commits between the snapshot and this push.
    let snapshot = storage.stored_records(&keys).unwrap();
    storage
        .push(
            phone,
            &Batch::new("between", &[record("c", "north")]),
            &mut accept,
        )
        .unwrap();
    let mut late = ExpectingMerge {
        mark: snapshot.mark,
        ..ExpectingMerge::default()
    };
    let pushed = [record_with("a", "north", b"3"), record("d", "north")];
    storage
        .push(phone, &Batch::new("late", &pushed), &mut late)
        .unwrap();
    assert!(
        matches!(late.asked[0], StoredVersion::Written(_)),
        "{:?}",
        late.asked
    );
    assert_eq!(late.asked[1], StoredVersion::Absent);
    let read = late.read[0].as_ref().expect("the stored record is read");
    assert_eq!(read.doc, b"a2", "the merge builds on what is stored");
}

/// Under its transaction a push names each record's stored version to the merge (the feed
/// position that wrote it, or that this push did), takes a merge made ahead against it, and
/// reads a record whole only otherwise.
fn merges_made_ahead_are_asked_for_by_stored_version(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let mut first = ExpectingMerge {
        expected: vec![StoredVersion::Absent; 2],
        ..ExpectingMerge::default()
    };
    let pushed = [record("a", "north"), record_with("a", "north", b"2")];
    storage
        .push(phone, &Batch::new("first", &pushed), &mut first)
        .unwrap();
    assert_eq!(
        first.asked,
        [StoredVersion::Absent, StoredVersion::ThisPush],
        "a record new to the server, then as this push left it"
    );
    let read: Vec<Option<&[u8]>> = first
        .read
        .iter()
        .map(|stored| stored.as_ref().map(|s| s.doc.as_slice()))
        .collect();
    assert_eq!(
        read,
        [Some(&b"a"[..])],
        "the copy whose merge ahead did not fit, handed the record as the push left it"
    );
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    let version = page.entries[0].seq;
    assert_eq!(
        page.entries[0].doc, b"a2",
        "both copies are written in turn"
    );

    // Offered a merge against a version that is not the stored one, the storage reads.
    let mut stale = ExpectingMerge {
        expected: vec![StoredVersion::Written(version - 1)],
        ..ExpectingMerge::default()
    };
    let pushed = [record_with("a", "north", b"3")];
    storage
        .push(phone, &Batch::new("second", &pushed), &mut stale)
        .unwrap();
    assert_eq!(stale.asked, [StoredVersion::Written(version)]);
    assert_eq!(stale.read.len(), 1);
    let read = stale.read[0].as_ref().expect("the stored record");
    assert_eq!(
        (read.doc.as_slice(), read.version),
        (&b"a2"[..], Some(version))
    );

    // The stored version offered: its merge is written and nothing is read.
    let version = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap()
        .entries[0]
        .seq;
    let mut fitting = ExpectingMerge {
        expected: vec![StoredVersion::Written(version)],
        ..ExpectingMerge::default()
    };
    let pushed = [record_with("a", "north", b"4")];
    storage
        .push(phone, &Batch::new("third", &pushed), &mut fitting)
        .unwrap();
    assert!(fitting.read.is_empty());
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    assert_eq!(
        page.entries[0].doc, b"4",
        "the merge made ahead, as it was made"
    );
    assert!(page.entries[0].seq > version);
}

fn replayed_batches_change_nothing(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let first = storage
        .push(
            phone,
            &Batch::new("same", &[record("a", "north")]),
            &mut accept,
        )
        .unwrap();
    let mut called = false;
    let mut never = |r: &PushRecord, s: Option<StoredRecord>| {
        called = true;
        accept(r, s)
    };
    let second = storage
        .push(
            phone,
            &Batch::new("same", &[record("a", "north")]),
            &mut never,
        )
        .unwrap();
    assert_eq!(first, second);
    assert!(!called, "a replay does not merge again");
    assert_eq!(
        storage
            .feed_page(&["north".into()], 0, 10)
            .unwrap()
            .entries
            .len(),
        1
    );
    // Batch ids are per device.
    let tablet = device(storage, "ada");
    storage
        .push(
            tablet,
            &Batch::new("same", &[record("b", "north")]),
            &mut accept,
        )
        .unwrap();
    assert_eq!(
        storage
            .feed_page(&["north".into()], 0, 10)
            .unwrap()
            .entries
            .len(),
        2
    );
}

fn feed_pages_in_order_by_scope(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    for i in 0..10 {
        let scope = if i % 2 == 0 { "north" } else { "south" };
        storage
            .push(
                phone,
                &Batch::new(&format!("b{i}"), &[record(&format!("r{i}"), scope)]),
                &mut accept,
            )
            .unwrap();
    }
    let north = vec!["north".to_owned()];
    let first = storage.feed_page(&north, 0, 3).unwrap();
    assert_eq!(first.entries.len(), 3);
    assert!(first.more);
    assert!(first.entries.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        first
            .entries
            .iter()
            .all(|e| e.scope == "north" && e.device_id == phone)
    );
    assert_eq!(first.entries[0].changes, vec![b"r0".to_vec()]);
    let rest = storage.feed_page(&north, first.last_seq, 10).unwrap();
    assert_eq!(rest.entries.len(), 2);
    assert!(!rest.more);
    let done = storage.feed_page(&north, rest.last_seq, 10).unwrap();
    assert!(done.entries.is_empty() && !done.more && done.last_seq == rest.last_seq);
    assert_eq!(
        storage.feed_page(&[], 0, 10).unwrap().entries.len(),
        0,
        "no scopes, nothing"
    );
    let both = storage
        .feed_page(&["north".into(), "south".into()], 0, 100)
        .unwrap();
    assert_eq!(both.entries.len(), 10);
}

fn a_reader_s_feed_pages_leave_out_its_own_entries(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let tablet = device(storage, "bob");
    // The phone's four entries, then one of the tablet's and one more of the phone's.
    for (device, id) in [(phone, "a"), (phone, "b"), (phone, "c"), (phone, "d")] {
        storage
            .push(device, &Batch::new(id, &[record(id, "north")]), &mut accept)
            .unwrap();
    }
    storage
        .push(
            tablet,
            &Batch::new("e", &[record("e", "north")]),
            &mut accept,
        )
        .unwrap();
    storage
        .push(
            phone,
            &Batch::new("f", &[record("f", "north")]),
            &mut accept,
        )
        .unwrap();
    let north = vec!["north".to_owned()];
    let all = storage.feed_page(&north, 0, 10).unwrap();
    assert_eq!(all.entries.len(), 6);

    // A page of nothing but its own entries still moves past them.
    let own = storage.feed_page_for(phone, &north, 0, 3).unwrap();
    assert!(own.entries.is_empty());
    assert!(own.more);
    assert_eq!(own.last_seq, all.entries[2].seq);
    let rest = storage
        .feed_page_for(phone, &north, own.last_seq, 10)
        .unwrap();
    assert_eq!(
        rest.entries,
        vec![all.entries[4].clone()],
        "the tablet's, whole"
    );
    assert!(!rest.more);
    assert_eq!(rest.last_seq, all.entries[5].seq);
    // The tablet gets the phone's entries as anyone would.
    let for_tablet = storage.feed_page_for(tablet, &north, 0, 10).unwrap();
    let phone_s: Vec<_> = all
        .entries
        .iter()
        .filter(|e| e.device_id == phone)
        .collect();
    assert_eq!(for_tablet.entries.iter().collect::<Vec<_>>(), phone_s);
    assert_eq!(for_tablet.last_seq, all.entries[5].seq);
}

fn feed_entries_carry_their_record_s_values_when_latest(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    // The values name the last change; a change named "gone" deletes the record.
    let mut accept_named = |record: &PushRecord, stored: Option<StoredRecord>| {
        let mut merged = accept(record, stored)?;
        let Payload::Changes(changes) = &record.payload else {
            unreachable!("tests push changes")
        };
        let last = String::from_utf8_lossy(changes.last().unwrap()).into_owned();
        merged.fields_json = format!("{{\"last\": \"{last}\"}}");
        merged.deleted = last == "gone";
        Ok(merged)
    };
    for (batch, id, change) in [("b1", "a", "one"), ("b2", "b", "gone"), ("b3", "a", "two")] {
        storage
            .push(
                phone,
                &Batch::new(batch, &[record_with(id, "north", change.as_bytes())]),
                &mut accept_named,
            )
            .unwrap();
    }
    let page = storage.feed_page(&["north".into()], 0, 10).unwrap();
    let latest: Vec<Option<(String, bool)>> =
        page.entries.into_iter().map(|entry| entry.latest).collect();
    assert_eq!(
        latest,
        [
            None,
            Some(("{\"last\": \"gone\"}".to_owned(), true)),
            Some(("{\"last\": \"two\"}".to_owned(), false)),
        ]
    );
}

fn documents_page_in_creation_order(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    for id in ["c", "a", "b"] {
        storage
            .push(phone, &Batch::new(id, &[record(id, "north")]), &mut accept)
            .unwrap();
    }
    // Changing "c" leaves it where it is.
    storage
        .push(
            phone,
            &Batch::new("c2", &[record("c", "north")]),
            &mut accept,
        )
        .unwrap();
    let head = storage.feed_head().unwrap();
    // Created after the head: not among the documents up to it.
    storage
        .push(
            phone,
            &Batch::new("d", &[record("d", "north")]),
            &mut accept,
        )
        .unwrap();
    let north = vec!["north".to_owned()];
    let page = storage.documents_page(&north, 0, head, 2).unwrap();
    let ids: Vec<&str> = page.entries.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(ids, ["c", "a"]);
    assert!(page.more);
    assert_eq!(page.last_seq, page.entries[1].created_seq);
    assert_eq!(
        page.entries[0].doc,
        b"cc".to_vec(),
        "the latest merged document"
    );
    assert_eq!(page.entries[0].fields_json, "{\"id\": \"c\"}");
    assert!(
        page.entries[0].seq > page.entries[0].created_seq,
        "each with its version, its last change"
    );
    let rest = storage
        .documents_page(&north, page.last_seq, head, 2)
        .unwrap();
    let ids: Vec<&str> = rest.entries.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(ids, ["b"]);
    assert!(!rest.more);
    let all = storage.documents_page(&north, 0, i64::MAX, 10).unwrap();
    assert_eq!(all.entries.len(), 4);
}

fn feed_head_is_the_last_position(storage: &dyn Storage) {
    assert_eq!(storage.feed_head().unwrap(), 0, "an empty feed");
    let phone = device(storage, "ada");
    storage
        .push(
            phone,
            &Batch::new("one", &[record("a", "north"), record("b", "south")]),
            &mut accept,
        )
        .unwrap();
    let both = vec!["north".to_owned(), "south".to_owned()];
    let feed = storage.feed_page(&both, 0, 10).unwrap();
    assert_eq!(feed.entries.len(), 2);
    assert_eq!(storage.feed_head().unwrap(), feed.last_seq);
}

fn audit_and_activity(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let bob_phone = device(storage, "bob");
    storage
        .push(
            phone,
            &Batch::new("p", &[record("a", "north")]),
            &mut accept,
        )
        .unwrap();
    storage
        .record_pull(
            bob_phone,
            &[("clients".into(), "a".into(), "north".into())],
            None,
            0,
        )
        .unwrap();
    let all = storage
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].action.as_str(), all[0].user.as_str()),
        ("pull", "bob"),
        "newest first"
    );
    assert_eq!(
        (all[1].action.as_str(), all[1].record_id.as_str()),
        ("push", "a")
    );
    let bob = storage
        .audit(&AuditQuery {
            user: Some("bob".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(bob.len(), 1);
    let by_record = storage
        .audit(&AuditQuery {
            record_id: Some("zzz".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(by_record.is_empty());
    let before_everything = storage
        .audit(&AuditQuery {
            until: Some(0),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert!(before_everything.is_empty());
    assert_eq!(storage.active_devices(0).unwrap(), 2);
    assert_eq!(storage.active_devices(i64::MAX).unwrap(), 0);
    storage.ping().unwrap();
    assert_eq!(storage.device_sync(phone).unwrap().schema_version, None);
    storage.set_device_schema_version(phone, 3).unwrap();
    assert_eq!(storage.device_sync(phone).unwrap().schema_version, Some(3));
    let listed = storage.list_devices().unwrap();
    let shown = listed.iter().find(|d| d.id == phone).unwrap();
    assert_eq!(shown.schema_version, Some(3));
}

/// A record's lines found among thousands of others' (more than one of the embedded backend's
/// index blocks), newest first, by user and from a time.
fn a_record_s_audit_lines_among_many(storage: &dyn Storage) {
    let ada = device(storage, "ada");
    let bob = device(storage, "bob");
    let pull = |device: i64, record_at: &[usize]| {
        let lines: Vec<(String, String, String)> = (0..4500)
            .map(|i| {
                let id = if record_at.contains(&i) {
                    "r".to_owned()
                } else {
                    format!("x{i}")
                };
                ("clients".into(), id, "north".into())
            })
            .collect();
        storage.record_pull(device, &lines, None, 0).unwrap();
    };
    pull(ada, &[10]);
    let first = now_ms();
    while now_ms() <= first {
        std::hint::spin_loop();
    }
    let later = now_ms();
    pull(bob, &[4000, 4400]);
    pull(ada, &[0]);
    let of_r_until = |user: Option<&str>,
                      (since, until): (Option<i64>, Option<i64>),
                      limit: u32|
     -> Vec<String> {
        storage
            .audit(&AuditQuery {
                user: user.map(str::to_owned),
                record_id: Some("r".into()),
                since,
                until,
                limit,
            })
            .unwrap()
            .into_iter()
            .map(|line| {
                assert_eq!(
                    (line.record_id.as_str(), line.action.as_str()),
                    ("r", "pull")
                );
                line.user
            })
            .collect()
    };
    let of_r =
        |user: Option<&str>, since: Option<i64>, limit: u32| of_r_until(user, (since, None), limit);
    assert_eq!(
        of_r(None, None, 10),
        ["ada", "bob", "bob", "ada"],
        "newest first"
    );
    assert_eq!(of_r(None, None, 3), ["ada", "bob", "bob"]);
    assert_eq!(of_r(Some("bob"), None, 10), ["bob", "bob"]);
    assert_eq!(of_r(None, Some(later), 10), ["ada", "bob", "bob"]);
    assert_eq!(
        of_r_until(None, (None, Some(later)), 10),
        ["ada"],
        "before a time"
    );
    assert!(of_r(Some("carol"), None, 10).is_empty());
}

fn idle_pulls_move_the_last_sync_at_most_once_a_minute(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let last_sync = || {
        storage
            .list_devices()
            .unwrap()
            .into_iter()
            .find(|d| d.id == phone)
            .unwrap()
            .last_sync_at
    };
    // A device's first pull is recorded even when it brought nothing.
    storage.record_pull(phone, &[], None, 0).unwrap();
    let first = last_sync().expect("a first pull sets the last sync time");
    // Let the clock pass the first time, so that an update would show.
    while now_ms() <= first {
        std::hint::spin_loop();
    }
    storage.record_pull(phone, &[], None, 0).unwrap();
    assert_eq!(
        last_sync(),
        Some(first),
        "an idle pull within the minute writes nothing"
    );
    assert!(
        storage
            .audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap()
            .is_empty()
    );
    storage
        .record_pull(
            phone,
            &[("clients".into(), "a".into(), "north".into())],
            None,
            0,
        )
        .unwrap();
    assert!(
        last_sync().unwrap() > first,
        "a pull that brought records is recorded"
    );
}

fn a_record_pushed_twice_in_one_batch_keeps_both(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let records = [
        record_with("a", "north", b"1"),
        record_with("a", "north", b"2"),
    ];
    storage
        .push(phone, &Batch::new("twice", &records), &mut accept)
        .unwrap();
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(
        page.entries[0].doc,
        b"12".to_vec(),
        "the second merge saw the first"
    );
    let feed = storage.feed_page(&["north".into()], 0, 10).unwrap();
    assert_eq!(feed.entries.len(), 2);
}

/// Several devices push at once, each to one shared record and to records of its own, while a
/// reader pages through the feed. Every change must be in the shared document (no merge saw
/// a stale document), and the reader must have seen every feed entry (no position became
/// visible after the reader had moved past it).
fn concurrent_pushes_lose_nothing_and_readers_skip_nothing(storage: &dyn Storage) {
    let writers = 6;
    let per_writer: usize = 30;
    let devices: Vec<i64> = (0..writers)
        .map(|w| device(storage, &format!("writer{w}")))
        .collect();
    let north = vec!["north".to_owned()];
    let writing_done = AtomicBool::new(false);
    let seen = std::thread::scope(|scope| {
        let pushers: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(w, &device)| {
                scope.spawn(move || {
                    for i in 0..per_writer {
                        // Pushes of different records run side by side in a backend that
                        // can; the shared record makes some of them meet.
                        let mut records = vec![record(&format!("own-{w}-{i}"), "north")];
                        if i % 3 == 0 {
                            let change = format!("<{w}.{i}>");
                            records.push(record_with("shared", "north", change.as_bytes()));
                        }
                        storage
                            .push(
                                device,
                                &Batch::new(&format!("{w}-{i}"), &records),
                                &mut accept,
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        let reader = scope.spawn(|| {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                // Read before the page: if writing was done, this page sees every change.
                let done = writing_done.load(Ordering::SeqCst);
                let page = storage.feed_page(&north, after, 7).unwrap();
                seen.extend(page.entries.iter().map(|e| e.seq));
                after = page.last_seq;
                if done && !page.more {
                    return seen;
                }
                std::thread::yield_now();
            }
        });
        for pusher in pushers {
            pusher.join().unwrap();
        }
        writing_done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    let all = storage.feed_page(&north, 0, 10_000).unwrap().entries;
    let shared_pushes = writers * per_writer.div_ceil(3);
    assert_eq!(all.len(), writers * per_writer + shared_pushes);
    let skipped: Vec<i64> = all
        .iter()
        .map(|e| e.seq)
        .filter(|seq| !seen.contains(seq))
        .collect();
    assert!(
        skipped.is_empty(),
        "the reader's cursor moved past feed entries {skipped:?} before they were visible"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "the feed is in order");
    let shared = storage
        .documents_page(&north, 0, i64::MAX, 10_000)
        .unwrap()
        .entries
        .into_iter()
        .find(|e| e.record_id == "shared")
        .expect("the shared record exists");
    let doc = String::from_utf8(shared.doc).unwrap();
    for w in 0..writers {
        for i in (0..per_writer).step_by(3) {
            assert!(
                doc.contains(&format!("<{w}.{i}>")),
                "change {w}.{i} of the shared record was lost"
            );
        }
    }
}

fn refused_records_are_audited_with_their_code(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let records = [
        record("a", "north"),
        record("b", "south"),
        PushRecord {
            collection: "bad\0name".into(),
            ..record("c", "north")
        },
    ];
    let mut merge = |r: &PushRecord, stored: Option<StoredRecord>| match r.id.as_str() {
        "a" => accept(r, stored),
        "b" => Err(Rejection {
            code: RejectCode::ForbiddenScope,
            message: "no".into(),
        }),
        _ => Err(Rejection {
            code: RejectCode::InvalidRecord,
            message: "no".into(),
        }),
    };
    storage
        .push(phone, &Batch::new("batch", &records), &mut merge)
        .unwrap();
    let lines = storage
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let mut seen: Vec<(&str, &str, &str, Option<&str>)> = lines
        .iter()
        .map(|l| {
            (
                l.action.as_str(),
                l.record_id.as_str(),
                l.scope.as_str(),
                l.code.as_deref(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("push", "a", "north", None),
            ("refuse", "b", "south", Some("forbidden_scope")),
            ("refuse", "c", "north", Some("invalid_record")),
        ]
    );
    let odd = lines.iter().find(|l| l.record_id == "c").unwrap();
    assert_eq!(odd.collection, "bad\u{fffd}name", "a NUL cannot be stored");
    assert!(
        lines
            .iter()
            .all(|l| l.user == "ada" && l.device_id == phone)
    );
    // A replayed batch is answered from its record and audited once.
    storage
        .push(phone, &Batch::new("batch", &records), &mut merge)
        .unwrap();
    let again = storage
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(again.len(), 3);
}

fn schema_versions_are_kept_in_order(storage: &dyn Storage) {
    assert_eq!(storage.schema_version().unwrap(), 0);
    assert_eq!(storage.current_schema().unwrap(), None);
    assert!(storage.schema_history().unwrap().is_empty());
    assert!(storage.add_schema(1, r#"{"first": 1}"#).unwrap());
    assert!(
        !storage.add_schema(1, r#"{"other": 1}"#).unwrap(),
        "a version is set once"
    );
    assert!(storage.add_schema(3, r#"{"third": 3}"#).unwrap());
    assert_eq!(storage.schema_version().unwrap(), 3);
    let current = storage.current_schema().unwrap().unwrap();
    assert_eq!(
        (current.version, current.schema_json.as_str()),
        (3, r#"{"third": 3}"#)
    );
    assert!(current.set_at > 0);
    let history: Vec<(u32, String)> = storage
        .schema_history()
        .unwrap()
        .into_iter()
        .map(|s| (s.version, s.schema_json))
        .collect();
    assert_eq!(
        history,
        vec![
            (1, r#"{"first": 1}"#.to_owned()),
            (3, r#"{"third": 3}"#.to_owned())
        ]
    );
}

fn a_batch_id_names_one_batch(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    assert_eq!(storage.device_sync(phone).unwrap().outbox_seq, None);
    let first = [record("a", "north")];
    let batch = Batch {
        outbox_seq: Some(5),
        ..Batch::new("dev:4-5", &first)
    };
    let answer = storage.push(phone, &batch, &mut accept).unwrap();
    assert_eq!(storage.push(phone, &batch, &mut accept).unwrap(), answer);
    assert_eq!(storage.device_sync(phone).unwrap().outbox_seq, Some(5));
    // The same id with other records: a store restored from an older copy.
    let other = [record("b", "north")];
    let conflict = storage.push(phone, &Batch::new("dev:4-5", &other), &mut accept);
    assert!(
        matches!(conflict, Err(crate::error::ServerError::BatchConflict)),
        "{conflict:?}"
    );
    let page = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    assert_eq!(page.entries.len(), 1, "the conflicting batch wrote nothing");
    // A retry split differently, or without positions, never moves the mark back.
    let lower = Batch {
        outbox_seq: Some(4),
        ..Batch::new("dev:4-4", &first)
    };
    storage.push(phone, &lower, &mut accept).unwrap();
    storage
        .push(phone, &Batch::new("other", &other), &mut accept)
        .unwrap();
    assert_eq!(storage.device_sync(phone).unwrap().outbox_seq, Some(5));
}

/// `check` lists every record in key order a page at a time; a repair reads a record's feed
/// changes and rewrites it only if nothing was written since, as the server (user and device
/// 0) with a feed entry and an audit line.
fn records_are_listed_and_rewritten(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let records = [
        record("b", "north"),
        record("a", "south"),
        record_with("a2", "north", b"x"),
    ];
    storage
        .push(phone, &Batch::new("one", &records), &mut accept)
        .unwrap();
    storage
        .push(
            phone,
            &Batch::new("two", &[record_with("b", "north", b"more")]),
            &mut accept,
        )
        .unwrap();
    let first = storage.records_after(None, 2).unwrap();
    let keys: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(keys, ["a", "a2"]);
    assert_eq!(first[0].stored.scope, "south");
    let rest = storage.records_after(Some(("clients", "a2")), 2).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].stored.doc, b"bmore");
    assert_eq!(rest[0].stored.lineage, Some(lineage_of(b"bmore")));

    assert_eq!(
        storage.feed_changes_of("clients", "b").unwrap(),
        vec![b"b".to_vec(), b"more".to_vec()]
    );
    assert!(storage.feed_changes_of("clients", "zz").unwrap().is_empty());

    let version = rest[0].stored.version.unwrap();
    let rebuilt = MergedRecord {
        epoch: 0,
        doc: b"rebuilt".to_vec(),
        fields_json: "{}".into(),
        deleted: true,
        new_changes: vec![b"b".to_vec(), b"rebuilt".to_vec()],
        lineage: lineage_of(b"rebuilt"),
    };
    let head = storage.feed_head().unwrap();
    assert!(
        !storage
            .rewrite_record(("clients", "b"), version - 1, &rebuilt, "repair")
            .unwrap(),
        "a stale version rewrites nothing"
    );
    assert_eq!(storage.feed_head().unwrap(), head);
    assert!(
        storage
            .rewrite_record(("clients", "b"), version, &rebuilt, "repair")
            .unwrap()
    );
    let after = storage.records_after(Some(("clients", "a2")), 2).unwrap();
    assert_eq!(after[0].stored.doc, b"rebuilt");
    assert!(after[0].stored.deleted);
    assert_eq!(after[0].stored.lineage, Some(lineage_of(b"rebuilt")));
    assert!(after[0].stored.version.unwrap() > version);
    let page = storage.feed_page(&["north".into()], head, 10).unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].device_id, 0);
    assert_eq!(page.entries[0].changes, rebuilt.new_changes);
    let audit = storage
        .audit(&AuditQuery {
            limit: 1,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(
        (
            audit[0].user.as_str(),
            audit[0].device_id,
            audit[0].action.as_str()
        ),
        ("(server)", 0, "repair")
    );
}

/// [`Batch::binds`] binds only with something stored; an actor taken meanwhile fails the push,
/// writing nothing; an administrator frees an actor.
fn a_push_binds_its_actor_only_if_it_stores_something(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    let tablet = device(storage, "bo");
    let records = [record("a", "north")];
    let refuse = |_: &PushRecord, _: Option<StoredRecord>| -> Result<MergedRecord, Rejection> {
        Err(Rejection {
            code: RejectCode::ForbiddenScope,
            message: "no".into(),
        })
    };
    let binding = |id, actor| Batch {
        binds: Some(actor),
        ..Batch::new(id, &records)
    };
    storage
        .push(phone, &binding("refused", "aa"), &mut { refuse })
        .unwrap();
    assert!(storage.actor_free(tablet, "aa").unwrap(), "nothing stored");
    storage
        .push(phone, &binding("stored", "aa"), &mut accept)
        .unwrap();
    assert!(!storage.actor_free(tablet, "aa").unwrap());
    assert!(storage.actor_free(phone, "aa").unwrap(), "its own");

    let head = storage.feed_head().unwrap();
    let err = storage
        .push(tablet, &binding("late", "aa"), &mut accept)
        .unwrap_err();
    assert!(matches!(err, crate::ServerError::TryAgain(_)), "{err}");
    assert_eq!(storage.feed_head().unwrap(), head, "nothing written");

    assert!(storage.release_actor("aa").unwrap());
    assert!(!storage.release_actor("aa").unwrap());
    assert!(storage.actor_free(tablet, "aa").unwrap());
    storage
        .push(tablet, &binding("late", "aa"), &mut accept)
        .unwrap();
    assert_eq!(
        storage.bind_actor(tablet, "aa").unwrap().as_deref(),
        Some("aa")
    );
}
