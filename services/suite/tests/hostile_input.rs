//! Hostile input over every request message of every service: for each RPC in the
//! descriptor set, proptest draws seeds, and each seed fills the request with random,
//! boundary and hostile values (empty and huge strings, control characters, invalid
//! UTF-8 in bytes, SQL and filter injection, negative and overflowing numbers, NaN,
//! unknown enum values, deep nesting). The service must never panic and never answer
//! INTERNAL or UNKNOWN, and an INVALID_ARGUMENT must name its fields (BadRequest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic_types::StatusExt as _;

use crm_platform::auth::Role;

const HOSTILE_TEXT: &[&str] = &[
    "",
    " ",
    "\0",
    "\u{1}\u{7f}\n\r\t",
    "'; DROP TABLE contacts; --",
    "\" OR 1=1 --",
    "given_name = \"x\" OR tenant_id != \"\"",
    "((((((((((((((((((((",
    "contacts/",
    "contacts/../../etc/passwd",
    "contacts/00000000-0000-0000-0000-000000000000",
    "contacts/not-a-uuid",
    "%_\\",
    "\u{202e}evil\u{202d}",
    "🦀🦀🦀",
    "ＡＢＣ",
    "*",
    "a@b",
    "+99999999999999999999",
    "-1",
    "9223372036854775808",
    "NaN",
    "create_time > \"not a time\"",
    "given_name = \"\\é\"",
];

fn text(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0 => "x".repeat(rng.random_range(200..70_000)),
        1 => (0..rng.random_range(1..40))
            .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('?'))
            .collect(),
        _ => HOSTILE_TEXT[rng.random_range(0..HOSTILE_TEXT.len())].to_owned(),
    }
}

fn scalar(kind: &Kind, rng: &mut StdRng, depth: usize) -> Value {
    match kind {
        Kind::Bool => Value::Bool(rng.random()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32([0, -1, 1, i32::MIN, i32::MAX, rng.random()][rng.random_range(0..6)])
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64([0, -1, 1, i64::MIN, i64::MAX, rng.random()][rng.random_range(0..6)])
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32([0, 1, u32::MAX, rng.random()][rng.random_range(0..4)])
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64([0, 1, u64::MAX, rng.random()][rng.random_range(0..4)])
        }
        Kind::Float => Value::F32(
            [0.0, -0.0, f32::NAN, f32::INFINITY, f32::MIN, rng.random()][rng.random_range(0..6)],
        ),
        Kind::Double => Value::F64(
            [
                0.0,
                -0.0,
                f64::NAN,
                f64::NEG_INFINITY,
                f64::MAX,
                rng.random(),
            ][rng.random_range(0..6)],
        ),
        Kind::String => Value::String(text(rng)),
        Kind::Bytes => {
            let mut bytes: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            Value::Bytes(Bytes::from(bytes))
        }
        Kind::Enum(descriptor) => {
            let known: Vec<i32> = descriptor.values().map(|v| v.number()).collect();
            match rng.random_range(0..4) {
                0 => Value::EnumNumber(rng.random_range(100..10_000)),
                1 => Value::EnumNumber(-1),
                _ => Value::EnumNumber(known[rng.random_range(0..known.len())]),
            }
        }
        Kind::Message(descriptor) => Value::Message(message(descriptor, rng, depth + 1)),
    }
}

fn map_key(kind: &Kind, rng: &mut StdRng) -> MapKey {
    match kind {
        Kind::String => MapKey::String(text(rng)),
        Kind::Bool => MapKey::Bool(rng.random()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(rng.random()),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(rng.random()),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(rng.random()),
        _ => MapKey::I32(rng.random()),
    }
}

/// A message with a random subset of its fields set to hostile values.
fn message(descriptor: &MessageDescriptor, rng: &mut StdRng, depth: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    if depth > 8 {
        return message;
    }
    for field in descriptor.fields() {
        if !rng.random_bool(0.6) {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            Value::Map(
                (0..rng.random_range(0..4))
                    .map(|_| (map_key(&key.kind(), rng), scalar(&value.kind(), rng, depth)))
                    .collect(),
            )
        } else if field.is_list() {
            Value::List(
                (0..rng.random_range(0..5))
                    .map(|_| scalar(&field.kind(), rng, depth))
                    .collect(),
            )
        } else {
            scalar(&field.kind(), rng, depth)
        };
        message.set_field(&field, value);
    }
    message
}

#[test]
fn no_request_makes_a_service_panic_or_fail_internally() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let suite = runtime.block_on(common::Suite::start());
    let pool = DescriptorPool::decode(crm_proto::FILE_DESCRIPTOR_SET).unwrap();
    let admin = suite.token("hostile", &[Role::Admin]);
    let calls = AtomicUsize::new(0);
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&proptest::prelude::any::<u64>(), |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        runtime.block_on(async {
            for (service, _) in &suite.tables {
                let service = pool.get_service_by_name(service).unwrap();
                for method in service.methods() {
                    let request = message(&method.input(), &mut rng, 0).encode_to_vec();
                    let path = format!("/{}/{}", service.full_name(), method.name());
                    calls.fetch_add(1, Ordering::Relaxed);
                    let outcome = suite.call(&path, Bytes::from(request), &admin).await;
                    let code = outcome.as_ref().err().map_or(Code::Ok, tonic::Status::code);
                    *codes
                        .lock()
                        .unwrap()
                        .entry(format!("{code:?}"))
                        .or_default() += 1;
                    let Err(status) = outcome else {
                        continue;
                    };
                    if matches!(status.code(), Code::Internal | Code::Unknown) {
                        return Err(TestCaseError::fail(format!(
                            "{path}: {:?} {}",
                            status.code(),
                            status.message()
                        )));
                    }
                    if status.code() == Code::InvalidArgument {
                        let named = status.get_details_bad_request().is_some_and(|bad| {
                            bad.field_violations.iter().all(|v| !v.field.is_empty())
                                && !bad.field_violations.is_empty()
                        });
                        if !named {
                            return Err(TestCaseError::fail(format!(
                                "{path}: INVALID_ARGUMENT without field violations: {}",
                                status.message()
                            )));
                        }
                    }
                }
            }
            Ok(())
        })
    });
    assert!(runtime.block_on(suite.serving()), "the suite still serves");
    runtime.block_on(suite.stop());
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a handler panicked");
    let codes = codes.into_inner().unwrap();
    println!(
        "{} hostile requests, no panic, no INTERNAL: {codes:?}",
        calls.load(Ordering::Relaxed)
    );
    // The requests reach the handlers: some are accepted, many are refused field by field.
    let count = |code: &str| codes.get(code).copied().unwrap_or(0);
    assert!(count("Ok") > 0 && count("InvalidArgument") > 0, "{codes:?}");
}
