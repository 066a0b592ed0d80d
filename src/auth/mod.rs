//! Phase 3, authenticate: credentials → verified claims → [`Principal`].
//!
//! Owns token extraction (one `Authorization: Bearer` header, or the
//! configured cookie; never the query string), JWT verification per issuer
//! with a pinned algorithm allow-list (RFC 8725), the verified-token cache,
//! each connection's memory of its last token ([`ConnToken`]) and the
//! claims → principal mapping. It knows nothing of routes or
//! policy, and never logs a token.
//!
//! Verification order, each step failing closed with a 401:
//! size limit → three base64url segments → header and payload JSON (no
//! repeated member name at any depth; `alg` known, no `crit`) → issuer chosen by the unverified `iss` (only to pick keys) →
//! `alg` in that issuer's allow-list → key of that algorithm's family (by
//! `kid`) → signature, `exp` (required), `nbf`, `iss`, `aud` (required) via
//! `jsonwebtoken` → `exp` and `iat` (optional) are whole seconds → `sub`
//! present → claims mapped. `iat` is kept for the session stage's
//! not-before cut-off of reactivated users.

mod cache;
mod claims;
pub mod cookie;
pub mod keys;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

pub use cache::{Times, TokenCache, now_unix};
pub use claims::ClaimNames;
use keys::{KeySet, SelectError};

use crate::policy::Principal;

/// Why a request is not authenticated. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <token>")]
    Missing,
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    #[error(
        "the credential cookie appears more than once (counting spellings a backend reads as the same name)"
    )]
    MultipleCookies,
    #[error("Authorization header is not a Bearer token")]
    NotBearer,
    #[error("token exceeds {0} bytes")]
    TooLarge(usize),
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token header or payload has a duplicate member name")]
    DuplicateMember,
    #[error("token header has a crit parameter, which is not supported")]
    Crit,
    #[error("algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token key id is unknown")]
    UnknownKid,
    #[error("token has no kid and the issuer has several keys")]
    KidRequired,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token claim {0} is missing")]
    MissingClaim(String),
    #[error("token claim {0} is malformed")]
    BadClaim(String),
    #[error("token type (typ) is not accepted from this issuer")]
    WrongType,
}

impl AuthError {
    /// `missing_token` when nothing was presented, `invalid_token` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            _ => "invalid_token",
        }
    }

    /// Stable finer cause, logged and shown (with `expose_reason`).
    pub fn detail(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::MultipleAuthorization => "multiple_authorization",
            AuthError::MultipleCookies => "multiple_cookies",
            AuthError::NotBearer => "not_bearer",
            AuthError::TooLarge(_) => "token_too_large",
            AuthError::Malformed => "malformed",
            AuthError::DuplicateMember => "duplicate_member",
            AuthError::Crit => "crit_unsupported",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::KidRequired => "kid_required",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::BadClaim(_) => "bad_claim",
            AuthError::WrongType => "wrong_type",
        }
    }
}

/// A verified request credential.
#[derive(Debug, Clone)]
pub struct Verified {
    pub principal: Arc<Principal>,
    /// The token's `exp` (unix seconds).
    pub exp: u64,
    /// The token's `iat` (unix seconds), when it has one.
    pub iat: Option<u64>,
    /// The token came from the credential cookie (not `Authorization`).
    pub from_cookie: bool,
    /// With a user directory for this principal's issuer: the subject's
    /// entry as read when the principal was resolved (`Some(None)`: none),
    /// so an open websocket can tell when it changes.
    pub directory_entry: Option<Option<Arc<str>>>,
}

/// One trusted token issuer.
pub struct Issuer {
    pub iss: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySet,
    /// `dev: true` issuers may mint tokens with `rolegate token`.
    pub dev: bool,
    /// The first HMAC secret, kept only for `dev` issuers (token minting).
    pub dev_secret: Option<DevSecret>,
    /// The header `typ` values accepted, normalised by [`typ_key`]; empty:
    /// any `typ`, or none.
    pub types: Vec<String>,
}

