//! Mask policy: the compiled, validated form of one mask policy (phase 7, respond).
//!
//! Owns the policy vocabulary: field [`Selector`]s (compiled JSONPath subset), the [`Strategy`]
//! applied to each selected value, the free-text [`Detector`]s and where they run
//! ([`DetectScope`]), and the [`Limits`] that bound what the streaming masker will buffer.
//!
//! Must not: read files, know YAML (that is `config/`), or touch request state. Everything here
//! is plain data plus parsers for the spellings used in `rules/masks/*.yaml`; the parsers return
//! `Err(String)` with a human sentence so `rolegate check` can report it with the file position.
//!
//! # Selector syntax
//!
//! | form | meaning |
//! |---|---|
//! | `$` | the document root (must be followed by at least one step) |
//! | `.key` | member `key` of an object (any characters except `.`, `[`, `]`, quotes, `*`, whitespace) |
//! | `['key']` / `["key"]` | member with an odd name; `\'`, `\"` and `\\` escape inside |
//! | `.*` | any member of an object |
//! | `[*]` | any element of an array |
//! | `[N]` | element `N` (0-based) of an array |
//! | `..key` / `..['key']` | member `key` at any depth below (including direct children) |
//!
//! Examples: `$.customer.phone`, `$.items[*].email`, `$..phone`, `$..['e-mail']`,
//! `$.rows[0].*`. Keys are compared with the *decoded* JSON key (`"ph\u006fne"` is `phone`),
//! ASCII-case-insensitively when [`Policy::case_insensitive`] is set.

/// What happens to a selected value. See [`crate::mask::strategy::mask_text`] for exact outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Replace with the fixed placeholder `"[REDACTED]"`.
    Redact,
    /// Drop the member (key and value) from its object, or the element from its array.
    Remove,
    /// Keep the last N characters, star the rest: `last4` = `Keep(4)`.
    Keep(usize),
    /// `j***@example.com`: first character of the local part, `***`, `@domain`.
    Email,
    /// `hmac:` + 32 hex digits of a keyed HMAC-SHA256: stable per deployment, so joinable.
    Hash,
    /// Replace with JSON `null`.
    Null,
}

/// Largest N accepted by `keepN` / `lastN`.
const MAX_KEEP: usize = 32;

impl Strategy {
    /// Parses the policy-file spelling: `redact`, `remove`, `email`, `hash`, `null`,
    /// `last4`, or `keepN` / `lastN` with N in 1..=32 (`keep3` = `Keep(3)`).
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s {
            "redact" => Ok(Strategy::Redact),
            "remove" => Ok(Strategy::Remove),
            "email" => Ok(Strategy::Email),
            "hash" => Ok(Strategy::Hash),
            "null" => Ok(Strategy::Null),
            _ => {
                let digits = s.strip_prefix("keep").or_else(|| s.strip_prefix("last"));
                let n = digits
                    .filter(|d| {
                        !d.is_empty()
                            && d.len() <= 2
                            && !d.starts_with('0')
                            && d.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|d| d.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_KEEP).contains(n));
                match (digits, n) {
                    (_, Some(n)) => Ok(Strategy::Keep(n)),
                    (Some(_), None) => Err(format!(
                        "strategy `{s}`: keep/last takes a count from 1 to {MAX_KEEP} (e.g. `last4`, `keep3`)"
                    )),
                    (None, _) => Err(format!(
                        "unknown strategy `{s}` (expected redact, remove, last4, keepN, email, hash or null)"
                    )),
                }
            }
        }
    }
}

/// A free-text detector run over string values (see [`crate::mask::strategy::scrub`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detector {
    /// `addr@domain.tld` → masked like [`Strategy::Email`].
    Email,
    /// 7–15 digits with optional `+` and separators → all digits but the last 2 starred.
    Phone,
    /// 13–19 digits passing the Luhn check → `****-****-****-1234`.
    Card,
}

impl Detector {
    /// Parses `email`, `phone` or `card`.
    pub fn parse(s: &str) -> Result<Detector, String> {
        match s {
            "email" => Ok(Detector::Email),
            "phone" => Ok(Detector::Phone),
            "card" => Ok(Detector::Card),
            _ => Err(format!(
                "unknown detector `{s}` (expected email, phone or card)"
            )),
        }
    }
}

/// One compiled selector step. Visible to the sibling masker modules only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// `.key` / `['key']`
    Key(String),
    /// `.*`
    AnyKey,
    /// `[N]`
    Index(u64),
    /// `[*]`
    AnyIndex,
    /// `..key`: `key` at any depth below the current node.
    Descend(String),
}

