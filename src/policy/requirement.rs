//! Route requirements: the [`Requirement`] expression tree, its text syntax
//! ([`Requirement::parse`] / `Display`), and the per-route [`RoutePolicy`].
//!
//! Text syntax of one requirement string (YAML lists become `Any`/`All` in
//! the config layer; the same forms are also accepted inline here so that
//! every `Display` output parses back):
//!
//! ```text
//! bot.publish                          capability (no wildcard)
//! authenticated                        any verified principal
//! {team} in principal.teams            membership of a single value in a list
//! {user} == principal.sub              equality of two single values
//! relation:active_conversation({customer}, 'x')   external relation
//! any(a, b, ...)   all(a, b, ...)      OR / AND
//! ```
//! Operands: `{param}` (path param), `principal.sub`, `principal.partners`,
//! `principal.teams`, `principal.roles`, `principal.claims.NAME`, and
//! `'literal'` (`\'` and `\\` escape). The right side of `in` must be a
//! list claim or a literal (a one-element list). Two capability names
//! cannot be written in this syntax because they read as something else:
//! `authenticated` (the keyword) and names starting with `principal.`.
//!
//! This file owns syntax only: it must not evaluate anything (that is
//! `decide.rs`) nor check names against routes or the catalog (`compile.rs`).
//! Parsing is for config text, but it still must never panic or recurse
//! without bound.

use std::fmt;

use super::model::is_valid_capability;

/// Nesting limit for `any(...)`/`all(...)`, so hostile or broken config text
/// cannot overflow the stack (the evaluator enforces the same limit).
pub const MAX_DEPTH: usize = 32;

/// A value in a condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operand {
    /// A path parameter, written `{customer}`; holds `customer`.
    Param(String),
    /// A principal field, written `principal.X`; holds `X` without the
    /// `principal.` prefix: `sub`, `partners`, `teams`, `roles` or
    /// `claims.NAME`.
    Claim(String),
    /// A constant, written `'quoted'`; holds the unquoted text.
    Literal(String),
}

/// What a route demands of the principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    Capability(String),
    Authenticated,
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// `a in b`: the single value of `a` is an element of the list `b`.
    In(Operand, Operand),
    /// `a == b`: the single values of `a` and `b` are equal.
    Eq(Operand, Operand),
    /// `relation:name(args)`, answered by a [`Relations`](super::Relations) implementation.
    Relation {
        name: String,
        args: Vec<Operand>,
    },
}

/// Per-route authorization settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    pub name: String,
    /// Allow everyone, without looking at the principal at all.
    pub public: bool,
    /// `None` on a non-public route means default deny.
    pub require: Option<Requirement>,
    /// `(kind, param name)`: the resource this route acts on, e.g. `("bot", "bot")`
    /// for `/bots/{bot}/...`. Scoped bindings apply only on their resource.
    pub scope: Option<(String, String)>,
}

/// Claim paths an operand may name (besides `claims.NAME`).
pub(crate) const SINGLE_CLAIMS: &[&str] = &["sub"];
pub(crate) const LIST_CLAIMS: &[&str] = &["partners", "teams", "roles"];

/// Is `path` (without `principal.`) a claim the evaluator knows?
pub(crate) fn is_valid_claim_path(path: &str) -> bool {
    if SINGLE_CLAIMS.contains(&path) || LIST_CLAIMS.contains(&path) {
        return true;
    }
    match path.strip_prefix("claims.") {
        Some(name) => !name.is_empty() && name.chars().all(is_claim_name_char),
        None => false,
    }
}

fn is_claim_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')
}

/// Path parameter names as they may appear in `{...}`.
pub(crate) fn is_valid_param_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Relation names share the capability segment alphabet.
pub(crate) fn is_valid_relation_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

impl Requirement {
    /// Parses one requirement string (see the module doc for the syntax).
    /// Errors are human-readable and name the offending position.
    pub fn parse(s: &str) -> Result<Requirement, String> {
        let tokens = tokenize(s)?;
        let mut p = Parser { tokens, pos: 0 };
        let req = p.expr(0)?;
        match p.peek() {
            None => Ok(req),
            Some((at, t)) => Err(format!(
                "unexpected {} at {at} after a complete requirement",
                t.describe()
            )),
        }
    }