/// A `typ` value as compared: lower case, without the `application/`
/// prefix RFC 7515 §4.1.9 lets senders omit (`at+jwt` and
/// `application/at+jwt` are the same type).
pub fn typ_key(typ: &str) -> String {
    let t = typ.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

/// The secret `rolegate token` signs with, and the `kid` it names.
pub struct DevSecret {
    pub secret: Vec<u8>,
    pub kid: Option<String>,
}

/// Settings of the authenticate phase (built from `identity:`).
pub struct AuthSettings {
    pub bearer: bool,
    pub cookie: Option<String>,
    pub max_token_bytes: usize,
    pub leeway_secs: u64,
    pub claims: ClaimNames,
}

/// Verifies credentials. Immutable after build; one per `Runtime`, so a
/// reload with new keys also starts with an empty cache.
pub struct Authenticator {
    settings: AuthSettings,
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    /// Tells this authenticator's [`ConnToken`] entries from those of the
    /// one a reload replaced (numbers are never reused).
    generation: u64,
}

/// The last token one client connection presented and what it verified
/// to. A kept-alive connection sends the same token with every request:
/// it is then compared with this one (in constant time: a connection a
/// front proxy shares between clients must not tell one client how much of
/// another's token it guessed) instead of being digested and looked up in
/// the shared cache. Taken only by the authenticator that verified it and
/// only before the token's `exp`, as the cache's entries are. Unlike the
/// shared cache it holds the token itself, for as long as the connection
/// lives (at most `max_token_bytes`), wiped when replaced or dropped.
///
/// A connection whose token keeps changing (a front proxy's, carrying
/// many clients' requests) stops remembering after [`MAX_CHANGES`] changes
/// in a row without a repeat: each change would cost a compare and a copy
/// and save nothing.
#[derive(Default)]
pub struct ConnToken(std::sync::Mutex<Memo>);

#[derive(Default)]
struct Memo {
    last: Option<Remembered>,
    /// Tokens verified in a row that replaced the remembered one, each
    /// never presented again before the next: at [`MAX_CHANGES`] nothing
    /// is remembered any more on this connection.
    changes: u8,
}

/// See [`ConnToken`].
const MAX_CHANGES: u8 = 4;

/// Never prints the token.
impl std::fmt::Debug for ConnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnToken(..)")
    }
}

struct Remembered {
    generation: u64,
    token: Vec<u8>,
    principal: Arc<Principal>,
    times: Times,
}

/// The token is wiped when the connection ends, not left in freed memory.
impl Drop for Remembered {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl ConnToken {
    /// The remembered verification of `token`, if `generation` made it and
    /// it has not expired at `now`. Never waits: a connection whose memo
    /// is in use by another of its requests (HTTP/2) goes to the cache.
    fn get(&self, generation: u64, token: &str, now: u64) -> Option<(Arc<Principal>, Times)> {
        let mut memo = self.0.try_lock().ok()?;
        let r = memo.last.as_ref()?;
        let same = r.generation == generation
            && now < r.times.exp
            && aws_lc_rs::constant_time::verify_slices_are_equal(&r.token, token.as_bytes())
                .is_ok();
        let hit = same.then(|| (r.principal.clone(), r.times.clone()));
        if hit.is_some() {
            memo.changes = 0;
        }
        hit
    }

    fn put(&self, generation: u64, token: &str, principal: &Arc<Principal>, times: &Times) {
        let Ok(mut memo) = self.0.try_lock() else {
            return;
        };
        if memo.changes >= MAX_CHANGES {
            return;
        }
        if memo.last.is_some() {
            memo.changes += 1;
            if memo.changes >= MAX_CHANGES {
                memo.last = None;
                return;
            }
        }
        match memo.last.as_mut() {
            Some(r) => {
                r.generation = generation;
                // The whole buffer: a longer earlier token's tail too.
                zeroize::Zeroize::zeroize(&mut r.token);
                r.token.extend_from_slice(token.as_bytes());
                r.principal = principal.clone();
                r.times = times.clone();
            }
            None => {
                memo.last = Some(Remembered {
                    generation,
                    token: token.as_bytes().to_vec(),
                    principal: principal.clone(),
                    times: times.clone(),
                })
            }
        }
    }
}

impl Authenticator {
    pub fn new(settings: AuthSettings, issuers: Vec<Issuer>, cache_entries: usize) -> Self {
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, is)| (is.iss.clone(), i))
            .collect();
        Authenticator {
            settings,
            issuers,
            by_iss,
            cache: TokenCache::new(cache_entries),
            generation: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    pub fn claim_names(&self) -> &ClaimNames {
        &self.settings.claims
    }

    /// Finds the token in the request headers and verifies it.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Verified, AuthError> {
        self.authenticate_at(headers, now_unix(), None)
    }

    /// [`Authenticator::authenticate`] with the request's clock (unix
    /// seconds), read once per request by the pipeline.
    /// `memo`: the connection's last token, tried before the shared cache.
    pub fn authenticate_at(
        &self,
        headers: &HeaderMap,
        now: u64,
        memo: Option<&ConnToken>,
    ) -> Result<Verified, AuthError> {
        let (token, from_cookie) = self.extract(headers)?;
        let (principal, Times { exp, iat }) = self.verify_at(token, now, memo)?;
        Ok(Verified {
            principal,
            exp,
            iat,
            from_cookie,
            directory_entry: None,
        })
    }

