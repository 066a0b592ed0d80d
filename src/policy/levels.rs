//! Capability level ladders (`capability_levels:`): ordered levels such as
//! `channel: [view, reply, manage]`, where a grant at one level grants the
//! same capability at every lower level.
//!
//! A ladder applies to the concrete capabilities strictly below its prefix
//! whose **last** segment is one of its levels: with the ladder above,
//! `channel.whatsapp.support.manage` also grants
//! `channel.whatsapp.support.reply` and `channel.whatsapp.support.view`, and
//! nothing else (not `channel.whatsapp.sales.view`, not a higher level).
//! Wildcards are untouched: `channel.whatsapp.*` already covers every level
//! of every sub-channel. `none` is not a level: it is the absence of a
//! grant, so there is no capability to write for it.
//!
//! Roles' and profiles' grant sets get the implied capabilities added once,
//! at compile time (`compile.rs`), so checking them on the request path is
//! the same hash lookup as before. Only a token's own `grants` (not known
//! until the request) go through [`Levels::covers`], which compares two
//! strings' last segments without allocating.
//!
//! This file owns the ladders' validation (errors for empty ladders,
//! duplicate or invalid levels, `none`, nested prefixes) and the lint for
//! capabilities written under a ladder; it knows nothing of roles, routes or
//! requests, and never panics.

use super::compile::{IssueSubject, PolicyIssue, Severity, issue};
use super::model::{LevelLadder, is_valid_capability, is_valid_segment};

/// One validated ladder.
#[derive(Debug, Clone)]
struct Ladder {
    prefix: String,
    /// Lowest first, distinct, none of them `none`.
    levels: Vec<String>,
}

impl Ladder {
    fn index(&self, level: &str) -> Option<usize> {
        self.levels.iter().position(|l| l == level)
    }

    /// Is `stem` the prefix itself or below it?
    fn holds(&self, stem: &str) -> bool {
        at_or_below(stem, &self.prefix)
    }
}

/// `name` equals `prefix` or lies below it on a segment boundary
/// (`channel.a` is below `channel`, `channels` is not).
fn at_or_below(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The compiled `capability_levels`: at most one ladder per capability
/// (nested prefixes are refused), so lookups are a short linear scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct Levels {
    ladders: Vec<Ladder>,
}

/// `a.b.c` → (`a.b`, `c`); a single segment has no stem.
fn split_last(cap: &str) -> Option<(&str, &str)> {
    cap.rsplit_once('.')
}

impl Levels {
    /// Validates the ladders; a broken ladder is dropped (it implies
    /// nothing, which fails closed) and reported.
    pub(crate) fn compile(spec: &[LevelLadder], out: &mut Vec<PolicyIssue>) -> Levels {
        let mut ladders: Vec<Ladder> = Vec::with_capacity(spec.len());
        for l in spec {
            let subject = IssueSubject::Levels(l.prefix.clone());
            let mut err = |msg: String| out.push(issue(subject.clone(), Severity::Error, msg));
            let mut ok = true;
            if !is_valid_capability(&l.prefix) {
                err(format!(
                    "invalid prefix `{}` (expected a capability name: [a-z0-9_-] segments separated by dots, no wildcard)",
                    l.prefix
                ));
                ok = false;
            }
            if l.levels.is_empty() {
                err("empty ladder: list its levels, lowest first".to_string());
                ok = false;
            }
            for (i, level) in l.levels.iter().enumerate() {
                if level == "none" {
                    err(
                        "`none` is not a level: it is the absence of a grant (grant nothing); leave it out"
                            .to_string(),
                    );
                    ok = false;
                } else if !is_valid_segment(level) {
                    err(format!(
                        "invalid level `{level}` (expected one segment: [a-z0-9_-]+)"
                    ));
                    ok = false;
                } else if l.levels[..i].contains(level) {
                    err(format!("level `{level}` is listed twice"));
                    ok = false;
                }
            }
            if let Some(other) = ladders
                .iter()
                .find(|o| at_or_below(&l.prefix, &o.prefix) || at_or_below(&o.prefix, &l.prefix))
            {
                err(format!(
                    "overlaps the ladder `{}`: ladders cannot nest (a capability would have two)",
                    other.prefix
                ));
                ok = false;
            }
            if ok && l.levels.len() == 1 {
                out.push(issue(
                    subject.clone(),
                    Severity::Warning,
                    "has a single level: it implies nothing".to_string(),
                ));
            }
            if ok {
                ladders.push(Ladder {
                    prefix: l.prefix.clone(),
                    levels: l.levels.clone(),
                });
            }
        }
        Levels { ladders }
    }

