//! The user directory (optional, `directory:`): for identity providers that
//! issue no role claims, or stale ones. A directory entry is the source of
//! a subject's partners, teams, roles, profiles, grants and active state:
//! when one exists, it replaces what the token says, on every request, so a
//! role change or a deactivation applies at once, system-wide, even to
//! tokens already issued (seed 002).
//!
//! Entries are shared records of the session store (`session::shared`):
//! namespace `dir.user` (key: the subject) and `dir.profile` (key: the
//! profile name; a version is kept while a user holds it, so holders of
//! an older one keep resolving it; unheld old ones go past a cap). Durable
//! and shared exactly like sessions.
//!
//! Owns the record formats, resolving a principal from a record, and the
//! seeds' rules for changing records ([`check_change`]). Must not: do I/O
//! (the admin API reads and writes the store) or decide requests (the
//! policy decides on the resolved principal).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::{Principal, parse_binding};

pub mod csv;

/// Shared-records namespaces.
pub const USERS: &str = "dir.user";
pub const PROFILES: &str = "dir.profile";

/// `directory:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectorySettings {
    /// Tokens of this issuer are looked up (subjects of other issuers are
    /// never affected).
    pub issuer: String,
    /// Capability, on `partner:<id>`, to manage that partner's users.
    pub manage_with: String,
    /// Capability, on a resource (`bot:<id>`), to grant roles scoped to it.
    pub share_with: String,
    /// Capability (global) to save profile versions.
    pub profiles_with: String,
}

/// One user's entry (`dir.user`). Lists are kept sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub partners: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    /// Role bindings: `agent` (global) or `developer@bot:42` (scoped).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub profiles: Vec<ProfileRef>,
    /// Extra grants: `cap` or `cap@bot:42`.
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default = "yes")]
    pub active: bool,
    /// When the directory deactivated the user (the not-before cut-off of
    /// the directory issuer's tokens it set), kept while the entry is
    /// inactive. Set by the gateway; a value sent in a `PUT` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// A profile assignment and the version the user was given. On input the
/// version may be left out: the profile's latest version is recorded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Records parsed from the shared store's text, by key, kept with the text
/// they came from: an unchanged record (the same stored value, told by its
/// pointer first) is not parsed again, so a request costs a lookup however
/// large the record. Bounded: past `max` keys the cache starts over.
pub struct ParsedCache<T> {
    parsed: dashmap::DashMap<String, (Arc<str>, Arc<T>)>,
    max: usize,
}

impl<T: serde::de::DeserializeOwned> ParsedCache<T> {
    pub fn new(max: usize) -> Self {
        ParsedCache {
            parsed: dashmap::DashMap::new(),
            max,
        }
    }

    /// `raw` (the stored value of `key`) parsed.
    pub fn get(&self, key: &str, raw: Arc<str>) -> Result<Arc<T>, serde_json::Error> {
        // The read guard ends here, before any insert into the same shard.
        let cached = self.parsed.get(key).and_then(|e| {
            let same = Arc::ptr_eq(&e.0, &raw);
            (same || *e.0 == *raw).then(|| (same, e.1.clone()))
        });
        match cached {
            Some((true, v)) => return Ok(v),
            // The same text stored anew (a resync): kept with its new
            // pointer, so the next request compares pointers only.
            Some((false, v)) => {
                self.parsed.insert(key.to_string(), (raw, v.clone()));
                return Ok(v);
            }
            None => {}
        }
        let v = Arc::new(serde_json::from_str::<T>(&raw)?);
        if self.parsed.len() >= self.max {
            self.parsed.clear();
        }
        self.parsed.insert(key.to_string(), (raw, v.clone()));
        Ok(v)
    }
}

/// Every saved version of a directory profile (`dir.profile`), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileVersions {
    pub versions: Vec<ProfileVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileVersion {
    pub version: u64,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    pub saved_ms: u64,
}

impl ProfileVersions {
    pub fn latest(&self) -> Option<&ProfileVersion> {
        self.versions.last()
    }

    pub fn get(&self, version: u64) -> Option<&ProfileVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Drops the oldest versions that no user holds (`held`), never the
    /// latest, until one more fits under `max`. False when it cannot.
    pub fn make_room(&mut self, held: &std::collections::HashSet<u64>, max: usize) -> bool {
        let latest = self.latest().map(|v| v.version);
        let mut excess = (self.versions.len() + 1).saturating_sub(max);
        if excess > 0 {
            self.versions.retain(|v| {
                let drop = excess > 0 && !held.contains(&v.version) && Some(v.version) != latest;
                excess -= usize::from(drop);
                !drop
            });
        }
        excess == 0
    }
}

