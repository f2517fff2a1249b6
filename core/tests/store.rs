//! The store's public API, black box: writes, reads, errors, references, subscriptions,
//! upgrades and concurrency.

use std::sync::{Arc, Mutex};

use fieldsync_core::{
    ChangeOrigin, EncryptionKey, Error, Fields, Filter, Order, Query, RemotePayload, RemoteRecord,
    Schema, Store, StoreOptions, Write,
};
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("fixtures/clinic.schema.json");

fn schema() -> Schema {
    Schema::from_json(SCHEMA).unwrap()
}

fn fields(value: Value) -> Fields {
    value.as_object().expect("an object").clone()
}

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::open(dir.path().join(name), schema(), StoreOptions::default()).unwrap()
}

fn client(name: &str) -> Fields {
    fields(json!({"caseload_id": "north", "name": name}))
}

fn outbox_len(store: &Store) -> usize {
    store.outbox(usize::MAX >> 1).unwrap().len()
}

#[test]
fn insert_get_update_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store
        .insert(
            "clients",
            fields(json!({
                "caseload_id": "north", "name": "Ada", "birth_year": 1990, "active": true,
                "risk_score": 2, "next_visit": 1_700_000_000_000i64, "notes": "first",
                "goals": {"speech": ["s", "r"], "motor": {"level": 2}}
            })),
        )
        .unwrap();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    let record = store.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.scope, "north");
    assert_eq!(record.fields["birth_year"], 1990);
    assert_eq!(record.fields["risk_score"], 2.0);
    assert_eq!(record.fields["active"], true);
    assert_eq!(
        record.fields["goals"],
        json!({"speech": ["s", "r"], "motor": {"level": 2}})
    );

    store
        .update(
            "clients",
            &id,
            fields(json!({"phone": "555", "birth_year": null})),
        )
        .unwrap();
    let record = store.get("clients", &id).unwrap().unwrap();
    assert_eq!(record.fields["phone"], "555");
    assert!(!record.fields.contains_key("birth_year"));
    assert_eq!(record.fields["name"], "Ada");
}

#[test]
fn caller_supplied_ids_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store
        .insert_with_id("clients", Some("client-1".into()), client("Ada"))
        .unwrap();
    assert_eq!(id, "client-1");
    assert!(matches!(
        store.insert_with_id("clients", Some("client-1".into()), client("Bo")),
        Err(Error::DuplicateId { .. })
    ));
    for bad in ["", "has space", "x'; DROP TABLE meta; --", &"x".repeat(129)] {
        assert!(matches!(
            store.insert_with_id("clients", Some(bad.into()), client("Bo")),
            Err(Error::InvalidId(_))
        ));
    }
}

#[test]
fn bad_writes_are_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store.insert("clients", client("Ada")).unwrap();
    let outbox_before = outbox_len(&store);
    let record_before = store.get("clients", &id).unwrap();

    let cases: Vec<(Result<(), Error>, &str)> = vec![
        (
            store.insert("nope", client("x")).map(drop),
            "unknown collection",
        ),
        (
            store
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "n", "name": "x", "shoe": 1})),
                )
                .map(drop),
            "unknown field",
        ),
        (
            store
                .insert("clients", fields(json!({"caseload_id": "n", "name": 5})))
                .map(drop),
            "wrong type",
        ),
        (
            store
                .insert(
                    "clients",
                    fields(json!({"caseload_id": "n", "birth_year": 1.5, "name": "x"})),
                )
                .map(drop),
            "float for integer",
        ),
        (
            store
                .insert("clients", fields(json!({"caseload_id": "n"})))
                .map(drop),
            "missing required",
        ),
        (
            store.update("clients", &id, fields(json!({"name": null}))),
            "clear required",
        ),
        (
            store.update("clients", &id, fields(json!({"caseload_id": "south"}))),
            "scope change",
        ),
        (
            store.update("clients", &id, fields(json!({"unknown": 1}))),
            "unknown field in update",
        ),
        (
            store.update("clients", "missing", fields(json!({"name": "x"}))),
            "not found",
        ),
        (
            store.splice_text("clients", &id, "name", 0, 0, "x"),
            "splice on a string field",
        ),
        (
            store.splice_text("clients", &id, "notes", 5, 0, "x"),
            "splice out of range",
        ),
        (store.delete("clients", "missing"), "delete missing"),
    ];
    for (result, case) in cases {
        assert!(result.is_err(), "{case} was accepted");
    }
    assert_eq!(outbox_len(&store), outbox_before);
    assert_eq!(store.get("clients", &id).unwrap(), record_before);
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 1);
}

