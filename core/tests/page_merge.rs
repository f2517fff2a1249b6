//! A pulled page merges most of its records on worker threads (changes to records the store
//! has, each named once in the page); whatever the page holds, the result must be the one of
//! merging its records one call at a time, which never takes that path.

mod common;

use std::collections::BTreeSet;

use common::{fields, options, record, schema};
use fieldsync_core::{RemotePayload, RemoteRecord, Store};
use serde_json::json;

/// Everything `store` has to send, as another device receives it; the outbox is emptied.
fn drain(store: &Store) -> Vec<RemoteRecord> {
    let entries = store.outbox(10_000).unwrap();
    if let Some(last) = entries.last() {
        store.acknowledge_outbox(last.seq).unwrap();
    }
    entries
        .into_iter()
        .map(|entry| RemoteRecord {
            epoch: 0,
            collection: entry.collection,
            id: entry.record_id,
            scope: entry.scope,
            payload: entry.payload,
        })
        .collect()
}

/// What a store shows of its clients: values, history and conflicts, by id.
fn state(store: &Store, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            let record = store.get("clients", id).unwrap();
            let history: Vec<String> = store
                .history("clients", id)
                .unwrap_or_default()
                .into_iter()
                .map(|entry| entry.change_hash)
                .collect();
            let conflicts = store.conflicts("clients", id).unwrap_or_default();
            format!(
                "{id}: {:?} {history:?} {conflicts:?}",
                record.map(|r| r.fields)
            )
        })
        .collect()
}

fn same_state(left: &Store, right: &Store, ids: &[String]) {
    for (left, right) in state(left, ids).into_iter().zip(state(right, ids)) {
        assert_eq!(left, right);
    }
}

#[test]
fn a_page_merged_on_threads_equals_its_records_merged_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| Store::open(dir.path().join(name), schema(), options()).unwrap();
    let source = open("source.db");
    let whole_pages = open("whole-pages.db");
    let one_by_one = open("one-by-one.db");

    let mut ids: Vec<String> = (0..48)
        .map(|i| {
            source
                .insert(
                    "clients",
                    fields(
                        json!({"caseload_id": "north", "name": format!("client {i}"),
                                  "notes": "first visit"}),
                    ),
                )
                .unwrap()
        })
        .collect();
    let known = drain(&source);
    let colleague = open("colleague.db");
    for store in [&whole_pages, &one_by_one, &colleague] {
        store.apply_remote(known.clone()).unwrap();
    }
    // A colleague's edits reach the targets first: the page's edits of the same clients are
    // concurrent with them, and one field conflicts.
    colleague
        .update("clients", &ids[2], fields(json!({"phone": "555"})))
        .unwrap();
    colleague
        .update("clients", &ids[5], fields(json!({"birth_year": 1900})))
        .unwrap();
    let theirs = drain(&colleague);
    whole_pages.apply_remote(theirs.clone()).unwrap();
    one_by_one.apply_remote(theirs).unwrap();

    // Each of the first 40 clients edited once, every third one twice (named twice in the
    // page), one deleted, and a client the targets have never seen.
    for (i, id) in ids.iter().take(40).enumerate() {
        source
            .update("clients", id, fields(json!({"birth_year": 1950 + i})))
            .unwrap();
        if i % 3 == 0 {
            source
                .splice_text("clients", id, "notes", 0, 0, "late: ")
                .unwrap();
        }
    }
    source.delete("clients", &ids[4]).unwrap();
    ids.push(
        source
            .insert(
                "clients",
                fields(json!({"caseload_id": "north", "name": "new"})),
            )
            .unwrap(),
    );
    let mut page = drain(&source);
    // A change that does not decode, for a client named nowhere else in the page.
    page.push(record(
        "clients",
        &ids[41],
        "north",
        RemotePayload::Changes(vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3]]),
    ));
    // A change whose dependency has not arrived: it waits.
    source
        .update("clients", &ids[42], fields(json!({"phone": "1"})))
        .unwrap();
    source
        .update("clients", &ids[42], fields(json!({"phone": "2"})))
        .unwrap();
    let held_back = drain(&source);
    page.push(held_back[1].clone());
    // A collection this schema does not have.
    page.push(record(
        "visits",
        &ids[43],
        "north",
        RemotePayload::Changes(vec![vec![1]]),
    ));

    let whole = whole_pages.apply_remote(page.clone()).unwrap();
    // A record the page brings twice counts once.
    let mut changed = BTreeSet::new();
    let mut unchanged = 0;
    let mut rejected = BTreeSet::new();
    let mut waiting = 0;
    for record in page {
        let key = (record.collection.clone(), record.id.clone());
        let report = one_by_one.apply_remote(vec![record]).unwrap();
        if report.changed > 0 {
            changed.insert(key);
        }
        unchanged += report.unchanged;
        waiting = report.waiting_changes;
        rejected.extend(
            report
                .rejected
                .into_iter()
                .map(|r| format!("{}/{}: {}", r.collection, r.id, r.reason)),
        );
    }
    assert_eq!(
        (whole.changed, whole.unchanged, whole.waiting_changes),
        (changed.len(), unchanged, waiting)
    );
    assert_eq!(
        whole
            .rejected
            .iter()
            .map(|r| format!("{}/{}: {}", r.collection, r.id, r.reason))
            .collect::<BTreeSet<_>>(),
        rejected
    );
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(waiting, 1);
    same_state(&whole_pages, &one_by_one, &ids);

    // The change that was missing arrives; the one kept aside applies with it.
    for target in [&whole_pages, &one_by_one] {
        target.apply_remote(vec![held_back[0].clone()]).unwrap();
        let client = target.get("clients", &ids[42]).unwrap().unwrap();
        assert_eq!(client.fields["phone"], "2");
    }
    same_state(&whole_pages, &one_by_one, &ids);
    let client = whole_pages.get("clients", &ids[3]).unwrap().unwrap();
    assert_eq!(client.fields["birth_year"], 1953);
    assert_eq!(client.fields["notes"], "late: first visit");
    assert!(whole_pages.get("clients", &ids[4]).unwrap().is_none());
    let client = whole_pages.get("clients", &ids[2]).unwrap().unwrap();
    assert_eq!(client.fields["phone"], "555");
    assert_eq!(client.fields["birth_year"], 1952);
    let conflicts = whole_pages.conflicts("clients", &ids[5]).unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].field, "birth_year");
}