impl UserRecord {
    /// The entry's revision: `r` and 16 hex digits of a SHA-256 over the
    /// stored form, so any change to what is stored changes it, and the
    /// same record always has the same one, on every gateway and across
    /// restarts (no counter to keep). The `r` keeps spreadsheets from
    /// reading a revision of digits as a number.
    pub fn revision(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&d.as_ref()[..8]);
        format!("r{:016x}", u64::from_be_bytes(first))
    }

    /// The same entry, but for what the gateway keeps in it for itself
    /// (`deactivated_ms`).
    pub fn same_entry(&self, other: &UserRecord) -> bool {
        let mine = UserRecord {
            deactivated_ms: other.deactivated_ms,
            ..self.clone()
        };
        mine == *other
    }

    /// Sorts and deduplicates every list (the stored, compared form).
    pub fn normalise(&mut self) {
        for v in [
            &mut self.partners,
            &mut self.teams,
            &mut self.roles,
            &mut self.grants,
        ] {
            v.sort();
            v.dedup();
        }
        self.profiles.sort();
        self.profiles.dedup_by(|a, b| a.name == b.name);
    }
}

/// The principal a request runs as when its subject has a directory entry:
/// identity (subject, issuer, session, other claims) from the token;
/// partners, teams, roles, profiles and grants from the entry. A directory
/// profile assignment contributes the roles and grants of the version the
/// user holds; a profile name the directory does not know is a profile of
/// the configuration (`profiles:`). A version that cannot be found
/// contributes nothing (fail closed).
pub fn resolve(
    token: &Principal,
    rec: &UserRecord,
    profile: &dyn Fn(&str) -> Option<Arc<ProfileVersions>>,
) -> Principal {
    let mut p = Principal {
        subject: token.subject.clone(),
        issuer: token.issuer.clone(),
        session: token.session.clone(),
        claims: token.claims.clone(),
        partners: rec.partners.clone(),
        teams: rec.teams.clone(),
        roles: rec.roles.clone(),
        profiles: Vec::new(),
        grants: rec.grants.clone(),
        identity_values: Default::default(),
        identity_block: Default::default(),
        session_is_token: token.session_is_token,
        session_key: Default::default(),
        idle_timeout: Default::default(),
    };
    for a in &rec.profiles {
        match profile(&a.name) {
            Some(versions) => {
                if let Some(v) = a.version.and_then(|n| versions.get(n)) {
                    p.roles.extend(v.roles.iter().cloned());
                    p.grants.extend(v.grants.iter().cloned());
                }
            }
            None => p.profiles.push(a.name.clone()),
        }
    }
    p
}

/// Why a change is refused: status, error code, reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub code: &'static str,
    pub reason: String,
}

pub fn forbidden(reason: String) -> Refused {
    Refused {
        status: 403,
        code: "forbidden",
        reason,
    }
}

/// What the caller may do, asked by [`check_change`]: `may(capability,
/// Some((kind, id)))` on a resource, `None` globally.
pub type May<'a> = &'a dyn Fn(&str, Option<(&str, &str)>) -> bool;

