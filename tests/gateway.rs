//! End-to-end: the real gateway on loopback in front of a real recording
//! hyper upstream. Identity (every algorithm and the classic forgeries),
//! path tricks, header spoofing, policy decisions and upstream failures;
//! upstream pools, health and faults (`gateway/pools.rs`).

mod common;
#[path = "gateway/directory.rs"]
mod directory;
#[path = "gateway/limits.rs"]
mod limits;
#[path = "gateway/malformed.rs"]
mod malformed;
#[path = "gateway/pools.rs"]
mod pools;
#[path = "gateway/relations.rs"]
mod relations;
#[path = "gateway/reload.rs"]
mod reload;
#[path = "gateway/upstream_tls.rs"]
mod upstream_tls;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn viewer() -> String {
    token_with(json!({ "roles": ["viewer"] }))
}

// ---------------------------------------------------------------- identity

#[tokio::test]
async fn every_supported_algorithm_is_accepted_with_its_own_key() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let cases: &[(Algorithm, Option<&str>, &str)] = &[
        (Algorithm::RS256, None, ISS_RSA),
        (Algorithm::RS384, None, ISS_RSA),
        (Algorithm::RS512, None, ISS_RSA),
        (Algorithm::PS256, None, ISS_RSA),
        (Algorithm::HS256, None, ISS_HMAC),
        (Algorithm::HS384, None, ISS_HMAC),
        (Algorithm::HS512, None, ISS_HMAC),
        (Algorithm::ES256, Some("p256"), ISS_EC),
        (Algorithm::ES384, Some("p384"), ISS_EC),
        (Algorithm::EdDSA, None, ISS_ED),
        (Algorithm::RS256, Some("rsa-1"), ISS_JWKS),
        (Algorithm::ES256, Some("ec-1"), ISS_JWKS),
    ];
    for (alg, kid, iss) in cases {
        let sub = format!("user-{alg:?}-{iss}");
        let t = sign(
            *alg,
            *kid,
            &claims(
                iss,
                json!({ "sub": sub, "sid": format!("sid-{sub}"), "roles": ["viewer"] }),
            ),
        );
        let r = req(gw.addr, "GET", "/bots/1/flows", Some(&t), &[]).await;
        assert_eq!(
            r.status,
            200,
            "{alg:?} from {iss}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(up.last().header("x-rolegate-user"), Some(sub.as_str()));
    }
}

/// Asserts a 401 `invalid_token` with the given detail and no upstream call.
async fn assert_rejected(gw: &Gw, up: &Upstream, token: &str, detail: &str) {
    let before = up.count();
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(token), &[]).await;
    assert_eq!(
        r.status,
        401,
        "expected 401 for {detail}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.error(), "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert!(r.json()["reason"].as_str().unwrap().len() > 3);
    assert!(r.json()["request_id"].as_str().is_some());
    assert_eq!(
        up.count(),
        before,
        "a rejected token ({detail}) reached the upstream"
    );
}

/// With `types`, an issuer's tokens must say what they are (RFC 8725
/// §3.11): an ID token, or any other JWT of the same issuer and audience,
/// is not taken for an access token.
#[tokio::test]
async fn an_issuer_with_types_accepts_only_those_token_types() {
    let up = Upstream::start().await;
    let dir = scratch_dir("gw-typ");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "identity:\n  issuers:\n    - {{ iss: \"{ISS_HMAC}\", audiences: [\"{AUD}\"], algorithms: [HS256], keys: {{ hmac_secret_file: \"{}\" }}, types: [at+jwt] }}\nupstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n",
        key("hmac.secret").display(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let secret = std::fs::read_to_string(key("hmac.secret")).unwrap();
    let signed = |typ: Option<&str>| {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.typ = typ.map(str::to_string);
        let body = claims(ISS_HMAC, json!({ "roles": ["viewer"] }));
        let k = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
        jsonwebtoken::encode(&h, &body, &k).unwrap()
    };
    for typ in ["at+jwt", "application/AT+JWT"] {
        let r = req(
            gw.addr,
            "GET",
            "/bots/1/flows",
            Some(&signed(Some(typ))),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{typ}: {}", String::from_utf8_lossy(&r.body));
    }
    for typ in [Some("JWT"), Some("id_token+jwt"), None] {
        assert_rejected(&gw, &up, &signed(typ), &format!("typ {typ:?}")).await;
        let r = req(gw.addr, "GET", "/bots/1/flows", Some(&signed(typ)), &[]).await;
        assert_eq!(
            r.json()["reason"].as_str().unwrap(),
            "token type (typ) is not accepted from this issuer",
            "{typ:?}"
        );
    }
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_refused() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let base = claims(ISS_RSA, json!({ "roles": ["viewer"] }));

    // alg none, unsigned.
    let none = forge(&json!({ "alg": "none", "typ": "JWT" }), &base, b"");
    assert_rejected(&gw, &up, &none, "alg none").await;

    // RS/HS confusion: HS256 signed with the issuer's *public key* as the secret.
    let public_pem = std::fs::read(key("rsa.pub")).unwrap();
    for iss in [ISS_RSA, ISS_JWKS] {
        let c = claims(iss, json!({ "roles": ["viewer"] }));
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_rejected(&gw, &up, &confused, "RS/HS confusion").await;
    }

    // Expired beyond the leeway, not yet valid, wrong issuer, wrong audience.
    let expired = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "exp": now() - 120 })),
    );
    assert_rejected(&gw, &up, &expired, "expired").await;
    let early = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "nbf": now() + 300 })),
    );
    assert_rejected(&gw, &up, &early, "nbf in the future").await;
    let foreign = sign(
        Algorithm::RS256,
        None,
        &claims("https://evil.test", json!({})),
    );
    assert_rejected(&gw, &up, &foreign, "unknown issuer").await;
    let wrong_aud = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "aud": "other-app" })),
    );
    assert_rejected(&gw, &up, &wrong_aud, "wrong audience").await;
    let no_aud = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "aud": null })),
    );
    assert_rejected(&gw, &up, &no_aud, "missing audience").await;
    let no_exp = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "exp": null })),
    );
    assert_rejected(&gw, &up, &no_exp, "missing exp").await;
    let no_sub = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "sub": null })),
    );
    assert_rejected(&gw, &up, &no_sub, "missing sub").await;

    // A key id that is not configured.
    let unknown_kid = sign(Algorithm::ES256, Some("nope"), &claims(ISS_EC, json!({})));
    assert_rejected(&gw, &up, &unknown_kid, "unknown kid").await;
    // Signed by a key the issuer does not have (rsa2 is not configured).
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::RS256),
        &base,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(key("rsa2.key")).unwrap()).unwrap(),
    )
    .unwrap();
    assert_rejected(&gw, &up, &other_key, "foreign signing key").await;
    // An algorithm this issuer does not allow (ES256 against the RSA issuer).
    let wrong_alg = sign(Algorithm::ES256, Some("p256"), &claims(ISS_RSA, json!({})));
    assert_rejected(&gw, &up, &wrong_alg, "algorithm not in allow-list").await;

    // Tampered payload: a valid viewer token with the roles swapped.
    let good = viewer();
    let parts: Vec<&str> = good.split('.').collect();
    let evil_payload = b64(
        claims(ISS_RSA, json!({ "roles": ["editor", "partner-admin"] }))
            .to_string()
            .as_bytes(),
    );
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_rejected(&gw, &up, &tampered, "tampered payload").await;

    // A correctly signed token whose header carries `crit`.
    let header = json!({ "alg": "HS256", "typ": "JWT", "crit": ["exp"] });
    let payload = claims(ISS_HMAC, json!({ "roles": ["viewer"] }));
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let secret = std::fs::read_to_string(key("hmac.secret")).unwrap();
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.trim().as_bytes());
    let sig = aws_lc_rs::hmac::sign(&k, signing_input.as_bytes());
    let crit = format!("{signing_input}.{}", b64(sig.as_ref()));
    assert_rejected(&gw, &up, &crit, "crit header").await;

    // Oversized (default limit 8 KiB), and not a JWT at all.
    let big = sign(
        Algorithm::HS256,
        None,
        &claims(ISS_HMAC, json!({ "pad": "x".repeat(9000) })),
    );
    assert_rejected(&gw, &up, &big, "oversized").await;
    assert_rejected(&gw, &up, "not-a-jwt", "garbage").await;
}

