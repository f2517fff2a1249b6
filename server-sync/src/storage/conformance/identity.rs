//! Checks of the people who sign in through an identity provider, their devices, and the
//! scopes a grant on a prefix names.

use super::{accept, device, record};
use crate::error::ServerError;
use crate::storage::{Batch, Role, SignIn, Storage};

pub(super) fn users_sign_in_by_subject(storage: &dyn Storage) {
    let ada = SignIn {
        subject: "sub-ada",
        display_name: Some("Ada"),
        email: Some("ada@clinic.example"),
    };
    let id = storage.sign_in(&ada).unwrap();
    assert_eq!(storage.sign_in(&ada).unwrap(), id, "found again by subject");
    assert_eq!(
        storage.user_id("sub-ada").unwrap(),
        Some(id),
        "named by the subject"
    );
    let renamed = SignIn {
        display_name: Some("Ada L."),
        email: None,
        ..ada
    };
    assert_eq!(
        storage.sign_in(&renamed).unwrap(),
        id,
        "a new name, the same user"
    );
    assert_eq!(storage.sign_in(&renamed).unwrap(), id);
    assert_ne!(
        storage
            .sign_in(&SignIn {
                subject: "sub-bo",
                display_name: None,
                email: None
            })
            .unwrap(),
        id
    );
    // A user an administrator made is never taken over by a subject spelled as its name.
    storage.create_user("local", Role::Admin).unwrap();
    let taken = storage.sign_in(&SignIn {
        subject: "local",
        display_name: None,
        email: None,
    });
    assert!(matches!(taken, Err(ServerError::Conflict(_))), "{taken:?}");
    assert_eq!(storage.count_users().unwrap(), 3);
}

pub(super) fn devices_are_found_by_id_and_listed_by_user(storage: &dyn Storage) {
    let ada = storage.create_user("ada", Role::Member).unwrap();
    let bo = storage.create_user("bo", Role::Member).unwrap();
    let phone = storage.create_device(ada, "phone").unwrap();
    let tablet = storage.create_device(ada, "tablet").unwrap();
    storage.create_device(bo, "laptop").unwrap();
    let found = storage.device(phone).unwrap().expect("the device exists");
    assert_eq!(
        (found.user_id, found.actor, found.revoked),
        (ada, None, false)
    );
    assert!(storage.device(i64::MAX).unwrap().is_none());
    storage.revoke_device(tablet).unwrap();
    assert!(storage.device(tablet).unwrap().unwrap().revoked);
    let listed: Vec<(i64, String, bool)> = storage
        .devices_of(ada)
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.name, d.revoked))
        .collect();
    assert_eq!(
        listed,
        [
            (phone, "phone".into(), false),
            (tablet, "tablet".into(), true)
        ]
    );
    assert_eq!(storage.list_devices().unwrap().len(), 3);
}

pub(super) fn scopes_are_found_by_prefix(storage: &dyn Storage) {
    let phone = device(storage, "ada");
    assert!(storage.scopes_with_prefix("").unwrap().is_empty());
    let records = [
        record("a", "caseload-east"),
        record("b", "caseload-west"),
        record("c", "caseload-east"),
        record("d", "caseload_x"),
        record("e", "case"),
        record("f", "caseload-%"),
    ];
    storage
        .push(phone, &Batch::new("batch", &records), &mut accept)
        .unwrap();
    assert_eq!(
        storage.scopes_with_prefix("caseload-").unwrap(),
        ["caseload-%", "caseload-east", "caseload-west"]
    );
    assert_eq!(
        storage.scopes_with_prefix("caseload-%").unwrap(),
        ["caseload-%"],
        "no wildcards in a prefix"
    );
    assert_eq!(storage.scopes_with_prefix("").unwrap().len(), 5);
    assert!(storage.scopes_with_prefix("zzz").unwrap().is_empty());
}
