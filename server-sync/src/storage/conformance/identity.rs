//! Checks of the people who sign in through an identity provider, their devices, and the
//! scopes a grant on a prefix names.

use super::{accept, device, record};
use crate::error::ServerError;
use crate::storage::{Access, AuditQuery, Batch, Role, SignIn, Storage, StoredGroupGrant};

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

pub(super) fn users_are_listed_and_admin_actions_audited(storage: &dyn Storage) {
    let root = storage.create_user("root", Role::Admin).unwrap();
    storage
        .sign_in(&SignIn {
            subject: "sub-ada",
            display_name: Some("Ada"),
            email: None,
        })
        .unwrap();
    let users = storage.list_users().unwrap();
    let listed: Vec<(&str, Role, bool, Option<&str>)> = users
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                u.role,
                u.signs_in,
                u.display_name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("root", Role::Admin, false, None),
            ("sub-ada", Role::Member, true, Some("Ada"))
        ]
    );
    storage
        .audit_admin(0, "create-user (admin)", "root")
        .unwrap();
    storage.audit_admin(root, "revoke-device", "7").unwrap();
    let lines = storage
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    let read: Vec<(&str, &str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l.user.as_str(),
                l.action.as_str(),
                l.collection.as_str(),
                l.record_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        read,
        [
            ("root", "revoke-device", "admin", "7"),
            ("(server)", "create-user (admin)", "admin", "root"),
        ]
    );
    let of_target = storage
        .audit(&AuditQuery {
            record_id: Some("7".into()),
            limit: 10,
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(
        of_target.len(),
        1,
        "found by target as a record's lines are"
    );
}

pub(super) fn group_grants_are_replaced_whole(storage: &dyn Storage) {
    assert!(storage.group_grants().unwrap().is_empty());
    let grant = |group: &str, scopes: &str, access| StoredGroupGrant {
        group: group.into(),
        scopes: scopes.into(),
        access,
    };
    storage
        .set_group_grants(&[
            grant("supervisors", "caseload-*", Access::Read),
            grant("east", "caseload-east", Access::Write),
            grant("supervisors", "caseload-*", Access::Write),
            grant("east", "caseload-east", Access::Read),
        ])
        .unwrap();
    assert_eq!(
        storage.group_grants().unwrap(),
        [
            grant("east", "caseload-east", Access::Write),
            grant("supervisors", "caseload-*", Access::Write),
        ],
        "by group, a mapping given twice keeps its strongest access"
    );
    storage
        .set_group_grants(&[grant("west", "caseload-west", Access::Read)])
        .unwrap();
    assert_eq!(
        storage.group_grants().unwrap(),
        [grant("west", "caseload-west", Access::Read)],
        "every mapping before is replaced"
    );
}
