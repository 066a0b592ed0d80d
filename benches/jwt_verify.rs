//! Token verification cost: uncached (signature checked every time) per
//! algorithm, and the verified-token cache hit that most requests take.
//! Run: cargo bench --bench jwt_verify

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rolegate::auth::Authenticator;
use rolegate::config::{RulesSource, load_from_text};
use serde_json::json;

fn main() {
    divan::main();
}

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn authenticator(cache_entries: usize) -> Authenticator {
    let k = keys();
    let cfg = format!(
        r#"identity:
  cache_entries: {cache_entries}
  issuers:
    - {{ iss: rsa, audiences: [a], algorithms: [RS256], keys: {{ pem: [{{ file: "{}" }}] }} }}
    - {{ iss: ec, audiences: [a], algorithms: [ES256], keys: {{ pem: [{{ file: "{}" }}] }} }}
    - {{ iss: hmac, audiences: [a], algorithms: [HS256], keys: {{ hmac_secret_file: "{}" }} }}
"#,
        k.join("rsa.pub").display(),
        k.join("ec256.pub").display(),
        k.join("hmac.secret").display()
    );
    let loaded = load_from_text(
        "bench.yaml",
        &cfg,
        Path::new("."),
        RulesSource::Embedded(vec![]),
    )
    .unwrap_or_else(|_| panic!("bench config"));
    loaded.runtime.auth
}

fn token(alg: Algorithm) -> String {
    let k = keys();
    let (iss, key) = match alg {
        Algorithm::RS256 => (
            "rsa",
            EncodingKey::from_rsa_pem(&std::fs::read(k.join("rsa.key")).unwrap()).unwrap(),
        ),
        Algorithm::ES256 => (
            "ec",
            EncodingKey::from_ec_pem(&std::fs::read(k.join("ec256.key")).unwrap()).unwrap(),
        ),
        _ => (
            "hmac",
            EncodingKey::from_secret(
                std::fs::read_to_string(k.join("hmac.secret"))
                    .unwrap()
                    .trim()
                    .as_bytes(),
            ),
        ),
    };
    let claims = json!({ "iss": iss, "aud": "a", "sub": "u", "exp": 4_000_000_000u64, "roles": ["agent", "supervisor"], "partners": ["acme"] });
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
}

#[divan::bench(args = ["RS256", "ES256", "HS256"])]
fn verify_uncached(bencher: divan::Bencher, alg: &str) {
    let auth = authenticator(0);
    let t = token(alg.parse().unwrap());
    bencher.bench(|| auth.verify(divan::black_box(&t)).unwrap());
}

#[divan::bench(args = ["RS256", "ES256"])]
fn verify_cached(bencher: divan::Bencher, alg: &str) {
    let auth = authenticator(1000);
    let t = token(alg.parse().unwrap());
    auth.verify(&t).unwrap();
    bencher.bench(|| auth.verify(divan::black_box(&t)).unwrap());
}