/// A compiled field path (see the module docs for the syntax).
#[derive(Debug, Clone)]
pub struct Selector {
    /// The text as written, for `check`/`explain` output and error messages.
    text: String,
    /// Never empty: a bare `$` would select the whole body, which is a route decision, not a mask.
    pub(super) steps: Vec<Step>,
}

impl Selector {
    /// Compiles `s`; the error names the offending position.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let Some(rest) = s.strip_prefix('$') else {
            return Err(format!("selector `{s}` must start with `$`"));
        };
        let err = |at: usize, what: &str| format!("selector `{s}` at byte {}: {what}", at + 1);
        let mut steps = Vec::new();
        let mut i = 0;
        while i < rest.len() {
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("..") {
                let at = i + 2;
                if after.starts_with('[') {
                    let (key, used) = parse_quoted(after).map_err(|w| err(at, &w))?;
                    steps.push(Step::Descend(key));
                    i = at + used;
                } else {
                    let (key, used) = parse_dot_key(after).map_err(|w| err(at, &w))?;
                    steps.push(Step::Descend(key));
                    i = at + used;
                }
            } else if let Some(after) = tail.strip_prefix('.') {
                if after.starts_with('*') {
                    steps.push(Step::AnyKey);
                    i += 2;
                } else {
                    let (key, used) = parse_dot_key(after).map_err(|w| err(i + 1, &w))?;
                    steps.push(Step::Key(key));
                    i += 1 + used;
                }
            } else if let Some(after) = tail.strip_prefix('[') {
                if after.starts_with("*]") {
                    steps.push(Step::AnyIndex);
                    i += 3;
                } else if after.starts_with(|c: char| c.is_ascii_digit()) {
                    let end = after
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(after.len());
                    if !after[end..].starts_with(']') {
                        return Err(err(i, "expected `]` after an array index"));
                    }
                    let n = after[..end]
                        .parse::<u64>()
                        .map_err(|_| err(i, "array index out of range"))?;
                    steps.push(Step::Index(n));
                    i += 1 + end + 1;
                } else {
                    let (key, used) = parse_quoted(tail).map_err(|w| err(i, &w))?;
                    steps.push(Step::Key(key));
                    i += used;
                }
            } else {
                return Err(err(
                    i,
                    "expected `.key`, `..key`, `.*`, `[*]`, `[N]` or `['key']`",
                ));
            }
        }
        if steps.is_empty() {
            return Err(format!(
                "selector `{s}` selects the whole body; name at least one field"
            ));
        }
        Ok(Selector {
            text: s.to_owned(),
            steps,
        })
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key named by the last step (`$..phone`, `$.a.phone`, `$[*]['phone']` → `phone`);
    /// `None` when the last step is `.*`, `[*]` or `[N]`. Used to select CSV columns by header.
    pub fn last_key(&self) -> Option<&str> {
        match self.steps.last()? {
            Step::Key(k) | Step::Descend(k) => Some(k),
            _ => None,
        }
    }
}

/// `key` after a `.`: up to the next `.` or `[`. Returns (key, bytes used).
fn parse_dot_key(s: &str) -> Result<(String, usize), String> {
    let end = s.find(['.', '[']).unwrap_or(s.len());
    let key = &s[..end];
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    if key == "*" {
        return Err("`..*` is not supported; name a key".to_owned());
    }
    if let Some(c) = key
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ']' | '\'' | '"' | '*'))
    {
        return Err(format!("character {c:?} needs the ['key'] form"));
    }
    Ok((key.to_owned(), end))
}

/// `['key']` or `["key"]` (with `\\`, `\'`, `\"` escapes). Returns (key, bytes used).
fn parse_quoted(s: &str) -> Result<(String, usize), String> {
    let mut chars = s.char_indices();
    if !matches!(chars.next(), Some((_, '['))) {
        return Err("expected `[`".to_owned());
    }
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err("expected `[*]`, `[N]` or a quoted key `['key']`".to_owned()),
    };
    let mut key = String::new();
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('\\' | '\'' | '"'))) => key.push(e),
                _ => {
                    return Err(
                        "only \\\\, \\' and \\\" escapes are allowed in a quoted key".to_owned(),
                    );
                }
            },
            c if c == quote => {
                return match chars.next() {
                    Some((at, ']')) if !key.is_empty() => Ok((key, at + 1)),
                    Some((_, ']')) => Err("empty key".to_owned()),
                    _ => Err("expected `]` after the quoted key".to_owned()),
                };
            }
            c => key.push(c),
        }
    }
    Err("unterminated quoted key".to_owned())
}

/// Resource bounds for one document; exceeding either is an error (fail closed), never a
/// pass-through.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deepest allowed nesting of objects/arrays (the root container is depth 1).
    pub max_depth: usize,
    /// Longest string (or number) in bytes, as written in the input between the quotes.
    pub max_string_bytes: usize,
}

