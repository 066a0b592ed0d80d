//! Route lookup cost against table size: `Router::at` must stay flat from
//! 10 to 10,000 routes (one matchit lookup plus the candidates on one key).
//!
//! Only the lookup is measured; building the table happens outside the
//! timed closure.

use rolegate::route::{RouteSpec, Router};

fn main() {
    divan::main();
}

#[divan::bench(args = [10, 10_000])]
fn route_match(bencher: divan::Bencher, n: usize) {
    let specs: Vec<RouteSpec> = (0..n)
        .map(|i| RouteSpec {
            host: None,
            methods: vec!["GET".to_owned()],
            path: format!("/api/svc{i}/items/{{id}}"),
        })
        .collect();
    let (router, issues) = Router::build(&specs);
    assert!(issues.is_empty(), "{issues:?}");
    // Near the end of the table: a linear scan would pay for all of it.
    let path = format!("/api/svc{}/items/12345", n - 1);
    assert_eq!(router.at(None, "GET", &path).map(|m| m.route), Some(n - 1));

    bencher.bench(|| {
        router.at(
            divan::black_box(None),
            divan::black_box("GET"),
            divan::black_box(path.as_str()),
        )
    });
}
