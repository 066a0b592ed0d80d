//! Phase 6 header operations (rpxy's `header_ops`): what leaves rolegate
//! for the upstream, and what comes back.
//!
//! Upstream-bound order matters and is fixed:
//! 1. drop every header *named* in `Connection` (RFC 9110 §7.6.1), then the
//!    hop-by-hop set; done first, so `Connection: X-Rolegate-User` can only
//!    ever remove the client's own spoofed copy, never our injected one;
//! 2. drop client-supplied identity (`X-Rolegate-*` by default, the
//!    identity headers of other auth proxies, plus `forward.strip_headers`),
//!    the rewrite/override headers that some frameworks honour
//!    (`X-Original-URL`, `X-HTTP-Method-Override`, …), and every credential
//!    the gateway did not verify or is not told to pass on;
//! 3. set `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` (rolegate is the
//!    edge: incoming forwarding headers are replaced, not appended to);
//! 4. inject the verified identity.
//!
//! Owns no policy; never reads a token.

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue};

use crate::config::ForwardSettings;
use crate::policy::Principal;

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the de-facto `keep-alive` and
/// `proxy-connection`). `upgrade` too: a websocket handshake on a route that
/// allows websockets gets its upgrade headers back afterwards
/// (`proxy::websocket::Handshake::restore`), nothing else is upgraded.
/// As text for the cleaning of relayed answer fields (`relayed.rs`), as
/// names for header maps: one list.
pub const HOP_BY_HOP_NAMES: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
static HOP_BY_HOP: [HeaderName; 9] = {
    let n = HOP_BY_HOP_NAMES;
    [
        HeaderName::from_static(n[0]),
        HeaderName::from_static(n[1]),
        HeaderName::from_static(n[2]),
        HeaderName::from_static(n[3]),
        HeaderName::from_static(n[4]),
        HeaderName::from_static(n[5]),
        HeaderName::from_static(n[6]),
        HeaderName::from_static(n[7]),
        HeaderName::from_static(n[8]),
    ]
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The identity headers' names under `forward.identity_header_prefix`,
/// made once when the configuration loads.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    user: HeaderName,
    issuer: HeaderName,
    session: HeaderName,
    roles: HeaderName,
    partners: HeaderName,
    teams: HeaderName,
}

impl IdentityNames {
    /// `None` if `prefix` does not make valid header names.
    pub fn new(prefix: &str) -> Option<IdentityNames> {
        let name = |s: &str| HeaderName::from_bytes(format!("{prefix}{s}").as_bytes()).ok();
        Some(IdentityNames {
            user: name("user")?,
            issuer: name("issuer")?,
            session: name("session")?,
            roles: name("roles")?,
            partners: name("partners")?,
            teams: name("teams")?,
        })
    }
}

/// Header names whose meaning HTTP, browsers or the gateway rely on. An
/// identity prefix that any of them starts with (`con`, `content-`,
/// `x-forwarded-`) would remove them from requests and from upstream
/// answers, so the configuration refuses it.
pub const STANDARD_NAMES: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "access-control-request-headers",
    "access-control-request-method",
    "age",
    "allow",
    "alt-svc",
    "authorization",
    "cache-control",
    "clear-site-data",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-security-policy",
    "content-security-policy-report-only",
    "content-type",
    "cookie",
    "cross-origin-embedder-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "date",
    "etag",
    "expect",
    "expires",
    "forwarded",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "last-modified",
    "link",
    "location",
    "origin",
    "permissions-policy",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "referrer-policy",
    "retry-after",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "server",
    "set-cookie",
    "strict-transport-security",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
    "x-content-type-options",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-frame-options",
    "x-real-ip",
    "x-request-id",
    "x-xss-protection",
];

/// Client headers that are always removed, whatever `forward.keep_headers`
/// says: request rewriting and method overriding that a backend framework
/// might honour behind our back, and forwarding information we set (or
/// deliberately do not set) ourselves.
pub const ALWAYS_STRIPPED: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    // The gateway answers `Expect: 100-continue` itself (as Envoy does): an
    // upstream asked again could answer before the body, leaving it on the
    // connection for a server that skips it to read as a request.
    "expect",
];

