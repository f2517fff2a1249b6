//! Tokens signed with each accepted algorithm, and every way a token must be refused.

use serde_json::{Value, json};

use super::test_signer::{Signer, b64};
use super::*;

const NOW: i64 = 1_800_000_000;

fn jwks(keys: &[Value]) -> KeySet {
    KeySet::from_jwks(&json!({ "keys": keys }).to_string()).unwrap()
}

fn expected() -> Expected {
    Expected {
        issuer: "https://idp.clinic.example/realms/east".into(),
        audience: "fieldsync".into(),
        leeway_secs: 60,
        groups_claim: "groups".into(),
    }
}

fn claims() -> Value {
    json!({
        "iss": "https://idp.clinic.example/realms/east",
        "aud": ["fieldsync", "account"],
        "sub": "3f1c-ada",
        "name": "Ada Lovelace",
        "email": "ada@clinic.example",
        "groups": ["east-therapists", "supervisors"],
        "iat": NOW - 10,
        "exp": NOW + 300,
    })
}

fn with(changes: Value) -> Value {
    let mut claims = claims();
    for (key, value) in changes.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(key),
            value => claims
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), value.clone()),
        };
    }
    claims
}

#[test]
fn tokens_signed_with_each_accepted_algorithm_name_their_person_and_groups() {
    for signer in [Signer::rsa(), Signer::p256(), Signer::ed25519()] {
        let keys = jwks(&[signer.jwk("k1")]);
        let identity = verify(&signer.token("k1", claims()), &keys, &expected(), NOW).unwrap();
        assert_eq!(
            identity,
            Identity {
                subject: "3f1c-ada".into(),
                name: Some("Ada Lovelace".into()),
                email: Some("ada@clinic.example".into()),
                groups: vec!["east-therapists".into(), "supervisors".into()],
                expires_at: NOW + 300,
            },
            "{}",
            signer.alg()
        );
    }
    // A single audience as a string, roles under another claim, a token without a key id
    // when the set has one key of its algorithm.
    let signer = Signer::ed25519();
    let keys = jwks(&[signer.jwk("k1"), Signer::rsa().jwk("r1")]);
    let token = signer.token_with(
        json!({"alg": "EdDSA"}),
        with(json!({"aud": "fieldsync", "roles": "admin", "groups": null})),
    );
    let roles = Expected {
        groups_claim: "roles".into(),
        ..expected()
    };
    assert_eq!(
        verify(&token, &keys, &roles, NOW).unwrap().groups,
        vec!["admin".to_owned()]
    );
}

