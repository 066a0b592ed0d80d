//! Memory of the embedded session table: RSS before and after tracking one
//! million sessions (32-character session ids, 100k distinct users), and
//! the cost of the per-request check + touch on that full table.
//! Run: cargo bench --bench session_memory  (prints; no divan: it is one
//! measurement, not a timing loop).

use std::time::Instant;

use rolegate::session::table::{Table, Touch};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    const N: usize = 1_000_000;
    let ids: Vec<String> = (0..N)
        .map(|i| format!("{:032x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let users: Vec<String> = (0..100_000)
        .map(|i| format!("user-{i:06}@example.com"))
        .collect();
    let before = rss_kib();
    let table = Table::new();
    let now = 1_800_000_000_000u64;
    for (i, id) in ids.iter().enumerate() {
        table.check(&Touch {
            issuer: "https://idp.example",
            session: id,
            subject: &users[i % users.len()],
            now_ms: now,
            idle_ms: 900_000,
            max_lifetime_ms: None,
            token_exp_ms: now + 3_600_000,
            token_iat_ms: Some(now),
            touch: true,
            key: None,
        });
    }
    let after = rss_kib();
    let per = (after - before) * 1024 / N as u64;
    // The real store's flusher writes these out every flush_interval.
    let flushed = table.take_dirty().len();
    println!("sessions: {} (flushed {flushed})", table.len());
    println!(
        "rss before: {} MiB, after: {} MiB, delta: {} MiB ({per} bytes/session)",
        before / 1024,
        after / 1024,
        (after - before) / 1024
    );

    // check + touch on the full table, hot path (existing active sessions).
    let touch = |table: &Table, k: usize, i: usize| {
        table.check(&Touch {
            issuer: "https://idp.example",
            session: &ids[k],
            subject: &users[k % users.len()],
            now_ms: now + 1 + (i as u64 / 1000),
            idle_ms: 900_000,
            max_lifetime_ms: None,
            token_exp_ms: now + 3_600_000,
            token_iat_ms: Some(now),
            touch: true,
            key: None,
        })
    };
    let rounds = 2_000_000usize;
    let start = Instant::now();
    for i in 0..rounds {
        std::hint::black_box(touch(&table, (i * 7919) % N, i));
    }
    let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
    println!("check+touch, random session out of 1M (cache-cold): {ns:.0} ns/request");
    let start = Instant::now();
    for i in 0..rounds {
        std::hint::black_box(touch(&table, (i * 7919) % 1000, i));
    }
    let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
    println!("check+touch, 1,000 busy sessions in a 1M table: {ns:.0} ns/request");
    let start = Instant::now();
    let dirty = table.take_dirty().len();
    println!(
        "activity flush scan of 1M sessions ({dirty} dirty): {} ms",
        start.elapsed().as_millis()
    );
}
