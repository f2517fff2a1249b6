//! What an `attachment` field holds: a reference to bytes kept outside the record's document
//! (a photo, an audio note, a signed form), by their SHA-256, with their size, media type and
//! file name. The bytes themselves never enter the Automerge document, so they neither count
//! against its size limit nor stay in its history.
//!
//! In a record the reference is a map, written whole (so concurrent writes of a field conflict
//! as one value and one wins, never a mix of two references):
//!
//! ```json
//! {"sha256": "9f86d081…", "size": 48213, "media_type": "image/jpeg", "name": "consent.jpg"}
//! ```

use serde_json::{Map, Value};

/// The longest media type and file name a reference holds, in bytes.
pub const MAX_LABEL_BYTES: usize = 255;

/// The largest attachment a reference may name: 2^53 bytes, the most a JSON number carries
/// exactly in every language the bindings reach. Servers and devices set lower limits.
pub const MAX_SIZE: u64 = 1 << 53;

/// A reference to an attachment's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentRef {
    /// SHA-256 of the bytes: what finds them, and what they are checked against.
    pub sha256: [u8; 32],
    /// Their length in bytes.
    pub size: u64,
    /// Their media type (`image/jpeg`, `audio/mp4`, `application/pdf`).
    pub media_type: String,
    /// The file name to offer when the bytes are saved or shared, if any.
    pub name: Option<String>,
}

impl AttachmentRef {
    /// The reference a field value holds, or what is wrong with it (naming the member, never
    /// its value).
    pub fn from_value(value: &Value) -> Result<AttachmentRef, &'static str> {
        let map = value.as_object().ok_or("an attachment is a map")?;
        if map
            .keys()
            .any(|key| !matches!(key.as_str(), "sha256" | "size" | "media_type" | "name"))
        {
            return Err("an attachment holds only sha256, size, media_type and name");
        }
        let sha256 = map
            .get("sha256")
            .and_then(Value::as_str)
            .and_then(parse_sha256)
            .ok_or("sha256 is 64 lowercase hex digits")?;
        let size = map
            .get("size")
            .and_then(Value::as_u64)
            .filter(|size| *size <= MAX_SIZE)
            .ok_or("size is a whole number of bytes, at most 2^53")?;
        let media_type = map
            .get("media_type")
            .and_then(Value::as_str)
            .filter(|media_type| is_media_type(media_type))
            .ok_or("media_type is a type and subtype, such as image/jpeg")?
            .to_owned();
        let name = match map.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if is_label(name) => Some(name.clone()),
            Some(_) => {
                return Err("name is up to 255 bytes of text without control characters");
            }
        };
        Ok(AttachmentRef {
            sha256,
            size,
            media_type,
            name,
        })
    }

    /// The field value that holds this reference.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("sha256".into(), Value::from(self.sha256_hex()));
        map.insert("size".into(), Value::from(self.size));
        map.insert("media_type".into(), Value::from(self.media_type.clone()));
        if let Some(name) = &self.name {
            map.insert("name".into(), Value::from(name.clone()));
        }
        Value::Object(map)
    }

    /// The SHA-256 in lowercase hex, as references spell it.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The 32 bytes of a SHA-256 spelled as 64 lowercase hex digits.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// `type/subtype`, with optional parameters, in printable ASCII.
fn is_media_type(text: &str) -> bool {
    let essence = text.split(';').next().unwrap_or_default().trim();
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    text.len() <= MAX_LABEL_BYTES
        && text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

/// Text a person reads (a file name): not empty, bounded, no control characters.
fn is_label(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_LABEL_BYTES && !text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn references_read_back_as_written() {
        let reference = AttachmentRef {
            sha256: parse_sha256(HASH).unwrap(),
            size: 48_213,
            media_type: "image/jpeg".into(),
            name: Some("consent form.jpg".into()),
        };
        let value = reference.to_value();
        assert_eq!(value["sha256"], HASH);
        assert_eq!(AttachmentRef::from_value(&value).unwrap(), reference);
        let unnamed =
            json!({"sha256": HASH, "size": 0, "media_type": "audio/mp4; codecs=mp4a.40.2"});
        assert_eq!(AttachmentRef::from_value(&unnamed).unwrap().name, None);
    }

    #[test]
    fn a_malformed_reference_says_which_member_is_wrong() {
        let good = json!({"sha256": HASH, "size": 1, "media_type": "image/png", "name": "a.png"});
        let with = |key: &str, value: Value| {
            let mut value_map = good.clone();
            value_map[key] = value;
            value_map
        };
        for (value, says) in [
            (json!("a string"), "is a map"),
            (with("sha256", json!(HASH.to_uppercase())), "sha256"),
            (with("sha256", json!(&HASH[1..])), "sha256"),
            (with("size", json!(-1)), "size"),
            (with("size", json!(1.5)), "size"),
            (with("size", json!(MAX_SIZE + 1)), "size"),
            (with("media_type", json!("jpeg")), "media_type"),
            (with("media_type", json!("image/jpeg\n")), "media_type"),
            (with("name", json!("a\u{0}b")), "name"),
            (with("name", json!("x".repeat(256))), "name"),
            (with("name", json!(7)), "name"),
            (with("extra", json!(1)), "only"),
        ] {
            let err = AttachmentRef::from_value(&value).unwrap_err();
            assert!(err.contains(says), "{value}: {err}");
        }
    }
}