#[tokio::test]
async fn token_extraction_rules() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = viewer();

    // No credentials: 401 missing_token with a challenge.
    let r = req(gw.addr, "GET", "/bots/1/flows", None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "missing_token");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // Case-insensitive scheme.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&format!("authorization: bEaReR {t}")],
    )
    .await;
    assert_eq!(r.status, 200);

    // Two Authorization headers are ambiguous.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&t),
        &[&format!("Authorization: Bearer {t}")],
    )
    .await;
    assert_eq!(r.status, 401);

    // Basic is not a bearer token.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &["Authorization: Basic dXNlcjpwYXNz"],
    )
    .await;
    assert_eq!(r.status, 401);

    // Never from the query string.
    let r = req(
        gw.addr,
        "GET",
        &format!("/bots/1/flows?access_token={t}"),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 401);

    // The configured cookie works; the same cookie twice is refused.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&format!("Cookie: theme=dark; rg_session={t}")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&format!("Cookie: rg_session={t}; rg_session={t}")],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &["Cookie: other_session=abc"],
    )
    .await;
    assert_eq!(r.error(), "missing_token");
}

/// A kept-alive connection remembers the last token it verified; a
/// different token on it — another user's, a forgery of the same length,
/// none — is judged on its own, never answered from the memory.
#[tokio::test]
async fn a_kept_alive_connection_judges_every_token_it_sends() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let alice = token_with(json!({ "sub": "alice", "sid": "s-a", "roles": ["viewer"] }));
    let bob = token_with(json!({ "sub": "bob", "sid": "s-b", "roles": ["viewer"] }));
    let mut forged = alice.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let mut c = KeptAlive::open(gw.addr).await;
    let mut seen = Vec::new();
    for (token, status) in [
        (Some(&alice), 200),
        (Some(&alice), 200),
        (Some(&bob), 200),
        (Some(&forged), 401),
        (None, 401),
        (Some(&alice), 200),
    ] {
        let before = up.count();
        let r = c.get("/bots/1/flows", token.map(String::as_str)).await;
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        if status == 200 {
            seen.push(up.last().header("x-rolegate-user").unwrap().to_string());
        } else {
            assert_eq!(up.count(), before, "a refused request reached the upstream");
        }
    }
    assert_eq!(seen, ["alice", "alice", "bob", "alice"]);
}

/// The connection's memory of a token ends with the token's `exp`.
#[tokio::test]
async fn a_kept_alive_connection_s_token_expires_on_time() {
    let up = Upstream::start().await;
    let dir = scratch_dir("gw");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n",
        identity_yaml().replace("leeway: 5s", "leeway: 0s"),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let exp = now() + 2;
    let t = token_with(json!({ "exp": exp, "roles": ["viewer"] }));
    let mut c = KeptAlive::open(gw.addr).await;
    assert_eq!(c.get("/bots/1/flows", Some(&t)).await.status, 200);
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = c.get("/bots/1/flows", Some(&t)).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 1);
}

// ------------------------------------------------------------------ policy

#[tokio::test]
async fn roles_inheritance_scopes_and_tenants() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let cases: Vec<(serde_json::Value, &str, &str, u16)> = vec![
        (json!({ "roles": ["viewer"] }), "GET", "/bots/1/flows", 200),
        (json!({ "roles": ["viewer"] }), "PUT", "/bots/1/flows", 403),
        (json!({ "roles": ["editor"] }), "PUT", "/bots/1/flows", 200),
        (json!({ "roles": ["editor"] }), "GET", "/bots/1/flows", 200),
        (
            json!({ "roles": ["approver@bot:1", "developer@bot:1"] }),
            "POST",
            "/bots/1/publish",
            200,
        ),
        (
            json!({ "roles": ["approver@bot:1", "developer@bot:2"] }),
            "POST",
            "/bots/1/publish",
            403,
        ),
        (
            json!({ "roles": ["approver@bot:1", "developer@bot:2"] }),
            "POST",
            "/bots/2/publish",
            403,
        ),
        (
            json!({ "roles": ["approver@bot:1"] }),
            "POST",
            "/bots/1/publish",
            403,
        ),
        (
            json!({ "roles": ["approver@bot:1", "developer@bot:1"] }),
            "POST",
            "/bots/2/publish",
            403,
        ),
        (
            json!({ "roles": ["partner-admin"], "partners": ["acme"] }),
            "GET",
            "/partners/acme/users",
            200,
        ),
        (
            json!({ "roles": ["partner-admin"], "partners": ["acme"] }),
            "GET",
            "/partners/globex/users",
            403,
        ),
        (
            json!({ "roles": ["viewer"], "partners": ["acme"] }),
            "GET",
            "/partners/acme/users",
            403,
        ),
        (
            json!({ "roles": ["unknown-role"] }),
            "GET",
            "/bots/1/flows",
            403,
        ),
        (json!({ "roles": [] }), "GET", "/bots/1/flows", 403),
        (
            json!({ "grants": ["bot.flows.view"] }),
            "GET",
            "/bots/1/flows",
            200,
        ),
    ];
    for (extra, method, path, want) in cases {
        let before = up.count();
        let t = token_with(extra.clone());
        let r = req(gw.addr, method, path, Some(&t), &[]).await;
        assert_eq!(
            r.status,
            want,
            "{extra} {method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if want == 403 {
            assert_eq!(r.error(), "forbidden");
            assert_eq!(up.count(), before, "a denied request reached the upstream");
        } else {
            assert_eq!(up.count(), before + 1);
        }
    }
}

