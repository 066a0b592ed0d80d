//! Peak memory and throughput of masking a 1 GiB JSON array streamed in
//! 64 KiB chunks through `mask::BodyMasker` (identity and gzip), the way
//! the proxy feeds it. Prints MB/s and the process's peak RSS (VmHWM).
//! Run: cargo bench --bench mask_stream_memory

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use rolegate::mask::{
    BodyKind, BodyMasker, DetectScope, Detector, Encoding, Limits, Policy, Selector, Strategy,
};

fn status(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn policy() -> Arc<Policy> {
    Arc::new(Policy {
        name: "bench".into(),
        fields: vec![
            (Selector::parse("$..phone").unwrap(), Strategy::Keep(4)),
            (Selector::parse("$..email").unwrap(), Strategy::Email),
            (Selector::parse("$..name").unwrap(), Strategy::Redact),
        ],
        detectors: vec![Detector::Email, Detector::Phone, Detector::Card],
        detect_in: DetectScope::Fields(vec![Selector::parse("$..notes").unwrap()]),
        case_insensitive: false,
        hash_key: Vec::new(),
        limits: Limits::default(),
        compiled: Default::default(),
    })
}

fn item(i: usize) -> String {
    format!(
        r#"{{"id":"c-{i}","name":"Customer {i}","email":"user{i}@example.com","phone":"+1 555 01{:05}","tier":"gold","address":{{"city":"Pune","zip":"411001"}},"notes":"called back on +1 555 0100 about order {i}","orders":[{{"id":{i},"total":12.5}}]}}"#,
        i % 100_000
    )
}

fn run(label: &str, total: usize, gzip: bool) {
    let p = policy();
    // One 64 KiB block of items, repeated: generation costs nothing in the loop.
    let mut block = String::new();
    let mut i = 0;
    while block.len() < 64 * 1024 {
        block.push_str(&item(i));
        block.push(',');
        i += 1;
    }
    let block = block.into_bytes();
    let n_blocks = total / block.len();
    let mut masker = BodyMasker::new(
        p,
        BodyKind::Json,
        if gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        },
        u64::MAX,
    );
    let mut out = Vec::with_capacity(128 * 1024);
    let mut produced = 0u64;
    let mut encoder =
        gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let feed = |data: &[u8], masker: &mut BodyMasker, out: &mut Vec<u8>, produced: &mut u64| {
        out.clear();
        masker.push(data, out).unwrap();
        *produced += out.len() as u64;
    };
    let start = Instant::now();
    let mut input = 0u64;
    let mut push = |data: &[u8], masker: &mut BodyMasker, out: &mut Vec<u8>, produced: &mut u64| {
        input += data.len() as u64;
        if let Some(enc) = encoder.as_mut() {
            enc.write_all(data).unwrap();
            let compressed = std::mem::take(enc.get_mut());
            feed(&compressed, masker, out, produced);
        } else {
            feed(data, masker, out, produced);
        }
    };
    push(b"[", &mut masker, &mut out, &mut produced);
    for _ in 0..n_blocks {
        push(&block, &mut masker, &mut out, &mut produced);
    }
    push(item(0).as_bytes(), &mut masker, &mut out, &mut produced);
    push(b"]", &mut masker, &mut out, &mut produced);
    if let Some(enc) = encoder.take() {
        let rest = enc.finish().unwrap();
        feed(&rest, &mut masker, &mut out, &mut produced);
    }
    out.clear();
    masker.finish(&mut out).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label}: {:.0} MiB JSON in {secs:.2} s = {:.0} MB/s (decoded input), {} values masked, output {:.0} MiB, peak RSS {} MiB",
        input as f64 / 1048576.0,
        input as f64 / 1e6 / secs,
        masker.masked_count(),
        produced as f64 / 1048576.0,
        status("VmHWM:") / 1024
    );
}

fn main() {
    println!("rss at start: {} MiB", status("VmRSS:") / 1024);
    run("identity 1 GiB", 1 << 30, false);
    run(
        "gzip 256 MiB (gzip encode in the loop too)",
        256 << 20,
        true,
    );
}
