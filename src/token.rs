//! `rolegate token`: mint development tokens with a `dev: true` HMAC issuer.
//!
//! Refuses unless the config has an issuer marked `dev: true` with an HMAC
//! secret and an HS* algorithm, so a production config (no dev issuer)
//! can never be used to forge tokens from the CLI.

use std::time::Duration;

use jsonwebtoken::{AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::auth::{Authenticator, now_unix};

/// What to put in the token.
#[derive(Debug, Default, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub roles: Vec<String>,
    pub partners: Vec<String>,
    pub teams: Vec<String>,
    pub profiles: Vec<String>,
    pub grants: Vec<String>,
    pub ttl: Duration,
    /// Which dev issuer, when there are several.
    pub issuer: Option<String>,
    /// Session id; a random one when `None`.
    pub session: Option<String>,
}

/// Sets `name` (possibly dotted, `realm.roles`) in `claims`.
fn set_claim(claims: &mut Map<String, Value>, name: &str, value: Value) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().unwrap_or(name);
    let mut cur = claims;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(obj) = entry else {
            return; // unreachable: made an object just above
        };
        cur = obj;
    }
    cur.insert(last.to_string(), value);
}

/// A random 128-bit hex id.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mints a token signed by a dev issuer.
pub fn mint(auth: &Authenticator, req: &TokenRequest) -> Result<String, String> {
    let candidates: Vec<_> = auth
        .issuers()
        .iter()
        .filter(|i| i.dev && i.dev_secret.is_some())
        .filter(|i| req.issuer.as_deref().is_none_or(|want| want == i.iss))
        .collect();
    let issuer = match candidates.as_slice() {
        [one] => *one,
        [] => return Err("no issuer with `dev: true` and an hmac_secret_file in this config: refusing to mint tokens".into()),
        _ => return Err("several dev issuers: choose one with --iss".into()),
    };
    let alg = issuer
        .algorithms
        .iter()
        .copied()
        .find(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or("the dev issuer allows no HS256/HS384/HS512 algorithm")?;
    let dev = issuer
        .dev_secret
        .as_ref()
        .ok_or("the dev issuer has no HMAC secret")?;
    let now = now_unix();
    let names = auth.claim_names();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer.iss));
    claims.insert(
        "aud".into(),
        json!(issuer.audiences.first().cloned().unwrap_or_default()),
    );
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + req.ttl.as_secs().max(1)));
    set_claim(&mut claims, &names.subject, json!(req.subject));
    set_claim(
        &mut claims,
        &names.session,
        json!(req.session.clone().unwrap_or_else(random_id)),
    );
    for (name, list) in [
        (&names.roles, &req.roles),
        (&names.partners, &req.partners),
        (&names.teams, &req.teams),
        (&names.profiles, &req.profiles),
        (&names.grants, &req.grants),
    ] {
        if !list.is_empty() {
            set_claim(&mut claims, name, json!(list));
        }
    }
    let mut header = Header::new(alg);
    header.kid = dev.kid.clone();
    // The issuer's first accepted type, when it lists some (`types`).
    if let Some(t) = issuer.types.first() {
        header.typ = Some(t.clone());
    }
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&dev.secret))
        .map_err(|e| e.to_string())
}
