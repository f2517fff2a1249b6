//! Access tokens signed by a clinic's identity provider (OpenID Connect): a JWT's signature
//! checked against the provider's published keys (its JWKS), and its claims against the
//! configured issuer and audience and the clock. Sans I/O: fetching and refreshing the keys is
//! the caller's, which refetches them when a token names a key it does not know.
//!
//! Only RS256, ES256 and EdDSA (Ed25519) are accepted, each with a key of its own kind: `none`
//! and the HMAC algorithms never are, so a public key can never be used as an HMAC secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;

/// Why a token is not accepted. The texts name the check that failed, never a claim's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token, its header or its claims do not read.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than RS256, ES256 or EdDSA.
    #[error("the token's algorithm is not accepted (RS256, ES256 and EdDSA are)")]
    UnsupportedAlgorithm,
    /// No key of the set has the token's key id and algorithm: the provider may have rotated
    /// its keys, so the caller fetches them again (once, rate-limited) before refusing.
    #[error("the token was signed with a key the server does not know")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` does not hold the configured audience.
    #[error("the token is meant for another audience")]
    WrongAudience,
    /// `exp` has passed (beyond the allowed clock skew): the app gets a new token.
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not come yet (beyond the allowed clock skew).
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// What a token must say to be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The provider's issuer URL, as `iss` spells it.
    pub issuer: String,
    /// The audience the server is registered as (its client id), one of `aud`.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: i64,
    /// The claim that lists the user's groups or roles (`groups` for Okta, Keycloak and
    /// Google, `groups` or `roles` for Entra ID).
    pub groups_claim: String,
}

/// Who an accepted token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the provider's stable id for the person.
    pub subject: String,
    /// `name`, if the provider sends it.
    pub name: Option<String>,
    /// `email`, if the provider sends it.
    pub email: Option<String>,
    /// The groups or roles of [`Expected::groups_claim`] (none if it is missing).
    pub groups: Vec<String>,
    /// `exp`, in seconds since the epoch.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

/// A provider's public signing key.
#[derive(Debug, Clone)]
struct VerifyingKey {
    id: Option<String>,
    algorithm: Algorithm,
    /// The key as ring takes it: RSA `n` and `e`, or an EC or Ed25519 public point.
    material: KeyMaterial,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point: `04 || x || y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// The signing keys a provider publishes (`jwks_uri`).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

/// One JWK as providers publish them; members this server does not use are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// The signing keys of a JWKS document. Keys of kinds this server does not accept (HMAC
    /// secrets, encryption keys, other curves) are left out, not refused: providers publish
    /// several kinds.
    pub fn from_jwks(json: &str) -> Result<KeySet, JwtError> {
        let jwks: Jwks = serde_json::from_str(json)
            .map_err(|_| JwtError::Malformed("the JWKS does not read"))?;
        let keys = jwks
            .keys
            .into_iter()
            .filter(|jwk| jwk.usage.as_deref().is_none_or(|usage| usage == "sig"))
            .filter_map(verifying_key)
            .collect();
        Ok(KeySet { keys })
    }

    /// How many signing keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no signing key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a token with this key id and algorithm was signed with: by id when the token
    /// names one, else the only key of that algorithm.
    fn find(&self, id: Option<&str>, algorithm: Algorithm) -> Option<&VerifyingKey> {
        let mut fitting = self.keys.iter().filter(|key| key.algorithm == algorithm);
        match id {
            Some(id) => fitting.find(|key| key.id.as_deref() == Some(id)),
            None => {
                let first = fitting.next()?;
                fitting.next().is_none().then_some(first)
            }
        }
    }
}

fn verifying_key(jwk: Jwk) -> Option<VerifyingKey> {
    let decode = |part: &Option<String>| URL_SAFE_NO_PAD.decode(part.as_deref()?).ok();
    let (algorithm, material) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => (
            Algorithm::Rs256,
            KeyMaterial::Rsa {
                n: decode(&jwk.n)?,
                e: decode(&jwk.e)?,
            },
        ),
        ("EC", Some("P-256")) => {
            let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            (
                Algorithm::Es256,
                KeyMaterial::P256([&[4], &x[..], &y[..]].concat()),
            )
        }
        ("OKP", Some("Ed25519")) => (Algorithm::EdDsa, KeyMaterial::Ed25519(decode(&jwk.x)?)),
        _ => return None,
    };
    // A key that names its algorithm is used with that one only.
    if jwk
        .alg
        .as_deref()
        .is_some_and(|alg| Algorithm::parse(alg) != Some(algorithm))
    {
        return None;
    }
    Some(VerifyingKey {
        id: jwk.kid,
        algorithm,
        material,
    })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Checks `token` against `keys` and `expected` at `now` (seconds since the epoch) and returns
/// who it names.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expected: &Expected,
    now: i64,
) -> Result<Identity, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a token has three parts"));
    };
    // What the signature covers: the header and the claims as sent, joined by the dot.
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    let decode = |part: &str, what: &'static str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed(what))
    };
    let header: Header = serde_json::from_slice(&decode(header, "the header is not base64url")?)
        .map_err(|_| JwtError::Malformed("the header does not read"))?;
    let algorithm = Algorithm::parse(&header.alg).ok_or(JwtError::UnsupportedAlgorithm)?;
    let key = keys
        .find(header.kid.as_deref(), algorithm)
        .ok_or(JwtError::UnknownKey)?;
    let signature = decode(signature, "the signature is not base64url")?;
    let verified = match &key.material {
        KeyMaterial::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            signed,
            &signature,
        ),
        KeyMaterial::P256(point) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, &signature)
        }
        KeyMaterial::Ed25519(point) => {
            UnparsedPublicKey::new(&signature::ED25519, point).verify(signed, &signature)
        }
    };
    verified.map_err(|_| JwtError::BadSignature)?;

    let claims: Claims = serde_json::from_slice(&decode(payload, "the claims are not base64url")?)
        .map_err(|_| JwtError::Malformed("the claims do not read"))?;
    if claims.iss.as_deref() != Some(expected.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    let audience_fits = match &claims.aud {
        Some(Audience::One(one)) => *one == expected.audience,
        Some(Audience::Many(many)) => many.contains(&expected.audience),
        None => false,
    };
    if !audience_fits {
        return Err(JwtError::WrongAudience);
    }
    let expires_at = claims
        .exp
        .ok_or(JwtError::Malformed("the token has no expiry (exp)"))?;
    if now >= expires_at.saturating_add(expected.leeway_secs) {
        return Err(JwtError::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| now.saturating_add(expected.leeway_secs) < nbf)
    {
        return Err(JwtError::NotYetValid);
    }
    let subject = claims
        .sub
        .filter(|sub| !sub.is_empty())
        .ok_or(JwtError::Malformed("the token names no subject (sub)"))?;
    let groups = match claims.other.get(&expected.groups_claim) {
        Some(serde_json::Value::Array(groups)) => groups
            .iter()
            .filter_map(|group| group.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(group)) => vec![group.clone()],
        _ => Vec::new(),
    };
    Ok(Identity {
        subject,
        name: claims.name,
        email: claims.email,
        groups,
        expires_at,
    })
}

#[cfg(any(test, feature = "conformance"))]
pub mod test_signer;
#[cfg(test)]
mod tests;
