//! Checks of who wrote a record as a pull names them: each actor of each device that pushed to
//! it, with the user's display name and the device's name, until an erasure drops its history.

use fieldsync_record::protocol::Author;

use crate::storage::conformance::{accept, lineage_of, record, record_with};
use crate::storage::{Batch, NewEpoch, Role, SignIn, Storage};

pub(super) fn a_record_s_writers_are_named_by_actor_until_it_is_erased(storage: &dyn Storage) {
    let ada = storage.create_user("ada", Role::Member).unwrap();
    let ben = storage
        .sign_in(&SignIn {
            subject: "sub-ben",
            display_name: Some("Ben Okafor"),
            email: None,
        })
        .unwrap();
    let phone = storage.create_device(ada, "Ada's phone").unwrap();
    let tablet = storage.create_device(ben, "Ben's tablet").unwrap();
    storage.bind_actor(phone, "aa01").unwrap();
    storage.bind_actor(tablet, "bb02").unwrap();
    let push = |device: i64, batch: &str, records: &[fieldsync_record::protocol::PushRecord]| {
        storage
            .push(device, &Batch::new(batch, records), &mut accept)
            .unwrap();
    };
    push(phone, "one", &[record("a", "north"), record("b", "north")]);
    push(tablet, "two", &[record_with("a", "north", b"ben's edit")]);
    // A device that pushed again is named once.
    push(phone, "three", &[record_with("a", "north", b"ada's edit")]);

    let named = |id: &str| storage.authors_of(&[("clients", id)]).unwrap();
    let ada_on_phone = Author {
        actor: "aa01".into(),
        user: "ada".into(),
        device: "Ada's phone".into(),
    };
    let ben_on_tablet = Author {
        actor: "bb02".into(),
        user: "Ben Okafor".into(),
        device: "Ben's tablet".into(),
    };
    assert_eq!(
        named("a"),
        vec![ada_on_phone.clone(), ben_on_tablet.clone()]
    );
    assert_eq!(named("b"), vec![ada_on_phone.clone()]);
    assert_eq!(
        storage
            .authors_of(&[("clients", "a"), ("clients", "b"), ("clients", "absent")])
            .unwrap(),
        vec![ada_on_phone.clone(), ben_on_tablet],
        "each actor once, whichever records name it"
    );
    assert!(storage.authors_of(&[]).unwrap().is_empty());

    let version = storage.stored_records(&[("clients", "a")]).unwrap().records[0]
        .as_ref()
        .and_then(|stored| stored.version)
        .unwrap();
    let epoch = NewEpoch {
        epoch: 1,
        doc: b"epoch one".to_vec(),
        fields_json: "{}".into(),
        deleted: false,
        lineage: lineage_of(b"epoch one"),
        erased: "history".into(),
        by: ada,
        reason: "history erased".into(),
    };
    assert!(
        storage
            .erase_record(("clients", "a"), version, &epoch)
            .unwrap()
    );
    assert!(named("a").is_empty(), "the history that named them is gone");
    assert_eq!(named("b"), vec![ada_on_phone]);
}
