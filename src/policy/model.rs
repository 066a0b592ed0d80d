//! Input definitions of the policy: role and profile catalogs as written in
//! the config ([`RoleDef`], [`ProfileDef`], [`PolicySpec`]), the verified
//! identity a request carries ([`Principal`]), the token binding syntax
//! (`role@kind:id`, [`parse_binding`]) and the capability name grammar.
//!
//! This file only *describes* data and checks its shape. It must not decide
//! anything (that is `decide.rs`), must not resolve names against the
//! catalog (that is `compile.rs`), and must never panic: bindings and grants
//! come straight from attacker-supplied tokens.

use std::collections::BTreeMap;
use std::time::Duration;

/// One role of the catalog, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleDef {
    pub name: String,
    pub description: Option<String>,
    /// Capabilities this role grants itself (`bot.publish`, `channel.whatsapp.*`).
    pub grants: Vec<String>,
    /// Roles whose grants (transitively) this role also grants.
    pub includes: Vec<String>,
    /// Roles that must be held in the same context for this role's grants to count.
    pub requires: Vec<String>,
    /// Session idle timeout imposed on whoever holds this role.
    pub idle_timeout: Option<Duration>,
    /// `None` = global role; `Some("bot")` = only effective when bound as `name@bot:<id>`.
    pub scope: Option<String>,
}

/// A named bundle of (global) roles and extra grants, assigned to a
/// principal through its `profiles` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileDef {
    pub name: String,
    pub description: Option<String>,
    pub roles: Vec<String>,
    pub grants: Vec<String>,
}

/// One ordered ladder of capability levels (`capability_levels:`), lowest
/// first: a concrete capability strictly below `prefix` whose last segment
/// is one of `levels` also grants the same capability at every lower level
/// (`channel: [view, reply, manage]`: `channel.whatsapp.support.manage`
/// grants `channel.whatsapp.support.reply` and `.view`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelLadder {
    /// A capability name (`channel`, or several segments: `bot.flows`).
    pub prefix: String,
    /// Level names, lowest first. `none` is not a level: it is the absence
    /// of a grant.
    pub levels: Vec<String>,
}

/// The whole catalog handed to [`Policy::compile`](super::Policy::compile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    pub roles: Vec<RoleDef>,
    pub profiles: Vec<ProfileDef>,
    /// `capability_levels:`, in declaration order.
    pub levels: Vec<LevelLadder>,
}

/// The verified identity of a request (built by the auth stage from a JWT).
///
/// Every string in here is attacker-influenced: the token was signed by a
/// trusted issuer, but its contents are whatever the issuer put there, so
/// nothing is assumed well-formed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub issuer: String,
    pub session: Option<String>,
    /// `session` is the token's own digest (`t:…`: no `sid`, no `jti`):
    /// the gateway's key for it, not an id the token carries (not sent in
    /// `X-Rolegate-Session`).
    pub session_is_token: bool,
    /// Raw role bindings: `"agent"` (global) or `"developer@bot:42"` (scoped).
    pub roles: Vec<String>,
    pub partners: Vec<String>,
    pub teams: Vec<String>,
    pub profiles: Vec<String>,
    /// Extra grants: `"cap"` (global) or `"cap@bot:42"` (scoped).
    pub grants: Vec<String>,
    /// Other string / string-list claims, for requirement conditions.
    pub claims: BTreeMap<String, Vec<String>>,
    /// The identity headers' values, encoded on the first request this
    /// principal makes and reused by the next ones (the principal of a
    /// cached token is shared by all of them).
    pub identity_values: Memo<Box<[Option<http::HeaderValue>]>>,
    /// The same fields encoded as header lines (`name: value\r\n` each),
    /// for the HTTP/1.1 upstream client to write as they are; kept with the
    /// name of the first field, which says what names they were made with.
    pub identity_block: Memo<(http::HeaderName, bytes::Bytes)>,
    /// The session store's key of this principal's session (a digest of
    /// issuer, subject and session id), made on its first request.
    pub session_key: Memo<[u8; 32]>,
    /// The idle timeout this principal gets under one runtime, made on its
    /// first request under that runtime (a reload may change it).
    pub idle_timeout: PerRuntime,
}

