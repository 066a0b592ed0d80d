//! JSON masking cost: `mask_1kb` (one ~1 KB customer profile, per-call time: the "under 10 %
//! of end-to-end" budget) and `mask_stream` (arrays of customers of 100 KB and 10 MB, pushed
//! in 64 KiB chunks as the proxy does; reported in bytes/s via `BytesCount`).
//!
//! The policy masks name (redact), email (email), phone (last4) and the street (remove) at any
//! depth, so every record takes the selector-matching and masking paths, not only the
//! pass-through scanner. Building the document happens outside the timed closure.

use std::sync::Arc;

use divan::counter::BytesCount;
use rolegate::mask::{json::*, policy::*};

fn main() {
    divan::main();
}

const CHUNK: usize = 64 * 1024;

fn policy() -> Arc<Policy> {
    let rule = |sel: &str, strat: &str| {
        (
            Selector::parse(sel).expect("selector"),
            Strategy::parse(strat).expect("strategy"),
        )
    };
    Arc::new(Policy {
        name: "bench".to_owned(),
        fields: vec![
            rule("$..name", "redact"),
            rule("$..email", "email"),
            rule("$..phone", "last4"),
            rule("$..address.street", "remove"),
        ],
        detectors: Vec::new(),
        detect_in: DetectScope::None,
        case_insensitive: false,
        hash_key: b"bench-key".to_vec(),
        limits: Limits::default(),
        compiled: Default::default(),
    })
}

/// One customer record; `i` varies the content so no two records are identical.
fn customer(i: usize) -> String {
    format!(
        concat!(
            r#"{{"id":{i},"name":"Customer Number {i}","email":"customer{i}@example.com","#,
            r#""phone":"+1 555 01{i:05}","status":"active","tier":"gold","created_at":"2025-03-14T09:26:53Z","#,
            r#""address":{{"street":"{i} Long Street Name","city":"Springfield","zip":"{z:05}","country":"US"}},"#,
            r#""tags":["vip","newsletter","beta"],"balance":{b}.25,"verified":true,"manager":null,"#,
            r#""notes":"Prefers contact by email in the morning; renewed the annual plan \"twice\"."}}"#
        ),
        i = i,
        z = i % 100_000,
        b = i * 7 % 10_000,
    )
}

/// A ~1 KB profile: one customer plus six orders.
fn profile() -> Vec<u8> {
    let orders: Vec<String> = (0..6)
        .map(|k| {
            format!(
                r#"{{"order_id":"ORD-{k:06}","total":{t}.95,"items":[{{"sku":"SKU-{k}","qty":{q}}}],"shipped":false}}"#,
                t = k * 10 + 9,
                q = k + 1
            )
        })
        .collect();
    format!(
        r#"{{"customer":{},"orders":[{}]}}"#,
        customer(42),
        orders.join(",")
    )
    .into_bytes()
}

/// A JSON array of customers of at least `bytes` bytes.
fn customers(bytes: usize) -> Vec<u8> {
    let mut doc = Vec::with_capacity(bytes + 1024);
    doc.push(b'[');
    let mut i = 0;
    while doc.len() < bytes {
        if i > 0 {
            doc.push(b',');
        }
        doc.extend_from_slice(customer(i).as_bytes());
        i += 1;
    }
    doc.push(b']');
    doc
}

#[divan::bench]
fn mask_1kb(bencher: divan::Bencher) {
    let policy = policy();
    let doc = profile();
    let out = mask_document(&policy, &doc).expect("valid profile");
    assert!(
        (900..1300).contains(&doc.len()),
        "profile is {} bytes",
        doc.len()
    );
    assert!(!out.windows(8).any(|w| w == b"Customer"), "name leaked");
    bencher
        .counter(BytesCount::new(doc.len()))
        .bench(|| mask_document(divan::black_box(&policy), divan::black_box(&doc)));
}

#[divan::bench(args = [100_000, 100_000_000], sample_count = 10, sample_size = 1)]
fn mask_stream(bencher: divan::Bencher, bytes: usize) {
    let policy = policy();
    let doc = customers(bytes);
    bencher.counter(BytesCount::new(doc.len())).bench(|| {
        let mut masker = JsonMasker::new(Arc::clone(&policy));
        let mut out = Vec::with_capacity(2 * CHUNK);
        for chunk in divan::black_box(&doc).chunks(CHUNK) {
            masker.push(chunk, &mut out).expect("valid stream");
            // The proxy forwards each piece as it is produced.
            divan::black_box(&out);
            out.clear();
        }
        masker.finish(&mut out).expect("complete stream");
        masker.masked_count()
    });
}
