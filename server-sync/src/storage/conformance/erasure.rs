//! Checks of an erasure as storage keeps it: the record's new epoch in place of its document
//! and of every feed entry it had, and the audit line saying what and why; and of retention
//! policies and the records they age out.

use crate::storage::conformance::{accept, lineage_of, record, record_with};
use crate::storage::{AuditQuery, Batch, NewEpoch, RetentionPolicy, Role, Storage};

pub(super) fn an_erased_record_s_feed_entries_give_way_to_its_new_epoch(storage: &dyn Storage) {
    let user = storage.create_user("ada", Role::Member).unwrap();
    let phone = storage.create_device(user, "phone").unwrap();
    let push = |batch: &str, records: &[fieldsync_record::protocol::PushRecord]| {
        storage
            .push(phone, &Batch::new(batch, records), &mut accept)
            .unwrap();
    };
    push("one", &[record("a", "north"), record("b", "north")]);
    push("two", &[record_with("a", "north", b"secret")]);
    let stored = |id: &str| {
        storage.stored_records(&[("clients", id)]).unwrap().records[0]
            .clone()
            .unwrap()
    };
    let version = stored("a").version.unwrap();
    let epoch = NewEpoch {
        epoch: 1,
        doc: b"epoch one".to_vec(),
        fields_json: "{}".into(),
        deleted: false,
        lineage: lineage_of(b"epoch one"),
        erased: "fields notes".into(),
        by: user,
        reason: "typed into the wrong record".into(),
    };
    assert!(
        !storage
            .erase_record(("clients", "a"), version - 1, &epoch)
            .unwrap(),
        "a stale version erases nothing"
    );
    assert_eq!(storage.feed_changes_of("clients", "a").unwrap().len(), 2);
    assert!(
        storage
            .erase_record(("clients", "a"), version, &epoch)
            .unwrap()
    );
    storage.scrub().unwrap();

    let now = stored("a");
    assert_eq!((now.epoch, now.doc.as_slice()), (1, &b"epoch one"[..]));
    assert!(now.version.unwrap() > version);
    assert_eq!(
        storage.feed_changes_of("clients", "a").unwrap(),
        vec![b"epoch one".to_vec()],
        "every entry of the old epoch is gone"
    );
    let page = storage.feed_page(&["north".into()], 0, 10).unwrap();
    let entries: Vec<(&str, u64, Option<&str>)> = page
        .entries
        .iter()
        .map(|e| (e.record_id.as_str(), e.epoch, e.erased.as_deref()))
        .collect();
    assert_eq!(
        entries,
        [("b", 0, None), ("a", 1, Some("fields notes"))],
        "the other record keeps its entry"
    );
    let documents = storage
        .documents_page(&["north".into()], 0, i64::MAX, 10)
        .unwrap();
    let epochs: Vec<(&str, u64)> = documents
        .entries
        .iter()
        .map(|d| (d.record_id.as_str(), d.epoch))
        .collect();
    assert_eq!(epochs, [("a", 1), ("b", 0)]);

    // Pushes after the erasure belong to the new epoch.
    push("three", &[record_with("a", "north", b" later")]);
    let page = storage
        .feed_page(&["north".into()], now.version.unwrap(), 10)
        .unwrap();
    assert_eq!(page.entries[0].epoch, 1);
    assert_eq!(page.entries[0].erased, None);

    let audit = storage
        .audit(&AuditQuery {
            record_id: Some("a".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let erase = audit.iter().find(|line| line.action == "erase").unwrap();
    assert_eq!(erase.user, "ada");
    let detail = erase.detail.as_deref().unwrap();
    assert!(detail.contains("fields notes") && detail.contains("typed into the wrong record"));
}

pub(super) fn retention_policies_are_kept_and_aged_records_listed(storage: &dyn Storage) {
    let user = storage.create_user("ada", Role::Member).unwrap();
    let phone = storage.create_device(user, "phone").unwrap();
    // Each record's `started_at` is the number its id ends with; "x" has a text there.
    let mut merge = |record: &fieldsync_record::protocol::PushRecord, _| {
        let started_at: serde_json::Value = match record.id.rsplit('-').next().unwrap() {
            "x" => "soon".into(),
            n => n.parse::<i64>().unwrap().into(),
        };
        let mut merged = accept(record, None)?;
        merged.fields_json = serde_json::json!({ "started_at": started_at }).to_string();
        Ok(merged)
    };
    let records = [
        record("s-300", "north"),
        record("s-100", "south"),
        record("s-x", "north"),
        record("t-50", "north"),
        record("s-99", "north"),
    ];
    storage
        .push(phone, &Batch::new("b", &records), &mut merge)
        .unwrap();
    let aged = |before, after: &str, limit| -> Vec<String> {
        storage
            .records_aged(("clients", "started_at"), before, after, limit)
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect()
    };
    assert_eq!(aged(200, "", 10), ["s-100", "s-99", "t-50"]);
    assert_eq!(aged(200, "s-100", 1), ["s-99"]);
    assert_eq!(aged(51, "", 10), ["t-50"]);
    assert!(
        storage
            .records_aged(("sessions", "started_at"), 1000, "", 10)
            .unwrap()
            .is_empty()
    );

    let policy = RetentionPolicy {
        collection: "sessions".into(),
        age_field: "started_at".into(),
        older_than_days: 2557,
        erase_fields: vec!["note".into(), "audio_note".into()],
        set_at: 7,
    };
    storage.set_retention_policy(&policy).unwrap();
    let whole = RetentionPolicy {
        collection: "clients".into(),
        erase_fields: Vec::new(),
        ..policy.clone()
    };
    storage.set_retention_policy(&whole).unwrap();
    assert_eq!(
        storage.retention_policies().unwrap(),
        [whole.clone(), policy.clone()]
    );
    let shorter = RetentionPolicy {
        older_than_days: 30,
        ..whole.clone()
    };
    storage.set_retention_policy(&shorter).unwrap();
    assert!(storage.remove_retention_policy("sessions").unwrap());
    assert!(!storage.remove_retention_policy("sessions").unwrap());
    assert_eq!(storage.retention_policies().unwrap(), [shorter]);
}
