//! `rolegate demo`: a built-in sample backend (agent console + bot builder
//! JSON API with customer records) and the gateway in front of it, on
//! loopback, using the embedded `rolegate.yaml` and `rules/`.
//!
//! The sample backend knows nothing of roles: it answers every request and
//! echoes the identity headers the gateway injected, which is exactly the
//! kind of legacy backend rolegate is for. Nothing here is used by `serve`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::{self, Loaded, RulesSource};

include!(concat!(env!("OUT_DIR"), "/embedded_rules.rs"));

/// The shipped `rolegate.yaml`.
pub const EMBEDDED_CONFIG: &str = include_str!("../rolegate.yaml");
/// The upstream URL the embedded config names; the demo replaces it.
const CONFIG_UPSTREAM: &str = "http://127.0.0.1:7001";
const CONFIG_LISTEN: &str = "127.0.0.1:8080";
const CONFIG_SECRET: &str = "demo/dev-hmac.secret";

/// The embedded rules as `(name, text)` pairs.
pub fn embedded_rules() -> Vec<(String, String)> {
    EMBEDDED_RULES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Builds the demo runtime: embedded config and rules, `listen` address,
/// `upstream` address, a fresh HMAC secret and admin token, and sessions
/// kept under `state_dir`. The config, the rules and the secret are also
/// written to `state_dir` (secrets owner-only), so the printed `rolegate
/// explain -c <state_dir>/rolegate.yaml --token …` verifies the demo's
/// tokens exactly as the running gateway does.
pub fn runtime(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    state_dir: &Path,
) -> Result<Loaded, Vec<config::Diagnostic>> {
    let secret_path = state_dir.join("dev-hmac.secret");
    let secret = crate::token::random_id() + &crate::token::random_id();
    let text = EMBEDDED_CONFIG
        .replace(CONFIG_UPSTREAM, &format!("http://{upstream}"))
        .replace(CONFIG_LISTEN, &listen.to_string())
        .replace(CONFIG_SECRET, &secret_path.display().to_string());
    let written =
        write_private(&secret_path, secret.as_bytes()).and_then(|()| write_files(state_dir, &text));
    if let Err((path, e)) = written {
        return Err(vec![config::Diagnostic {
            severity: config::Severity::Error,
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot write the demo's files: {e}"),
        }]);
    }
    let mut loaded = config::load_from_text(
        "rolegate.yaml (embedded)",
        &text,
        Path::new("."),
        RulesSource::Embedded(embedded_rules()),
    )?;
    loaded.runtime.sessions.store = crate::session::StoreKind::Embedded {
        state_dir: state_dir.join("sessions"),
    };
    loaded.runtime.masking.audit_log = state_dir.join("audit.jsonl");
    loaded.runtime.admin = Some(config::AdminSettings {
        addr: admin,
        token: crate::token::random_id(),
    });
    Ok(loaded)
}

/// The demo config as written to `state_dir` (for `explain -c`).
pub fn config_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("rolegate.yaml")
}

type WriteError = (std::path::PathBuf, std::io::Error);

/// The config and the embedded rules, as files `rolegate explain` can load.
fn write_files(state_dir: &Path, config_text: &str) -> Result<(), WriteError> {
    let cfg = config_path(state_dir);
    std::fs::write(&cfg, config_text).map_err(|e| (cfg.clone(), e))?;
    for (name, text) in EMBEDDED_RULES {
        let path = state_dir.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))?;
        }
        std::fs::write(&path, text).map_err(|e| (path.clone(), e))?;
    }
    Ok(())
}

/// Writes a secret readable by its owner only (0600 from creation on: no
/// window in which another local user could read it).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| (path.to_path_buf(), e))
}

/// Sample customer records (the PII the masking stage will protect).
fn customers() -> Value {
    json!([
        { "id": "c-1001", "name": "Asha Rao", "email": "asha.rao@example.com", "phone": "+91 98200 11223", "tier": "gold" },
        { "id": "c-1002", "name": "Daniel Cohen", "email": "daniel.cohen@example.org", "phone": "+972 54 555 0101", "tier": "silver" },
        { "id": "c-1003", "name": "Maria Silva", "email": "maria.silva@example.net", "phone": "+55 11 91234 5678", "tier": "bronze" }
    ])
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The sample backend's answer to one request.
pub fn sample_backend(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let identity = json!({
        "user": h("x-rolegate-user"),
        "roles": h("x-rolegate-roles"),
        "partners": h("x-rolegate-partners"),
        "teams": h("x-rolegate-teams"),
    });
    if path == "/api/customers" {
        return json_response(
            StatusCode::OK,
            &json!({ "customers": customers(), "seen_by": identity }),
        );
    }
    if let Some(id) = path.strip_prefix("/api/customers/") {
        let (id, rest) = id.split_once('/').unwrap_or((id, ""));
        let all = customers();
        if rest == "history"
            && let Some(c) = all
                .as_array()
                .and_then(|a| a.iter().find(|c| c["id"] == id))
        {
            let transcript = format!(
                "Customer: hi. Please call me back on {} or write to {}. My card 4242 4242 4242 4242 was charged twice.",
                c["phone"].as_str().unwrap_or(""),
                c["email"].as_str().unwrap_or("")
            );
            let history = json!({
                "customer": c,
                "conversations": [
                    { "id": "cv-7", "channel": "whatsapp", "transcript": transcript, "notes": "verified caller" }
                ],
                "seen_by": identity,
            });
            return json_response(StatusCode::OK, &history);
        }
        return match all
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
        {
            Some(c) => json_response(
                StatusCode::OK,
                &json!({ "customer": c, "seen_by": identity }),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": "no such customer", "id": id }),
            ),
        };
    }
    if path == "/api/status" {
        return json_response(StatusCode::OK, &json!({ "status": "ok" }));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "ok": true,
            "backend": "rolegate demo backend",
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "seen_by": identity,
        }),
    )
}