/// One `Duration` derived from a principal and the runtime in force, kept
/// for the runtime it was made under: a runtime generation (never 0) and
/// whole milliseconds packed in one atomic word, so reading it is one
/// load. A value over `u32::MAX` ms (49 days) is not kept: made again each
/// time. Like [`Memo`], a clone starts empty and equality ignores it.
#[derive(Default)]
pub struct PerRuntime(std::sync::atomic::AtomicU64);

impl PerRuntime {
    /// The value made under `generation`, or `f()` (then kept).
    pub fn get_or_init(
        &self,
        generation: std::num::NonZeroU32,
        f: impl FnOnce() -> Duration,
    ) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        let word = self.0.load(Relaxed);
        if (word >> 32) as u32 == generation.get() {
            return Duration::from_millis(word & u64::from(u32::MAX));
        }
        let d = f();
        if let Ok(ms) = u32::try_from(d.as_millis())
            && Duration::from_millis(u64::from(ms)) == d
        {
            self.0
                .store(u64::from(generation.get()) << 32 | u64::from(ms), Relaxed);
        }
        d
    }
}

impl Clone for PerRuntime {
    fn clone(&self) -> Self {
        PerRuntime::default()
    }
}

impl PartialEq for PerRuntime {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PerRuntime {}

impl std::fmt::Debug for PerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PerRuntime")
    }
}

/// A value derived from the rest of its struct once, on first use. A
/// clone starts empty (a principal changed after cloning never carries
/// values derived from another), and it takes no part in equality.
pub struct Memo<T>(std::sync::OnceLock<T>);

impl<T> Memo<T> {
    pub fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(f)
    }
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo(std::sync::OnceLock::new())
    }
}

impl<T> Clone for Memo<T> {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Memo<T> {}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

/// A parsed binding: `name` alone (global) or `name@kind:id` (scoped to one resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding<'a> {
    pub name: &'a str,
    /// `(kind, id)`, e.g. `("bot", "42")`.
    pub scope: Option<(&'a str, &'a str)>,
}

/// Parses `"name"` or `"name@kind:id"`.
///
/// Malformed input (`""`, `"x@"`, `"x@kind"`, `"x@:id"`, `"@kind:id"`,
/// `"x@kind:"`, a second `@`, whitespace or control characters anywhere,
/// an invalid kind) yields `None`; callers ignore such bindings, which is the
/// fail-closed outcome. The id may contain `:` (the kind cannot, so the split
/// is unambiguous).
pub fn parse_binding(raw: &str) -> Option<Binding<'_>> {
    // Whitespace/control characters are never legitimate here and are a
    // classic way to make two systems disagree about a name.
    if has_space_or_control(raw) {
        return None;
    }
    match raw.split_once('@') {
        None => (!raw.is_empty()).then_some(Binding {
            name: raw,
            scope: None,
        }),
        Some((name, rest)) => {
            let (kind, id) = rest.split_once(':')?;
            if name.is_empty() || id.is_empty() || id.contains('@') || !is_valid_scope_kind(kind) {
                return None;
            }
            Some(Binding {
                name,
                scope: Some((kind, id)),
            })
        }
    }
}

/// Whether `s` has a whitespace or control character. ASCII (most names)
/// is told by byte: there the two are exactly the bytes up to the space,
/// and DEL.
fn has_space_or_control(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        s.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}

fn is_segment_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')
}

