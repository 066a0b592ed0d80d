//! Test-only fixtures: a catalog modelled on the real permission systems the
//! policy must express (bot builder, analytics, approver/developer, tenant
//! roles, profiles). Compiled only under `cfg(test)`; nothing here may be
//! used by the module itself.

use std::time::Duration;

use super::model::{LevelLadder, PolicySpec, Principal, ProfileDef, RoleDef};

pub(crate) fn role(
    name: &str,
    scope: Option<&str>,
    grants: &[&str],
    includes: &[&str],
    requires: &[&str],
) -> RoleDef {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
    RoleDef {
        name: name.into(),
        description: None,
        grants: v(grants),
        includes: v(includes),
        requires: v(requires),
        idle_timeout: None,
        scope: scope.map(str::to_string),
    }
}

fn timed(mut r: RoleDef, minutes: u64) -> RoleDef {
    r.idle_timeout = Some(Duration::from_secs(minutes * 60));
    r
}

pub(crate) fn catalog() -> PolicySpec {
    let bot = Some("bot");
    PolicySpec {
        roles: vec![
            role(
                "bot-builder-view",
                bot,
                &["bot.flows.view", "bot.view"],
                &[],
                &[],
            ),
            role(
                "bot-builder-edit",
                bot,
                &["bot.flows.edit"],
                &["bot-builder-view"],
                &[],
            ),
            role(
                "bot-builder-admin",
                bot,
                &["bot.settings.*"],
                &["bot-builder-edit"],
                &[],
            ),
            role(
                "developer",
                bot,
                &["bot.deploy.staging", "bot.flows.view"],
                &[],
                &[],
            ),
            // Grants NOTHING (not even what it includes) without developer on the same bot.
            role(
                "approver",
                bot,
                &["bot.publish"],
                &["bot-builder-view"],
                &["developer"],
            ),
            // Includes a role with `requires`: the include does not lift it.
            role(
                "release-manager",
                bot,
                &["bot.release.notes"],
                &["approver"],
                &[],
            ),
            // A scoped role whose requirement is a GLOBAL role.
            role(
                "bot-auditor",
                bot,
                &["bot.audit.read"],
                &[],
                &["analytics-view"],
            ),
            timed(role("timed-bot", bot, &["bot.timed"], &[], &[]), 5),
            // A scoped role including a GLOBAL role: held only on its bot.
            role(
                "bot-analyst",
                bot,
                &["bot.analytics"],
                &["analytics-view"],
                &[],
            ),
            timed(
                role("analytics-view", None, &["analytics.view"], &[], &[]),
                45,
            ),
            role(
                "analytics-edit",
                None,
                &["analytics.edit"],
                &["analytics-view"],
                &[],
            ),
            timed(
                role(
                    "analytics-admin",
                    None,
                    &["analytics.admin.*"],
                    &["analytics-edit"],
                    &[],
                ),
                30,
            ),
            // A global role requiring a global role, held through includes.
            role("auditor", None, &["audit.read"], &[], &["analytics-view"]),
            timed(
                RoleDef {
                    name: "short-session".into(),
                    ..Default::default()
                },
                10,
            ),
            role(
                "agent",
                None,
                &["customer.view.assigned", "channel.whatsapp.support.*"],
                &[],
                &[],
            ),
            timed(
                role("supervisor", None, &["customer.view.any"], &["agent"], &[]),
                60,
            ),
            role(
                "partner-admin",
                Some("partner"),
                &["partner.users.manage"],
                &[],
                &[],
            ),
            role("team-lead", Some("team"), &["team.queue.manage"], &[], &[]),
            // Channel levels (ladder `channel` below): manage on one
            // sub-channel grants reply and view there, nothing elsewhere.
            role(
                "messenger-lead",
                None,
                &["channel.facebook.messenger.manage"],
                &[],
                &[],
            ),
            // A level grant behind `requires`: only with agent.
            role(
                "sms-replier",
                None,
                &["channel.sms.main.reply"],
                &[],
                &["agent"],
            ),
        ],
        profiles: vec![
            ProfileDef {
                name: "support".into(),
                description: Some("front-line support".into()),
                roles: vec!["agent".into()],
                grants: vec!["tickets.view".into()],
            },
            ProfileDef {
                name: "analyst".into(),
                description: None,
                roles: vec!["analytics-edit".into()],
                grants: vec![],
            },
            ProfileDef {
                name: "exporter".into(),
                description: None,
                roles: vec![],
                grants: vec!["export.csv".into()],
            },
            ProfileDef {
                name: "webchat".into(),
                description: None,
                roles: vec![],
                grants: vec!["channel.webchat.site.reply".into()],
            },
        ],
        levels: vec![LevelLadder {
            prefix: "channel".into(),
            levels: vec!["view".into(), "reply".into(), "manage".into()],
        }],
    }
}

pub(crate) fn principal(roles: &[&str]) -> Principal {
    Principal {
        subject: "user-1".into(),
        issuer: "https://issuer.example".into(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}