#[tokio::test]
async fn default_deny_and_public_routes() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let r = req(gw.addr, "GET", "/not/configured", Some(&viewer()), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));
    // A method the route does not list.
    let r = req(gw.addr, "DELETE", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 404);
    // HEAD follows GET.
    let r = req(gw.addr, "HEAD", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().method, "HEAD");
    // Public: no token needed, and no identity is injected even if spoofed;
    // credentials nobody verified are not passed on.
    let r = req(
        gw.addr,
        "GET",
        "/api/status",
        Some("forged.jwt.token"),
        &["X-Rolegate-User: admin", "Cookie: rg_session=forged"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-rolegate-user"), None);
    assert_eq!(up.last().header("authorization"), None);
    assert_eq!(up.last().header("cookie"), None);
    assert_eq!(up.count(), 2);
}

// ------------------------------------------------------------- path tricks

/// A literal route segment holding a delimiter (`:`, `@`) cannot be dodged
/// by escaping it into a looser catch-all: the backend decodes `%3A` back
/// to the `:` of the route that was skipped. Nor can a character a path
/// may not hold raw be spelt both ways.
#[tokio::test]
async fn an_escaped_delimiter_does_not_dodge_a_literal_route() {
    let up = Upstream::start().await;
    let dir = scratch_dir("gw-delims");
    std::fs::write(
        dir.join("rules.yaml"),
        r#"
roles:
  viewer: { grants: [bot.flows.view] }
  purger: { grants: [jobs.purge] }
routes:
  - { name: purge, match: { path: "/v1/jobs:purge" }, require: jobs.purge }
  - { name: me, match: { path: "/users/@me" }, require: jobs.purge }
  - { name: pipe, match: { path: "/users/a%7Cb" }, require: jobs.purge }
  - { name: v1, match: { path: "/v1/**" }, require: bot.flows.view }
  - { name: users, match: { path: "/users/**" }, require: bot.flows.view }
"#,
    )
    .unwrap();
    let cfg = format!(
        "{}upstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n",
        identity_yaml(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let t = viewer();
    for path in [
        "/v1/jobs%3Apurge",
        "/v1/jobs%3apurge",
        "/users/%40me",
        "/users/a%7Cb",
        "/users/a%7cb",
    ] {
        let r = req(gw.addr, "POST", path, Some(&t), &[]).await;
        assert_eq!((r.status, r.error().as_str()), (403, "forbidden"), "{path}");
    }
    let r = raw(
        gw.addr,
        format!("GET /users/a|b HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "a raw | dodged the route spelt %7C");
    assert_eq!(up.count(), 0, "a dodged route reached the upstream");
    // Allowed, the request is forwarded as it was routed.
    let purger = token_with(json!({ "roles": ["purger"] }));
    let r = req(gw.addr, "POST", "/v1/jobs%3Apurge", Some(&purger), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/v1/jobs:purge");
    let r = req(gw.addr, "GET", "/users/x%3Dy%2C%28z%29", Some(&t), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/users/x=y,(z)");
}

#[tokio::test]
async fn path_tricks_are_refused_or_normalised_and_the_same_path_is_forwarded() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = viewer();
    let refused: &[(&str, u16)] = &[
        ("/bots/1/%2e%2e/publish", 400),
        ("/bots/1/../1/flows", 400),
        ("/bots/1/./flows", 400),
        ("/bots/1%2Fflows", 400),
        ("/bots/1%2fflows", 400),
        ("/bots/1%5Cflows", 400),
        ("/bots/1/flows%00", 400),
        ("/bots/1/flows;jsessionid=x", 400),
        ("/bots/1/%ZZ", 400),
        ("/bots/%ff/flows", 400),
        ("/bots/1/flows/", 404),
        ("/BOTS/1/flows", 404),
        ("/bots/1/Flows", 404),
        ("/items/12abc", 404),
    ];
    for (path, want) in refused {
        let r = req(gw.addr, "GET", path, Some(&t), &[]).await;
        assert_eq!(
            r.status,
            *want,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            matches!(r.error().as_str(), "bad_request" | "no_route"),
            "{path}"
        );
    }
    // Raw backslash and NUL never reach routing (hyper or canonicalisation refuses).
    for raw_target in ["/bots/1\\flows", "/bots/1/fl\0ows"] {
        let r = raw(gw.addr, format!("GET {raw_target} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status, 400, "{raw_target:?}");
    }
    assert_eq!(up.count(), 0, "a refused path reached the upstream");

    let forwarded: &[(&str, &str)] = &[
        ("//bots//1///flows", "/bots/1/flows"),
        ("/bots/1/%66lows", "/bots/1/flows"),
        ("/bots/%31/flows", "/bots/1/flows"),
        ("/items/12", "/items/12"),
        (
            "/bots/1/flows?a=%2F..&b=%2e%2e/x",
            "/bots/1/flows?a=%2F..&b=%2e%2e/x",
        ),
        ("/files/a/b/c.txt", "/files/a/b/c.txt"),
        ("/files/a%20b", "/files/a%20b"),
    ];
    for (path, seen) in forwarded {
        let r = req(gw.addr, "GET", path, Some(&t), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            up.last().uri,
            *seen,
            "{path} was forwarded differently from what was decided"
        );
    }

    // Absolute-form request target: routed and forwarded in origin form.
    let r = raw(
        gw.addr,
        format!("GET http://app.test/bots/1/flows?x=1 HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/bots/1/flows?x=1");
    assert_eq!(up.last().header("x-forwarded-host"), Some("app.test"));

    // Authority-form and CONNECT are not resource requests.
    for line in ["CONNECT 127.0.0.1:22 HTTP/1.1", "GET app.test:80 HTTP/1.1"] {
        let r = raw(
            gw.addr,
            format!(
                "{line}\r\nHost: app.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{line}");
    }
    // Double encoding would become a dot segment or a slash for a backend that decodes twice.
    for path in ["/files/%252e%252e/secret", "/files/a%252Fb"] {
        let r = req(gw.addr, "GET", path, Some(&t), &[]).await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(up.count(), forwarded.len() + 1);
}

#[tokio::test]
async fn host_is_the_upstreams_unless_preserved() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let r = req(gw.addr, "GET", "/api/status", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(up.last().header("x-forwarded-host"), Some("app.test"));

    let dir = scratch_dir("preserve");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\", preserve_host: true }}\nrules: rules.yaml\n",
        identity_yaml(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    req(gw.addr, "GET", "/api/status", None, &[]).await;
    assert_eq!(up.last().header("host"), Some("app.test"));
    // As the client sent it, port included; so is `X-Forwarded-Host`.
    assert_eq!(
        get(&gw, "App.Test:8443", "/api/status", None).await.status,
        200
    );
    assert_eq!(up.last().header("host"), Some("App.Test:8443"));
    assert_eq!(up.last().header("x-forwarded-host"), Some("App.Test:8443"));
    // An absolute-form target's authority is the client's host.
    let r = raw(
        gw.addr,
        b"GET http://abs.test:81/api/status HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("host"), Some("abs.test:81"));
    assert_eq!(up.last().header("x-forwarded-host"), Some("abs.test:81"));
}

// ----------------------------------------------------------------- headers

#[tokio::test]
async fn spoofed_identity_and_rewrite_headers_never_reach_upstream() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "forward: { strip_headers: [Remote-User] }\n").await;
    let t = token_with(json!({ "sub": "alice", "roles": ["viewer"], "partners": ["acme"] }));
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&t),
        &[
            "X-Rolegate-User: admin",
            "x-rolegate-roles: super-admin",
            "X-Rolegate-Anything: 1",
            "Remote-User: admin",
            "X-Original-URL: /bots/1/publish",
            "X-Rewrite-URL: /bots/1/publish",
            "X-HTTP-Method-Override: DELETE",
            "X-Forwarded-For: 10.9.9.9",
            "Forwarded: for=10.9.9.9",
            "Connection: keep-alive, X-Rolegate-User, X-Rolegate-Roles",
            "X-Request-Id: trace-abc.123",
            "X_Rolegate_User: admin",
            "X-Rolegate_Roles: super-admin",
            "Cookie: theme=dark; rg_session=forged.token.value",
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let s = up.last();
    assert_eq!(s.header_all("x-rolegate-user"), vec!["alice"]);
    assert_eq!(s.header_all("x-rolegate-roles"), vec!["viewer"]);
    assert_eq!(s.header("x-rolegate-partners"), Some("acme"));
    assert_eq!(s.header("x-rolegate-session"), Some("s-1"));
    assert_eq!(s.header("x-rolegate-issuer"), Some(ISS_RSA));
    assert!(
        s.headers.iter().all(|(k, _)| !k.contains('_')),
        "underscore header forwarded: {:?}",
        s.headers
    );
    // Neither the verified bearer token (not passed by default) nor the
    // unverified cookie credential goes on.
    assert_eq!(s.header("authorization"), None);
    assert_eq!(s.header("cookie"), Some("theme=dark"));
    for gone in [
        "x-rolegate-anything",
        "remote-user",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "forwarded",
    ] {
        assert_eq!(s.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(s.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(s.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(s.header_all("x-forwarded-host"), vec!["app.test"]);
    assert_eq!(s.header_all("x-request-id"), vec!["trace-abc.123"]);
    assert_eq!(r.header("x-request-id"), Some("trace-abc.123"));
    // The upstream's own hop-by-hop headers do not reach the client.
    assert_eq!(r.header("x-upstream-private"), None);

    // An invalid incoming request id is replaced.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&t),
        &["X-Request-Id: bad id\"<>"],
    )
    .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id\"<>");
    assert_eq!(up.last().header_all("x-request-id"), vec![id.as_str()]);
    // A token without a session id (no `sid`, no `jti`) is its own
    // session: no `X-Rolegate-Session` is sent, nor the client's.
    let own = token_with(json!({ "sub": "bob", "roles": ["viewer"], "sid": null }));
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&own),
        &["X-Rolegate-Session: forged"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-rolegate-user"), Some("bob"));
    assert_eq!(up.last().header("x-rolegate-session"), None);
    // The same request again (the token's principal cached).
    req(gw.addr, "GET", "/bots/1/flows", Some(&own), &[]).await;
    assert_eq!(up.last().header("x-rolegate-session"), None);
}

// -------------------------------------------------------------- forwarding

#[tokio::test]
async fn bodies_stream_upstream_within_the_limit() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = token_with(json!({ "roles": ["editor"] }));
    let body = "x".repeat(500);
    let r = raw(
        gw.addr,
        format!("PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{body}").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().body.len(), 500);

    // Declared too large: refused before anything is sent.
    let before = up.count();
    let r = raw(
        gw.addr,
        format!("PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (413, "body_too_large"));
    assert_eq!(up.count(), before);

    // Chunked past the limit: the stream is cut and the client gets 413.
    let chunk = "y".repeat(800);
    let r = raw(
        gw.addr,
        format!("PUT /bots/1/flows HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(up.seen.lock().unwrap().iter().all(|s| s.body.len() <= 1024));
}

/// An upstream that accepts connections and never answers.
async fn silent_upstream() -> std::net::SocketAddr {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = silent.accept().await.unwrap();
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    // A port with nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = start_gateway(closed, "").await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(r.json()["request_id"].is_string());

    // An upstream that accepts and never answers.
    let silent_addr = silent_upstream().await;
    let dir = scratch_dir("silent");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{silent_addr}\", timeout: 300ms }}\nrules: rules.yaml\n",
        identity_yaml()
    );
    let gw = start_with_config(&dir, &cfg).await;
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!((r.status, r.error().as_str()), (504, "upstream_timeout"));
}

/// A connection keeps its upstream-head timer between requests (moved to
/// each request's own deadline): an earlier deadline after a later one
/// still times out in time, and a timer that fired still serves the next
/// request.
#[tokio::test]
async fn each_request_on_a_connection_gets_its_own_upstream_deadline() {
    let up = Upstream::start().await;
    let silent_addr = silent_upstream().await;
    let dir = scratch_dir("deadlines");
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\", timeout: 60s }}\n  silent: {{ url: \"http://{silent_addr}\", timeout: 300ms }}\n\
         roles:\n  viewer: {{ grants: [bot.flows.view] }}\n\
         routes:\n  - {{ name: fast, match: {{ methods: [GET], path: /fast }}, require: bot.flows.view, upstream: app }}\n\
         \x20 - {{ name: silent, match: {{ methods: [GET], path: /silent }}, require: bot.flows.view, upstream: silent }}\n",
        identity_yaml(),
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let token = viewer();
    let mut conn = KeptAlive::open(gw.addr).await;
    assert_eq!(conn.get("/fast", Some(&token)).await.status, 200);
    for _ in 0..2 {
        // After a 60 s deadline, one 300 ms away (a 60 s wait would
        // outlast the client's 10 s read); after a timer that fired,
        // another.
        let r = conn.get("/silent", Some(&token)).await;
        assert_eq!((r.status, r.error().as_str()), (504, "upstream_timeout"));
    }
    let r = conn.get("/fast", Some(&token)).await;
    assert_eq!(r.status, 200, "a fired timer still serves the next request");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn reasons_can_be_hidden_from_clients() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "errors: { expose_reason: false }\n").await;
    let r = req(gw.addr, "PUT", "/bots/1/flows", Some(&viewer()), &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "access denied");
    let expired = sign(
        Algorithm::RS256,
        None,
        &claims(ISS_RSA, json!({ "exp": now() - 120 })),
    );
    let r = req(gw.addr, "GET", "/bots/1/flows", Some(&expired), &[]).await;
    assert_eq!(r.json()["reason"], "authentication required");
}

// ------------------------------------- identity: holes found from outside

fn reason(r: &Resp) -> String {
    r.json()["reason"].as_str().unwrap_or_default().to_string()
}

/// The identity headers that backends behind oauth2-proxy, Authelia,
/// Pomerium, Envoy and others trust, as a client would spoof them.
const OTHER_PROXIES_IDENTITY: &[&str] = &[
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "X-Remote-User",
    "X-Forwarded-Uri",
    "X-Forwarded-Ssl",
    "X-Envoy-Original-Path",
    "X-Original-Method",
    "X-Pomerium-Claim-Email",
    "X-Webauth-User",
    "X-Amzn-Oidc-Identity",
    "X-Goog-Authenticated-User-Email",
    "X-Ms-Client-Principal-Name",
    "True-Client-IP",
    "Cf-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "X-Authentik-Username",
    "X-Authentik-Groups",
    "Tailscale-User-Login",
    "X-Consumer-Username",
    "X-Consumer-Groups",
    "X-Vouch-User",
    "X-Authenticated-Userid",
    "X-Authenticated-Scope",
    "X-Userinfo",
];

#[tokio::test]
async fn identity_headers_of_other_auth_proxies_never_reach_upstream() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let lines: Vec<String> = OTHER_PROXIES_IDENTITY
        .iter()
        .map(|h| format!("{h}: admin"))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    // A protected route and a public one.
    for (target, token) in [("/bots/1/flows", Some(viewer())), ("/api/status", None)] {
        let r = req(gw.addr, "GET", target, token.as_deref(), &lines).await;
        assert_eq!(r.status, 200, "{target}");
        let s = up.last();
        for h in OTHER_PROXIES_IDENTITY {
            assert_eq!(s.header(h), None, "{h} reached the upstream on {target}");
        }
    }

    // `keep_headers` forwards one name of the default list, and only it;
    // `strip_headers` extends the list with names and prefixes.
    let up = Upstream::start().await;
    let gw = start_gateway(
        up.addr,
        "forward: { keep_headers: [X-Forwarded-Ssl], strip_headers: [X-Acme-*, X-Tenant] }\n",
    )
    .await;
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&viewer()),
        &[
            "X-Forwarded-Ssl: on",
            "X-Forwarded-User: admin",
            "X-Acme-User: admin",
            "X-Tenant: acme",
            "X-Other: kept",
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let s = up.last();
    assert_eq!(s.header("x-forwarded-ssl"), Some("on"));
    assert_eq!(s.header("x-other"), Some("kept"));
    for gone in ["x-forwarded-user", "x-acme-user", "x-tenant"] {
        assert_eq!(s.header(gone), None, "{gone} reached the upstream");
    }
}

#[tokio::test]
async fn forwarding_headers_cannot_be_kept() {
    let dir = scratch_dir("keep");
    let cfg = "listen: { addr: \"127.0.0.1:0\" }\nforward: { keep_headers: [X-Forwarded-For] }\nroutes:\n  - { name: s, match: { path: /s }, public: true }\nupstreams: { app: { url: \"http://127.0.0.1:9\" } }\n";
    std::fs::write(dir.join("rolegate.yaml"), cfg).unwrap();
    let errors = match rolegate::config::load(&dir.join("rolegate.yaml")) {
        Ok(_) => panic!("keeping X-Forwarded-For was accepted"),
        Err(d) => d
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    };
    assert!(errors.contains("cannot be kept"), "{errors}");
}

#[tokio::test]
async fn credential_cookie_has_one_reading() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let t = viewer();
    // The verified cookie plus a look-alike a backend would read as the
    // same cookie: refused, whichever spelling.
    for lookalike in [
        "rg_session =FORGED",
        "rg.session=FORGED",
        "rg%5Fsession=FORGED",
        "rg session=FORGED",
        "RG_SESSION=FORGED",
        "x=1, rg_session=FORGED",
    ] {
        let r = req(
            gw.addr,
            "GET",
            "/bots/1/flows",
            None,
            &[&format!("Cookie: rg_session={t}; {lookalike}")],
        )
        .await;
        assert_eq!(r.status, 401, "{lookalike}");
        assert!(reason(&r).contains("more than once"), "{lookalike}");
    }
    // A look-alike alone is no credential.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&format!("Cookie: rg.session={t}")],
    )
    .await;
    assert_eq!(r.error(), "missing_token");
    assert_eq!(up.count(), 0, "a refused request reached the upstream");
    // With a verified bearer token, every look-alike is removed on the way
    // upstream; unrelated cookies stay.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        Some(&t),
        &["Cookie: theme=dark; rg.session=A; rg%5Fsession=B; rg session=C; lang=en, RG_SESSION=D"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("cookie"), Some("theme=dark"));
    // Public route: the same.
    let r = req(
        gw.addr,
        "GET",
        "/api/status",
        None,
        &["Cookie: rg_session=x; rg.session=y; theme=dark"],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("cookie"), Some("theme=dark"));
}

#[tokio::test]
async fn verified_credentials_are_forwarded_only_where_asked() {
    let t = viewer();
    let cookie = format!("Cookie: theme=dark; rg_session={t}");
    // The default is off; an upstream turns it on; a route overrides its
    // upstream either way.
    let up = Upstream::start().await;
    let gw = start_gateway(
        up.addr,
        "routes:\n  - { name: on, match: { path: /on }, require: bot.flows.view, pass_credentials: true }\n",
    )
    .await;
    let up_on = Upstream::start().await;
    let dir = scratch_dir("pass");
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\", pass_credentials: true }}\nroutes:\n  - {{ name: inherits, match: {{ path: /inherits }}, require: authenticated }}\n  - {{ name: off, match: {{ path: /off }}, require: authenticated, pass_credentials: false }}\n",
        identity_yaml(),
        up_on.addr
    );
    let gw_on = start_with_config(&dir, &cfg).await;
    for (gw, up, path, passed) in [
        (&gw, &up, "/bots/1/flows", false),
        (&gw, &up, "/on", true),
        (&gw_on, &up_on, "/inherits", true),
        (&gw_on, &up_on, "/off", false),
    ] {
        let r = req(gw.addr, "GET", path, Some(&t), &[&cookie]).await;
        assert_eq!(r.status, 200, "{path}");
        let got = up.last().header("authorization").map(str::to_string);
        assert_eq!(got.is_some(), passed, "bearer on {path}");
        assert_eq!(up.last().header("cookie"), Some("theme=dark"), "{path}");
        let r = req(gw.addr, "GET", path, None, &[&cookie]).await;
        assert_eq!(r.status, 200, "{path}");
        let got = up.last().header("cookie").map(str::to_string);
        let want = if passed {
            format!("theme=dark; rg_session={t}")
        } else {
            "theme=dark".to_string()
        };
        assert_eq!(got.as_deref(), Some(want.as_str()), "cookie on {path}");
    }
}

/// Signs a payload given as raw JSON text (for duplicate members, which no
/// serializer writes).
fn sign_raw_hs256(header: &str, payload: &str) -> String {
    let secret = std::fs::read_to_string(key("hmac.secret")).unwrap();
    let msg = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{msg}.{sig}")
}

#[tokio::test]
async fn tokens_with_duplicate_members_are_refused() {
    let up = Upstream::start().await;
    let gw = start_gateway(up.addr, "").await;
    let (exp, now) = (now() + 3600, now());
    let base = format!(r#""iss":"{ISS_HMAC}","aud":"{AUD}","sub":"u1","exp":{exp},"iat":{now}"#);
    let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
    // The control: the same signing path without duplicates is accepted.
    let ok = sign_raw_hs256(hs, &format!(r#"{{{base},"roles":["editor"]}}"#));
    let r = req(gw.addr, "PUT", "/bots/1/flows", Some(&ok), &[]).await;
    assert_eq!(r.status, 200);
    let forged = [
        // last one wins in serde_json: viewer → editor
        (
            hs.to_string(),
            format!(r#"{{{base},"roles":["viewer"],"roles":["editor"]}}"#),
        ),
        // an escaped spelling of the same name
        (
            hs.to_string(),
            format!(r#"{{{base},"roles":["viewer"],"ro\u006ces":["editor"]}}"#),
        ),
        // inside a nested object
        (
            hs.to_string(),
            format!(r#"{{{base},"roles":["editor"],"ext":{{"a":1,"a":2}}}}"#),
        ),
        // in the header
        (
            r#"{"alg":"HS256","alg":"HS256","typ":"JWT"}"#.to_string(),
            format!(r#"{{{base},"roles":["editor"]}}"#),
        ),
    ];
    for (h, p) in forged {
        let t = sign_raw_hs256(&h, &p);
        let r = req(gw.addr, "PUT", "/bots/1/flows", Some(&t), &[]).await;
        assert_eq!(r.status, 401, "{p}");
        assert_eq!(r.error(), "invalid_token");
        assert!(reason(&r).contains("duplicate member"), "{p}");
    }
    assert_eq!(up.count(), 1, "only the control reached the upstream");
}

#[tokio::test]
async fn hmac_secrets_are_selected_by_kid() {
    let up = Upstream::start().await;
    let dir = scratch_dir("hmac-kid");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let s1 = "first-secret-of-thirty-two-bytes-or-more";
    let s2 = "second-secret-of-thirty-two-bytes-or-more";
    std::fs::write(dir.join("k1.secret"), s1).unwrap();
    std::fs::write(dir.join("k2.secret"), s2).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\nidentity:\n  issuers:\n    - {{ iss: rot, audiences: [{AUD}], algorithms: [HS256], keys: {{ hmac: [{{ file: k1.secret, kid: k1 }}, {{ file: k2.secret, kid: k2 }}] }} }}\n    - {{ iss: one, audiences: [{AUD}], algorithms: [HS256], keys: {{ hmac: [{{ file: k1.secret, kid: only }}] }} }}\nupstreams: {{ app: {{ url: \"http://{}\" }} }}\nrules: rules.yaml\n",
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let mint = |iss: &str, kid: Option<&str>, secret: &str| {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(
            &h,
            &claims(iss, json!({ "roles": ["viewer"] })),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (mint("rot", Some("k1"), s1), 200, ""),
        (mint("rot", Some("k2"), s2), 200, ""),
        (mint("rot", Some("k1"), s2), 401, "signature is invalid"),
        (mint("rot", Some("k3"), s1), 401, "key id is unknown"),
        (
            mint("rot", None, s1),
            401,
            "no kid and the issuer has several keys",
        ),
        // One secret: a token without kid still works; a wrong kid does not.
        (mint("one", None, s1), 200, ""),
        (mint("one", Some("only"), s1), 200, ""),
        (mint("one", Some("other"), s1), 401, "key id is unknown"),
    ];
    for (i, (t, status, detail)) in cases.iter().enumerate() {
        let r = req(gw.addr, "GET", "/bots/1/flows", Some(t), &[]).await;
        assert_eq!(r.status, *status, "case {i}");
        if *status == 401 {
            assert!(reason(&r).contains(detail), "case {i}: {}", reason(&r));
        }
    }
}

/// An upstream that answers every request with these extra headers.
async fn answering_with(headers: &'static [(&'static str, &'static str)]) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        let mut resp =
                            hyper::Response::new(Full::new(bytes::Bytes::from_static(b"{}")));
                        for (k, v) in headers {
                            resp.headers_mut().append(
                                hyper::header::HeaderName::from_static(k),
                                hyper::header::HeaderValue::from_static(v),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Cross-site request forgery: a cookie-authenticated request with an
/// unsafe method from a page of another origin is refused before anything
/// is decided or forwarded; the site's own pages, the listed
/// `identity.cookie_origins`, safe methods and bearer tokens are not.
#[tokio::test]
async fn cookie_authenticated_writes_from_other_sites_are_refused() {
    let up = Upstream::start().await;
    let dir = scratch_dir("csrf");
    std::fs::write(dir.join("rules.yaml"), TEST_RULES).unwrap();
    let identity = identity_yaml().replace(
        "  cookie: rg_session\n",
        "  cookie: rg_session\n  cookie_origins: [\"https://Console.example/\"]\n",
    );
    assert!(identity.contains("cookie_origins"));
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{identity}upstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n",
        up.addr
    );
    let gw = start_with_config(&dir, &cfg).await;
    let t = token_with(json!({ "roles": ["editor"] }));
    let cookie = format!("Cookie: rg_session={t}");
    for (method, origin) in [
        ("PUT", "Origin: https://evil.example"),
        ("POST", "Origin: https://evil.example"),
        ("PUT", "Origin: null"),
        ("PUT", "Origin: http://app.test.evil.example"),
        ("PUT", "Origin: https://console.example.evil"),
    ] {
        let before = up.count();
        let r = req(gw.addr, method, "/bots/1/flows", None, &[&cookie, origin]).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "forbidden"),
            "{method} {origin}"
        );
        assert_eq!(r.json()["reason"], "cross-origin request not allowed");
        assert_eq!(up.count(), before, "{method} {origin} was forwarded");
    }
    // Two Origin headers are no answer either.
    let r = req(
        gw.addr,
        "PUT",
        "/bots/1/flows",
        None,
        &[
            &cookie,
            "Origin: https://app.test",
            "Origin: https://evil.example",
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    // The site's own page (same host, any scheme or port), a listed origin
    // (compared without case), a client that sends no Origin.
    for origin in [
        "Origin: https://app.test",
        "Origin: http://app.test:8080",
        "Origin: https://console.example",
        "X-No-Origin: 1",
    ] {
        let r = req(gw.addr, "PUT", "/bots/1/flows", None, &[&cookie, origin]).await;
        assert_eq!(
            r.status,
            200,
            "{origin}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // `Sec-Fetch-Site`, which pages cannot set, comes first: a same-origin
    // post of a `Referrer-Policy: no-referrer` page says `Origin: null`.
    for (site, origin, want) in [
        ("same-origin", "Origin: null", 200),
        ("none", "X-No-Origin: 1", 200),
        ("cross-site", "X-No-Origin: 1", 403),
        ("same-site", "X-No-Origin: 1", 403),
        ("same-site", "Origin: https://evil.example", 403),
        ("cross-site", "Origin: https://console.example", 200),
    ] {
        let fetch = format!("Sec-Fetch-Site: {site}");
        let r = req(
            gw.addr,
            "PUT",
            "/bots/1/flows",
            None,
            &[&cookie, &fetch, origin],
        )
        .await;
        assert_eq!(r.status, want, "{site} {origin}");
    }
    // A safe method from another site is a read: no check.
    let r = req(
        gw.addr,
        "GET",
        "/bots/1/flows",
        None,
        &[&cookie, "Origin: https://evil.example"],
    )
    .await;
    assert_eq!(r.status, 200);
    // A bearer token is not ambient: no check.
    let r = req(
        gw.addr,
        "PUT",
        "/bots/1/flows",
        Some(&t),
        &["Origin: https://evil.example"],
    )
    .await;
    assert_eq!(r.status, 200);
    // The listed origin may log the visitor out too.
    let r = req(
        gw.addr,
        "POST",
        "/.rolegate/logout",
        None,
        &[&cookie, "Origin: https://console.example"],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set = r.header("set-cookie").unwrap().to_string();
    assert!(
        set.starts_with("rg_session=;") && !set.contains("Secure"),
        "{set}"
    );
}

#[tokio::test]
async fn upstreams_cannot_set_the_gateways_cookie_or_identity_headers() {
    let addr = answering_with(&[
        ("set-cookie", "theme=dark; Path=/"),
        (
            "set-cookie",
            "rg_session=minted.by.backend; Path=/; HttpOnly",
        ),
        ("set-cookie", "RG.Session=fixated; Path=/"),
        ("x-rolegate-user", "admin"),
        ("x-rolegate-roles", "super-admin"),
        ("x-app", "1"),
    ])
    .await;
    let gw = start_gateway(addr, "").await;
    for (target, token) in [("/bots/1/flows", Some(viewer())), ("/api/status", None)] {
        let r = req(gw.addr, "GET", target, token.as_deref(), &[]).await;
        assert_eq!(r.status, 200, "{target}");
        let cookies: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["theme=dark; Path=/"], "{target}");
        assert_eq!(r.header("x-rolegate-user"), None);
        assert_eq!(r.header("x-rolegate-roles"), None);
        assert_eq!(r.header("x-app"), Some("1"));
    }
}

/// An upstream that writes `answer` after each request head (and body,
/// by its `Content-Length`) on a kept connection; and how many
/// connections it accepted.
async fn answering_bytes(
    answer: &'static [u8],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < end + 4 + len {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.drain(..end + 4 + len);
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// What the gateway's answers must not pass on, written by the upstream
/// in mixed spellings; and what they must pass on as it came.
#[tokio::test]
async fn answers_lose_hop_by_hop_and_gateway_fields_whichever_way_they_are_written() {
    let (addr, _) = answering_bytes(
        b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Connection: keep-alive, X-Hop\r\n\
Proxy-Authorization: Basic eA==\r\n\
X-HOP: secret\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\n\
Upgrade: h2c\r\n\
X-ROLEGATE-User: admin\r\n\
Set-Cookie: RG.Session=minted; Path=/\r\n\
Set-Cookie: theme=dark\r\n\
x-request-id: made-upstream\r\n\
Date: Sun, 06 Dec 2026 20:00:00 GMT\r\n\
X-App: 1\r\n\
Content-Length: 2\r\n\
\r\n\
{}",
    )
    .await;
    let gw = start_gateway(addr, "").await;
    let t = viewer();
    // A GET is served by the gateway's own HTTP/1.1 server, which writes
    // the upstream's fields as they came; a request with a body by hyper.
    let get = req(
        gw.addr,
        "GET",
        "/files/a",
        Some(&t),
        &["X-Request-Id: client-id"],
    )
    .await;
    let post = req_json(gw.addr, "POST", "/files/a", Some(&t), "{}").await;
    for (what, r) in [("GET", &get), ("POST", &post)] {
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.body, b"{}", "{what}");
        let all = |name: &str| -> Vec<&str> {
            r.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        for gone in [
            "x-hop",
            "proxy-authorization",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "x-rolegate-user",
        ] {
            assert_eq!(all(gone), Vec::<&str>::new(), "{what}: {gone}");
        }
        assert_eq!(all("set-cookie"), ["theme=dark"], "{what}");
        assert_eq!(all("date"), ["Sun, 06 Dec 2026 20:00:00 GMT"], "{what}");
        assert_eq!(all("content-length"), ["2"], "{what}");
        assert_eq!(all("content-type"), ["application/json"], "{what}");
        assert_eq!(all("x-app"), ["1"], "{what}");
        let ids = all("x-request-id");
        assert_eq!(ids.len(), 1, "{what}: {ids:?}");
        assert_ne!(ids[0], "made-upstream", "{what}");
        assert!(
            all("connection")
                .iter()
                .all(|v| v.eq_ignore_ascii_case("close")),
            "{what}"
        );
    }
    assert_eq!(get.header("x-request-id"), Some("client-id"));
    // Relayed as written (nginx's way), not re-spelled.
    assert!(get.headers.iter().any(|(k, _)| k == "X-App"));
}

/// The upstream's word on its connection holds when its fields are
/// relayed: `close` (in any field, any case) or HTTP/1.0 ends it, a
/// keep-alive answer's connection serves the next request.
#[tokio::test]
async fn relayed_answers_keep_their_connection_only_when_it_may_be_kept() {
    for (answer, connections) in [
        (
            &b"HTTP/1.1 200 OK\r\nX-App: 1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            3,
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-App: 1\r\nConnection: x-foo\r\nconnection: Close\r\nContent-Length: 2\r\n\r\nok",
            3,
        ),
        (
            b"HTTP/1.0 200 OK\r\nX-App: 1\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            3,
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-App: 1\r\nContent-Length: 2\r\n\r\nok",
            1,
        ),
    ] {
        let what = String::from_utf8_lossy(answer);
        let (addr, accepted) = answering_bytes(answer).await;
        let gw = start_gateway(addr, "").await;
        let t = viewer();
        for _ in 0..3 {
            let r = req(gw.addr, "GET", "/files/a", Some(&t), &[]).await;
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{what}");
            assert!(r.headers.iter().any(|(k, _)| k == "X-App"), "{what}: not relayed");
        }
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(n, connections, "{what}");
    }
}

/// Answers without a body (`304`, `204`, a `HEAD`'s) and heads with bare
/// LF line ends keep their own fields, lose the gateway's, and keep their
/// framing when relayed.
#[tokio::test]
async fn relayed_answers_without_a_body_or_with_bare_lf_are_cleaned_and_framed() {
    /// The upstream's answer, the method, then what the client must get:
    /// status, fields kept, fields gone, body.
    type Case = (
        &'static [u8],
        &'static str,
        u16,
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        &'static [u8],
    );
    let cases: [Case; 4] = [
        (
            b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nX-App: 1\r\nX-Rolegate-User: a\r\n\r\n",
            "GET",
            304,
            &[("etag", "\"e\""), ("x-app", "1")],
            &["x-rolegate-user"],
            b"",
        ),
        (
            b"HTTP/1.1 204 No Content\r\nX-App: 1\r\nSet-Cookie: rg_session=x\r\n\r\n",
            "GET",
            204,
            &[("x-app", "1")],
            &["set-cookie"],
            b"",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-App: 1\r\nContent-Length: 7\r\n\r\n",
            "HEAD",
            200,
            &[("x-app", "1"), ("content-length", "7")],
            &[],
            b"",
        ),
        (
            b"HTTP/1.1 200 OK\nX-App: 1\nX-ROLEGATE-Roles: r\nContent-Length: 2\n\nok",
            "GET",
            200,
            &[("x-app", "1"), ("content-length", "2")],
            &["x-rolegate-roles"],
            b"ok",
        ),
    ];
    for (answer, method, status, kept, gone, body) in cases {
        let what = String::from_utf8_lossy(answer);
        let (addr, _) = answering_bytes(answer).await;
        let gw = start_gateway(addr, "").await;
        let r = req(gw.addr, method, "/files/a", Some(&viewer()), &[]).await;
        assert_eq!(r.status, status, "{what}");
        assert!(
            r.headers.iter().any(|(k, _)| k == "X-App"),
            "{what}: not relayed"
        );
        for (name, value) in kept {
            assert_eq!(r.header(name), Some(*value), "{what}: {name}");
        }
        for name in gone {
            assert_eq!(r.header(name), None, "{what}: {name}");
        }
        assert_eq!(r.body, body, "{what}");
    }
}

// ------------------------------------------- virtual-host precedence
// A route with a `match.host` owns its host. A host-less route, however
// specific its path, never takes a request for a host that has routes of
// its own, so an admin vhost's requirement cannot be skipped through a
// public host-less path.

const VHOST_RULES: &str = r#"
roles:
  viewer: { grants: [docs.view] }
  admin: { grants: [admin.manage] }
routes:
  - { name: public-docs, match: { path: "/public/**" }, public: true }
  - { name: docs, match: { path: "/docs/{page}" }, require: docs.view }
  - { name: admin-all, match: { host: admin.example, path: "/**" }, require: admin.manage }
  - { name: tenant-api, match: { host: "*.tenants.example", methods: [GET], path: "/api/{x}" }, require: docs.view }
  - { name: tenant-one, match: { host: one.tenants.example, path: "/status" }, public: true }
"#;

async fn vhost_gateway(up: &Upstream) -> Gw {
    let dir = scratch_dir("vhost");
    std::fs::write(dir.join("rules.yaml"), VHOST_RULES).unwrap();
    let cfg = format!(
        "listen: {{ addr: \"127.0.0.1:0\" }}\n{}upstreams:\n  app: {{ url: \"http://{}\" }}\nrules: rules.yaml\n",
        identity_yaml(),
        up.addr
    );
    start_with_config(&dir, &cfg).await
}

/// `GET path` with this `Host` and optional bearer token.
async fn get(gw: &Gw, host: &str, path: &str, token: Option<&str>) -> Resp {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("\r\n");
    raw(gw.addr, r.as_bytes()).await
}

#[tokio::test]
async fn an_admin_vhosts_requirement_cannot_be_skipped_through_a_hostless_route() {
    let up = Upstream::start().await;
    let gw = vhost_gateway(&up).await;
    let viewer = token_with(json!({ "roles": ["viewer"] }));
    let admin = token_with(json!({ "roles": ["admin"] }));

    // On any other host the public host-less route serves.
    let r = get(&gw, "app.test", "/public/report", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/public/report");

    // On the admin host the host's own `/**` governs, though the host-less
    // `/public/**` is the more specific path: no token → 401, a viewer →
    // 403, and the upstream sees none of them.
    let before = up.count();
    for host in [
        "admin.example",
        "ADMIN.example",
        "admin.example.",
        "admin.example:8080",
    ] {
        let r = get(&gw, host, "/public/report", None).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "missing_token"),
            "{host}"
        );
        let r = get(&gw, host, "/public/report", Some(&viewer)).await;
        assert_eq!((r.status, r.error().as_str()), (403, "forbidden"), "{host}");
        let r = get(&gw, host, "/docs/intro", Some(&viewer)).await;
        assert_eq!((r.status, r.error().as_str()), (403, "forbidden"), "{host}");
    }
    assert_eq!(up.count(), before, "a refused request reached the upstream");
    let r = get(&gw, "admin.example", "/public/report", Some(&admin)).await;
    assert_eq!(r.status, 200);

    // No fallback: a path the admin host does not route is no route there,
    // even though a host-less route would take it.
    let r = get(&gw, "admin.example", "/", Some(&admin)).await;
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));

    // Exact host before wildcard, and no fallback from one to the other.
    let r = get(&gw, "one.tenants.example", "/status", None).await;
    assert_eq!(r.status, 200);
    let r = get(&gw, "one.tenants.example", "/api/x", Some(&viewer)).await;
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));
    let r = get(&gw, "two.tenants.example", "/api/x", Some(&viewer)).await;
    assert_eq!(r.status, 200);
    let r = get(&gw, "two.tenants.example", "/public/report", None).await;
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));
    // The wildcard needs a label: the bare name is just another host.
    let r = get(&gw, "tenants.example", "/public/report", None).await;
    assert_eq!(r.status, 200);

    // Only host names: what a backend or the router could read as another
    // host is refused (the whole value goes upstream in X-Forwarded-Host).
    let before = up.count();
    for host in [
        "app.test:1,evil.test",
        "app.test,evil.test",
        "admin.example..",
        ".admin.example",
        "admin..example",
        "admin.example%2e",
        "app.test:80x",
        "app.test:123456",
        "app.test;x",
    ] {
        let r = get(&gw, host, "/public/report", None).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "bad_request"),
            "{host}"
        );
    }
    assert_eq!(up.count(), before, "a bad Host reached the upstream");
    for host in [
        "app.test:8080",
        "[::1]:8080",
        "[::1]",
        "10.0.0.1",
        "app.test.",
        "a_b.test:",
    ] {
        let r = get(&gw, host, "/public/report", None).await;
        assert_eq!(r.status, 200, "{host}");
    }

    // Hosts changing from request to request on one kept-alive connection
    // are each routed as their own (the connection remembers the last one).
    let before = up.count();
    let hosts = [
        ("app.test", 200),
        ("admin.example", 401),
        ("app.test", 200),
        ("ADMIN.example", 401),
        ("admin.example", 401),
        ("app.test", 200),
        ("admin.example@app.test", 400),
    ];
    let mut pipelined = String::new();
    for (i, (host, _)) in hosts.iter().enumerate() {
        let close = if i + 1 == hosts.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        pipelined.push_str(&format!(
            "GET /public/report HTTP/1.1\r\nHost: {host}\r\n{close}\r\n"
        ));
    }
    let all = raw_bytes(gw.addr, pipelined.as_bytes()).await;
    let text = String::from_utf8_lossy(&all);
    let statuses: Vec<u16> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| text[i + 9..i + 12].parse().unwrap())
        .collect();
    let expected: Vec<u16> = hosts.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, expected, "{text}");
    assert_eq!(up.count(), before + 3);
}
