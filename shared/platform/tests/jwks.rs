//! RS256 and ES256 tokens verified with public keys from a JWKS file, and the attacks
//! that target asymmetric setups (HS/RS confusion, unknown kid).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crm_platform::auth::{Authenticator, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"sub": "svc", "tenant": "acme", "roles": ["analyst"], "exp": now + 60, "iss": "crm", "aud": "crm"})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims(), key).unwrap()
}

fn authenticator() -> Authenticator {
    Authenticator::new(None, Some(&fixture("jwks.json")), "crm", "crm", 0).unwrap()
}

#[test]
fn rs256_and_es256_verify_against_the_jwks() {
    let auth = authenticator();
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap()).unwrap();
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap()).unwrap();
    let caller = auth.verify(&sign(Algorithm::RS256, "rsa-1", &rsa)).unwrap();
    assert_eq!(
        (caller.tenant.as_str(), caller.roles.as_slice()),
        ("acme", &[Role::Analyst][..])
    );
    assert!(auth.verify(&sign(Algorithm::ES256, "ec-1", &ec)).is_ok());
    // A key used under another kid, or an algorithm its key is not for, is refused.
    assert!(auth.verify(&sign(Algorithm::RS256, "ec-1", &rsa)).is_err());
    assert!(
        auth.verify(&sign(Algorithm::RS256, "unknown", &rsa))
            .is_err()
    );
}

#[test]
fn hs_rs_confusion_is_refused() {
    // The classic attack: sign HS256 with the RSA *public* key as the shared secret.
    let auth = authenticator();
    let public_pem = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let forged = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&public_pem),
    );
    assert_eq!(auth.verify(&forged).unwrap_err().reason(), "INVALID_TOKEN");
}

#[test]
fn a_jwks_without_usable_keys_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#,
    )
    .unwrap();
    assert!(Authenticator::new(None, Some(&path), "crm", "crm", 0).is_err());
    assert!(Authenticator::new(None, None, "crm", "crm", 0).is_err());
}