#[test]
fn error_messages_do_not_carry_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let err = store
        .insert(
            "clients",
            fields(json!({"caseload_id": "n", "name": "x", "birth_year": "SECRET-CANARY"})),
        )
        .unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }));
    assert!(!err.to_string().contains("SECRET-CANARY"), "{err}");
}

#[test]
fn a_failing_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let writes = vec![
        Write::Insert {
            collection: "clients".into(),
            id: Some("a".into()),
            fields: client("A"),
        },
        Write::Insert {
            collection: "clients".into(),
            id: Some("b".into()),
            fields: client("B"),
        },
        Write::Update {
            collection: "clients".into(),
            id: "a".into(),
            patch: fields(json!({"phone": "1"})),
        },
        Write::Update {
            collection: "clients".into(),
            id: "b".into(),
            patch: fields(json!({"name": 7})),
        },
    ];
    assert!(matches!(
        store.write_batch(writes.clone()),
        Err(Error::WrongType { .. })
    ));
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);
    assert_eq!(outbox_len(&store), 0);

    let ids = store.write_batch(writes[..3].to_vec()).unwrap();
    assert_eq!(ids, ["a", "b", "a"]);
    assert_eq!(
        store.get("clients", "a").unwrap().unwrap().fields["phone"],
        "1"
    );
    assert_eq!(outbox_len(&store), 3, "one change per write");
}

#[test]
fn queries_filter_order_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let writes = (0..20)
        .map(|i| Write::Insert {
            collection: "clients".into(),
            id: Some(format!("c{i:02}")),
            fields: fields(json!({
                "caseload_id": if i % 2 == 0 { "north" } else { "south" },
                "name": format!("name {i:02}"),
                "birth_year": 1980 + i,
                "phone": if i < 5 { Value::Null } else { json!(format!("p{i}")) },
            })),
        })
        .collect();
    store.write_batch(writes).unwrap();
    let ids = |filter: Filter| -> Vec<String> {
        store
            .query(
                "clients",
                &Query {
                    filter,
                    ..Query::default()
                },
            )
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    let year = |op: &str, v: i64| -> Filter {
        serde_json::from_value(json!({"op": op, "field": "birth_year", "value": v})).unwrap()
    };
    assert_eq!(ids(Filter::eq("caseload_id", "north")).len(), 10);
    assert_eq!(ids(year("eq", 1983)), ["c03"]);
    assert_eq!(ids(year("ne", 1983)).len(), 19);
    assert_eq!(ids(year("lt", 1982)), ["c00", "c01"]);
    assert_eq!(ids(year("lte", 1982)).len(), 3);
    assert_eq!(ids(year("gt", 1997)), ["c18", "c19"]);
    assert_eq!(ids(year("gte", 1997)).len(), 3);
    assert_eq!(
        ids(Filter::In {
            field: "birth_year".into(),
            values: vec![json!(1981), json!(1999)]
        }),
        ["c01", "c19"]
    );
    assert_eq!(
        ids(Filter::Prefix {
            field: "name".into(),
            prefix: "name 1".into()
        })
        .len(),
        10
    );
    assert_eq!(
        ids(Filter::IsNull {
            field: "phone".into()
        })
        .len(),
        5
    );
    assert_eq!(
        ids(Filter::IsNotNull {
            field: "phone".into()
        })
        .len(),
        15
    );
    assert_eq!(
        ids(Filter::and([
            Filter::eq("caseload_id", "south"),
            year("lt", 1986)
        ])),
        ["c01", "c03", "c05"]
    );
    assert_eq!(
        ids(Filter::Or {
            filters: vec![year("eq", 1980), year("eq", 1981)]
        }),
        ["c00", "c01"]
    );

    let page = store
        .query(
            "clients",
            &Query {
                filter: Filter::eq("caseload_id", "north"),
                order: vec![Order {
                    field: "birth_year".into(),
                    descending: true,
                }],
                limit: Some(3),
                offset: 2,
            },
        )
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["c14", "c12", "c10"]
    );
    assert_eq!(
        store
            .count("clients", &Filter::eq("caseload_id", "south"))
            .unwrap(),
        10
    );

    for bad in [
        Filter::eq("shoe", 1),
        Filter::eq("birth_year", "1980"),
        Filter::eq("goals", 1),
        Filter::eq("name", Value::Null),
        Filter::Prefix {
            field: "birth_year".into(),
            prefix: "19".into(),
        },
    ] {
        assert!(
            store
                .query(
                    "clients",
                    &Query {
                        filter: bad,
                        ..Query::default()
                    }
                )
                .is_err()
        );
    }
}