    /// Token extraction. An `Authorization` header, when present, wins over
    /// the cookie; it must be exactly one header with the Bearer scheme
    /// (case-insensitive). The cookie must appear exactly once across all
    /// `Cookie` headers, counting every spelling a backend could read as it
    /// (two is cookie tossing; see [`cookie`]).
    fn extract<'h>(&self, headers: &'h HeaderMap) -> Result<(&'h str, bool), AuthError> {
        let mut auth = crate::fields::all(headers, &http::header::AUTHORIZATION);
        if let Some(value) = auth.next() {
            if auth.next().is_some() {
                return Err(AuthError::MultipleAuthorization);
            }
            if !self.settings.bearer {
                return Err(AuthError::NotBearer);
            }
            let value = value.to_str().map_err(|_| AuthError::Malformed)?;
            let (scheme, rest) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::NotBearer);
            }
            let token = rest.trim_matches(' ');
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            return Ok((token, false));
        }
        if let Some(name) = &self.settings.cookie {
            let found = cookie::scan(headers, name);
            if found.lookalikes > 1 {
                return Err(AuthError::MultipleCookies);
            }
            if let Some(token) = found.exact.filter(|t| !t.is_empty()) {
                return Ok((token, true));
            }
        }
        Err(AuthError::Missing)
    }

    /// Verifies a raw token (also used by `rolegate explain --token`):
    /// the principal and the token's `exp` and `iat` (unix seconds).
    pub fn verify(&self, token: &str) -> Result<(Arc<Principal>, Times), AuthError> {
        self.verify_at(token, now_unix(), None)
    }

    /// [`Authenticator::verify`] at `now` (unix seconds: a remembered or
    /// cached token is taken only before its `exp`), trying the
    /// connection's `memo` before the shared cache (never with the cache
    /// off: `cache_entries: 0`).
    fn verify_at(
        &self,
        token: &str,
        now: u64,
        memo: Option<&ConnToken>,
    ) -> Result<(Arc<Principal>, Times), AuthError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(AuthError::TooLarge(self.settings.max_token_bytes));
        }
        let memo = memo.filter(|_| self.cache.enabled());
        if let Some(hit) = memo.and_then(|m| m.get(self.generation, token, now)) {
            return Ok(hit);
        }
        let (principal, times) = match self.cache.get_at(token, now) {
            Some(hit) => hit,
            None => self.verify_and_cache(token, now)?,
        };
        if let Some(m) = memo {
            m.put(self.generation, token, &principal, &times);
        }
        Ok((principal, times))
    }

    /// Verifies a token neither remembered nor cached, and caches it.
    fn verify_and_cache(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(Arc<Principal>, Times), AuthError> {
        let (mut principal, times) = self.verify_uncached(token, now)?;
        if principal.session.is_none() {
            // No `sid`, no `jti`: the token itself is the session.
            let d = cache::digest_of(token);
            principal.session = Some(format!(
                "t:{}",
                d[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ));
            principal.session_is_token = true;
        }
        let principal = Arc::new(principal);
        self.cache.insert(token, times.clone(), principal.clone());
        Ok((principal, times))
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<(Principal, Times), AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = decode_segment(h)?;
        if header.contains_key("crit") {
            // RFC 7515 §4.1.11: a recipient that does not understand a
            // critical extension must reject the token.
            return Err(AuthError::Crit);
        }
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        // `none` and unknown names fail here; the header never picks a family
        // on its own, it is checked against the issuer's list below.
        let alg = Algorithm::from_str(alg_name)
            .map_err(|_| AuthError::AlgorithmNotAllowed(alg_name.chars().take(16).collect()))?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };

        // The unverified payload is read only to pick the issuer's keys.
        let payload = decode_segment(p)?;
        let iss = payload
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthError::UnknownIssuer)?;
        let issuer = self
            .by_iss
            .get(iss)
            .map(|&i| &self.issuers[i])
            .ok_or(AuthError::UnknownIssuer)?;
        if !issuer.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed(alg_name.to_string()));
        }
        // Explicit typing (RFC 8725 §3.11): an ID token or another JWT of
        // the same issuer and audience is not taken for an access token.
        if !issuer.types.is_empty() {
            let typ = match header.get("typ") {
                None => return Err(AuthError::WrongType),
                Some(Value::String(t)) => typ_key(t),
                Some(_) => return Err(AuthError::Malformed),
            };
            if !issuer.types.contains(&typ) {
                return Err(AuthError::WrongType);
            }
        }
        let key = issuer.keys.select(alg.family(), kid).map_err(|e| match e {
            SelectError::UnknownKid => AuthError::UnknownKid,
            SelectError::KidRequired => AuthError::KidRequired,
            SelectError::NoKeyForAlgorithm => AuthError::AlgorithmNotAllowed(alg_name.to_string()),
        })?;

        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.iss]);
        validation.set_audience(&issuer.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let exp = data
            .claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AuthError::BadClaim("exp".into()))?;
        // Optional, but when present a whole number of seconds like `exp`,
        // and not later than now (beyond `leeway`): a malformed or future
        // `iat` could otherwise dodge the not-before cut-off.
        let iat = match data.claims.get("iat") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(iat) if iat <= now.saturating_add(self.settings.leeway_secs) => Some(iat),
                _ => return Err(AuthError::BadClaim("iat".into())),
            },
        };
        let principal = claims::to_principal(&data.claims, &self.settings.claims, &issuer.iss)?;
        Ok((principal, Times { exp, iat }))
    }

    /// Maps an unverified claims object (for `rolegate explain --claims`).
    pub fn principal_from_claims(
        &self,
        claims: &Map<String, Value>,
    ) -> Result<Principal, AuthError> {
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or("(unverified)");
        claims::to_principal(claims, &self.settings.claims, iss)
    }
}