#[test]
fn none_and_hmac_are_never_accepted() {
    let rsa = Signer::rsa();
    let keys = jwks(&[rsa.jwk("k1")]);
    let payload = b64(claims().to_string().as_bytes());
    let unsigned = format!("{}.{payload}.", b64(br#"{"alg":"none","kid":"k1"}"#));
    assert_eq!(
        verify(&unsigned, &keys, &expected(), NOW),
        Err(JwtError::UnsupportedAlgorithm)
    );
    // HS256 "signed" with the provider's public key as the secret.
    let public = rsa.jwk("k1").to_string();
    let header = b64(br#"{"alg":"HS256","kid":"k1"}"#);
    let signed = format!("{header}.{payload}");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public.as_bytes()),
        signed.as_bytes(),
    );
    let forged = format!("{signed}.{}", b64(mac.as_ref()));
    assert_eq!(
        verify(&forged, &keys, &expected(), NOW),
        Err(JwtError::UnsupportedAlgorithm)
    );
    // An HMAC key published in the set is not a key at all here.
    let with_secret = jwks(&[json!({"kty": "oct", "kid": "s", "k": b64(b"secret")})]);
    assert!(with_secret.is_empty());
}

#[test]
fn a_token_whose_key_the_set_lacks_is_unknown_so_that_the_keys_are_fetched_again() {
    let (ed, other) = (Signer::ed25519(), Signer::ed25519());
    let keys = jwks(&[ed.jwk("k1"), other.jwk("k2")]);
    let unknown = ed.token("rotated", claims());
    assert_eq!(
        verify(&unknown, &keys, &expected(), NOW),
        Err(JwtError::UnknownKey)
    );
    // Without a key id, two keys of the algorithm leave it unknown which one signed.
    let no_kid = ed.token_with(json!({"alg": "EdDSA"}), claims());
    assert_eq!(
        verify(&no_kid, &keys, &expected(), NOW),
        Err(JwtError::UnknownKey)
    );
    // A key id of a key of another kind does not make an ES256 token verify with it.
    let rsa = Signer::rsa();
    let mixed = jwks(&[rsa.jwk("k1")]);
    let p256 = Signer::p256().token("k1", claims());
    assert_eq!(
        verify(&p256, &mixed, &expected(), NOW),
        Err(JwtError::UnknownKey)
    );
}

#[test]
fn a_tampered_token_or_another_key_s_signature_does_not_verify() {
    for signer in [Signer::rsa(), Signer::p256(), Signer::ed25519()] {
        let keys = jwks(&[signer.jwk("k1")]);
        let token = signer.token("k1", claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let promoted = b64(with(json!({"groups": ["admins"]})).to_string().as_bytes());
        parts[1] = &promoted;
        assert_eq!(
            verify(&parts.join("."), &keys, &expected(), NOW),
            Err(JwtError::BadSignature),
            "{}",
            signer.alg()
        );
    }
    let (ed, impostor) = (Signer::ed25519(), Signer::ed25519());
    let keys = jwks(&[ed.jwk("k1")]);
    assert_eq!(
        verify(&impostor.token("k1", claims()), &keys, &expected(), NOW),
        Err(JwtError::BadSignature)
    );
    for garbage in ["", "a.b", "a.b.c.d", "!!.??.**"] {
        assert!(matches!(
            verify(garbage, &keys, &expected(), NOW),
            Err(JwtError::Malformed(_))
        ));
    }
}

#[test]
fn issuer_audience_and_the_clock_are_checked_with_a_small_skew() {
    let signer = Signer::ed25519();
    let keys = jwks(&[signer.jwk("k1")]);
    let check =
        |claims: Value, now: i64| verify(&signer.token("k1", claims), &keys, &expected(), now);
    assert_eq!(
        check(with(json!({"iss": "https://evil.example"})), NOW),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        check(with(json!({"iss": null})), NOW),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        check(with(json!({"aud": ["account"]})), NOW),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        check(with(json!({"aud": null})), NOW),
        Err(JwtError::WrongAudience)
    );
    // Expired, within and beyond the 60 seconds of skew.
    let exp = NOW + 300;
    assert!(check(claims(), exp + 59).is_ok());
    assert_eq!(check(claims(), exp + 60), Err(JwtError::Expired));
    assert!(matches!(
        check(with(json!({"exp": null})), NOW),
        Err(JwtError::Malformed(_))
    ));
    // Not valid before.
    let nbf = with(json!({"nbf": NOW + 100}));
    assert_eq!(check(nbf.clone(), NOW), Err(JwtError::NotYetValid));
    assert!(check(nbf, NOW + 40).is_ok());
    assert!(matches!(
        check(with(json!({"sub": ""})), NOW),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn a_jwks_keeps_only_signing_keys_of_accepted_kinds_and_refusals_name_no_value() {
    let (rsa, p256, ed) = (Signer::rsa(), Signer::p256(), Signer::ed25519());
    let mut encryption = rsa.jwk("enc");
    encryption["use"] = json!("enc");
    let mut mislabelled = p256.jwk("wrong-alg");
    mislabelled["alg"] = json!("RS256");
    let keys = jwks(&[
        rsa.jwk("r"),
        p256.jwk("p"),
        ed.jwk("e"),
        encryption,
        mislabelled,
        json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "kid": "broken", "n": "***"}),
    ]);
    assert_eq!(keys.len(), 3);
    assert!(matches!(
        KeySet::from_jwks("{\"keys\": 3}"),
        Err(JwtError::Malformed(_))
    ));
    let canary = "CANARY-0ff1ce";
    let token = ed.token(
        "e",
        with(json!({"iss": canary, "aud": canary, "sub": canary})),
    );
    let refused = verify(&token, &keys, &expected(), NOW).unwrap_err();
    assert!(!refused.to_string().contains("CANARY"), "{refused}");
}