#[test]
fn query_values_are_bound_not_spliced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let hostile = "x' OR '1'='1";
    store.insert("clients", client(hostile)).unwrap();
    store.insert("clients", client("other")).unwrap();
    let found = store
        .query(
            "clients",
            &Query {
                filter: Filter::eq("name", hostile),
                ..Query::default()
            },
        )
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].fields["name"], hostile);
}

#[test]
fn indexed_filters_use_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    store.insert("clients", client("Ada")).unwrap();
    let by_name = Query {
        filter: Filter::eq("name", "Ada"),
        ..Query::default()
    };
    let plan = store.query_plan("clients", &by_name).unwrap();
    assert!(
        plan.iter()
            .any(|step| step.contains("USING INDEX idx:clients:by_name")),
        "{plan:?}"
    );
    assert!(!reads_every_row(&plan), "{plan:?}");
    // The index ends with the id, so the default order needs no sort.
    assert!(!sorts(&plan), "{plan:?}");

    // The checks above fail where the index is missing: `phone` has none, so filtering on
    // it reads every row, and ordering by it sorts.
    let by_phone = Query {
        filter: Filter::eq("phone", "555"),
        ..Query::default()
    };
    let plan = store.query_plan("clients", &by_phone).unwrap();
    assert!(reads_every_row(&plan), "{plan:?}");
    let by_name_ordered_by_phone = Query {
        order: vec![Order {
            field: "phone".into(),
            descending: false,
        }],
        ..by_name
    };
    let plan = store
        .query_plan("clients", &by_name_ordered_by_phone)
        .unwrap();
    assert!(sorts(&plan), "{plan:?}");

    // The plan is of the statement `query` runs, so it refuses what `query` refuses.
    assert!(matches!(
        store.query_plan(
            "clients",
            &Query {
                filter: Filter::eq("goals", 1),
                ..Query::default()
            }
        ),
        Err(Error::InvalidQuery(_))
    ));
}

/// Whether a query plan reads a whole table or index rather than searching one.
fn reads_every_row(plan: &[String]) -> bool {
    plan.iter().any(|step| step.starts_with("SCAN "))
}

/// Whether a query plan sorts the matches instead of reading them in order.
fn sorts(plan: &[String]) -> bool {
    plan.iter().any(|step| step.contains("TEMP B-TREE"))
}

#[test]
fn text_positions_count_utf16_units() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let mut f = client("Ada");
    f.insert("notes".into(), json!("a😀b"));
    let id = store.insert("clients", f).unwrap();
    // "😀" is two UTF-16 units, so "b" starts at 3.
    store
        .splice_text("clients", &id, "notes", 3, 1, "c")
        .unwrap();
    assert_eq!(
        store.get("clients", &id).unwrap().unwrap().fields["notes"],
        "a😀c"
    );
    assert!(matches!(
        store.splice_text("clients", &id, "notes", 2, 0, "x"),
        Err(Error::InvalidTextEdit { .. })
    ));
    store
        .splice_text("clients", &id, "notes", 0, 0, "é")
        .unwrap();
    assert_eq!(
        store.get("clients", &id).unwrap().unwrap().fields["notes"],
        "éa😀c"
    );
}

#[test]
fn splice_creates_a_missing_text() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store.insert("clients", client("Ada")).unwrap();
    store
        .splice_text("clients", &id, "notes", 0, 0, "hello")
        .unwrap();
    assert_eq!(
        store.get("clients", &id).unwrap().unwrap().fields["notes"],
        "hello"
    );
}