impl Default for Limits {
    /// 64 levels, 1 MiB.
    fn default() -> Limits {
        Limits {
            max_depth: 64,
            max_string_bytes: 1 << 20,
        }
    }
}

/// One named mask policy, shared read-only by every masker (`Arc<Policy>`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Field rules in file order; when several match a value, the first wins.
    pub fields: Vec<(Selector, Strategy)>,
    /// free-text detectors and where they run
    pub detectors: Vec<Detector>,
    pub detect_in: DetectScope,
    /// match object keys case-insensitively (ASCII) in selectors
    pub case_insensitive: bool,
    /// HMAC-SHA256 key for Strategy::Hash (stable per deployment)
    pub hash_key: Vec<u8>,
    pub limits: Limits,
    /// The JSON masker's selector tables, built on first use (`Default::default()`).
    pub compiled: super::json::Compiled,
}

/// Where the free-text [`Detector`]s run.
#[derive(Debug, Clone)]
pub enum DetectScope {
    /// Nowhere.
    None,
    /// String values under these selectors: the selected value if it is a string, or every
    /// string value inside a selected object/array.
    Fields(Vec<Selector>),
    /// every string value in the body
    All,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_parse_table() {
        let ok = [
            ("redact", Strategy::Redact),
            ("remove", Strategy::Remove),
            ("email", Strategy::Email),
            ("hash", Strategy::Hash),
            ("null", Strategy::Null),
            ("last4", Strategy::Keep(4)),
            ("keep3", Strategy::Keep(3)),
            ("keep1", Strategy::Keep(1)),
            ("keep32", Strategy::Keep(32)),
            ("last2", Strategy::Keep(2)),
        ];
        for (s, want) in ok {
            assert_eq!(Strategy::parse(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "Redact",
            "keep",
            "keep0",
            "keep33",
            "keep04",
            "keep-1",
            "keep 3",
            "last",
            "mask",
            "keep999999999999999999999",
        ] {
            assert!(Strategy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn detector_parse_table() {
        assert_eq!(Detector::parse("email"), Ok(Detector::Email));
        assert_eq!(Detector::parse("phone"), Ok(Detector::Phone));
        assert_eq!(Detector::parse("card"), Ok(Detector::Card));
        assert!(Detector::parse("ssn").is_err());
        assert!(Detector::parse("Email").is_err());
    }

    #[test]
    fn selector_parse_table() {
        use Step::*;
        let k = |s: &str| s.to_owned();
        let ok: Vec<(&str, Vec<Step>)> = vec![
            (
                "$.customer.phone",
                vec![Key(k("customer")), Key(k("phone"))],
            ),
            (
                "$.items[*].email",
                vec![Key(k("items")), AnyIndex, Key(k("email"))],
            ),
            ("$..phone", vec![Descend(k("phone"))]),
            ("$..['e-mail addr']", vec![Descend(k("e-mail addr"))]),
            ("$['odd.key']", vec![Key(k("odd.key"))]),
            ("$[\"dq\"]", vec![Key(k("dq"))]),
            ("$['it\\'s']", vec![Key(k("it's"))]),
            ("$.rows[0].*", vec![Key(k("rows")), Index(0), AnyKey]),
            ("$[12]", vec![Index(12)]),
            ("$[*]", vec![AnyIndex]),
            (
                "$..address.street",
                vec![Descend(k("address")), Key(k("street"))],
            ),
            ("$.first-name", vec![Key(k("first-name"))]),
            ("$.名前", vec![Key(k("名前"))]),
        ];
        for (s, want) in ok {
            let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.steps, want, "{s}");
            assert_eq!(sel.as_str(), s);
        }
        for bad in [
            "",
            "$",
            "phone",
            "$.",
            "$..",
            "$..*",
            "$[",
            "$[x]",
            "$['a'",
            "$['a]",
            "$['']",
            "$[1",
            "$[-1]",
            "$.a b",
            "$.a]",
            "$ .a",
            "$[99999999999999999999999]",
            "$['a\\x']",
            "$...a",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn selector_last_key() {
        let lk = |s: &str| Selector::parse(s).unwrap().last_key().map(str::to_owned);
        assert_eq!(lk("$..phone").as_deref(), Some("phone"));
        assert_eq!(lk("$.a.phone").as_deref(), Some("phone"));
        assert_eq!(lk("$[*]['phone']").as_deref(), Some("phone"));
        assert_eq!(lk("$.a[*]"), None);
        assert_eq!(lk("$.a.*"), None);
    }

    #[test]
    fn limits_default() {
        let l = Limits::default();
        assert_eq!((l.max_depth, l.max_string_bytes), (64, 1024 * 1024));
    }
}