/// The sample backend's live feed: `GET /api/live/chats` as a websocket
/// sends an `incoming_chat` event every [`LIVE_EVERY`] (what an agent
/// console would push), until the client (or the gateway) closes it.
pub const LIVE_PATH: &str = "/api/live/chats";
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Answers a websocket handshake on [`LIVE_PATH`] with a `101` and starts
/// the feed; `None` when the request is not one.
fn live_chats(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let h = req.headers();
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if req.uri().path() != LIVE_PATH || !upgrade {
        return None;
    }
    let key = h.get("sec-websocket-key")?.as_bytes().to_vec();
    let user = h
        .get("x-rolegate-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let Ok(io) = on_upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        let mut tick = tokio::time::interval(LIVE_EVERY);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    let event = json!({ "event": "incoming_chat", "chat": format!("ch-{n}"), "channel": "whatsapp", "for": user });
                    if tx.send(Message::text(event.to_string())).await.is_err() {
                        return;
                    }
                }
                m = rx.next() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let _ = tx.close().await;
                        return;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&accept).ok()?,
    );
    Some(r)
}

/// Starts the sample backend on `listener`; runs until the process ends.
pub async fn serve_backend(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|mut req: Request<Incoming>| async move {
                let resp = live_chats(&mut req).unwrap_or_else(|| sample_backend(&req));
                Ok::<_, Infallible>(resp)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// A demo persona: who, which claims, and requests that show the policy.
struct Persona {
    who: &'static str,
    sub: &'static str,
    roles: &'static [&'static str],
    partners: &'static [&'static str],
    requests: &'static [(&'static str, &'static str, &'static str)],
}

const PERSONAS: &[Persona] = &[
    Persona {
        who: "agent",
        sub: "agent-anna",
        roles: &["agent"],
        partners: &[],
        requests: &[
            (
                "POST",
                "/api/conversations/cv-7/transfer",
                "allowed: every agent may transfer",
            ),
            (
                "GET",
                "/api/customers/c-1001/history",
                "allowed: name/phone/email fields masked, and the phone, email and card number typed into the transcript",
            ),
            (
                "GET",
                "/api/customers/c-1002",
                "denied: no active conversation with c-1002 yet; push one with the admin call below, then run this again: allowed, PII masked",
            ),
            (
                "GET",
                "/api/customers/c-1001",
                "denied: no active conversation with c-1001",
            ),
            (
                "GET",
                "/api/supervisor/dashboard",
                "denied: supervisors only",
            ),
        ],
    },
    Persona {
        who: "agent with a 30 s idle timeout (role demo-idle-30s)",
        sub: "idle-ida",
        roles: &["agent", "demo-idle-30s"],
        partners: &[],
        requests: &[(
            "POST",
            "/api/conversations/cv-7/transfer",
            "allowed now; wait 30 s and run it again: 401 session_expired (reason idle)",
        )],
    },
    Persona {
        who: "senior agent",
        sub: "senior-sam",
        roles: &["agent", "senior-agent"],
        partners: &[],
        requests: &[
            (
                "GET",
                "/api/customers/c-1001",
                "allowed: seniors see any customer profile",
            ),
            (
                "PUT",
                "/api/schema/customer",
                "denied: seniors may only view the schema",
            ),
        ],
    },
    Persona {
        who: "supervisor",
        sub: "super-sue",
        roles: &["agent", "supervisor"],
        partners: &[],
        requests: &[
            ("GET", "/api/supervisor/dashboard", "allowed"),
            (
                "GET",
                "/api/customers/c-1001/history",
                "allowed: the same history unmasked (and written to the audit log)",
            ),
            (
                "PUT",
                "/api/schema/customer",
                "allowed: supervisors edit the schema",
            ),
        ],
    },
    Persona {
        who: "bot-builder viewer",
        sub: "viewer-vic",
        roles: &["bot-builder-view"],
        partners: &[],
        requests: &[
            ("GET", "/bots/42/flows", "allowed: view flows"),
            ("PUT", "/bots/42/flows", "denied: view only"),
        ],
    },
    Persona {
        who: "partner admin (acme)",
        sub: "padmin-pat",
        roles: &["partner-admin"],
        partners: &["acme"],
        requests: &[
            ("GET", "/partners/acme/users", "allowed: member of acme"),
            (
                "GET",
                "/partners/globex/users",
                "denied: not a member of globex",
            ),
        ],
    },
];

