use super::*;

fn settings() -> DirectorySettings {
    DirectorySettings {
        issuer: "iss".into(),
        manage_with: "partner.users.manage".into(),
        share_with: "bot.access.share".into(),
        profiles_with: "profiles.manage".into(),
    }
}

fn user(partners: &[&str], roles: &[&str]) -> UserRecord {
    let mut r = UserRecord {
        partners: partners.iter().map(|s| s.to_string()).collect(),
        roles: roles.iter().map(|s| s.to_string()).collect(),
        active: true,
        ..Default::default()
    };
    r.normalise();
    r
}

/// A Partner Admin of `partners`, Super Admin of bot `bots`.
fn admin_of<'a>(
    partners: &'a [&'a str],
    bots: &'a [&'a str],
) -> impl Fn(&str, Option<(&str, &str)>) -> bool + 'a {
    move |cap, scope| match (cap, scope) {
        ("partner.users.manage", Some(("partner", p))) => partners.contains(&p),
        ("bot.access.share", Some(("bot", b))) => bots.contains(&b),
        _ => false,
    }
}

#[test]
fn a_partner_admin_adds_an_existing_user_only_with_every_partner_of_theirs() {
    let s = settings();
    let old = user(&["acme", "globex"], &["agent"]);
    let new = user(&["acme", "globex", "initech"], &["agent"]);
    let only_two = admin_of(&["acme", "initech"], &[]);
    let e = check_change(&s, false, Some(&old), Some(&new), &only_two).unwrap_err();
    assert_eq!((e.status, e.code), (403, "forbidden"));
    assert!(e.reason.contains("globex"), "{}", e.reason);
    let all = admin_of(&["acme", "globex", "initech"], &[]);
    assert!(check_change(&s, false, Some(&old), Some(&new), &all).is_ok());
    // A new user (no entry yet) is added by the partner's own admin.
    let fresh = user(&["initech"], &["agent"]);
    let just = admin_of(&["initech"], &[]);
    assert!(check_change(&s, false, None, Some(&fresh), &just).is_ok());
    assert!(check_change(&s, false, None, Some(&fresh), &admin_of(&["acme"], &[])).is_err());
}

#[test]
fn removing_a_membership_needs_that_partner_only() {
    let s = settings();
    let old = user(&["acme", "globex"], &["agent"]);
    let new = user(&["acme"], &["agent"]);
    assert!(
        check_change(
            &s,
            false,
            Some(&old),
            Some(&new),
            &admin_of(&["globex"], &[])
        )
        .is_ok()
    );
    assert!(check_change(&s, false, Some(&old), Some(&new), &admin_of(&["acme"], &[])).is_err());
}

#[test]
fn system_wide_changes_need_every_partner_of_the_user() {
    let s = settings();
    let old = user(&["acme", "globex"], &["agent"]);
    let mut new = user(&["acme", "globex"], &["agent", "supervisor"]);
    assert!(check_change(&s, false, Some(&old), Some(&new), &admin_of(&["acme"], &[])).is_err());
    assert!(
        check_change(
            &s,
            false,
            Some(&old),
            Some(&new),
            &admin_of(&["acme", "globex"], &[])
        )
        .is_ok()
    );
    new = old.clone();
    new.active = false;
    assert!(check_change(&s, false, Some(&old), Some(&new), &admin_of(&["acme"], &[])).is_err());
    // Removing the entry is system-wide too.
    assert!(check_change(&s, false, Some(&old), None, &admin_of(&["acme"], &[])).is_err());
    // No partner at all: only the operator (a capability held "globally"
    // is still a Partner Admin's, bound to its partners).
    let lone = user(&[], &["agent"]);
    let global = |c: &str, sc: Option<(&str, &str)>| c == "partner.users.manage" && sc.is_none();
    assert!(check_change(&s, false, None, Some(&lone), &admin_of(&["acme"], &[])).is_err());
    assert!(check_change(&s, false, None, Some(&lone), &global).is_err());
    assert!(check_change(&s, true, None, Some(&lone), &global).is_ok());
}