/// Identity and client-address headers that other auth proxies and load
/// balancers set and that backends behind them trust (oauth2-proxy,
/// Authelia, Pomerium, Envoy, Apache, Grafana's auth proxy, Vouch, Kong,
/// cloud load balancers), removed by default; `forward.keep_headers` can
/// keep one.
pub const DEFAULT_STRIPPED: &[&str] = &[
    "remote-user",
    "remote-groups",
    "remote-email",
    "remote-name",
    "x-webauth-user",
    // Vouch Proxy; Kong's OAuth 2.0 and OpenID Connect plugins.
    "x-vouch-user",
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-userinfo",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    // Rails, Cloudflare, Fastly, ingress-nginx; the dashless
    // `X-Forwarded` and the host overrides some frameworks honour.
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-forwarded",
    "x-host",
    "x-original-host",
    "x-goog-iap-jwt-assertion",
    // Client-certificate claims of TLS-terminating proxies (nginx, Apache,
    // IIS/ARR, RFC 9440): rolegate terminates TLS itself, so a client
    // sending one is claiming a certificate it did not present.
    "client-cert",
    "client-cert-chain",
    "x-client-cert",
    "x-client-dn",
    "x-client-verify",
    "x-arr-clientcert",
    "x-ssl-cert",
    // CloudFront's viewer address (its certificate fields: prefix below).
    "cloudfront-viewer-address",
];

/// Name prefixes removed by default (every header starting with one);
/// `forward.keep_headers` can keep single names under them.
pub const DEFAULT_STRIPPED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-auth-request-",
    "x-remote-",
    "x-envoy-",
    "x-pomerium-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-ms-client-principal",
    "x-ms-token-",
    // Cloudflare Access, authentik, Tailscale (serve/funnel), Kong consumers.
    "cf-access-",
    "x-authentik-",
    "tailscale-user-",
    "x-consumer-",
    "x-ssl-client-",
    "ssl-client-",
    "x-client-cert-",
    // AWS ALB mutual TLS (`X-Amzn-Mtls-Clientcert` and its `-Subject`,
    // `-Issuer`, … fields) and CloudFront viewer mutual TLS.
    "x-amzn-mtls-clientcert",
    "cloudfront-viewer-cert-",
];

/// A set of header names, looked up by hash (one lookup instead of a
/// comparison per listed name; the names are the configuration's, so a
/// client's names only look up, never insert).
pub type NameSet = std::collections::HashSet<HeaderName, foldhash::fast::RandomState>;

/// The exact names [`is_stripped`] drops: [`ALWAYS_STRIPPED`] and `names`.
pub fn stripped_names(names: impl IntoIterator<Item = HeaderName>) -> NameSet {
    ALWAYS_STRIPPED
        .iter()
        .map(|n| HeaderName::from_static(n))
        .chain(names)
        .collect()
}

/// Whether a client header is dropped before forwarding (step 2).
pub fn is_stripped(fwd: &ForwardSettings, name: &HeaderName) -> bool {
    let k = name.as_str();
    // `X_Rolegate_User` becomes HTTP_X_ROLEGATE_USER in CGI/WSGI/Rack/PHP
    // backends, exactly like `X-Rolegate-User`: drop every name with an
    // underscore (nginx's default) so no spelling of a trusted header gets
    // through.
    if memchr::memchr(b'_', k.as_bytes()).is_some()
        || k.starts_with(fwd.identity_prefix.as_str())
        || fwd.strip.contains(name)
    {
        return true;
    }
    fwd.strip_prefixes.matches(k) && !fwd.keep.contains(name)
}

/// A set of bytes, a bit each: the first bytes names of interest can
/// start with, so that most names are decided by one bit.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ByteSet([u64; 4]);

impl ByteSet {
    pub const EMPTY: ByteSet = ByteSet([0; 4]);
    pub const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    /// This set and `b`.
    pub const fn with(mut self, b: u8) -> ByteSet {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
        self
    }