/// The text `rolegate demo` prints: tokens and ready-to-paste curl commands.
pub fn banner(
    rt: &crate::config::Runtime,
    addr: SocketAddr,
    admin: SocketAddr,
    ttl: std::time::Duration,
    state_dir: &Path,
) -> String {
    let mut out = format!(
        "rolegate demo: gateway on http://{addr}, sample backend behind it.\n\
         Every request below goes through the gateway; the backend itself has no access control.\n\n\
         # no token: 401\ncurl -i http://{addr}/api/customers/c-1001\n# public route\ncurl -i http://{addr}/api/status\n"
    );
    for p in PERSONAS {
        let req = crate::token::TokenRequest {
            subject: p.sub.into(),
            roles: p.roles.iter().map(|s| s.to_string()).collect(),
            partners: p.partners.iter().map(|s| s.to_string()).collect(),
            ttl,
            ..Default::default()
        };
        let token = match crate::token::mint(&rt.auth, &req) {
            Ok(t) => t,
            Err(e) => return format!("cannot mint demo tokens: {e}"),
        };
        let var = p
            .sub
            .split('-')
            .next()
            .unwrap_or("tok")
            .to_ascii_uppercase();
        out.push_str(&format!(
            "\n# {} (roles: {})\n{var}={token}\n",
            p.who,
            p.roles.join(", ")
        ));
        for (method, path, note) in p.requests {
            out.push_str(&format!(
                "curl -i -X {method} -H \"Authorization: Bearer ${var}\" http://{addr}{path}   # {note}\n"
            ));
        }
    }
    out.push_str(&format!(
        "\n# websocket: the agent's live feed of incoming chats (an event every 3 s).\n\
         # IDLE's socket is closed by the gateway with 1008 \"session idle timeout\" 30 s after\n\
         # IDLE's last activity (events from the server never count; messages typed into the\n\
         # socket do). Logout, revocation or deactivation close it within a second.\n\
         websocat -H \"Authorization: Bearer $IDLE\" ws://{addr}{LIVE_PATH}\n\
         curl -i -N --http1.1 -H \"Authorization: Bearer $IDLE\" -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://{addr}{LIVE_PATH}   # raw frames\n"
    ));
    let admin_token = rt.admin.as_ref().map(|a| a.token.as_str()).unwrap_or("");
    out.push_str(&format!(
        "\n# admin API on http://{admin} (token below)\nADMIN={admin_token}\n\
         curl -s -X POST -H \"Authorization: Bearer $ADMIN\" -d '{{\"subject\":\"agent-anna\",\"object\":\"c-1002\"}}' http://{admin}/relations/active_conversation   # anna picks up c-1002: $AGENT may now view it\n\
         curl -s -X DELETE -H \"Authorization: Bearer $ADMIN\" -d '{{\"subject\":\"agent-anna\",\"object\":\"c-1002\"}}' http://{admin}/relations/active_conversation # conversation over: denied again\n\
         curl -s -H \"Authorization: Bearer $ADMIN\" http://{admin}/users/agent-anna/sessions\n\
         curl -s -X POST -H \"Authorization: Bearer $ADMIN\" http://{admin}/users/agent-anna/revoke       # then $AGENT gets 401 session_ended\n\
         curl -s -X POST -H \"Authorization: Bearer $ADMIN\" http://{admin}/users/senior-sam/deactivate   # every token of senior-sam refused\n\
         curl -s -X POST -H \"Authorization: Bearer $ADMIN\" http://{admin}/users/senior-sam/reactivate\n\
         curl -i -X POST -H \"Authorization: Bearer $SUPER\" http://{addr}/.rolegate/logout             # ends the supervisor's session\n"
    ));
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "rolegate".into());
    out.push_str(&format!(
        "\n# unmasked-PII access (the supervisor's history above) is audited in\n#   {audit}\n\
         # explain any decision offline, with the demo's config and secret:\n\
         \"{exe}\" explain -c \"{cfg}\" --token \"$AGENT\" GET /api/customers/c-1001\n\
         Ctrl-C stops the demo (and removes {state}).\n",
        audit = rt.masking.audit_log.display(),
        cfg = config_path(state_dir).display(),
        state = state_dir.display(),
    ));
    out
}
