//! Users, their grants, devices and tokens, as storage keeps them.

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May use the admin API with a device token of theirs.
    Admin,
    /// A therapist or other member of staff.
    Member,
    /// A service account: the clinic's own system (an EHR connector, a scheduling system)
    /// using the records API with a token of its own, within its grants.
    Service,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Service => "service",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// What a grant allows on a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Pull the scope's records.
    Read,
    /// Pull and push.
    Write,
}

impl Access {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Access> {
        match name {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }
}

/// One scope a user may read or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scope (a caseload, a team, a clinic).
    pub scope: String,
    /// What it allows.
    pub access: Access,
}

/// A stored token, found by its public id.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// The token's device.
    pub device_id: i64,
    /// The device's user.
    pub user_id: i64,
    /// SHA-256 of the token's secret part.
    pub secret_hash: Vec<u8>,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_at: Option<i64>,
    /// Whether the token, or its device, was revoked.
    pub revoked: bool,
    /// The Automerge actor bound to the device by its first push, if any.
    pub actor: Option<String>,
    /// The device's user's role.
    pub role: Role,
}

/// A device as the admin command lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id.
    pub id: i64,
    /// Its user's name.
    pub user: String,
    /// Device name.
    pub name: String,
    /// The Automerge actor it pushes as, once bound.
    pub actor: Option<String>,
    /// Last push or pull (ms since the epoch).
    pub last_sync_at: Option<i64>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// The version of the app's schema it last said it runs.
    pub schema_version: Option<u32>,
    /// How many local changes it last said wait in its outbox, unsent (the
    /// `fieldsync-pending-changes` header of a push or pull); `None` until it says.
    pub pending_changes: Option<u64>,
    /// When it said so (ms since the epoch): its last sync, unless it synced since without
    /// saying (an app from before the header).
    pub pending_reported_at: Option<i64>,
}

/// A device as authentication reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its user.
    pub user_id: i64,
    /// The Automerge actor it pushes as, once bound.
    pub actor: Option<String>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A user as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User id.
    pub id: i64,
    /// Their unique name (for people who sign in through the identity provider, their
    /// subject).
    pub name: String,
    /// Their stored role.
    pub role: Role,
    /// Their name as the identity provider last sent it.
    pub display_name: Option<String>,
    /// Their email as the identity provider last sent it.
    pub email: Option<String>,
    /// Whether they sign in through the identity provider.
    pub signs_in: bool,
    /// When they were created (ms since the epoch).
    pub created_at: i64,
}

/// One stored mapping of an identity provider's group to a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGroupGrant {
    /// The group, as the provider names it in tokens.
    pub group: String,
    /// A scope, or a prefix followed by `*`.
    pub scopes: String,
    /// What its members may do there.
    pub access: Access,
}

/// Who the clinic's identity provider says signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignIn<'a> {
    /// The provider's stable id for the person (`sub`); also their user name here.
    pub subject: &'a str,
    /// Their name as the provider sends it.
    pub display_name: Option<&'a str>,
    /// Their email as the provider sends it.
    pub email: Option<&'a str>,
}

/// What a pull checks of its device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSync {
    /// The highest outbox position the device pushed under its current actor, if it said.
    pub outbox_seq: Option<i64>,
    /// The version of the app's schema it last said it runs.
    pub schema_version: Option<u32>,
    /// How far the feed was pruned: a cursor before it must start over.
    pub feed_pruned_through: i64,
}
