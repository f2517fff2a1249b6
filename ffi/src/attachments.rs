//! Attachments across the boundary: the reference an `attachment` field holds, as a record the
//! app can keep and pass back, and what tidying the store's attachments removed.
//!
//! The SHA-256 crosses as hex text rather than bytes: it is what the record's field value
//! spells, what a server's logs and paths show, and it compares and prints as-is in Kotlin,
//! Swift and Python.

use fieldsync_core as core;
use serde_json::{Map, Value};

use crate::error::{FieldsyncError, Result};
use crate::values::{FieldValue, signed};

/// A reference to an attachment's bytes (a photo, an audio note, a signed form): what an
/// `attachment` field holds. The bytes are kept beside the record, not in it; the store
/// methods read them by their reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct AttachmentRef {
    /// SHA-256 of the bytes, as 64 lowercase hex digits: what finds them and checks them.
    pub sha256: String,
    /// Their length in bytes.
    pub size: i64,
    /// Their media type (`image/jpeg`, `audio/mp4`, `application/pdf`).
    pub media_type: String,
    /// The file name to offer when the bytes are saved or shared, if any.
    #[uniffi(default = None)]
    pub name: Option<String>,
}

impl From<core::AttachmentRef> for AttachmentRef {
    fn from(reference: core::AttachmentRef) -> Self {
        AttachmentRef {
            sha256: reference.sha256_hex(),
            size: signed(reference.size),
            media_type: reference.media_type,
            name: reference.name,
        }
    }
}

impl AttachmentRef {
    /// The core's reference, or `InvalidValue` naming the member that is wrong: checked as the
    /// core checks a field value, so that a reference the app built or altered is refused
    /// whatever is wrong with it.
    pub(crate) fn to_core(&self) -> Result<core::AttachmentRef> {
        let mut map = Map::new();
        map.insert("sha256".into(), Value::from(self.sha256.clone()));
        map.insert("size".into(), Value::from(self.size));
        map.insert("media_type".into(), Value::from(self.media_type.clone()));
        if let Some(name) = &self.name {
            map.insert("name".into(), Value::from(name.clone()));
        }
        core::AttachmentRef::from_value(&Value::Object(map)).map_err(not_a_reference)
    }
}

// The core's problem names the member and never its value.
fn not_a_reference(problem: &str) -> FieldsyncError {
    FieldsyncError::invalid_value(format!("not an attachment reference: {problem}"))
}

/// The reference an `attachment` field's value holds, for reading it out of a record the app
/// has already (a query's results); null when the value is `Null`.
///
/// Throws `InvalidValue` when the value is not an attachment reference.
#[uniffi::export]
pub fn attachment_ref_of(value: FieldValue) -> Result<Option<AttachmentRef>> {
    match value {
        FieldValue::Null => Ok(None),
        other => {
            let value = other.to_core()?;
            let reference = core::AttachmentRef::from_value(&value).map_err(not_a_reference)?;
            Ok(Some(reference.into()))
        }
    }
}

/// What `Store.tidy_attachments` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentsTidied {
    /// Attachments nothing references any more (no live record, no rejected write kept for
    /// the app, no upload waiting).
    pub unreferenced: i64,
    /// Attachments the server holds, evicted (least recently used first) to keep within
    /// `StoreOptions.attachment_budget_bytes`; fetched again when needed.
    pub evicted: i64,
    /// Bytes freed in all.
    pub bytes: i64,
}

impl From<core::AttachmentsTidied> for AttachmentsTidied {
    fn from(tidied: core::AttachmentsTidied) -> Self {
        AttachmentsTidied {
            unreferenced: signed(tidied.unreferenced),
            evicted: signed(tidied.evicted),
            bytes: signed(tidied.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn reference() -> AttachmentRef {
        AttachmentRef {
            sha256: HASH.into(),
            size: 4,
            media_type: "text/plain".into(),
            name: Some("test.txt".into()),
        }
    }

    #[test]
    fn references_round_trip_through_the_core() {
        let core = reference().to_core().unwrap();
        assert_eq!(core.sha256_hex(), HASH);
        assert_eq!(AttachmentRef::from(core.clone()), reference());
        let value = FieldValue::from_core(&core.to_value());
        assert_eq!(attachment_ref_of(value).unwrap(), Some(reference()));
        assert_eq!(attachment_ref_of(FieldValue::Null).unwrap(), None);
    }

    #[test]
    fn a_malformed_reference_names_the_member_not_the_value() {
        for (reference, member) in [
            (
                AttachmentRef {
                    sha256: HASH.to_uppercase(),
                    ..reference()
                },
                "sha256",
            ),
            (
                AttachmentRef {
                    sha256: "zz".into(),
                    ..reference()
                },
                "sha256",
            ),
            (
                AttachmentRef {
                    media_type: "secret".into(),
                    ..reference()
                },
                "media_type",
            ),
            (
                AttachmentRef {
                    size: -1,
                    ..reference()
                },
                "size",
            ),
        ] {
            match reference.to_core() {
                Err(FieldsyncError::InvalidValue { reason: message }) => {
                    assert!(message.contains(member), "{message}");
                    assert!(!message.contains("secret") && !message.contains("zz"));
                }
                other => panic!("{member}: {other:?}"),
            }
        }
        let text = FieldValue::Str {
            value: "secret".into(),
        };
        assert!(matches!(
            attachment_ref_of(text),
            Err(FieldsyncError::InvalidValue { reason: message }) if !message.contains("secret")
        ));
    }
}