#[test]
fn delete_is_a_tombstone_and_records_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store.insert("clients", client("Ada")).unwrap();
    store.delete("clients", &id).unwrap();
    assert_eq!(store.get("clients", &id).unwrap(), None);
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);
    assert!(matches!(
        store.update("clients", &id, client("x")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("clients", &id),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        store.insert_with_id("clients", Some(id.clone()), client("x")),
        Err(Error::DuplicateId { .. })
    ));
    assert_eq!(outbox_len(&store), 2, "the tombstone syncs");
    assert!(
        store
            .history("clients", &id)
            .unwrap()
            .last()
            .unwrap()
            .deleted
    );
}

#[test]
fn reference_rules_apply_in_the_same_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let therapist = store
        .insert(
            "therapists",
            fields(json!({"team_id": "t", "name": "Tess"})),
        )
        .unwrap();
    let mut f = client("Ada");
    f.insert("therapist".into(), json!(therapist));
    let ada = store.insert("clients", f).unwrap();
    let session = store
        .insert(
            "sessions",
            fields(json!({"caseload_id": "north", "client": ada, "started_at": 1})),
        )
        .unwrap();

    // set_null: the client stays, its therapist field is cleared.
    store.delete("therapists", &therapist).unwrap();
    assert!(
        !store
            .get("clients", &ada)
            .unwrap()
            .unwrap()
            .fields
            .contains_key("therapist")
    );

    // restrict: an invoice blocks the delete, and nothing changes.
    let invoice = store
        .insert(
            "invoices",
            fields(json!({"caseload_id": "north", "client": ada, "amount": 10.5})),
        )
        .unwrap();
    let outbox_before = outbox_len(&store);
    assert!(matches!(
        store.delete("clients", &ada),
        Err(Error::Restricted { .. })
    ));
    assert!(store.get("sessions", &session).unwrap().is_some());
    assert_eq!(outbox_len(&store), outbox_before);

    // cascade: once the invoice is gone, deleting the client deletes its sessions.
    store.delete("invoices", &invoice).unwrap();
    store.delete("clients", &ada).unwrap();
    assert_eq!(store.get("sessions", &session).unwrap(), None);
}

#[test]
fn merged_records_pointing_at_deleted_records_are_listed_as_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let ada = phone.insert("clients", client("Ada")).unwrap();
    sync(&phone, &tablet);
    // The tablet, offline, records a session while the phone deletes the client.
    let session = tablet
        .insert(
            "sessions",
            fields(json!({"caseload_id": "north", "client": ada, "started_at": 5})),
        )
        .unwrap();
    phone.delete("clients", &ada).unwrap();
    sync(&tablet, &phone);
    sync(&phone, &tablet);
    for store in [&phone, &tablet] {
        let orphans = store.orphans("sessions").unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(
            (orphans[0].id.as_str(), orphans[0].target_id.as_str()),
            (session.as_str(), ada.as_str())
        );
    }
}

/// Carries every outbox entry of `from` to `to`, then acknowledges them.
fn sync(from: &Store, to: &Store) {
    let entries = from.outbox(10_000).unwrap();
    if let Some(last) = entries.last() {
        let seq = last.seq;
        let report = to
            .apply_remote(entries.into_iter().map(|e| e.into_remote()).collect())
            .unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        from.acknowledge_outbox(seq).unwrap();
    }
}

#[test]
fn outbox_holds_each_write_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let id = store.insert("clients", client("Ada")).unwrap();
    // A new record goes out (and is stored) as its one change, smaller than a saved document.
    let saved = store.document("clients", &id).unwrap();
    let first_write = store.outbox(10).unwrap().remove(0).payload;
    assert!(
        matches!(&first_write, RemotePayload::Changes(c) if c.len() == 1 && c[0].len() < saved.len()),
        "{first_write:?} against a document of {} bytes",
        saved.len()
    );
    store
        .update("clients", &id, fields(json!({"phone": "1"})))
        .unwrap();
    let entries = store.outbox(10).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e.record_id == id && e.scope == "north")
    );
    assert_eq!(entries[0].payload, first_write);
    assert!(matches!(&entries[1].payload, RemotePayload::Changes(c) if c.len() == 1));
    store.acknowledge_outbox(entries[0].seq).unwrap();
    assert_eq!(store.outbox(10).unwrap(), entries[1..]);
}