#[test]
fn an_entry_in_no_partner_is_not_taken_into_a_partner_by_its_admin() {
    let s = settings();
    // The operator's entry, and the same entry put into acme, nothing else
    // changed: acme's admin would then manage it.
    let old = user(&[], &["account-admin"]);
    let new = user(&["acme"], &["account-admin"]);
    let e = check_change(&s, false, Some(&old), Some(&new), &admin_of(&["acme"], &[])).unwrap_err();
    assert_eq!((e.status, e.code), (403, "forbidden"));
    assert!(e.reason.contains("no partner"), "{}", e.reason);
    let anything = |_: &str, _: Option<(&str, &str)>| true;
    assert!(check_change(&s, true, Some(&old), Some(&new), &anything).is_ok());
    // Nor by a caller who may manage every partner, without the token.
    assert!(check_change(&s, false, Some(&old), Some(&new), &anything).is_err());
}

#[test]
fn only_a_bots_super_admin_grants_roles_on_that_bot() {
    let s = settings();
    let old = user(&["acme"], &["agent"]);
    let new = user(&["acme"], &["agent", "developer@bot:42"]);
    // Scoped-only change: no system-wide part, so no partner check beyond.
    assert!(
        check_change(
            &s,
            false,
            Some(&old),
            Some(&new),
            &admin_of(&["acme"], &["9"])
        )
        .is_err()
    );
    assert!(check_change(&s, false, Some(&old), Some(&new), &admin_of(&[], &["42"])).is_ok());
    // And removing it.
    assert!(check_change(&s, false, Some(&new), Some(&old), &admin_of(&[], &["9"])).is_err());
}

#[test]
fn a_users_token_hands_out_only_global_grants_it_holds_and_no_wildcard() {
    let s = settings();
    let old = user(&["acme"], &["agent"]);
    let with = |g: &[&str]| {
        let mut r = old.clone();
        r.grants = g.iter().map(|s| s.to_string()).collect();
        r
    };
    // A Partner Admin of acme who also holds `reports.view` globally.
    let pa = |cap: &str, scope: Option<(&str, &str)>| match scope {
        Some(("partner", "acme")) => cap == "partner.users.manage",
        None => cap == "reports.view",
        _ => false,
    };
    assert!(check_change(&s, false, Some(&old), Some(&with(&["reports.view"])), &pa).is_ok());
    for g in ["bot.flows.edit", "bot.*", "reports.*"] {
        let e = check_change(&s, false, Some(&old), Some(&with(&[g])), &pa).unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"), "{g}");
        assert!(e.reason.contains(g), "{}", e.reason);
        // The admin token may.
        assert!(check_change(&s, true, Some(&old), Some(&with(&[g])), &pa).is_ok());
    }
    // A grant already on the entry is kept (and removed) by whoever manages it.
    let has = with(&["bot.*"]);
    let mut renamed = has.clone();
    renamed.name = Some("Uma".into());
    assert!(check_change(&s, false, Some(&has), Some(&renamed), &pa).is_ok());
    assert!(check_change(&s, false, Some(&has), Some(&old), &pa).is_ok());
}

#[test]
fn a_refusal_names_only_what_the_caller_wrote() {
    let s = settings();
    // The victim is in acme and globex, developer on bot 99; the caller
    // manages acme only and writes an entry without the rest.
    let old = user(&["acme", "globex"], &["agent", "developer@bot:99"]);
    let acme = admin_of(&["acme"], &[]);
    for new in [
        user(&["acme"], &["agent", "developer@bot:99"]),
        user(&["acme", "initech"], &["agent", "developer@bot:99"]),
    ] {
        let e = check_change(&s, false, Some(&old), Some(&new), &acme).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(!e.reason.contains("globex"), "{}", e.reason);
    }
    let both = admin_of(&["acme", "globex"], &[]);
    let e = check_change(
        &s,
        false,
        Some(&old),
        Some(&user(&["acme", "globex"], &["agent"])),
        &both,
    )
    .unwrap_err();
    assert!(!e.reason.contains("99"), "{}", e.reason);
    // What the caller wrote is named.
    let e = check_change(
        &s,
        false,
        Some(&old),
        Some(&user(
            &["acme", "globex"],
            &["agent", "developer@bot:99", "developer@bot:7"],
        )),
        &both,
    )
    .unwrap_err();
    assert!(e.reason.contains("developer@bot:7"), "{}", e.reason);
}