    /// Visits every node, parents before children.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Requirement, usize)) {
        fn go<'a>(r: &'a Requirement, depth: usize, f: &mut dyn FnMut(&'a Requirement, usize)) {
            f(r, depth);
            if let Requirement::Any(v) | Requirement::All(v) = r {
                // Walking deeper than the evaluator ever would is pointless
                // and could overflow on a programmatically built tree.
                if depth <= MAX_DEPTH {
                    for c in v {
                        go(c, depth + 1, f);
                    }
                }
            }
        }
        go(self, 0, f)
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Param(p) => write!(f, "{{{p}}}"),
            Operand::Claim(c) => write!(f, "principal.{c}"),
            Operand::Literal(l) => {
                f.write_str("'")?;
                for ch in l.chars() {
                    if ch == '\'' || ch == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{ch}")?;
                }
                f.write_str("'")
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, items: &[impl fmt::Display]) -> fmt::Result {
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{it}")?;
            }
            Ok(())
        }
        match self {
            Requirement::Capability(c) => f.write_str(c),
            Requirement::Authenticated => f.write_str("authenticated"),
            Requirement::Any(v) => {
                f.write_str("any(")?;
                list(f, v)?;
                f.write_str(")")
            }
            Requirement::All(v) => {
                f.write_str("all(")?;
                list(f, v)?;
                f.write_str(")")
            }
            Requirement::In(a, b) => write!(f, "{a} in {b}"),
            Requirement::Eq(a, b) => write!(f, "{a} == {b}"),
            Requirement::Relation { name, args } => {
                write!(f, "relation:{name}(")?;
                list(f, args)?;
                f.write_str(")")
            }
        }
    }
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Param(String),
    Literal(String),
    LParen,
    RParen,
    Comma,
    EqEq,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Param(p) => format!("`{{{p}}}`"),
            Tok::Literal(_) => "a literal".to_string(),
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::Comma => "`,`".to_string(),
            Tok::EqEq => "`==`".to_string(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    // `*` is lexed so that a wildcard gets a precise error instead of
    // "unexpected character".
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/' | '*')
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, String> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((at, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push((at, Tok::LParen)),
            ')' => out.push((at, Tok::RParen)),
            ',' => out.push((at, Tok::Comma)),
            '=' => match it.next() {
                Some((_, '=')) => out.push((at, Tok::EqEq)),
                _ => return Err(format!("expected `==` at {at}")),
            },
            '{' => {
                let mut name = String::new();
                loop {
                    match it.next() {
                        Some((_, '}')) => break,
                        Some((_, ch)) => name.push(ch),
                        None => return Err(format!("unclosed `{{` at {at}")),
                    }
                }
                if !is_valid_param_name(&name) {
                    return Err(format!(
                        "invalid parameter name `{{{name}}}` at {at} (expected [A-Za-z0-9_-]+)"
                    ));
                }
                out.push((at, Tok::Param(name)));
            }
            '\'' => {
                let mut lit = String::new();
                loop {
                    match it.next() {
                        Some((_, '\'')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, e @ ('\'' | '\\'))) => lit.push(e),
                            _ => {
                                return Err(format!(
                                    "invalid escape in literal starting at {at} (only \\' and \\\\)"
                                ));
                            }
                        },
                        Some((_, ch)) => lit.push(ch),
                        None => return Err(format!("unterminated literal starting at {at}")),
                    }
                }
                if lit.is_empty() {
                    return Err(format!("empty literal at {at} never matches anything"));
                }
                out.push((at, Tok::Literal(lit)));
            }
            c if is_word_char(c) => {
                let mut w = String::from(c);
                while let Some(&(_, ch)) = it.peek() {
                    if !is_word_char(ch) {
                        break;
                    }
                    w.push(ch);
                    it.next();
                }
                out.push((at, Tok::Word(w)));
            }
            other => return Err(format!("unexpected character {other:?} at {at}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<(usize, &Tok)> {
        self.tokens.get(self.pos).map(|(at, t)| (*at, t))
    }

    fn next(&mut self) -> Option<(usize, Tok)> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), String> {
        match self.next() {
            Some((_, t)) if &t == want => Ok(()),
            Some((at, t)) => Err(format!("expected {what} at {at}, found {}", t.describe())),
            None => Err(format!("expected {what}, found end of input")),
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Requirement, String> {
        if depth > MAX_DEPTH {
            return Err(format!("requirement nested deeper than {MAX_DEPTH} levels"));
        }
        let Some((at, tok)) = self.next() else {
            return Err("empty requirement".to_string());
        };
        match tok {
            Tok::Word(w)
                if (w == "any" || w == "all")
                    && self.peek().map(|(_, t)| t) == Some(&Tok::LParen) =>
            {
                self.pos += 1;
                let mut items = Vec::new();
                if self.peek().map(|(_, t)| t) == Some(&Tok::RParen) {
                    self.pos += 1;
                } else {
                    loop {
                        if self.peek().is_none() {
                            return Err(format!("unclosed `{w}(` at {at}"));
                        }
                        items.push(self.expr(depth + 1)?);
                        match self.next() {
                            Some((_, Tok::Comma)) => {}
                            Some((_, Tok::RParen)) => break,
                            Some((at, t)) => {
                                return Err(format!(
                                    "expected `,` or `)` at {at}, found {}",
                                    t.describe()
                                ));
                            }
                            None => return Err(format!("unclosed `{w}(` at {at}")),
                        }
                    }
                }
                Ok(if w == "any" {
                    Requirement::Any(items)
                } else {
                    Requirement::All(items)
                })
            }
            Tok::Word(w) if w.starts_with("relation:") => {
                let name = &w["relation:".len()..];
                if !is_valid_relation_name(name) {
                    return Err(format!(
                        "invalid relation name `{name}` at {at} (expected [a-z0-9_-]+)"
                    ));
                }
                self.expect(&Tok::LParen, "`(` after the relation name")?;
                let mut args = Vec::new();
                if self.peek().map(|(_, t)| t) == Some(&Tok::RParen) {
                    self.pos += 1;
                } else {
                    loop {
                        if self.peek().is_none() {
                            return Err(format!("unclosed `relation:{name}(` at {at}"));
                        }
                        args.push(self.operand()?);
                        match self.next() {
                            Some((_, Tok::Comma)) => {}
                            Some((_, Tok::RParen)) => break,
                            Some((at, t)) => {
                                return Err(format!(
                                    "expected `,` or `)` at {at}, found {}",
                                    t.describe()
                                ));
                            }
                            None => return Err(format!("unclosed `relation:{name}(` at {at}")),
                        }
                    }
                }
                Ok(Requirement::Relation {
                    name: name.to_string(),
                    args,
                })
            }
            Tok::Word(w) if w.starts_with("principal.") => {
                let left = claim_operand(&w, at)?;
                self.comparison(left)
            }
            Tok::Param(p) => self.comparison(Operand::Param(p)),
            Tok::Literal(l) => self.comparison(Operand::Literal(l)),
            Tok::Word(w) if w == "authenticated" => Ok(Requirement::Authenticated),
            Tok::Word(w) => {
                if matches!(self.peek(), Some((_, Tok::EqEq)))
                    || matches!(self.peek(), Some((_, Tok::Word(x))) if x == "in")
                {
                    return Err(format!(
                        "`{w}` at {at} is not an operand (use {{param}}, principal.… or 'literal')"
                    ));
                }
                if w.contains('*') {
                    return Err(format!(
                        "`{w}` at {at}: wildcards are for grants; a route requires one concrete capability"
                    ));
                }
                if !is_valid_capability(&w) {
                    return Err(format!(
                        "invalid capability `{w}` at {at} (expected lowercase [a-z0-9_-] segments separated by dots)"
                    ));
                }
                Ok(Requirement::Capability(w))
            }
            other => Err(format!("unexpected {} at {at}", other.describe())),
        }
    }

    fn comparison(&mut self, left: Operand) -> Result<Requirement, String> {
        match self.next() {
            Some((_, Tok::EqEq)) => Ok(Requirement::Eq(left, self.operand()?)),
            Some((_, Tok::Word(w))) if w == "in" => {
                let (at, right) = match self.peek() {
                    Some((at, _)) => (at, self.operand()?),
                    None => {
                        return Err("expected a list after `in`, found end of input".to_string());
                    }
                };
                match &right {
                    Operand::Param(_) => Err(format!(
                        "right side of `in` at {at} must be a list claim or a literal, not a parameter"
                    )),
                    Operand::Claim(c) if SINGLE_CLAIMS.contains(&c.as_str()) => {
                        Err(format!("principal.{c} at {at} is a single value; use `==`"))
                    }
                    _ => Ok(Requirement::In(left, right)),
                }
            }
            Some((at, t)) => Err(format!(
                "expected `in` or `==` at {at}, found {}",
                t.describe()
            )),
            None => Err("expected `in` or `==` after an operand, found end of input".to_string()),
        }
    }

    fn operand(&mut self) -> Result<Operand, String> {
        match self.next() {
            Some((_, Tok::Param(p))) => Ok(Operand::Param(p)),
            Some((_, Tok::Literal(l))) => Ok(Operand::Literal(l)),
            Some((at, Tok::Word(w))) if w.starts_with("principal.") => claim_operand(&w, at),
            Some((at, t)) => Err(format!(
                "expected an operand ({{param}}, principal.… or 'literal') at {at}, found {}",
                t.describe()
            )),
            None => Err("expected an operand, found end of input".to_string()),
        }
    }
}

fn claim_operand(word: &str, at: usize) -> Result<Operand, String> {
    let path = &word["principal.".len()..];
    if !is_valid_claim_path(path) {
        return Err(format!(
            "unknown principal field `{word}` at {at} (expected principal.sub, .partners, .teams, .roles or .claims.NAME)"
        ));
    }
    Ok(Operand::Claim(path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operand::{Claim, Literal, Param};
    use Requirement as R;
    use proptest::prelude::*;

    fn cap(s: &str) -> Requirement {
        R::Capability(s.into())
    }

    #[test]
    fn parses_leaves_and_compounds() {
        let cases: Vec<(&str, Requirement)> = vec![
            ("bot.publish", cap("bot.publish")),
            ("  bot.publish  ", cap("bot.publish")),
            ("authenticated", R::Authenticated),
            (
                "{team} in principal.teams",
                R::In(Param("team".into()), Claim("teams".into())),
            ),
            (
                "{user} == principal.sub",
                R::Eq(Param("user".into()), Claim("sub".into())),
            ),
            (
                "principal.sub == {user}",
                R::Eq(Claim("sub".into()), Param("user".into())),
            ),
            (
                "{dept} in principal.claims.departments",
                R::In(Param("dept".into()), Claim("claims.departments".into())),
            ),
            (
                "{p} == 'it\\'s'",
                R::Eq(Param("p".into()), Literal("it's".into())),
            ),
            (
                "'acme' in principal.partners",
                R::In(Literal("acme".into()), Claim("partners".into())),
            ),
            (
                "relation:active_conversation({customer})",
                R::Relation {
                    name: "active_conversation".into(),
                    args: vec![Param("customer".into())],
                },
            ),
            (
                "relation:x()",
                R::Relation {
                    name: "x".into(),
                    args: vec![],
                },
            ),
            (
                "relation:x({a}, 'b,c', principal.sub)",
                R::Relation {
                    name: "x".into(),
                    args: vec![
                        Param("a".into()),
                        Literal("b,c".into()),
                        Claim("sub".into()),
                    ],
                },
            ),
            (
                "any(customer.view.any, all(customer.view.assigned, relation:active_conversation({customer})))",
                R::Any(vec![
                    cap("customer.view.any"),
                    R::All(vec![
                        cap("customer.view.assigned"),
                        R::Relation {
                            name: "active_conversation".into(),
                            args: vec![Param("customer".into())],
                        },
                    ]),
                ]),
            ),
            ("any()", R::Any(vec![])),
            ("all()", R::All(vec![])),
            // `any`/`all` without parentheses are ordinary capability names.
            ("any", cap("any")),
        ];
        for (s, want) in cases {
            assert_eq!(Requirement::parse(s), Ok(want), "parse({s:?})");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            ("relation:x(", "unclosed"),
            ("{a} in", "end of input"),
            ("A.B", "invalid capability"),
            ("", "empty"),
            ("bot.*", "wildcard"),
            ("*", "wildcard"),
            ("bot.publish extra", "unexpected"),
            ("{a} in {b}", "not a parameter"),
            ("{a} in principal.sub", "single value"),
            ("{a} == ", "end of input"),
            ("{a}", "expected `in` or `==`"),
            ("{a", "unclosed"),
            ("{} == 'x'", "invalid parameter"),
            ("'abc", "unterminated"),
            ("{a} == ''", "empty literal"),
            ("'a\\n' == {a}", "invalid escape"),
            ("principal.email == {a}", "unknown principal field"),
            ("principal.claims. == {a}", "unknown principal field"),
            ("foo == {a}", "not an operand"),
            ("foo in principal.teams", "not an operand"),
            ("relation:X({a})", "invalid relation name"),
            ("relation:x {a}", "expected `(`"),
            ("relation:x(a.b)", "expected an operand"),
            ("any(a b)", "expected `,` or `)`"),
            ("any(a,", "unclosed `any(`"),
            ("any(", "unclosed `any(`"),
            ("relation:x({a},", "unclosed `relation:x(`"),
            ("any(a", "unclosed"),
            ("a = b", "expected `==`"),
            ("a;b", "unexpected character"),
            (")", "unexpected `)`"),
            // Two literals back to back must not silently concatenate.
            ("{p} == 'it''s'", "unexpected a literal"),
        ];
        for (s, needle) in cases {
            match Requirement::parse(s) {
                Ok(r) => panic!("parse({s:?}) should fail, got {r:?}"),
                Err(e) => assert!(
                    e.contains(needle),
                    "parse({s:?}) error {e:?} should mention {needle:?}"
                ),
            }
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "{}a{}",
            "any(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(Requirement::parse(&deep).unwrap_err().contains("nested"));
        let ok = format!("{}a{}", "any(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Requirement::parse(&ok).is_ok());
    }

    #[test]
    fn display_is_the_canonical_syntax() {
        let r = R::Any(vec![
            cap("customer.view.any"),
            R::All(vec![
                cap("customer.view.assigned"),
                R::Relation {
                    name: "active_conversation".into(),
                    args: vec![Param("customer".into())],
                },
            ]),
        ]);
        assert_eq!(
            r.to_string(),
            "any(customer.view.any, all(customer.view.assigned, relation:active_conversation({customer})))"
        );
        assert_eq!(
            R::Eq(Param("u".into()), Literal("a'b\\c".into())).to_string(),
            r"{u} == 'a\'b\\c'"
        );
    }

    fn operand() -> impl Strategy<Value = Operand> {
        prop_oneof![
            "[A-Za-z0-9_-]{1,8}".prop_map(Param),
            prop_oneof![
                Just("sub".to_string()),
                Just("teams".to_string()),
                Just("partners".to_string()),
                Just("roles".to_string()),
                "[A-Za-z0-9_.:/-]{1,8}".prop_map(|n| format!("claims.{n}")),
            ]
            .prop_map(Claim),
            "[^\\x00]{1,8}".prop_map(Literal),
        ]
    }

    fn list_operand() -> impl Strategy<Value = Operand> {
        operand().prop_filter("lists only", |o| {
            !matches!(o, Param(_)) && o != &Claim("sub".into())
        })
    }

    fn leaf() -> impl Strategy<Value = Requirement> {
        prop_oneof![
            "[a-z0-9_-]{1,5}(\\.[a-z0-9_-]{1,5}){0,3}"
                .prop_filter("keyword", |s| s != "authenticated")
                .prop_map(R::Capability),
            Just(R::Authenticated),
            (operand(), list_operand()).prop_map(|(a, b)| R::In(a, b)),
            (operand(), operand()).prop_map(|(a, b)| R::Eq(a, b)),
            ("[a-z0-9_-]{1,8}", prop::collection::vec(operand(), 0..3))
                .prop_map(|(name, args)| R::Relation { name, args }),
        ]
    }

    fn tree() -> impl Strategy<Value = Requirement> {
        leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(R::Any),
                prop::collection::vec(inner, 0..4).prop_map(R::All),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_round_trips_through_parse(r in tree()) {
            let text = r.to_string();
            prop_assert_eq!(Requirement::parse(&text), Ok(r), "text: {}", text);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = Requirement::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_syntax_soup(s in "[a-z{}()',.=: *\\\\]{0,40}") {
            if let Ok(r) = Requirement::parse(&s) {
                // Whatever parses must print to something that parses to the same tree.
                prop_assert_eq!(Requirement::parse(&r.to_string()), Ok(r));
            }
        }
    }
}