#[test]
fn a_record_kept_as_changes_takes_cold_updates_appended_and_is_saved_whole_once_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let id = open(&dir, "a.db").insert("clients", client("Ada")).unwrap();
    // The Automerge chunk type, after 4 magic bytes and a 4-byte checksum: 0 document, 1 change.
    let stored = || -> (Vec<u8>, i64) {
        rusqlite::Connection::open(dir.path().join("a.db"))
            .unwrap()
            .query_row(
                "SELECT _doc, _doc_tail FROM rec_clients WHERE _id = ?1",
                [&id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
    };
    let (first, tail) = stored();
    assert_eq!((first[8], tail), (1, 0));

    // Reopened, the document is cold: scalar updates append their changes without loading it.
    let store = open(&dir, "a.db");
    for (phone, tails) in [("1", 1), ("2", 2)] {
        store
            .update("clients", &id, fields(json!({"phone": phone})))
            .unwrap();
        let (appended, tail) = stored();
        assert_eq!(tail, tails);
        assert!(appended.starts_with(&first) && appended[8] == 1);
    }
    // The same value again makes no change.
    store
        .update("clients", &id, fields(json!({"phone": "2"})))
        .unwrap();
    assert_eq!(stored().1, 2);
    assert_eq!(store.outbox_len().unwrap(), 3);
    // A text write loads the document, and saves it whole.
    store
        .update("clients", &id, fields(json!({"notes": "calm"})))
        .unwrap();
    let (saved, tail) = stored();
    assert_eq!((saved[8], tail), (0, 0));
    drop(store);
    let record = open(&dir, "a.db").get("clients", &id).unwrap().unwrap();
    assert_eq!(
        (&record.fields["phone"], &record.fields["notes"]),
        (&json!("2"), &json!("calm"))
    );
}

#[test]
fn subscribers_hear_local_and_remote_changes_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let subscription = tablet
        .subscribe(
            "clients",
            Filter::eq("caseload_id", "north"),
            move |event| {
                sink.lock().unwrap().push((event.ids.clone(), event.origin));
            },
        )
        .unwrap();

    let local = tablet.insert("clients", client("Local")).unwrap();
    tablet
        .insert(
            "clients",
            fields(json!({"caseload_id": "south", "name": "Elsewhere"})),
        )
        .unwrap();
    let remote = phone.insert("clients", client("Remote")).unwrap();
    sync(&phone, &tablet);
    tablet.delete("clients", &local).unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (vec![local.clone()], ChangeOrigin::Local),
            (vec![remote.clone()], ChangeOrigin::Remote),
            (vec![local.clone()], ChangeOrigin::Local),
        ]
    );

    drop(subscription);
    tablet.insert("clients", client("Unheard")).unwrap();
    assert_eq!(events.lock().unwrap().len(), 3);
}

#[test]
fn a_callback_may_use_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let reader = store.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _subscription = store
        .subscribe("clients", Filter::All, move |event| {
            let record = reader.get("clients", &event.ids[0]).unwrap();
            sink.lock()
                .unwrap()
                .push(record.map(|r| r.fields["name"].clone()));
        })
        .unwrap();
    store.insert("clients", client("Ada")).unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Some(json!("Ada"))]);
}

#[test]
fn conflicts_and_history_name_the_devices() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let id = phone.insert("clients", client("Ada")).unwrap();
    sync(&phone, &tablet);
    phone
        .update("clients", &id, fields(json!({"phone": "111"})))
        .unwrap();
    tablet
        .update("clients", &id, fields(json!({"phone": "222"})))
        .unwrap();
    sync(&phone, &tablet);
    sync(&tablet, &phone);

    let on_phone = phone.conflicts("clients", &id).unwrap();
    assert_eq!(on_phone, tablet.conflicts("clients", &id).unwrap());
    assert_eq!(on_phone.len(), 1);
    let conflict = &on_phone[0];
    assert_eq!(conflict.field, "phone");
    assert_eq!(conflict.losers.len(), 1);
    let mut devices = vec![
        conflict.winner.device_id.clone(),
        conflict.losers[0].device_id.clone(),
    ];
    devices.sort();
    let mut expected = vec![phone.device_id().to_owned(), tablet.device_id().to_owned()];
    expected.sort();
    assert_eq!(devices, expected);
    let winner_on_tablet = tablet.get("clients", &id).unwrap().unwrap().fields["phone"].clone();
    assert_eq!(conflict.winner.value, winner_on_tablet);

    // Writing the field resolves the conflict.
    phone
        .update("clients", &id, fields(json!({"phone": "333"})))
        .unwrap();
    assert!(phone.conflicts("clients", &id).unwrap().is_empty());

    let history = phone.history("clients", &id).unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0].device_id, phone.device_id());
    assert_eq!(history[0].fields, ["caseload_id", "name"]);
    assert!(history[1..].iter().all(|entry| entry.fields == ["phone"]));
    assert!(
        history
            .iter()
            .any(|entry| entry.device_id == tablet.device_id())
    );
    assert!(
        history
            .iter()
            .all(|entry| entry.timestamp_ms > 1_600_000_000_000)
    );
}

