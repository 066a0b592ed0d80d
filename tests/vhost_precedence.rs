//! Virtual-host precedence end to end: a route with a `match.host` owns its
//! host. A host-less route, however specific its path, never takes a
//! request for a host that has routes of its own, so an admin vhost's
//! requirement cannot be skipped through a public host-less path.

mod common;

use common::*;
use serde_json::json;

const RULES: &str = r#"
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

async fn gateway(up: &Upstream) -> Gw {
    let dir = scratch_dir("vhost");
    std::fs::write(dir.join("rules.yaml"), RULES).unwrap();
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
    let gw = gateway(&up).await;
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
}
