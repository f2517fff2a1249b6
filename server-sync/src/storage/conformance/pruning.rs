//! Checks of pruning: the feed up to where every reader in use has read, push answers by age,
//! and audit lines by date.

use crate::storage::conformance::{accept, record};
use crate::storage::{Access, AuditQuery, Batch, Pruned, Role, Storage, now_ms};

pub(super) fn the_feed_push_answers_and_audit_lines_are_pruned(storage: &dyn Storage) {
    let user = storage.create_user("ada", Role::Member).unwrap();
    let phone = storage.create_device(user, "phone").unwrap();
    let tablet = storage.create_device(user, "tablet").unwrap();
    let started = now_ms();
    for n in 0..4 {
        let (batch, id) = (format!("b{n}"), format!("r{n}"));
        storage
            .push(
                phone,
                &Batch::new(&batch, &[record(&id, "north")]),
                &mut accept,
            )
            .unwrap();
    }
    let head = storage.feed_head().unwrap();
    // The phone pushed but never pulled: it holds the whole feed back.
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), 0);
    storage.record_pull(phone, &[], None, head).unwrap();
    storage.record_pull(tablet, &[], None, head - 1).unwrap();
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), head - 1);
    // A position only moves forward.
    storage.record_pull(tablet, &[], None, 0).unwrap();
    assert_eq!(storage.feed_read_by_all(started - 1000).unwrap(), head - 1);
    // Devices that did not sync since are not waited for.
    assert_eq!(storage.feed_read_by_all(now_ms() + 1000).unwrap(), head);

    let pruned = storage.prune_feed(head - 1, started - 1000).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            feed_entries: 3,
            push_answers: 0
        }
    );
    assert_eq!(
        storage.device_sync(tablet).unwrap().feed_pruned_through,
        head - 1
    );
    let page = storage.feed_page(&["north".into()], 0, 10).unwrap();
    let left: Vec<&str> = page.entries.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(left, ["r3"]);
    // An earlier horizon moves nothing back.
    storage.prune_feed(0, 0).unwrap();
    assert_eq!(
        storage.device_sync(phone).unwrap().feed_pruned_through,
        head - 1
    );
    let pruned = storage.prune_feed(head - 1, now_ms() + 1000).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            feed_entries: 0,
            push_answers: 4
        }
    );
    // The head stays past what was pruned, the whole feed included.
    storage.prune_feed(head, 0).unwrap();
    assert_eq!(storage.feed_head().unwrap(), head);

    let lines = |storage: &dyn Storage| {
        storage
            .audit(&AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .unwrap()
    };
    let before = lines(storage).len();
    assert!(before >= 4);
    assert_eq!(storage.prune_audit(started - 60_000, 0).unwrap(), 0);
    let pruned = storage.prune_audit(now_ms() + 1, 0).unwrap();
    assert_eq!(
        pruned as usize,
        before + 1,
        "every line, the first prune's included"
    );
    let [line] = lines(storage).try_into().unwrap();
    assert_eq!(
        (line.action.as_str(), line.collection.as_str()),
        ("audit-prune", "admin")
    );
    assert!(line.detail.unwrap().contains("lines before"));
}

pub(super) fn feed_lag_is_per_scope_from_the_slowest_reader_granted_it(storage: &dyn Storage) {
    let started = now_ms();
    assert_eq!(storage.feed_lag(started - 1000).unwrap(), []);
    let ada = storage.create_user("ada", Role::Member).unwrap();
    let bob = storage.create_user("bob", Role::Member).unwrap();
    storage.set_grant(ada, "north", Access::Write).unwrap();
    storage.set_grant(ada, "south", Access::Write).unwrap();
    storage.set_grant(bob, "north", Access::Read).unwrap();
    let phone = storage.create_device(ada, "phone").unwrap();
    let tablet = storage.create_device(bob, "tablet").unwrap();
    let scopes = ["north", "north", "south", "north"];
    for (n, scope) in scopes.iter().enumerate() {
        let (batch, id) = (format!("b{n}"), format!("r{n}"));
        storage
            .push(
                phone,
                &Batch::new(&batch, &[record(&id, scope)]),
                &mut accept,
            )
            .unwrap();
    }
    let head = storage.feed_head().unwrap();
    let (north, south) = (head, head - 1);
    // The phone pushed but never pulled; the tablet never synced, and is no reader in use.
    let lag = |since: i64| storage.feed_lag(since).unwrap();
    assert_eq!(
        lag(started - 1000),
        [("north".to_owned(), north), ("south".to_owned(), south)]
    );
    storage.record_pull(phone, &[], None, head).unwrap();
    assert_eq!(
        lag(started - 1000),
        [("north".to_owned(), 0), ("south".to_owned(), 0)]
    );
    // The tablet reads north only: its position is north's lag, and south's is not.
    storage.record_pull(tablet, &[], None, head - 3).unwrap();
    assert_eq!(
        lag(started - 1000),
        [("north".to_owned(), 3), ("south".to_owned(), 0)]
    );
    // A webhook reads as its user does.
    storage
        .create_webhook("https://example.test/hook", "secret", ada, head - 2)
        .unwrap();
    assert_eq!(
        lag(started - 1000),
        [("north".to_owned(), 3), ("south".to_owned(), 1)]
    );
    // Devices that did not sync since are not waited for; the webhook still is.
    assert_eq!(
        lag(now_ms() + 1000),
        [("north".to_owned(), 2), ("south".to_owned(), 1)]
    );
}