#[test]
fn text_edits_inside_history_name_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let mut f = client("Ada");
    f.insert("notes".into(), json!("abc"));
    let id = store.insert("clients", f).unwrap();
    store
        .splice_text("clients", &id, "notes", 1, 1, "X")
        .unwrap();
    store
        .update("clients", &id, fields(json!({"goals": {"speech": 1}})))
        .unwrap();
    store
        .update("clients", &id, fields(json!({"goals": {"speech": 2}})))
        .unwrap();
    let touched: Vec<Vec<String>> = store
        .history("clients", &id)
        .unwrap()
        .into_iter()
        .map(|e| e.fields)
        .collect();
    assert_eq!(touched[1], ["notes"]);
    assert_eq!(touched[2], ["goals"]);
    assert_eq!(touched[3], ["goals"]);
}

#[test]
fn remote_changes_wait_for_their_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let id = phone.insert("clients", client("Ada")).unwrap();
    phone
        .update("clients", &id, fields(json!({"phone": "1"})))
        .unwrap();
    phone
        .update("clients", &id, fields(json!({"phone": "2"})))
        .unwrap();
    let mut entries: Vec<RemoteRecord> = phone
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|e| e.into_remote())
        .collect();

    // The last change first: it waits.
    let last = entries.pop().unwrap();
    let report = tablet.apply_remote(vec![last.clone()]).unwrap();
    assert_eq!(report.waiting_changes, 1);
    assert_eq!(tablet.get("clients", &id).unwrap(), None);
    // The rest arrives: everything applies, and a replay is a no-op.
    let report = tablet.apply_remote(entries.clone()).unwrap();
    assert_eq!(report.waiting_changes, 0);
    assert_eq!(
        tablet.get("clients", &id).unwrap().unwrap().fields["phone"],
        "2"
    );
    let report = tablet.apply_remote([entries, vec![last]].concat()).unwrap();
    assert_eq!((report.changed, report.unchanged), (0, 3));
}

#[test]
fn pending_changes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let options = StoreOptions {
        max_pending_changes: 2,
        ..StoreOptions::default()
    };
    let tablet = Store::open(dir.path().join("tablet.db"), schema(), options).unwrap();
    let id = phone.insert("clients", client("Ada")).unwrap();
    for i in 0..3 {
        phone
            .update("clients", &id, fields(json!({"birth_year": i})))
            .unwrap();
    }
    let entries: Vec<RemoteRecord> = phone
        .outbox(10)
        .unwrap()
        .into_iter()
        .skip(1)
        .map(|e| e.into_remote())
        .collect();
    let change_bytes: Vec<Vec<u8>> = entries
        .iter()
        .map(|r| match &r.payload {
            RemotePayload::Changes(c) => c[0].clone(),
            RemotePayload::Document(_) => unreachable!(),
        })
        .collect();
    let record = RemoteRecord {
        payload: RemotePayload::Changes(change_bytes),
        ..entries[0].clone()
    };
    let report = tablet.apply_remote(vec![record]).unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert!(
        report.rejected[0].reason.contains("waiting"),
        "{}",
        report.rejected[0].reason
    );
    assert_eq!(report.waiting_changes, 0);
}