    pub const fn has(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

/// Header-name prefixes (lower-case) and the set of their first bytes:
/// most names share none with any prefix and are decided by one bit.
#[derive(Clone, Default)]
pub struct Prefixes {
    list: Vec<String>,
    /// The prefixes' first bytes (every byte when one is empty).
    first: ByteSet,
}

impl Prefixes {
    pub fn push(&mut self, prefix: String) {
        self.first = match prefix.as_bytes().first() {
            Some(&b) => self.first.with(b),
            None => ByteSet::ALL,
        };
        self.list.push(prefix);
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(String::as_str)
    }

    /// Whether `name` starts with one of the prefixes.
    pub fn matches(&self, name: &str) -> bool {
        self.first
            .has(name.as_bytes().first().copied().unwrap_or(0))
            && self.list.iter().any(|p| name.starts_with(p.as_str()))
    }
}

impl FromIterator<String> for Prefixes {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let mut p = Prefixes::default();
        for s in iter {
            p.push(s);
        }
        p
    }
}

/// Removes `Connection`-named headers and the hop-by-hop set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a standard name compares as one
    // integer) instead of a hash lookup per fixed name: requests and
    // answers seldom carry any, and the list is gathered before anything
    // is removed, so the names `Connection` lists are read first.
    let mut gone: smallvec::SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|k| HOP_BY_HOP.contains(k))
        .cloned()
        .collect();
    if gone.contains(&CONNECTION) {
        // By bytes: a value with obs-text (not a `str`) still names the
        // fields its other options name.
        gone.extend(
            headers
                .get_all(CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .filter_map(|n| connection_option(n.trim_ascii())),
        );
    }
    for name in &gone {
        headers.remove(name);
    }
}

/// Whether a `Connection` header of `headers` names the field `name`
/// (lower-case), which the hop-by-hop strip would then remove.
pub fn connection_names(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|n| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// The field a `Connection` option names; the two options almost every
/// message carries without a copy of their names.
fn connection_option(option: &[u8]) -> Option<HeaderName> {
    if option.eq_ignore_ascii_case(b"keep-alive") {
        return Some(KEEP_ALIVE);
    }
    if option.eq_ignore_ascii_case(b"close") {
        return Some(CLOSE);
    }
    HeaderName::from_bytes(option).ok()
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const CLOSE: HeaderName = HeaderName::from_static("close");

/// Removes every header a client could use to claim an identity or to
/// rewrite the request behind the gateway (see [`is_stripped`]), and every
/// one of `also` (in the same pass over the headers present: cheaper than a
/// lookup per name).
pub fn strip_spoofable(headers: &mut HeaderMap, fwd: &ForwardSettings, also: &[HeaderName]) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| also.contains(k) || is_stripped(fwd, k))
        .cloned()
        .collect();
    for name in &spoofed {
        headers.remove(name);
    }
}

/// Which credential was verified for this request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Credential {
    /// None (public route): every credential is removed.
    Unverified,
    /// The `Authorization: Bearer` token.
    Bearer,
    /// The credential cookie.
    Cookie,
}

/// Removes credentials: the verified one unless `pass` (the route's
/// `pass_credentials`), and always every credential the gateway did not
/// verify — `Authorization` when the cookie was used or nothing was, and
/// every cookie a backend could read as the credential cookie (any
/// spelling, see [`crate::auth::cookie`]) unless it is the verified one. A
/// backend that decodes a token without checking it, trusting the gateway,
/// must never see one the gateway did not check.
pub fn strip_credentials(
    headers: &mut HeaderMap,
    cookie: Option<&str>,
    verified: Credential,
    pass: bool,
) {
    if !(pass && verified == Credential::Bearer) {
        headers.remove(http::header::AUTHORIZATION);
    }
    if let Some(name) = cookie
        && !(pass && verified == Credential::Cookie)
    {
        // When the cookie was verified, it was the only credential-like
        // cookie (authentication refuses look-alikes), so keeping it keeps
        // nothing else.
        crate::auth::cookie::strip(headers, name);
    }
}

/// Joins several `Cookie` fields into one with `"; "`: HTTP/2 clients may
/// send one field per cookie (RFC 9113 §8.2.3), and an HTTP/1.1 backend may
/// read only the first line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut all = crate::fields::all(headers, &http::header::COOKIE);
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(http::header::COOKIE, v);
    }
}

/// What the forwarding headers say about the client side.
pub struct ForwardedFor<'a> {
    /// The client's address, as the header's value.
    pub client_ip: &'a HeaderValue,
    /// `https` on TLS listeners, else `http`.
    pub proto: &'static str,
    /// The client's host as it sent it (`X-Forwarded-Host`).
    pub host: Option<HeaderValue>,
    /// The request's trace id (`None`: not a header value, not sent).
    pub request_id: Option<HeaderValue>,
}

