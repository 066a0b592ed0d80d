//! Owner-chosen columns (`masks.NAME.owner_columns`): the mask policy for
//! one resource and record, extended with the columns its owner chose.
//!
//! Owns deriving that policy and a bounded cache of derived policies, keyed
//! by the chosen column list itself, so a changed choice is simply another
//! key and nothing ever needs invalidating. Must not: read the choice (the
//! pipeline reads it from the session store's shared records) or decide who
//! sees data unmasked.

use std::sync::Arc;

use dashmap::DashMap;

use super::policy::{Policy, Selector, Strategy};

/// Columns one choice may name at most; longer names are refused too.
pub const MAX_COLUMNS: usize = 256;
pub const MAX_COLUMN_BYTES: usize = 128;

/// Derived policies kept at most (per gateway); beyond it a derived policy
/// is built per response and not kept.
const CACHE_ENTRIES: usize = 4096;

/// Whether `name` can be a chosen column: not empty, at most
/// [`MAX_COLUMN_BYTES`], no control characters.
pub fn valid_column(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_COLUMN_BYTES && !name.chars().any(char::is_control)
}

/// The selector of a column: the member of that name at any depth (a JSON
/// row's key) — for CSV, the column with that header.
pub fn column_selector(name: &str) -> Result<Selector, String> {
    let escaped = name.replace('\\', "\\\\").replace('\'', "\\'");
    Selector::parse(&format!("$..['{escaped}']"))
}

/// `base` with the chosen columns masked with `strategy`, ahead of the
/// base's own field rules (the first matching rule wins, and the owner
/// chose these to be hidden).
pub fn with_columns(base: &Policy, columns: &[String], strategy: &Strategy) -> Policy {
    let mut p = base.clone();
    let mut fields: Vec<(Selector, Strategy)> = columns
        .iter()
        .filter_map(|c| column_selector(c).ok())
        .map(|s| (s, strategy.clone()))
        .collect();
    fields.append(&mut p.fields);
    p.fields = fields;
    p
}

/// The shared-records namespace of a mask's choices.
pub fn choice_ns(mask: &str) -> String {
    format!("mask.{mask}")
}

/// A choice's key: the JSON array `[resource id, record]` (`""` for a
/// route without `record:`, and for a choice made for every record of the
/// resource). The record is lower-cased: backends that resolve table names
/// without regard to case (MySQL, most ORMs) serve `Customers` as
/// `customers`, and a choice must not be dodged by a spelling.
pub fn choice_key(resource: &str, record: &str) -> String {
    serde_json::to_string(&[resource, &record.to_lowercase()]).unwrap_or_default()
}