#[test]
fn malformed_or_mismatched_remote_records_are_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let phone = open(&dir, "phone.db");
    let tablet = open(&dir, "tablet.db");
    let good = phone.insert("clients", client("Good")).unwrap();
    let mut records: Vec<RemoteRecord> = phone
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|e| e.into_remote())
        .collect();
    let template = records[0].clone();
    records.push(RemoteRecord {
        id: "garbage".into(),
        payload: RemotePayload::Changes(vec![vec![0x85, 0x6f, 0x4a, 0x83, 1, 2]]),
        ..template.clone()
    });
    records.push(RemoteRecord {
        id: "bad-doc".into(),
        payload: RemotePayload::Document(b"not a document".to_vec()),
        ..template.clone()
    });
    records.push(RemoteRecord {
        scope: "south".into(),
        id: "other".into(),
        ..template.clone()
    });
    records.push(RemoteRecord {
        collection: "nope".into(),
        ..template.clone()
    });
    let mut truncated = template.clone();
    let bytes = match &mut truncated.payload {
        RemotePayload::Changes(changes) => &mut changes[0],
        RemotePayload::Document(document) => document,
    };
    bytes.truncate(bytes.len() / 2);
    truncated.id = "truncated".into();
    records.push(truncated);

    let report = tablet.apply_remote(records).unwrap();
    assert_eq!(report.changed, 1);
    assert_eq!(report.rejected.len(), 5, "{:?}", report.rejected);
    assert!(tablet.get("clients", &good).unwrap().is_some());
    assert_eq!(tablet.count("clients", &Filter::All).unwrap(), 1);
    assert!(
        tablet.outbox(10).unwrap().is_empty(),
        "merged changes are not sent back"
    );
}

#[test]
fn a_remote_record_whose_values_break_the_schema_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let loose: Schema = Schema::from_json(&SCHEMA.replace(
        r#""birth_year": { "type": "integer" }"#,
        r#""birth_year": { "type": "string" }"#,
    ))
    .unwrap();
    let other = Store::open(dir.path().join("other.db"), loose, StoreOptions::default()).unwrap();
    let store = open(&dir, "a.db");
    other
        .insert(
            "clients",
            fields(json!({"caseload_id": "north", "name": "x", "birth_year": "old"})),
        )
        .unwrap();
    let records = other
        .outbox(10)
        .unwrap()
        .into_iter()
        .map(|e| e.into_remote())
        .collect();
    let report = store.apply_remote(records).unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);
}

#[test]
fn reopening_keeps_records_device_id_and_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (id, device) = {
        let store = open(&dir, "a.db");
        let id = store.insert("clients", client("Ada")).unwrap();
        store
            .splice_text("clients", &id, "notes", 0, 0, "kept")
            .unwrap();
        (id, store.device_id().to_owned())
    };
    let store = open(&dir, "a.db");
    assert_eq!(store.device_id(), device);
    assert_eq!(
        store.get("clients", &id).unwrap().unwrap().fields["notes"],
        "kept"
    );
    assert_eq!(outbox_len(&store), 2);
    store
        .update("clients", &id, fields(json!({"phone": "1"})))
        .unwrap();
    assert_eq!(store.history("clients", &id).unwrap().len(), 3);
}

#[test]
fn schema_upgrades_apply_in_place_or_are_refused_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let id = {
        let store = Store::open(&path, schema(), StoreOptions::default()).unwrap();
        store.insert("clients", client("Ada")).unwrap()
    };
    let mut added = schema();
    let clients = added.collections.get_mut("clients").unwrap();
    clients.fields.insert(
        "email".into(),
        serde_json::from_value(json!({"type": "string"})).unwrap(),
    );
    clients
        .indexes
        .push(serde_json::from_value(json!({"name": "by_email", "fields": ["email"]})).unwrap());
    {
        let store = Store::open(&path, added.clone(), StoreOptions::default()).unwrap();
        store
            .update("clients", &id, fields(json!({"email": "a@b"})))
            .unwrap();
        let found = store
            .query(
                "clients",
                &Query {
                    filter: Filter::eq("email", "a@b"),
                    ..Query::default()
                },
            )
            .unwrap();
        assert_eq!(found.len(), 1);
    }
    let mut removed = added.clone();
    removed
        .collections
        .get_mut("clients")
        .unwrap()
        .fields
        .remove("phone");
    assert!(matches!(
        Store::open(&path, removed, StoreOptions::default()),
        Err(Error::IncompatibleSchema(_))
    ));
    let store = Store::open(&path, added, StoreOptions::default()).unwrap();
    assert_eq!(
        store.get("clients", &id).unwrap().unwrap().fields["email"],
        "a@b"
    );
}

