//! The page-token codec: HMAC-signed, base64url tokens carrying tenant, query
//! fingerprint and sort key.
//!
//! Input: the whole input, lossily UTF-8, is decoded as a token a client sent (so the
//! seed corpus holds real tokens); the same bytes, read as structured data, drive the
//! round trip.
//!
//! Properties:
//! - decoding any string never panics, and without the
//!   key it never yields a sort key: a token the fuzzer writes is refused (or, if empty,
//!   means the first page);
//! - round trip: `decode(encode(tenant, fingerprint, key))` is `key`, a listing's total
//!   rides after a non-empty key, and the offset codec round-trips an offset;
//! - the same token is refused for another tenant, another fingerprint or another
//!   secret;
//! - every truncation of a token, and every one-character change of it, is refused.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use crm_fuzz::pagination::{CursorValue, PageTokens};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Key {
    Int(i64),
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Vec<u8>,
    tenant: String,
    filter: String,
    order_by: String,
    key: Vec<Key>,
    offset: u32,
    /// Where to cut or change the issued token, and the replacement character.
    cut: u16,
    replacement: u8,
}

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
/// The decoder refuses longer tokens; realistic sort keys stay far below it.
const MAX_TOKEN_LEN: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let tokens = PageTokens::new(&input.secret);
    let fingerprint = PageTokens::fingerprint(&[&input.filter, &input.order_by]);

    // Anything a client sends: refused, never a sort key, never a panic.
    let raw = String::from_utf8_lossy(data);
    match tokens.decode(&raw, &input.tenant, &fingerprint) {
        Ok(None) => assert!(raw.is_empty(), "a non-empty token meant 'first page'"),
        Ok(Some(key)) => panic!("a token written without the key was accepted: {key:?}"),
        Err(_) => {}
    }
    let _ = tokens.decode_offset(&raw, &input.tenant, &fingerprint);
    let _ = tokens.decode_with_total(&raw, &input.tenant, &fingerprint);

    // Round trip.
    let key: Vec<CursorValue> = input
        .key
        .into_iter()
        .map(|k| match k {
            Key::Int(n) => CursorValue::Int(n),
            Key::Text(s) => CursorValue::Text(s),
        })
        .collect();
    let token = tokens
        .encode(&input.tenant, &fingerprint, key.clone())
        .expect("encoding never fails");
    assert!(!token.is_empty());
    if token.len() > MAX_TOKEN_LEN {
        // Only keys, tenants or fingerprints far longer than any real one get here.
        assert!(tokens.decode(&token, &input.tenant, &fingerprint).is_err());
        return;
    }
    assert_eq!(
        tokens.decode(&token, &input.tenant, &fingerprint).ok(),
        Some(Some(key.clone())),
        "round trip of {token}"
    );
    if !key.is_empty() {
        let total = u64::from(input.offset);
        let with_total = tokens
            .encode_with_total(&input.tenant, &fingerprint, Some(key.clone()), total)
            .expect("encoding never fails");
        if with_total.len() <= MAX_TOKEN_LEN {
            assert_eq!(
                tokens
                    .decode_with_total(&with_total, &input.tenant, &fingerprint)
                    .ok(),
                Some(Some((key, total))),
                "round trip of {with_total}"
            );
        }
    }
    let offset = input.offset as usize;
    let offset_token = tokens
        .encode_offset(&input.tenant, &fingerprint, offset, offset + 1)
        .expect("encoding never fails");
    if offset_token.len() <= MAX_TOKEN_LEN {
        assert_eq!(
            tokens
                .decode_offset(&offset_token, &input.tenant, &fingerprint)
                .ok(),
            Some(offset)
        );
    }

    // The same token in the wrong context.
    let other_tenant = format!("{}x", input.tenant);
    assert!(tokens.decode(&token, &other_tenant, &fingerprint).is_err());
    let other_fingerprint = PageTokens::fingerprint(&[&input.filter, &input.order_by, ""]);
    assert!(
        tokens
            .decode(&token, &input.tenant, &other_fingerprint)
            .is_err()
    );
    let mut other_secret = input.secret.clone();
    other_secret.push(0);
    assert!(
        PageTokens::new(&other_secret)
            .decode(&token, &input.tenant, &fingerprint)
            .is_err()
    );

    // Truncated and altered tokens.
    let at = usize::from(input.cut) % token.len();
    let truncated = &token[..at];
    match tokens.decode(truncated, &input.tenant, &fingerprint) {
        Ok(None) => assert!(truncated.is_empty()),
        Ok(Some(_)) => panic!("a truncated token was accepted: {truncated}"),
        Err(_) => {}
    }
    let mut altered = token.clone().into_bytes();
    let mut replacement = BASE64URL[usize::from(input.replacement) % BASE64URL.len()];
    if replacement == altered[at] {
        replacement = if replacement == b'A' { b'B' } else { b'A' };
    }
    altered[at] = replacement;
    let altered = String::from_utf8(altered).expect("base64url is ASCII");
    assert!(
        tokens
            .decode(&altered, &input.tenant, &fingerprint)
            .is_err(),
        "an altered token was accepted: {altered}"
    );
});