/// The other ids a resource id is also looked up under: the integers a
/// lenient backend may read it as, in canonical decimal (`42`), when that
/// is not how it is written. Each reading is taken, so a spelling two
/// parsers read differently gets the choices of both:
/// - as an integer: a sign, leading zeros, `_` between digits (`+042`,
///   `4_2`; exact at any length), or a hex, octal or binary literal with
///   an optional sign (`0x2a`, `-0o52`, `0b101010`);
/// - as a C or Go "base 0" integer, a leading zero meaning octal (`052`);
/// - as a double (`Number()`, `parseFloat`, PHP): a fraction or an
///   exponent (`42.0`, `4.2e1`, `42.0000000000000001`), up to 2^53;
/// - as a prefix parser (`parseInt`, `atoi`, PHP's `(int)`) reads an id
///   made of digits, signs, points and exponents: its leading digits
///   (`42.5` is 42, `4.2e1` is 4); `0x…` is 0 to `parseFloat`.
///
/// White space around the id (any Unicode white space, which JavaScript
/// and Python trim) is ignored, and full-width digits (`４２`) read as
/// ASCII ones. Ids with other characters (`42abc`, a UUID) have no
/// reading: only the id as written is looked up. The owner's choice is
/// kept under the id they hold the capability on (canonical in practice:
/// `bot:042` is not `bot:42` for a role binding), so a request spelling the
/// id otherwise still gets it; an extra reading only adds choices (more
/// masking), never removes one.
pub fn canonical_numbers(id: &str) -> Vec<String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let folded: String = id
        .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .chars()
        .map(|c| match c {
            '\u{ff10}'..='\u{ff19}' => char::from(b'0' + (c as u32 - 0xff10) as u8),
            '\u{ff0b}' => '+',
            '\u{ff0d}' => '-',
            _ => c,
        })
        .collect();
    let s = folded.as_str();
    let mut out: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if n != id && !out.contains(&n) {
            out.push(n);
        }
    };
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let signed = |digits: &str| {
        let digits = digits.trim_start_matches('0');
        match (digits.is_empty(), negative) {
            (true, _) => "0".to_string(),
            (false, true) => format!("-{digits}"),
            (false, false) => digits.to_string(),
        }
    };
    // Hex, octal or binary literals.
    let radix = [("0x", 16), ("0o", 8), ("0b", 2)]
        .into_iter()
        .find_map(|(p, r)| {
            let (head, digits) = body.split_at_checked(2)?;
            head.eq_ignore_ascii_case(p).then_some((digits, r))
        });
    if let Some((digits, r)) = radix {
        let digits = digits.replace('_', "");
        if let Ok(n) = u128::from_str_radix(&digits, r)
            && !digits.starts_with(['+', '-'])
        {
            add(signed(&n.to_string()));
            // `parseFloat` stops at the `x`.
            add("0".to_string());
        }
        return out;
    }
    // Digits, signs, points, exponents and `_`: no `inf`, `NaN`, letters.
    let numeric =
        |b: u8| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E' | b'_');
    if !body.bytes().all(numeric) || !body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return out;
    }
    let integer = body.replace('_', "");
    let underscores_between_digits =
        !body.starts_with('_') && !body.ends_with('_') && !body.contains("__");
    if underscores_between_digits
        && !integer.is_empty()
        && integer.bytes().all(|b| b.is_ascii_digit())
    {
        add(signed(&integer));
        if integer.len() > 1
            && integer.starts_with('0')
            && integer.bytes().all(|b| (b'0'..=b'7').contains(&b))
            && let Ok(n) = u128::from_str_radix(&integer, 8)
        {
            add(signed(&n.to_string()));
        }
    }
    if !body.contains('_')
        && let Ok(v) = s.parse::<f64>()
        && v.is_finite()
        && v.fract() == 0.0
        && v.abs() < EXACT
    {
        // `-0` is 0.
        add((v as i64).to_string());
    }
    // A prefix parser's reading: the leading digits.
    let lead: String = body.chars().take_while(char::is_ascii_digit).collect();
    if !lead.is_empty() {
        add(signed(&lead));
    }
    out
}

/// The key a choice for a record with upper-case letters had before
/// records were lower-cased (folded into the new key at start).
pub fn legacy_choice_key(resource: &str, record: &str) -> Option<String> {
    (record.to_lowercase() != record)
        .then(|| serde_json::to_string(&[resource, record]).unwrap_or_default())
}

/// Several stored choices (JSON arrays of column names) as one, sorted and
/// without repeats; `None` if one is not such an array (fail closed).
pub fn merge_choices<'a>(stored: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut all: Vec<String> = Vec::new();
    for s in stored {
        all.extend(serde_json::from_str::<Vec<String>>(s).ok()?);
    }
    all.sort();
    all.dedup();
    serde_json::to_string(&all).ok()
}

/// Derived policies by (mask name, chosen columns as stored), each with
/// the base policy it was derived from: after a reload changes the base,
/// the entry is rebuilt (the entry holds its base, so a new base can never
/// be mistaken for it).
#[derive(Default)]
pub struct OwnerCache(DashMap<(String, String), (Arc<Policy>, Arc<Policy>)>);

