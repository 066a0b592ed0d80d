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

/// The other spelling a resource id is looked up under: an id a lenient
/// backend reads as an integer other than the id as written — leading
/// zeros or a sign (`042`, `+42`), a fraction of zeros (`42.0`, `42.`),
/// an exponent (`4.2e1`), a hex, octal or binary literal (`0x2a`, `0o52`,
/// `0b101010`), surrounding white space — is also that integer's canonical
/// decimal spelling (`42`): what JavaScript's `Number()`, PHP's numeric
/// strings, `parseFloat` and integer parsers make of it. Decimals are read
/// as JavaScript reads them (a double: `42.0000000000000001` is 42);
/// integers past 2^53 and anything else are `None`. The owner's choice is
/// kept under the id they hold the capability on (canonical in practice:
/// `bot:042` is not `bot:42` for a role binding), so a request spelling the
/// id otherwise still gets it.
pub fn canonical_number(id: &str) -> Option<String> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let s = id.trim_matches(|c: char| c.is_ascii_whitespace());
    let radix = |p: &str| {
        let (head, digits) = s.split_at_checked(2)?;
        head.eq_ignore_ascii_case(p).then_some(digits)
    };
    let value = if let Some(d) = radix("0x") {
        u64::from_str_radix(d, 16).ok()? as f64
    } else if let Some(d) = radix("0o") {
        u64::from_str_radix(d, 8).ok()? as f64
    } else if let Some(d) = radix("0b") {
        u64::from_str_radix(d, 2).ok()? as f64
    } else {
        // Digits, a sign, a point, an exponent: no `inf`, `NaN` or `_`.
        let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E');
        if s.is_empty() || !s.bytes().all(numeric) || !s.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<f64>().ok()?
    };
    if !value.is_finite() || value.fract() != 0.0 || value.abs() >= EXACT {
        return None;
    }
    // `-0` is 0.
    let canonical = (value as i64).to_string();
    (canonical != id).then_some(canonical)
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
        assert_eq!(canonical_number("042").as_deref(), Some("42"));
        assert_eq!(canonical_number("+42").as_deref(), Some("42"));
        assert_eq!(canonical_number("000").as_deref(), Some("0"));
        assert_eq!(canonical_number("42"), None, "already canonical");
        assert_eq!(canonical_number("0"), None);
        assert_eq!(canonical_number("-42"), None, "already canonical");
        for (lenient, number) in [
            ("42.0", "42"),
            ("42.", "42"),
            ("42.000", "42"),
            ("+42.0", "42"),
            ("4.2e1", "42"),
            ("420E-1", "42"),
            ("0x2a", "42"),
            ("0X2A", "42"),
            ("0o52", "42"),
            ("0b101010", "42"),
            (" 42", "42"),
            ("42\t", "42"),
            ("-0", "0"),
            ("-042", "-42"),
            ("42.0000000000000001", "42"),
            ("9007199254740991", "9007199254740991"),
        ] {
            let expected = (lenient != number).then(|| number.to_string());
            assert_eq!(canonical_number(lenient), expected, "{lenient:?}");
        }
        for other in [
            "",
            "+",
            "4a",
            "abc",
            "ﾑ",
            "42.5",
            "4.25e1",
            "inf",
            "-Infinity",
            "NaN",
            "1e400",
            "9007199254740993",
            "0x",
            "0xg",
            "4_2",
            "1e",
            ".",
            "e5",
            "0x-2a",
        ] {
            assert_eq!(canonical_number(other), None, "{other:?}");
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