#[test]
fn a_file_that_is_not_a_store_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&path, schema(), StoreOptions::default()).unwrap_err();
    assert!(
        // Without a key, a file that is not plain SQLite may be an encrypted store.
        matches!(err, Error::KeyRequired),
        "{err}"
    );
    let key = EncryptionKey::generate().unwrap();
    let with_key = StoreOptions {
        encryption_key: Some(key),
        ..StoreOptions::default()
    };
    let err = Store::open(&path, schema(), with_key).unwrap_err();
    assert!(matches!(err, Error::WrongKey), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 8192]);
}

#[test]
fn many_threads_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let shared_id = store.insert("clients", client("Shared")).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let store = store.clone();
            let shared_id = shared_id.clone();
            scope.spawn(move || {
                for i in 0..25 {
                    store
                        .insert("clients", client(&format!("t{thread}-{i}")))
                        .unwrap();
                    store
                        .splice_text("clients", &shared_id, "notes", 0, 0, "x")
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 201);
    let notes = store.get("clients", &shared_id).unwrap().unwrap().fields["notes"].clone();
    assert_eq!(notes.as_str().unwrap().len(), 200);
    // Each insert settles the keystrokes typed before it into one change: one to 200 of them.
    let outbox = outbox_len(&store);
    assert!((202..=401).contains(&outbox), "{outbox}");
    // Settled, the row is written again from the document.
    let notes = store.get("clients", &shared_id).unwrap().unwrap().fields["notes"].clone();
    assert_eq!(notes.as_str().unwrap(), "x".repeat(200));
}

#[test]
fn the_store_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    check(&open(&dir, "a.db"));
}

#[test]
fn a_large_batch_is_encoded_in_parallel_and_stays_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db");
    let insert = |i: usize| Write::Insert {
        collection: "clients".into(),
        id: Some(format!("c{i:04}")),
        fields: client(&format!("client {i}")),
    };
    // Large enough for the worker threads; a bad insert deep inside fails the whole batch.
    let mut writes: Vec<Write> = (0..1000).map(insert).collect();
    writes[700] = Write::Insert {
        collection: "clients".into(),
        id: None,
        fields: fields(json!({"caseload_id": "north", "name": 1})),
    };
    assert!(matches!(
        store.write_batch(writes),
        Err(Error::WrongType { .. })
    ));
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);
    assert_eq!(outbox_len(&store), 0);

    // A duplicate id inside the batch is caught in order, too.
    let mut writes: Vec<Write> = (0..1000).map(insert).collect();
    writes.push(insert(3));
    assert!(matches!(
        store.write_batch(writes),
        Err(Error::DuplicateId { .. })
    ));
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 0);

    // Inserts mixed with updates of records inserted earlier in the same batch.
    let mut writes: Vec<Write> = (0..1000).map(insert).collect();
    writes.insert(
        500,
        Write::Update {
            collection: "clients".into(),
            id: "c0010".into(),
            patch: fields(json!({"phone": "1"})),
        },
    );
    writes.push(Write::SpliceText {
        collection: "clients".into(),
        id: "c0999".into(),
        field: "notes".into(),
        index: 0,
        delete_count: 0,
        insert: "last".into(),
    });
    let ids = store.write_batch(writes).unwrap();
    assert_eq!(ids.len(), 1002);
    assert_eq!(ids[500], "c0010");
    assert_eq!(store.count("clients", &Filter::All).unwrap(), 1000);
    assert_eq!(
        store.get("clients", "c0010").unwrap().unwrap().fields["phone"],
        "1"
    );
    assert_eq!(
        store.get("clients", "c0999").unwrap().unwrap().fields["notes"],
        "last"
    );
    let outbox = store.outbox(2000).unwrap();
    assert_eq!(outbox.len(), 1002);
    assert!(outbox.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(outbox[0].record_id, "c0000");
    assert_eq!(outbox[1001].record_id, "c0999");
    // Each record's history is one change by this device.
    assert_eq!(store.history("clients", "c0500").unwrap().len(), 1);
}