impl OwnerCache {
    /// The derived policy for `base` and the stored choice `stored` (a JSON
    /// array of column names). `None` when `stored` is not such an array:
    /// the caller fails closed.
    pub fn policy(
        &self,
        base: &Arc<Policy>,
        stored: &str,
        strategy: &Strategy,
    ) -> Option<Arc<Policy>> {
        let key = (base.name.clone(), stored.to_string());
        if let Some(e) = self.0.get(&key)
            && Arc::ptr_eq(&e.0, base)
        {
            return Some(e.1.clone());
        }
        let columns: Vec<String> = serde_json::from_str(stored).ok()?;
        if columns.iter().any(|c| !valid_column(c)) {
            return None;
        }
        let p = Arc::new(with_columns(base, &columns, strategy));
        if self.0.len() < CACHE_ENTRIES || self.0.contains_key(&key) {
            self.0.insert(key, (base.clone(), p.clone()));
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_have_one_canonical_spelling() {
        let readings = |id: &str| canonical_numbers(id);
        // Canonical already, or not a number to any parser read here.
        for id in [
            "42", "0", "-42", "abc", "42abc", "4f3a9c", "", "+", "inf", "NaN",
        ] {
            assert_eq!(readings(id), Vec::<String>::new(), "{id:?}");
        }
        // Past a double's range: only a prefix parser reads it.
        assert_eq!(readings("1e400"), ["1"]);
        for (lenient, number) in [
            ("042", "42"),
            ("+42", "42"),
            ("000", "0"),
            ("42.0", "42"),
            ("42.", "42"),
            ("42.000", "42"),
            ("+42.0", "42"),
            ("4.2e1", "42"),
            ("420E-1", "42"),
            ("0x2a", "42"),
            ("0X2A", "42"),
            ("+0x2a", "42"),
            ("-0x2a", "-42"),
            ("0o52", "42"),
            ("0b101010", "42"),
            ("0x_2a", "42"),
            ("4_2", "42"),
            (" 42", "42"),
            ("42\t", "42"),
            ("\u{b}42", "42"),
            ("\u{a0}42\u{3000}", "42"),
            ("\u{feff}42", "42"),
            ("４２", "42"),
            ("-0", "0"),
            ("-042", "-42"),
            ("42.0000000000000001", "42"),
            ("42.5", "42"),
            ("052", "42"),
            ("052", "52"),
            ("+01234567890123456789012", "1234567890123456789012"),
            ("0x1234567890abcdef1234", "85968058272638546416180"),
        ] {
            assert!(
                readings(lenient).contains(&number.to_string()),
                "{lenient:?} should read as {number}: {:?}",
                readings(lenient)
            );
        }
        // Two parsers, two readings: both are looked up.
        assert_eq!(readings("4.2e1"), ["42", "4"]);
        assert_eq!(readings("0x2a"), ["42", "0"]);
        // Not integers by any reading but a prefix parser's.
        assert_eq!(readings("42.5"), ["42"]);
        for none in ["0x", "0xg", "0x-2a", "1e", ".", "e5", "4__2", "_42", "42_"] {
            let r = readings(none);
            assert!(
                !r.contains(&"42".to_string()) || none == "42_",
                "{none:?}: {r:?}"
            );
        }
    }

    fn base() -> Policy {
        Policy {
            name: "t".into(),
            fields: vec![(Selector::parse("$..email").unwrap(), Strategy::Email)],
            detectors: vec![],
            detect_in: super::super::DetectScope::None,
            case_insensitive: false,
            hash_key: vec![],
            limits: super::super::Limits::default(),
            compiled: Default::default(),
        }
    }

    #[test]
    fn chosen_columns_come_first_and_odd_names_are_escaped() {
        let p = with_columns(
            &base(),
            &["ph'one\\x".into(), "email".into()],
            &Strategy::Redact,
        );
        let texts: Vec<&str> = p.fields.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(texts, ["$..['ph\\'one\\\\x']", "$..['email']", "$..email"]);
        assert_eq!(p.fields[0].0.last_key(), Some("ph'one\\x"));
        assert_eq!(p.fields[1].1, Strategy::Redact, "the owner's choice wins");
    }

    #[test]
    fn records_are_keyed_without_case_and_choices_merge() {
        assert_eq!(choice_key("42", "Customers"), choice_key("42", "customers"));
        assert_ne!(choice_key("42", "customers"), choice_key("42", ""));
        assert_eq!(legacy_choice_key("42", "customers"), None);
        assert_eq!(
            legacy_choice_key("42", "Customers").as_deref(),
            Some(r#"["42","Customers"]"#)
        );
        assert_eq!(
            merge_choices([r#"["b","a"]"#, r#"["c","a"]"#]).as_deref(),
            Some(r#"["a","b","c"]"#)
        );
        assert_eq!(merge_choices([r#"["a"]"#, r#"{"a":1}"#]), None);
    }

    #[test]
    fn the_cache_refuses_a_stored_choice_that_is_not_a_column_list() {
        let c = OwnerCache::default();
        let b = Arc::new(base());
        assert!(c.policy(&b, r#"["a","b"]"#, &Strategy::Redact).is_some());
        assert!(c.policy(&b, r#"{"a":1}"#, &Strategy::Redact).is_none());
        assert!(c.policy(&b, r#"["a\u0000"]"#, &Strategy::Redact).is_none());
        let again = c.policy(&b, r#"["a","b"]"#, &Strategy::Redact).unwrap();
        assert_eq!(again.fields.len(), 3);
        // A reloaded base with the same name: rebuilt on it, not reused.
        let mut changed = base();
        changed.fields.clear();
        let reloaded = c
            .policy(&Arc::new(changed), r#"["a","b"]"#, &Strategy::Redact)
            .unwrap();
        assert_eq!(reloaded.fields.len(), 2);
    }
}
