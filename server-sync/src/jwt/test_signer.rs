//! Signing keys as an identity provider holds them, for tests: tokens signed with each
//! accepted algorithm, and the JWKS entry that publishes each key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use serde_json::{Value, json};

/// Base64url without padding, as JWTs and JWKs spell bytes.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A provider's signing key, with its JWK.
pub enum Signer {
    /// RS256, with the test RSA key of `tests/fixtures`.
    Rsa(sig::RsaKeyPair),
    /// ES256, with a key made now.
    P256(sig::EcdsaKeyPair),
    /// EdDSA, with a key made now.
    Ed25519(sig::Ed25519KeyPair),
}

impl Signer {
    /// The RS256 test key.
    pub fn rsa() -> Signer {
        let der = include_bytes!("../../tests/fixtures/rsa-2048-test-key.pk8");
        Signer::Rsa(sig::RsaKeyPair::from_pkcs8(der).unwrap())
    }

    /// A new ES256 key.
    pub fn p256() -> Signer {
        let rng = SystemRandom::new();
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::P256(sig::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    /// A new EdDSA key.
    pub fn ed25519() -> Signer {
        let pkcs8 = sig::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::Ed25519(sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    /// The `alg` its tokens name.
    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_) => "RS256",
            Signer::P256(_) => "ES256",
            Signer::Ed25519(_) => "EdDSA",
        }
    }

    /// Its JWKS entry, under key id `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Rsa(key) => {
                let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                       "n": b64(&public.n), "e": b64(&public.e)})
            }
            Signer::P256(key) => {
                let point = key.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Ed25519(key) => json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                                           "x": b64(key.public_key().as_ref())}),
        }
    }

    /// Signs `message` as its algorithm does for JWTs.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(&sig::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .unwrap();
                out
            }
            Signer::P256(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed25519(key) => key.sign(message).as_ref().to_vec(),
        }
    }

    /// A token with `header` and `claims`, signed by this key.
    pub fn token_with(&self, header: Value, claims: Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{signed}.{}", b64(&self.sign(signed.as_bytes())))
    }

    /// A token with `claims`, its header naming this key's algorithm and `kid`.
    pub fn token(&self, kid: &str, claims: Value) -> String {
        self.token_with(json!({"alg": self.alg(), "kid": kid, "typ": "JWT"}), claims)
    }
}