/// `headers.insert(name, value)`, one copy of the code for every caller:
/// the forwarding headers of every request and the headers of masked
/// answers then run the same instructions (a second copy, inlined only into
/// the masked path, cost that path its own instruction-cache lines).
#[inline(never)]
pub fn set(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    headers.insert(name, value);
}

/// The forwarding headers and the verified identity of one request (step
/// 3 and 4), made apart from the header map: hyper's clients get them
/// inserted ([`Injected::insert_into`]); rolegate's own HTTP/1.1 client
/// writes them after the client's fields, with no map insert, the
/// identity fields as the principal's lines encoded once
/// ([`Injected::encoded_identity`]). Every name here is one the strip pass
/// removes from the client's fields (the identity prefix, `X-Forwarded-*`,
/// and `X-Request-Id`, which `forward` names for that pass), so both ways
/// send one copy of each.
#[derive(Default)]
pub struct Injected<'a> {
    forwarding: smallvec::SmallVec<[(HeaderName, HeaderValue); 4]>,
    identity: Option<Identity<'a>>,
}

/// A principal's identity fields under the configured names.
struct Identity<'a> {
    names: [&'a HeaderName; 6],
    values: &'a [Option<HeaderValue>],
    /// The same as header lines, when made with these names.
    lines: Option<&'a [u8]>,
}

impl<'a> Injected<'a> {
    pub fn new(
        fwd: &'a ForwardSettings,
        ff: &ForwardedFor<'_>,
        principal: Option<&'a Principal>,
    ) -> Self {
        let mut forwarding = smallvec::SmallVec::new();
        forwarding.push((X_FORWARDED_FOR, ff.client_ip.clone()));
        forwarding.push((X_FORWARDED_PROTO, HeaderValue::from_static(ff.proto)));
        if let Some(v) = &ff.host {
            forwarding.push((X_FORWARDED_HOST, v.clone()));
        }
        if let Some(v) = &ff.request_id {
            forwarding.push((X_REQUEST_ID, v.clone()));
        }
        let identity = principal.map(|p| {
            let n = &fwd.identity;
            let names = [
                &n.user,
                &n.issuer,
                &n.session,
                &n.roles,
                &n.partners,
                &n.teams,
            ];
            let values: &[Option<HeaderValue>] =
                p.identity_values.get_or_init(|| identity_values(p));
            let (made_with, lines) = p
                .identity_block
                .get_or_init(|| (n.user.clone(), identity_lines(&names, values)));
            Identity {
                names,
                values,
                // A principal kept across a reload that renamed the fields
                // has its lines under the old names: not used.
                lines: (*made_with == n.user).then_some(&lines[..]),
            }
        });
        Injected {
            forwarding,
            identity,
        }
    }

    /// The forwarding fields, in the order they are sent.
    pub fn fields(&self) -> &[(HeaderName, HeaderValue)] {
        &self.forwarding
    }

    /// The identity fields as header lines (`name: value\r\n` each), sent
    /// after [`Injected::fields`]; `None` when they are only to be had as
    /// fields ([`Injected::identity_into`]).
    pub fn encoded_identity(&self) -> Option<&'a [u8]> {
        self.identity.as_ref().map_or(Some(&[][..]), |i| i.lines)
    }

    /// Every name sent, forwarding and identity.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        let identity = self.identity.iter().flat_map(|i| {
            i.names
                .into_iter()
                .zip(i.values)
                .filter_map(|(n, v)| v.as_ref().map(|_| n))
        });
        self.forwarding.iter().map(|(n, _)| n).chain(identity)
    }

    /// Inserts the identity fields into `headers` (replacing any of the
    /// same name).
    pub fn identity_into(&self, headers: &mut HeaderMap) {
        if let Some(i) = &self.identity {
            for (name, value) in i.names.into_iter().zip(i.values) {
                if let Some(v) = value {
                    set(headers, name.clone(), v.clone());
                }
            }
        }
    }

    /// Moves every field into `headers` (replacing any of the same name).
    pub fn insert_into(&mut self, headers: &mut HeaderMap) {
        headers.reserve(self.forwarding.len() + 6);
        for (name, value) in self.forwarding.drain(..) {
            set(headers, name, value);
        }
        self.identity_into(headers);
    }
}