/// `[a-z0-9_-]+(\.[a-z0-9_-]+)*`. A byte walk rather than `split('.')`: it runs on every
/// request (capability checks), and the splitter's searcher cost more than the check.
fn is_dotted(s: &str) -> bool {
    // Whether the previous byte was a dot (true at the start: no leading dot).
    let mut after_dot = true;
    for b in s.bytes() {
        if b == b'.' {
            if after_dot {
                return false;
            }
            after_dot = true;
        } else if is_segment_byte(b) {
            after_dot = false;
        } else {
            return false;
        }
    }
    !after_dot
}

/// A concrete capability name: `[a-z0-9_-]+(\.[a-z0-9_-]+)*` (no wildcard).
/// This is what routes require.
pub fn is_valid_capability(s: &str) -> bool {
    is_dotted(s)
}

/// A grantable name: a capability, optionally ending in `.*` (everything
/// strictly below it). A bare `*` is refused on purpose: "grant everything"
/// is too easy to hand out by accident.
pub fn is_valid_grant(s: &str) -> bool {
    match s.strip_suffix(".*") {
        Some(prefix) => is_dotted(prefix),
        None => is_dotted(s),
    }
}

/// Does the (already valid) grant `grant` cover the capability `cap`?
///
/// Exact match, or `prefix.*` with `cap` strictly below `prefix` on a segment
/// boundary: `bot.flow.*` covers `bot.flow.x` but neither `bot.flow` nor
/// `bot.flows.x`. Invalid grants or capabilities cover nothing.
pub fn grant_covers(grant: &str, cap: &str) -> bool {
    if !is_valid_capability(cap) || !is_valid_grant(grant) {
        return false;
    }
    match grant.strip_suffix(".*") {
        Some(prefix) => {
            cap.len() > prefix.len() + 1
                && cap.starts_with(prefix)
                && cap.as_bytes().get(prefix.len()) == Some(&b'.')
        }
        None => grant == cap,
    }
}

/// One capability segment: `[a-z0-9_-]+` (a level name, a scope kind).
pub(crate) fn is_valid_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_segment_byte)
}

/// Scope kinds (`bot`, `partner`, `team`) share the capability segment alphabet.
pub fn is_valid_scope_kind(s: &str) -> bool {
    is_valid_segment(s)
}