fn decode_segment(seg: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        // The only data error `Strict` raises is a repeated member name.
        Err(e) if e.is_data() => Err(AuthError::DuplicateMember),
        _ => Err(AuthError::Malformed),
    }
}

/// A JSON value parsed with repeated member names refused, at any depth.
/// serde_json (like most parsers) keeps the *last* of two equal names,
/// while another parser may keep the first: a signed `"roles":["agent"],
/// "roles":["admin"]` must not mean different things to the gateway and to
/// a backend that reads the forwarded token (RFC 7515 §5.2, RFC 8725 §2.x).
/// The header and the payload are both parsed with it before the
/// signature is checked, so `jsonwebtoken`'s own last-wins parse of the
/// same bytes only ever sees documents without duplicates.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom("duplicate member name"));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

fn map_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => AuthError::BadSignature,
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::UnknownIssuer,
        K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        K::InvalidClaimFormat(c) => AuthError::BadClaim(c.clone()),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::UnsupportedAlgorithm => {
            AuthError::AlgorithmNotAllowed("mismatch".into())
        }
        // Bad key material for this algorithm means the token's signature
        // cannot be valid for any key we trust.
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_memo_answers_only_for_its_token_generation_and_lifetime() {
        let memo = ConnToken::default();
        let p = Arc::new(Principal {
            subject: "alice".into(),
            ..Principal::default()
        });
        let times = Times {
            exp: 100,
            iat: None,
        };
        assert!(memo.get(1, "a.b.c", 50).is_none(), "empty");
        memo.put(1, "a.b.c", &p, &times);
        let (hit, t) = memo
            .get(1, "a.b.c", 50)
            .expect("same token, generation, before exp");
        assert_eq!(hit.subject, "alice");
        assert_eq!(t.exp, 100);
        assert!(
            memo.get(1, "a.b.d", 50).is_none(),
            "another token of the same length"
        );
        assert!(memo.get(1, "a.b.cc", 50).is_none(), "a longer one");
        assert!(memo.get(1, "a.b.", 50).is_none(), "its prefix");
        assert!(memo.get(2, "a.b.c", 50).is_none(), "another authenticator");
        assert!(memo.get(1, "a.b.c", 100).is_none(), "at exp");
        // Replaced by the next token verified on the connection.
        let q = Arc::new(Principal {
            subject: "bob".into(),
            ..Principal::default()
        });
        memo.put(2, "x.y.z", &q, &times);
        assert!(memo.get(1, "a.b.c", 50).is_none());
        assert!(memo.get(2, "a.b.c", 50).is_none());
        assert_eq!(memo.get(2, "x.y.z", 50).unwrap().0.subject, "bob");
    }

    /// A token that changes with every request (a front proxy carrying
    /// many clients) turns the memo off for the connection; one that
    /// changes now and then (a refreshed token) does not.
    #[test]
    fn a_connection_whose_token_keeps_changing_stops_remembering() {
        let p = Arc::new(Principal::default());
        let times = Times {
            exp: 100,
            iat: None,
        };
        let memo = ConnToken::default();
        for round in 0..10 {
            let t = format!("t.{round}.x");
            assert!(memo.get(1, &t, 50).is_none());
            memo.put(1, &t, &p, &times);
            // Every token is asked for twice: the repeat resets the count.
            assert!(memo.get(1, &t, 50).is_some(), "round {round}");
        }
        let busy = ConnToken::default();
        // The first token, then MAX_CHANGES others, none asked for again.
        for round in 0..=MAX_CHANGES {
            busy.put(1, &format!("u.{round}.x"), &p, &times);
        }
        let last = format!("u.{MAX_CHANGES}.x");
        assert!(
            busy.get(1, &last, 50).is_none(),
            "off after changes in a row"
        );
        busy.put(1, "v.1.x", &p, &times);
        assert!(busy.get(1, "v.1.x", 50).is_none(), "and stays off");
        assert!(busy.0.lock().unwrap().last.is_none(), "nothing held");
    }
}