#[test]
fn approver_requires_developer_on_the_same_bot() {
    let requires = |r: &str| match r {
        "approver" => Some(vec!["developer".to_string()]),
        "developer" | "agent" => Some(vec![]),
        _ => None,
    };
    let bad = user(&[], &["approver@bot:42", "developer@bot:9"]);
    let e = check_requirements(&bad, &requires).unwrap_err();
    assert_eq!((e.status, e.code), (409, "role_requirement"));
    assert!(e.reason.contains("bot:42"), "{}", e.reason);
    assert!(
        check_requirements(
            &user(&[], &["approver@bot:42", "developer@bot:42"]),
            &requires
        )
        .is_ok()
    );
    assert!(check_requirements(&user(&[], &["approver@bot:42", "developer"]), &requires).is_ok());
    let e = check_requirements(&user(&[], &["wizard"]), &requires).unwrap_err();
    assert_eq!(e.code, "unknown_role");
}

#[test]
fn the_entry_replaces_the_tokens_roles_and_profiles_resolve_to_the_held_version() {
    let token = Principal {
        subject: "u1".into(),
        issuer: "iss".into(),
        session: Some("s1".into()),
        roles: vec!["supervisor".into()],
        partners: vec!["evil".into()],
        ..Default::default()
    };
    let mut rec = user(&["acme"], &["agent"]);
    rec.profiles = vec![
        ProfileRef {
            name: "support".into(),
            version: Some(1),
        },
        ProfileRef {
            name: "from-config".into(),
            version: None,
        },
    ];
    let versions = ProfileVersions {
        versions: vec![
            ProfileVersion {
                version: 1,
                roles: vec!["senior-agent".into()],
                grants: vec!["channel.web.site.reply".into()],
                saved_ms: 1,
            },
            ProfileVersion {
                version: 2,
                roles: vec!["supervisor".into()],
                grants: vec![],
                saved_ms: 2,
            },
        ],
    };
    let lookup = |n: &str| (n == "support").then(|| Arc::new(versions.clone()));
    let p = resolve(&token, &rec, &lookup);
    assert_eq!(p.subject, "u1");
    assert_eq!(p.session.as_deref(), Some("s1"));
    assert_eq!(p.partners, ["acme"]);
    assert_eq!(
        p.roles,
        ["agent", "senior-agent"],
        "version 1, not the token's nor version 2"
    );
    assert_eq!(p.grants, ["channel.web.site.reply"]);
    assert_eq!(p.profiles, ["from-config"]);
}

#[test]
fn a_full_profile_drops_its_oldest_unheld_versions_never_the_latest() {
    let v = |n: u64| ProfileVersion {
        version: n,
        roles: vec![],
        grants: vec![],
        saved_ms: n,
    };
    let mut p = ProfileVersions {
        versions: (1..=4).map(v).collect(),
    };
    let held = std::collections::HashSet::from([1, 2]);
    // Under the cap: nothing goes.
    assert!(p.make_room(&held, 5));
    assert_eq!(p.versions.len(), 4);
    // At the cap: the oldest unheld (3) goes, the held ones stay.
    assert!(p.make_room(&held, 4));
    let left: Vec<u64> = p.versions.iter().map(|v| v.version).collect();
    assert_eq!(left, [1, 2, 4]);
    // Every version held or the latest: no room.
    assert!(!p.make_room(&held, 3));
    assert_eq!(p.versions.len(), 3);
}

#[test]
fn the_parsed_cache_parses_a_stored_value_once_and_a_changed_one_again() {
    let cache: ParsedCache<UserRecord> = ParsedCache::new(2);
    let raw: Arc<str> = Arc::from(r#"{"roles":["agent"]}"#);
    let a = cache.get("u1", raw.clone()).unwrap();
    let b = cache.get("u1", raw.clone()).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the same stored value is not parsed again"
    );
    // The same text stored anew: not parsed again, and its new pointer kept.
    let anew: Arc<str> = Arc::from(&*raw);
    assert!(Arc::ptr_eq(&cache.get("u1", anew.clone()).unwrap(), &a));
    assert!(Arc::ptr_eq(&cache.parsed.get("u1").unwrap().0, &anew));
    let changed: Arc<str> = Arc::from(r#"{"roles":["supervisor"]}"#);
    assert_eq!(cache.get("u1", changed).unwrap().roles, ["supervisor"]);
    assert!(cache.get("u2", Arc::from("not json")).is_err());
}