/// Role and profile names: anything printable without `@` (which would make
/// the name impossible to bind) or whitespace.
pub(crate) fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_runtime_values_are_kept_for_their_runtime_only() {
        let g = |n| std::num::NonZeroU32::new(n).unwrap();
        let memo = PerRuntime::default();
        let calls = std::cell::Cell::new(0);
        let make = |d: Duration| {
            calls.set(calls.get() + 1);
            d
        };
        let min = Duration::from_secs(60);
        assert_eq!(memo.get_or_init(g(1), || make(min)), min);
        assert_eq!(memo.get_or_init(g(1), || make(Duration::ZERO)), min);
        assert_eq!(calls.get(), 1, "kept under the same runtime");
        // Another runtime: made again, and that value kept from then on.
        let sec = Duration::from_secs(1);
        assert_eq!(memo.get_or_init(g(2), || make(sec)), sec);
        assert_eq!(memo.get_or_init(g(2), || make(min)), sec);
        assert_eq!(calls.get(), 2);
        // Not whole milliseconds, or too long to pack: never kept.
        for d in [
            Duration::from_micros(1500),
            Duration::from_secs(60 * 86_400),
        ] {
            let m = PerRuntime::default();
            assert_eq!(m.get_or_init(g(3), || d), d);
            assert_eq!(m.get_or_init(g(3), || sec), sec, "{d:?} was kept");
        }
        // A clone starts empty.
        let c = memo.clone();
        assert_eq!(c.get_or_init(g(2), || min), min);
    }

    #[test]
    fn bindings_parse_or_are_refused() {
        type Parsed<'a> = Option<(&'a str, Option<(&'a str, &'a str)>)>;
        let cases: &[(&str, Parsed)] = &[
            ("agent", Some(("agent", None))),
            ("developer@bot:42", Some(("developer", Some(("bot", "42"))))),
            (
                "bot.publish@bot:9",
                Some(("bot.publish", Some(("bot", "9")))),
            ),
            ("x@bot:a:b", Some(("x", Some(("bot", "a:b"))))),
            ("", None),
            ("a@", None),
            ("a@bot", None),
            ("@bot:1", None),
            ("a@bot:", None),
            ("a@:1", None),
            ("x@", None),
            ("x@kind", None),
            ("x@:id", None),
            ("a@bot:1@bot:2", None),
            ("a@b@bot:1", None),
            ("a@Bot:1", None),
            ("a @bot:1", None),
            ("a@bot:1\n", None),
            ("agent\u{0}", None),
        ];
        for (raw, want) in cases {
            let got = parse_binding(raw).map(|b| (b.name, b.scope));
            assert_eq!(got, *want, "parse_binding({raw:?})");
        }
    }

    #[test]
    fn grant_and_capability_names() {
        let cases: &[(&str, bool, bool)] = &[
            // (name, valid capability, valid grant)
            ("bot.publish", true, true),
            ("a", true, true),
            ("channel.whatsapp.*", false, true),
            ("a_b-c.d9", true, true),
            ("*", false, false),
            (".*", false, false),
            ("a.*.b", false, false),
            ("a.**", false, false),
            ("A.B", false, false),
            ("a..b", false, false),
            ("a.", false, false),
            (".a", false, false),
            ("", false, false),
            ("a b", false, false),
            ("a.*.*", false, false),
        ];
        for (s, cap, grant) in cases {
            assert_eq!(is_valid_capability(s), *cap, "capability {s:?}");
            assert_eq!(is_valid_grant(s), *grant, "grant {s:?}");
        }
    }

    proptest::proptest! {
        /// The byte walk accepts exactly the dotted names of its grammar.
        #[test]
        fn is_dotted_is_the_grammar(s in "[a.z_9*A -]{0,8}") {
            let want = !s.is_empty()
                && s.split('.').all(|seg| !seg.is_empty() && seg.bytes().all(is_segment_byte));
            proptest::prop_assert_eq!(is_dotted(&s), want);
        }

        /// The byte test for ASCII names says what the character classes
        /// say, and so does the test of other names.
        #[test]
        fn space_or_control_is_the_character_rule(s in "(?s:.{0,6})") {
            let want = s.chars().any(|c| c.is_whitespace() || c.is_control());
            proptest::prop_assert_eq!(has_space_or_control(&s), want, "{:?}", s);
        }
    }

    #[test]
    fn every_ascii_byte_is_told_as_the_character_rule_tells_it() {
        for b in 0u8..0x80 {
            let s = format!("agent{}x", char::from(b));
            let want = s.chars().any(|c| c.is_whitespace() || c.is_control());
            assert_eq!(has_space_or_control(&s), want, "byte {b:#04x}");
            if b != b'@' {
                assert_eq!(parse_binding(&s).is_none(), want, "byte {b:#04x}");
            }
        }
    }

    #[test]
    fn wildcard_grants_cover_strictly_below_on_segment_boundaries() {
        let cases: &[(&str, &str, bool)] = &[
            ("channel.whatsapp.*", "channel.whatsapp.support.reply", true),
            ("channel.whatsapp.*", "channel.whatsapp.x", true),
            ("channel.whatsapp.*", "channel.whatsapp", false),
            ("channel.whatsapp.*", "channel", false),
            ("bot.flow.*", "bot.flows.x", false),
            ("bot.flow.*", "bot.flow.x", true),
            ("bot.flow", "bot.flow", true),
            ("bot.flow", "bot.flow.x", false),
            ("bot.flow", "bot.flows", false),
            ("*", "bot", false),
            ("bot.*", "bot.*", false),
            ("bot.*", "bot.", false),
            ("bot.*", "bot..x", false),
        ];
        for (g, c, want) in cases {
            assert_eq!(grant_covers(g, c), *want, "{g} covers {c}");
        }
    }
}
