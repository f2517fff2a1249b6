//! Checks of what the back office reads and keeps: a scope's records listed by id, and
//! webhooks with their deliveries.

use crate::storage::conformance::{accept, record};
use crate::storage::{Batch, Delivery, Role, Storage};

pub(super) fn a_scopes_live_records_are_listed_by_id(storage: &dyn Storage) {
    let user = storage.create_user("ada", Role::Member).unwrap();
    let device = storage.create_device(user, "phone").unwrap();
    let records = [
        record("b", "north"),
        record("a", "north"),
        record("c", "south"),
        record("d", "north"),
    ];
    storage
        .push(device, &Batch::new("b1", &records), &mut accept)
        .unwrap();
    let listed = |after: &str, limit| -> Vec<String> {
        storage
            .records_in_scope("clients", "north", after, limit)
            .unwrap()
            .into_iter()
            .map(|row| row.id)
            .collect()
    };
    assert_eq!(listed("", 10), ["a", "b", "d"]);
    assert_eq!(listed("a", 1), ["b"]);
    assert_eq!(listed("d", 10), Vec::<String>::new());
    let row = &storage.records_in_scope("clients", "north", "", 1).unwrap()[0];
    assert!(row.version > 0 && !row.fields_json.is_empty());
    assert!(
        storage
            .records_in_scope("sessions", "north", "", 10)
            .unwrap()
            .is_empty()
    );
}

pub(super) fn webhooks_are_leased_and_their_deliveries_recorded(storage: &dyn Storage) {
    let user = storage.create_user("ehr", Role::Service).unwrap();
    let id = storage
        .create_webhook("https://ehr.example/hook", "whsec_1", user, 7)
        .unwrap();
    let listed = storage.webhooks().unwrap();
    assert_eq!(listed.len(), 1);
    let webhook = &listed[0];
    assert_eq!(
        (webhook.id, webhook.user.as_str(), webhook.cursor),
        (id, "ehr", 7)
    );
    assert_eq!((webhook.attempts, webhook.failing_since), (0, None));

    // One instance at a time.
    assert!(storage.lease_webhook(id, 1_000, 61_000).unwrap());
    assert!(!storage.lease_webhook(id, 2_000, 62_000).unwrap());
    let failed = Delivery::Failed {
        error: "the receiver answered 503".into(),
        retry_at: 5_000,
    };
    storage.end_webhook_delivery(id, &failed, 3_000).unwrap();
    storage.end_webhook_delivery(id, &failed, 4_000).unwrap();
    let webhook = storage.webhooks().unwrap().remove(0);
    assert_eq!(
        (webhook.attempts, webhook.failing_since, webhook.cursor),
        (2, Some(3_000), 7)
    );
    assert_eq!(
        webhook.last_error.as_deref(),
        Some("the receiver answered 503")
    );
    assert!(
        !storage.lease_webhook(id, 4_500, 64_500).unwrap(),
        "not before its retry is due"
    );
    assert!(storage.lease_webhook(id, 5_000, 65_000).unwrap());
    storage
        .end_webhook_delivery(id, &Delivery::Delivered { cursor: 12 }, 6_000)
        .unwrap();
    let webhook = storage.webhooks().unwrap().remove(0);
    assert_eq!(
        (webhook.attempts, webhook.failing_since, webhook.cursor),
        (0, None, 12)
    );
    assert!(storage.lease_webhook(id, 7_000, 67_000).unwrap());
    storage
        .end_webhook_delivery(id, &Delivery::Idle, 7_000)
        .unwrap();
    assert!(
        storage.lease_webhook(id, 7_001, 67_001).unwrap(),
        "released"
    );
    assert!(storage.delete_webhook(id).unwrap());
    assert!(!storage.delete_webhook(id).unwrap());
    assert!(storage.webhooks().unwrap().is_empty());
}