/// The seeds' rules for replacing `old` with `new` (either may be absent:
/// a new user, a removed entry), for a caller described by `may` (and
/// `operator`: the admin token, not a user's own token):
///
/// - a partner added or removed needs `manage_with` on that partner
///   ("only a Partner Admin of a partner manages its users");
/// - an existing user is added to a partner only by a caller with
///   `manage_with` on **every** partner the user already belongs to (seed
///   002: "only if you also have access to every other partner they
///   belong to");
/// - anything that applies system-wide — global roles, profiles, global
///   grants, teams, the active flag, name, e-mail, removing the entry —
///   needs `manage_with` on every partner the user belongs to before or
///   after (a user in no partner: the operator only — a Partner Admin's
///   `manage_with` is bound to the partners it belongs to, never "all");
/// - a global grant added (a bare capability, which no role bounds) must
///   be one the caller holds itself, and never a wildcard, unless the
///   caller is the operator;
/// - a role or grant scoped to a resource (`developer@bot:42`), added or
///   removed, needs `share_with` on that resource ("only a bot's Super
///   Admin shares access to that bot").
///
/// Role requirements (`requires:`, "Approver requires Developer on the
/// same bot") are data rules, checked by [`check_requirements`] for every
/// caller.
pub fn check_change(
    settings: &DirectorySettings,
    operator: bool,
    old: Option<&UserRecord>,
    new: Option<&UserRecord>,
    may: May<'_>,
) -> Result<(), Refused> {
    let empty = UserRecord::default();
    let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let manage = |p: &str| may(&settings.manage_with, Some(("partner", p)));
    let (op, np): (BTreeSet<&str>, BTreeSet<&str>) = (
        o.partners.iter().map(String::as_str).collect(),
        n.partners.iter().map(String::as_str).collect(),
    );
    let added: Vec<&str> = np.difference(&op).copied().collect();
    // A refusal names only what the caller wrote in `new`: the rest of
    // the user's memberships and bindings is not theirs to learn.
    for p in added.iter().chain(op.difference(&np)) {
        if !manage(p) {
            return Err(forbidden(if np.contains(p) {
                format!(
                    "changing membership of partner {p} requires {} on partner:{p}",
                    settings.manage_with
                )
            } else {
                format!(
                    "this change removes the user from a partner you do not manage (requires {} on it)",
                    settings.manage_with
                )
            }));
        }
    }
    if old.is_some()
        && !added.is_empty()
        && let Some(q) = op.iter().find(|q| !manage(q))
    {
        return Err(forbidden(if np.contains(q) {
            format!(
                "this user also belongs to partner {q}: adding them to another partner requires {} on every partner they belong to",
                settings.manage_with
            )
        } else {
            format!(
                "this user also belongs to a partner you do not manage: adding them to another partner requires {} on every partner they belong to",
                settings.manage_with
            )
        }));
    }
    // An entry in no partner is the operator's (only the admin token makes
    // one): a Partner Admin who added it to their own partner would
    // then manage it.
    if old.is_some() && op.is_empty() && !added.is_empty() && !operator {
        return Err(forbidden(
            "this user belongs to no partner: adding them to one requires the admin token".into(),
        ));
    }
    let system_wide = old.is_none() != new.is_none() || global_part(o) != global_part(n);
    if system_wide {
        let all: BTreeSet<&str> = op.union(&np).copied().collect();
        let ok = if all.is_empty() {
            operator
        } else {
            all.iter().all(|p| manage(p))
        };
        if !ok {
            return Err(forbidden(format!(
                "roles, profiles, grants, teams and the active state apply system-wide: changing them requires {} on every partner the user belongs to (a user in no partner: the admin token)",
                settings.manage_with
            )));
        }
    }
    if !operator {
        let global =
            |r: &UserRecord| -> BTreeSet<String> { global_part(r).grants.into_iter().collect() };
        let held = global(o);
        if let Some(g) = global(n)
            .iter()
            .find(|g| !held.contains(*g) && !may_grant(may, g))
        {
            return Err(forbidden(format!(
                "granting {g} system-wide requires holding it yourself (wildcards: the admin token only)"
            )));
        }
    }
    let scoped = |r: &UserRecord| -> BTreeSet<String> {
        r.roles
            .iter()
            .chain(&r.grants)
            .filter(|b| parse_binding(b).is_some_and(|b| b.scope.is_some()))
            .cloned()
            .collect()
    };
    let (os, ns) = (scoped(o), scoped(n));
    for b in os.symmetric_difference(&ns) {
        let Some((kind, id)) = parse_binding(b).and_then(|b| b.scope) else {
            continue;
        };
        if !may(&settings.share_with, Some((kind, id))) {
            return Err(forbidden(if ns.contains(b) {
                format!(
                    "granting {b} requires {} on {kind}:{id}",
                    settings.share_with
                )
            } else {
                format!(
                    "this change removes a role or grant scoped to a resource you may not share (requires {} on it)",
                    settings.share_with
                )
            }));
        }
    }
    Ok(())
}

/// Whether a user's own token may hand out the global grant `g`: only a
/// capability it holds itself, never a wildcard (which reaches further
/// than any role the caller was given).
pub fn may_grant(may: May<'_>, g: &str) -> bool {
    !g.contains('*') && may(g, None)
}

/// The part of a record that applies system-wide (everything but
/// memberships and scoped bindings).
fn global_part(r: &UserRecord) -> UserRecord {
    let unscoped = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|b| parse_binding(b).is_none_or(|b| b.scope.is_none()))
            .cloned()
            .collect()
    };
    UserRecord {
        partners: Vec::new(),
        roles: unscoped(&r.roles),
        grants: unscoped(&r.grants),
        deactivated_ms: None,
        ..r.clone()
    }
}

/// Every binding of `rec` whose role `requires` others must come with
/// them on the same resource (or globally): `approver@bot:42` needs
/// `developer@bot:42` (or `developer`). `requires(role)` gives a role's
/// required roles (`None`: no such role).
pub fn check_requirements(
    rec: &UserRecord,
    requires: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<(), Refused> {
    for raw in &rec.roles {
        let Some(b) = parse_binding(raw) else {
            return Err(Refused {
                status: 400,
                code: "bad_request",
                reason: format!("{raw:?} is not a role binding (`role` or `role@kind:id`)"),
            });
        };
        let Some(required) = requires(b.name) else {
            return Err(Refused {
                status: 400,
                code: "unknown_role",
                reason: format!("no role named {}", b.name),
            });
        };
        for r in required {
            let held = rec.roles.iter().any(|x| {
                parse_binding(x)
                    .is_some_and(|x| x.name == r && (x.scope.is_none() || x.scope == b.scope))
            });
            if !held {
                let on = b
                    .scope
                    .map(|(k, i)| format!(" on {k}:{i}"))
                    .unwrap_or_default();
                return Err(Refused {
                    status: 409,
                    code: "role_requirement",
                    reason: format!("{raw} requires role {r}{on}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
