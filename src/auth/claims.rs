//! Verified claims → [`Principal`], with configurable claim names.
//!
//! A claim name may be a dotted path into nested objects
//! (`realm_access.roles`). List claims accept a JSON array of strings or a
//! single string; any other shape is a malformed token (401), because
//! silently dropping a malformed `partners` claim would change what the
//! token means.

use serde_json::{Map, Value};

use super::AuthError;
use crate::policy::Principal;

/// Where each principal field is read from (`identity.claims`).
#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub subject: String,
    pub session: String,
    pub roles: String,
    pub partners: String,
    pub teams: String,
    pub profiles: String,
    pub grants: String,
}

fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

fn string_list(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, AuthError> {
    match lookup(claims, name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| AuthError::BadClaim(name.to_string()))
            })
            .collect(),
        Some(_) => Err(AuthError::BadClaim(name.to_string())),
    }
}

fn string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match lookup(claims, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AuthError::BadClaim(name.to_string())),
    }
}

pub fn to_principal(
    claims: &Map<String, Value>,
    names: &ClaimNames,
    issuer: &str,
) -> Result<Principal, AuthError> {
    let subject = string(claims, &names.subject)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::MissingClaim(names.subject.clone()))?;
    // An empty `sid`/`jti` would make every such token share one session.
    let session = match string(claims, &names.session)?.filter(|s| !s.is_empty()) {
        Some(s) => Some(s),
        None => string(claims, "jti")
            .ok()
            .flatten()
            .filter(|s| !s.is_empty()),
    };
    // Only the claims not mapped to a field: a user directory's entry
    // replaces the fields, and a condition must not see the token's word
    // on them under another name (`principal.claims.partners`).
    let mapped = [
        &names.subject,
        &names.session,
        &names.roles,
        &names.partners,
        &names.teams,
        &names.profiles,
        &names.grants,
    ];
    let mut extra = std::collections::BTreeMap::new();
    for (k, v) in claims.iter().filter(|(k, _)| !mapped.contains(k)) {
        match v {
            Value::String(s) => {
                extra.insert(k.clone(), vec![s.clone()]);
            }
            Value::Array(items) if items.iter().all(Value::is_string) => {
                extra.insert(
                    k.clone(),
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok(Principal {
        subject,
        issuer: issuer.to_string(),
        session,
        roles: string_list(claims, &names.roles)?,
        partners: string_list(claims, &names.partners)?,
        teams: string_list(claims, &names.teams)?,
        profiles: string_list(claims, &names.profiles)?,
        grants: string_list(claims, &names.grants)?,
        claims: extra,
        identity_values: Default::default(),
        identity_block: Default::default(),
        session_is_token: false,
        session_key: Default::default(),
        idle_timeout: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClaimNames {
        ClaimNames {
            subject: "sub".into(),
            session: "sid".into(),
            roles: "realm.roles".into(),
            partners: "partners".into(),
            teams: "teams".into(),
            profiles: "profiles".into(),
            grants: "grants".into(),
        }
    }

    #[test]
    fn nested_and_single_string_claims() {
        let c: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"u1","jti":"j1","realm":{"roles":["agent"]},"partners":"acme","team_lead":"t9"}"#,
        )
        .unwrap();
        let p = to_principal(&c, &names(), "iss").unwrap();
        assert_eq!(p.roles, vec!["agent"]);
        assert_eq!(p.partners, vec!["acme"]);
        assert_eq!(p.session.as_deref(), Some("j1"));
        assert_eq!(p.claims["team_lead"], vec!["t9"]);
        // The claims mapped to fields are not also `principal.claims.*`
        // (a directory entry replaces the fields).
        for mapped in ["sub", "partners"] {
            assert!(!p.claims.contains_key(mapped), "{mapped}");
        }
        assert_eq!(p.claims["jti"], vec!["j1"]);
    }

    #[test]
    fn malformed_list_claim_is_refused() {
        let c: Map<String, Value> =
            serde_json::from_str(r#"{"sub":"u1","partners":[1,2]}"#).unwrap();
        assert_eq!(
            to_principal(&c, &names(), "i"),
            Err(AuthError::BadClaim("partners".into()))
        );
        let c: Map<String, Value> = serde_json::from_str(r#"{"partners":["a"]}"#).unwrap();
        assert_eq!(
            to_principal(&c, &names(), "i"),
            Err(AuthError::MissingClaim("sub".into()))
        );
    }
}