    /// The ladder `cap` falls under (strictly below its prefix) and the
    /// index of its last segment in it, if that segment is a level.
    fn level_of<'c>(&self, cap: &'c str) -> Option<(&'c str, &Ladder, usize)> {
        let (stem, last) = split_last(cap)?;
        let ladder = self.ladders.iter().find(|l| l.holds(stem))?;
        Some((stem, ladder, ladder.index(last)?))
    }

    /// The capabilities a grant implies besides itself: the same capability
    /// at each lower level, highest first. Empty for wildcards and for
    /// capabilities outside every ladder. Compile time and traces only.
    pub(crate) fn implied(&self, grant: &str) -> Vec<String> {
        if grant.ends_with(".*") {
            return Vec::new();
        }
        match self.level_of(grant) {
            Some((stem, ladder, i)) => ladder.levels[..i]
                .iter()
                .rev()
                .map(|lower| format!("{stem}.{lower}"))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Does the grant cover `cap`: equal, a `prefix.*` strictly above it, or
    /// the same capability at a higher level of its ladder? The caller
    /// guarantees `grant` is a valid grant and `cap` a valid capability.
    /// Request path (a token's own grants): no allocation.
    pub(crate) fn covers(&self, grant: &str, cap: &str) -> bool {
        match grant.strip_suffix(".*") {
            Some(prefix) => {
                cap.len() > prefix.len() + 1
                    && cap.starts_with(prefix)
                    && cap.as_bytes().get(prefix.len()) == Some(&b'.')
            }
            None => grant == cap || self.implies(grant, cap),
        }
    }

    /// `grant` is `cap` at a higher level of the same ladder.
    fn implies(&self, grant: &str, cap: &str) -> bool {
        if self.ladders.is_empty() {
            return false;
        }
        let (Some((gs, gl)), Some((cs, cl))) = (split_last(grant), split_last(cap)) else {
            return false;
        };
        if gs != cs {
            return false;
        }
        let Some(ladder) = self.ladders.iter().find(|l| l.holds(gs)) else {
            return false;
        };
        matches!((ladder.index(gl), ladder.index(cl)), (Some(g), Some(c)) if g > c)
    }

    /// The lint for a concrete capability written in the config (a role's
    /// or profile's grant, a route's requirement, a mask's `unmask_with`):
    /// under a ladder, its last segment must be one of the ladder's levels.
    /// `Some(message)` when it is not.
    pub(crate) fn check(&self, cap: &str) -> Option<String> {
        if cap.ends_with(".*") {
            return None;
        }
        let (stem, last) = split_last(cap)?;
        let ladder = self.ladders.iter().find(|l| l.holds(stem))?;
        if ladder.index(last).is_some() {
            return None;
        }
        let levels = ladder.levels.join(", ");
        Some(if last == "none" {
            format!(
                "`{cap}`: `none` is not a level of `{}` ({levels}); it means no grant, so leave the capability out",
                ladder.prefix
            )
        } else {
            format!(
                "`{cap}` is under the level ladder `{}` but `{last}` is not one of its levels ({levels}); \
                 every capability below `{}` ends in a level",
                ladder.prefix, ladder.prefix
            )
        })
    }

    /// The ladders, lowest level first (for `explain` and tests).
    #[cfg(test)]
    pub(crate) fn ladders(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.ladders
            .iter()
            .map(|l| (l.prefix.as_str(), l.levels.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(prefix: &str, levels: &[&str]) -> LevelLadder {
        LevelLadder {
            prefix: prefix.into(),
            levels: levels.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn levels(spec: &[LevelLadder]) -> (Levels, Vec<PolicyIssue>) {
        let mut issues = Vec::new();
        let l = Levels::compile(spec, &mut issues);
        (l, issues)
    }

    fn two_ladders() -> Levels {
        let (l, issues) = levels(&[
            ladder("channel", &["view", "reply", "manage"]),
            ladder("report.sales", &["read", "write"]),
        ]);
        assert!(issues.is_empty(), "{issues:#?}");
        l
    }

    #[test]
    fn a_level_grants_the_lower_ones_never_the_higher_ones() {
        let l = two_ladders();
        let rows: &[(&str, &str, bool)] = &[
            // (grant, capability, covered)
            (
                "channel.whatsapp.support.manage",
                "channel.whatsapp.support.manage",
                true,
            ),
            (
                "channel.whatsapp.support.manage",
                "channel.whatsapp.support.reply",
                true,
            ),
            (
                "channel.whatsapp.support.manage",
                "channel.whatsapp.support.view",
                true,
            ),
            (
                "channel.whatsapp.support.reply",
                "channel.whatsapp.support.view",
                true,
            ),
            (
                "channel.whatsapp.support.reply",
                "channel.whatsapp.support.manage",
                false,
            ),
            (
                "channel.whatsapp.support.view",
                "channel.whatsapp.support.reply",
                false,
            ),
            (
                "channel.whatsapp.support.view",
                "channel.whatsapp.support.manage",
                false,
            ),
            // Same level, another sub-channel or main channel: nothing.
            (
                "channel.whatsapp.support.manage",
                "channel.whatsapp.sales.view",
                false,
            ),
            (
                "channel.whatsapp.support.manage",
                "channel.facebook.support.view",
                false,
            ),
            // A main channel without sub-channels has levels too.
            ("channel.sms.manage", "channel.sms.view", true),
            ("channel.sms.manage", "channel.sms.x.view", false),
            // The second ladder, with a two-segment prefix.
            ("report.sales.eu.write", "report.sales.eu.read", true),
            ("report.sales.eu.read", "report.sales.eu.write", false),
            // Levels of one ladder mean nothing in the other.
            ("report.sales.eu.manage", "report.sales.eu.view", false),
            ("channel.x.write", "channel.x.read", false),
            // Outside every ladder: exact only.
            ("report.costs.write", "report.costs.read", false),
            ("bot.manage", "bot.view", false),
            // Wildcards keep working and cover every level below them.
            (
                "channel.whatsapp.*",
                "channel.whatsapp.support.manage",
                true,
            ),
            ("channel.whatsapp.*", "channel.whatsapp.support.view", true),
            (
                "channel.whatsapp.*",
                "channel.facebook.messenger.view",
                false,
            ),
            ("channel.*", "channel.facebook.messenger.manage", true),
            // Single segments have no stem.
            ("manage", "view", false),
            ("channel", "channel", true),
        ];
        for &(g, c, want) in rows {
            assert_eq!(l.covers(g, c), want, "{g} covers {c}");
        }
    }

    #[test]
    fn implied_lists_the_lower_levels_highest_first() {
        let l = two_ladders();
        assert_eq!(
            l.implied("channel.whatsapp.support.manage"),
            [
                "channel.whatsapp.support.reply",
                "channel.whatsapp.support.view"
            ]
        );
        assert_eq!(l.implied("channel.a.view"), Vec::<String>::new());
        assert_eq!(l.implied("report.sales.write"), ["report.sales.read"]);
        assert!(l.implied("channel.whatsapp.*").is_empty());
        assert!(l.implied("bot.manage").is_empty());
        // The prefix itself is not below the prefix.
        assert!(
            levels(&[ladder("a.manage", &["view", "manage"])])
                .0
                .implied("a.manage")
                .is_empty()
        );
    }

    #[test]
    fn no_ladders_is_the_plain_grant_rule() {
        let l = Levels::default();
        for (g, c, want) in [
            ("channel.a.manage", "channel.a.view", false),
            ("channel.a.manage", "channel.a.manage", true),
            ("channel.*", "channel.a.view", true),
        ] {
            assert_eq!(l.covers(g, c), want, "{g} covers {c}");
            assert_eq!(l.covers(g, c), super::super::model::grant_covers(g, c));
        }
    }

    #[test]
    fn capabilities_under_a_ladder_must_end_in_a_level() {
        let l = two_ladders();
        let rows: &[(&str, Option<&str>)] = &[
            ("channel.whatsapp.support.view", None),
            ("channel.whatsapp.manage", None),
            ("channel.whatsapp.*", None),
            ("channel", None),
            ("bot.edit", None),
            ("report.sales.eu.write", None),
            ("report.costs.anything", None),
            (
                "channel.whatsapp.support.edit",
                Some("`edit` is not one of its levels (view, reply, manage)"),
            ),
            (
                "channel.whatsapp",
                Some("`whatsapp` is not one of its levels"),
            ),
            (
                "channel.whatsapp.support.none",
                Some("`none` is not a level of `channel`"),
            ),
            (
                "report.sales.eu.view",
                Some("not one of its levels (read, write)"),
            ),
        ];
        for &(cap, want) in rows {
            let got = l.check(cap);
            match want {
                None => assert_eq!(got, None, "{cap}"),
                Some(needle) => assert!(
                    got.as_deref().is_some_and(|m| m.contains(needle)),
                    "{cap}: want {needle:?}, got {got:?}"
                ),
            }
        }
    }

    #[test]
    fn broken_ladders_are_errors_and_imply_nothing() {
        let rows: &[(LevelLadder, &str)] = &[
            (ladder("channel", &[]), "empty ladder"),
            (
                ladder("channel", &["view", "reply", "view"]),
                "level `view` is listed twice",
            ),
            (
                ladder("channel", &["none", "view"]),
                "`none` is not a level",
            ),
            (ladder("channel", &["View"]), "invalid level `View`"),
            (ladder("channel", &["a.b"]), "invalid level `a.b`"),
            (
                ladder("channel.*", &["view", "reply"]),
                "invalid prefix `channel.*`",
            ),
            (ladder("", &["view", "reply"]), "invalid prefix ``"),
        ];
        for (spec, needle) in rows {
            let (l, issues) = levels(std::slice::from_ref(spec));
            assert!(
                issues.iter().any(|i| i.severity == Severity::Error
                    && i.subject == IssueSubject::Levels(spec.prefix.clone())
                    && i.message.contains(needle)),
                "{spec:?}: want {needle:?} in {issues:#?}"
            );
            assert_eq!(l.ladders().count(), 0, "{spec:?} was kept");
        }
    }

    #[test]
    fn nested_ladders_are_errors() {
        for (a, b) in [
            ("channel", "channel.whatsapp"),
            ("channel.whatsapp", "channel"),
            ("channel", "channel"),
        ] {
            let (l, issues) = levels(&[ladder(a, &["view", "reply"]), ladder(b, &["x", "y"])]);
            assert!(
                issues.iter().any(|i| i.severity == Severity::Error
                    && i.subject == IssueSubject::Levels(b.into())
                    && i.message.contains(&format!("overlaps the ladder `{a}`"))),
                "{a} / {b}: {issues:#?}"
            );
            assert_eq!(l.ladders().map(|(p, _)| p).collect::<Vec<_>>(), [a]);
        }
        // Siblings and look-alike names are fine.
        let (_, issues) = levels(&[
            ladder("channel", &["v", "r"]),
            ladder("channels", &["v", "r"]),
            ladder("bot.flows", &["v", "e"]),
            ladder("bot.flow", &["v", "e"]),
        ]);
        assert!(issues.is_empty(), "{issues:#?}");
    }

    #[test]
    fn a_single_level_ladder_is_a_warning() {
        let (l, issues) = levels(&[ladder("channel", &["view"])]);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].severity, Severity::Warning);
        assert_eq!(l.ladders().count(), 1);
    }
}