/// The identity fields as header lines, in the order [`Injected::new`]
/// names them; fields without a value are left out.
fn identity_lines(names: &[&HeaderName; 6], values: &[Option<HeaderValue>]) -> bytes::Bytes {
    let mut out = Vec::new();
    for (name, value) in names.iter().zip(values) {
        if let Some(v) = value {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.into()
}

/// The identity headers' values of a principal, in the order `Injected::new`
/// names them: user, issuer, session, roles, partners, teams. `None`: not
/// sent (no session; a value no header can carry).
fn identity_values(p: &Principal) -> Box<[Option<HeaderValue>]> {
    let mut buf = String::new();
    let value = |text: &str| HeaderValue::from_str(text).ok();
    let user = value(encoded(&[&p.subject], &mut buf));
    let issuer = value(encoded(&[&p.issuer], &mut buf));
    // A token without a session id of its own is its own session: its
    // digest is the gateway's key, not an id to tell the upstream.
    let session = p
        .session
        .as_ref()
        .filter(|_| !p.session_is_token)
        .and_then(|s| value(encoded(&[s], &mut buf)));
    let roles = value(encoded(&p.roles, &mut buf));
    let partners = value(encoded(&p.partners, &mut buf));
    let teams = value(encoded(&p.teams, &mut buf));
    Box::new([user, issuer, session, roles, partners, teams])
}

/// Whether a claim byte goes into an identity header as it is: visible
/// ASCII and space, except `%` and `,`.
fn plain(b: u8) -> bool {
    (b.is_ascii_graphic() && b != b'%' && b != b',') || b == b' '
}

/// Whether `item` goes into an identity header as it is: every byte
/// [`plain`], and no space first or last (an HTTP parser trims those off a
/// value, and a list parser off each item: `" admin"` would be read as
/// `admin`, which the gateway did not see).
fn plain_item(item: &[u8]) -> bool {
    item.iter().copied().all(plain) && item.first() != Some(&b' ') && item.last() != Some(&b' ')
}

/// `items` joined with `,`, each percent-encoding everything outside
/// visible ASCII plus `%` and `,`, and a space at either end of an item,
/// so a claim value can never inject a header line or a list separator,
/// or be read as another value once trimmed. A single item that needs no
/// encoding is returned as it is; otherwise the text is built in `buf`.
fn encoded<'a, S: AsRef<str>>(items: &'a [S], buf: &'a mut String) -> &'a str {
    if let [one] = items
        && plain_item(one.as_ref().as_bytes())
    {
        return one.as_ref();
    }
    buf.clear();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        let item = item.as_ref().as_bytes();
        for (at, &b) in item.iter().enumerate() {
            let end = at == 0 || at + 1 == item.len();
            if plain(b) && !(end && b == b' ') {
                buf.push(b as char);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                buf.push('%');
                buf.push(HEX[usize::from(b >> 4)] as char);
                buf.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
    buf
}

/// Removes every one of `names` (a hash lookup each: cheaper than a pass of
/// its own comparing every present header with every name, as measured
/// under callgrind; inside a pass that runs anyway, as `strip_spoofable`'s,
/// comparing is the cheaper).
pub fn remove_each(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

/// Response side: drop hop-by-hop headers of the upstream's answer, and
/// anything an upstream could use to mint or fix a gateway session or to
/// speak in the gateway's name: `Set-Cookie` of the credential cookie (any
/// spelling) and headers under the identity prefix. Returns the names of
/// what was removed for that second reason (empty, without allocating, in
/// the normal case) so the caller can log it.
pub fn clean_response(headers: &mut HeaderMap, fwd: &ForwardSettings) -> Vec<HeaderName> {
    strip_hop_by_hop(headers);
    let mut removed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(fwd.identity_prefix.as_str()))
        .cloned()
        .collect();
    for name in &removed {
        headers.remove(name);
    }
    if let Some(name) = fwd.cookie.as_deref()
        && headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .any(|v| crate::auth::cookie::sets_lookalike(v.as_bytes(), name))
    {
        let kept: Vec<HeaderValue> = headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter(|v| !crate::auth::cookie::sets_lookalike(v.as_bytes(), name))
            .cloned()
            .collect();
        headers.remove(http::header::SET_COOKIE);
        for v in kept {
            headers.append(http::header::SET_COOKIE, v);
        }
        removed.push(http::header::SET_COOKIE);
    }
    removed
}

/// Forwarding settings for tests: the default identity prefix and cookie.
#[cfg(test)]
pub(crate) fn sample_forward() -> ForwardSettings {
    ForwardSettings {
        identity_prefix: "x-rolegate-".into(),
        identity: IdentityNames::new("x-rolegate-").unwrap(),
        strip: stripped_names([HeaderName::from_static("remote-user")]),
        strip_prefixes: ["x-forwarded-", "x-auth-request-"]
            .into_iter()
            .map(String::from)
            .collect(),
        keep: vec![HeaderName::from_static("x-forwarded-ssl")],
        cookie: Some("rg_session".into()),
        cookie_origins: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd() -> ForwardSettings {
        sample_forward()
    }

    #[test]
    fn connection_options_in_any_case_remove_the_fields_they_name() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("Keep-Alive, CLOSE ,X-Foo"),
        );
        for name in ["keep-alive", "close", "x-foo", "x-kept"] {
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    /// A `Connection` value that is not a `str` (obs-text in one option)
    /// still names the fields of its other options.
    #[test]
    fn connection_options_beside_obs_text_remove_the_fields_they_name() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_bytes(b"X-Secret, \xc3\xa9").unwrap(),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn connection_named_headers_cannot_remove_injected_identity() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("close, X-Rolegate-User, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("x-rolegate-user", HeaderValue::from_static("admin"));
        h.insert("remote-user", HeaderValue::from_static("admin"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        strip_hop_by_hop(&mut h);
        strip_spoofable(&mut h, &fwd(), &[]);
        let p = Principal {
            subject: "alice".into(),
            roles: vec!["a,b".into(), "c".into()],
            ..Default::default()
        };
        let ff = ForwardedFor {
            client_ip: &HeaderValue::from_static("127.0.0.1"),
            proto: "https",
            host: Some(HeaderValue::from_static("h")),
            request_id: Some(HeaderValue::from_static("r1")),
        };
        Injected::new(&fwd(), &ff, Some(&p)).insert_into(&mut h);
        assert_eq!(h["x-rolegate-user"], "alice");
        assert_eq!(h["x-rolegate-roles"], "a%2Cb,c");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        for gone in ["x-custom", "connection", "remote-user", "x-original-url"] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
    }

    #[test]
    fn identity_values_are_made_once_per_principal_and_a_changed_clone_gets_its_own() {
        let ff = ForwardedFor {
            client_ip: &HeaderValue::from_static("127.0.0.1"),
            proto: "http",
            host: Some(HeaderValue::from_static("")),
            request_id: Some(HeaderValue::from_static("r1")),
        };
        let p = Principal {
            subject: "alice".into(),
            issuer: "idp".into(),
            session: Some("s1".into()),
            roles: vec!["agent".into()],
            ..Default::default()
        };
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            h.insert("x-rolegate-user", HeaderValue::from_static("mallory"));
            Injected::new(&fwd(), &ff, Some(&p)).insert_into(&mut h);
            assert_eq!(h["x-rolegate-user"], "alice");
            assert_eq!(h["x-rolegate-issuer"], "idp");
            assert_eq!(h["x-rolegate-session"], "s1");
            assert_eq!(h["x-rolegate-roles"], "agent");
            assert_eq!(h.get_all("x-rolegate-user").iter().count(), 1);
        }
        let mut q = p.clone();
        q.roles = vec!["supervisor".into()];
        q.session = None;
        let mut h = HeaderMap::new();
        Injected::new(&fwd(), &ff, Some(&q)).insert_into(&mut h);
        assert_eq!(h["x-rolegate-roles"], "supervisor");
        assert!(!h.contains_key("x-rolegate-session"));
    }

    /// The encoded lines the own client writes are the fields hyper's
    /// clients get inserted; made once per principal, and not used under
    /// other names (a reload that changed the prefix).
    #[test]
    fn encoded_identity_lines_are_the_inserted_fields() {
        let ff = ForwardedFor {
            client_ip: &HeaderValue::from_static("127.0.0.1"),
            proto: "http",
            host: Some(HeaderValue::from_static("h")),
            request_id: None,
        };
        let p = Principal {
            subject: "alice".into(),
            issuer: "idp".into(),
            roles: vec!["agent".into(), " admin".into()],
            ..Default::default()
        };
        let fwd = fwd();
        let injected = Injected::new(&fwd, &ff, Some(&p));
        let lines = String::from_utf8(injected.encoded_identity().unwrap().to_vec()).unwrap();
        assert_eq!(
            lines,
            "x-rolegate-user: alice\r\nx-rolegate-issuer: idp\r\nx-rolegate-roles: agent,%20admin\r\n\
             x-rolegate-partners: \r\nx-rolegate-teams: \r\n"
        );
        let mut h = HeaderMap::new();
        injected.identity_into(&mut h);
        let mut inserted = String::new();
        for (n, v) in &h {
            inserted.push_str(&format!("{n}: {}\r\n", v.to_str().unwrap()));
        }
        assert_eq!(inserted, lines);
        let names: Vec<&str> = injected.names().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-rolegate-user",
                "x-rolegate-issuer",
                "x-rolegate-roles",
                "x-rolegate-partners",
                "x-rolegate-teams"
            ]
        );
        // Under another prefix: no lines, the fields under the new names.
        let mut other = sample_forward();
        other.identity_prefix = "x-acme-".into();
        other.identity = IdentityNames::new("x-acme-").unwrap();
        let injected = Injected::new(&other, &ff, Some(&p));
        assert_eq!(injected.encoded_identity(), None);
        let mut h = HeaderMap::new();
        injected.identity_into(&mut h);
        assert_eq!(h["x-acme-user"], "alice");
        assert!(!h.contains_key("x-rolegate-user"));
        // Without a principal there is nothing to write.
        assert_eq!(
            Injected::new(&fwd, &ff, None).encoded_identity(),
            Some(&[][..])
        );
    }

    #[test]
    fn underscore_spellings_of_trusted_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x_rolegate_user", HeaderValue::from_static("admin"));
        h.insert("x-rolegate_roles", HeaderValue::from_static("admin"));
        h.insert("x_forwarded_for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        strip_spoofable(&mut h, &fwd(), &[]);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn also_named_headers_go_in_the_same_pass_every_value_and_spelling() {
        let mut h = HeaderMap::new();
        h.append("Range", HeaderValue::from_static("bytes=0-1"));
        h.append("RANGE", HeaderValue::from_static("bytes=2-3"));
        h.insert("if-none-match", HeaderValue::from_static("\"v1\""));
        h.insert("x-ok", HeaderValue::from_static("1"));
        let also = [http::header::RANGE, http::header::IF_NONE_MATCH];
        strip_spoofable(&mut h, &fwd(), &also);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-ok"));
    }

    #[test]
    fn default_prefixes_strip_and_keep_excepts_one_name() {
        let mut h = HeaderMap::new();
        for n in [
            "x-forwarded-user",
            "x-forwarded-email",
            "x-auth-request-user",
            "x-forwarded-ssl",
            "x-ok",
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("v"));
        }
        strip_spoofable(&mut h, &fwd(), &[]);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-ssl", "x-ok"]);
    }

    /// The scan's shortcuts (a byte search for `_`, prefixes compared from
    /// their first byte) decide every name as the plain rule does: the
    /// listed names, names under each prefix and next to them, kept names,
    /// underscores anywhere, one-letter names.
    #[test]
    fn the_strip_decision_is_the_plain_rule_for_every_kind_of_name() {
        fn plain(fwd: &ForwardSettings, name: &HeaderName) -> bool {
            let k = name.as_str();
            k.contains('_')
                || k.starts_with(fwd.identity_prefix.as_str())
                || ALWAYS_STRIPPED.contains(&k)
                || fwd.strip.contains(name)
                || (fwd.strip_prefixes.iter().any(|p| k.starts_with(p)) && !fwd.keep.contains(name))
        }
        let mut f = fwd();
        for p in DEFAULT_STRIPPED_PREFIXES {
            f.strip_prefixes.push(p.to_string());
        }
        f.strip_prefixes.push("a".into());
        let mut names: Vec<String> = ["host", "authorization", "a", "b", "x", "_", "x-", "s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let listed = ALWAYS_STRIPPED.iter().chain(DEFAULT_STRIPPED);
        let prefixes: Vec<String> = f.strip_prefixes.iter().map(String::from).collect();
        for base in listed.map(|s| s.to_string()).chain(prefixes) {
            for n in [
                base.clone(),
                format!("{base}x"),
                format!("{base}_x"),
                format!("y{base}"),
                base[..base.len() - 1].to_string(),
                base.replacen('-', "_", 1),
            ] {
                names.push(n);
            }
        }
        names.push("x-rolegate-user".into());
        names.push("x-forwarded-ssl".into());
        let mut stripped = 0;
        for n in names.iter().filter(|n| !n.is_empty()) {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(is_stripped(&f, &name), plain(&f, &name), "{n}");
            stripped += usize::from(plain(&f, &name));
        }
        assert!(
            stripped > 0 && stripped < names.len(),
            "{stripped} of {}",
            names.len()
        );
    }

    #[test]
    fn credentials_the_gateway_did_not_verify_or_pass_are_removed() {
        let base = || {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_static("Bearer a.b.c"));
            h.insert(
                "cookie",
                HeaderValue::from_static("theme=dark; rg_session=forged; lang=en"),
            );
            h
        };
        let c = Some("rg_session");
        // Bearer verified and passed: the (unverified) cookie goes.
        let mut h = base();
        strip_credentials(&mut h, c, Credential::Bearer, true);
        assert_eq!(h["authorization"], "Bearer a.b.c");
        assert_eq!(h["cookie"], "theme=dark; lang=en");
        // Public route: nothing was verified, both go.
        let mut h = base();
        strip_credentials(&mut h, c, Credential::Unverified, true);
        assert!(!h.contains_key("authorization"));
        assert_eq!(h["cookie"], "theme=dark; lang=en");
        // Cookie verified and passed: kept, the bearer goes.
        let mut h = base();
        strip_credentials(&mut h, c, Credential::Cookie, true);
        assert!(!h.contains_key("authorization"));
        assert_eq!(h["cookie"], "theme=dark; rg_session=forged; lang=en");
        // Not passed (the default): both go even when verified.
        for v in [Credential::Bearer, Credential::Cookie] {
            let mut h = base();
            strip_credentials(&mut h, c, v, false);
            assert!(!h.contains_key("authorization"));
            assert_eq!(h["cookie"], "theme=dark; lang=en");
        }
    }

    #[test]
    fn responses_lose_the_gateways_cookie_and_identity_headers() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("theme=dark"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("RG_Session=minted; Path=/"),
        );
        h.insert("x-rolegate-user", HeaderValue::from_static("admin"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        let removed = clean_response(&mut h, &fwd());
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(h.get_all("set-cookie").iter().count(), 1);
        assert_eq!(h["set-cookie"], "theme=dark");
        assert!(!h.contains_key("x-rolegate-user"));
        let mut h = HeaderMap::new();
        h.insert("x-ok", HeaderValue::from_static("1"));
        assert!(clean_response(&mut h, &fwd()).is_empty());
    }

    #[test]
    fn several_cookie_fields_are_joined() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1");
    }

    #[test]
    fn control_characters_are_encoded() {
        let mut buf = String::new();
        assert_eq!(encoded(&["a\r\nb%"], &mut buf), "a%0D%0Ab%25");
        assert_eq!(encoded(&["jörg"], &mut buf), "j%C3%B6rg");
        assert_eq!(encoded(&["plain value"], &mut buf), "plain value");
        assert_eq!(encoded(&["a,b", "c"], &mut buf), "a%2Cb,c");
        assert_eq!(encoded::<&str>(&[], &mut buf), "");
    }

    /// A space at either end of a value or list item would be trimmed off
    /// by the backend's parser, turning `" admin"` (a role the gateway did
    /// not see) into `admin`: encoded.
    #[test]
    fn spaces_at_the_ends_of_items_are_encoded() {
        let mut buf = String::new();
        assert_eq!(encoded(&["admin "], &mut buf), "admin%20");
        assert_eq!(encoded(&[" admin"], &mut buf), "%20admin");
        assert_eq!(encoded(&[" "], &mut buf), "%20");
        assert_eq!(
            encoded(&["viewer", " admin", "a b "], &mut buf),
            "viewer,%20admin,a b%20"
        );
        assert_eq!(encoded(&["a b"], &mut buf), "a b");
    }
}
