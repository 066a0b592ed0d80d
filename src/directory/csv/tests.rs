use super::*;

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn record(partners: &[&str], roles: &[&str]) -> UserRecord {
    let mut r = UserRecord {
        partners: strs(partners),
        roles: strs(roles),
        active: true,
        ..UserRecord::default()
    };
    r.normalise();
    r
}

fn profile(name: &str, version: Option<u64>) -> ProfileRef {
    ProfileRef {
        name: name.into(),
        version,
    }
}

/// A file: the header and rows joined with CRLF (no BOM).
fn file(lines: &[&str]) -> Vec<u8> {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s.into_bytes()
}

fn rows_of(e: &ImportError) -> Vec<(usize, String)> {
    assert!(e.file.is_none(), "a file problem, not rows: {e:?}");
    e.rows.iter().map(|r| (r.row, r.reason.clone())).collect()
}

/// Every row error of `text`, as `(row, reason)`.
fn bad_rows(text: &[u8]) -> Vec<(usize, String)> {
    rows_of(&import(text).unwrap_err())
}

fn file_problem(text: &[u8]) -> FileProblem {
    let e = import(text).unwrap_err();
    assert!(e.rows.is_empty(), "{e:?}");
    e.file.unwrap()
}

/// Asserts `import(export(users))` gives `users` back (sorted by subject).
fn round_trip(users: Vec<(String, UserRecord)>) -> String {
    let text = export(&users);
    let back = import(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let mut want = users;
    for (_, r) in &mut want {
        r.normalise();
    }
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(back, want, "{text}");
    text
}

// ------------------------------------------------------------------ export

#[test]
fn export_writes_a_bom_the_header_and_sorted_rows_with_crlf() {
    let mut bob = record(&["globex", "acme"], &["developer@bot:42", "agent"]);
    bob.name = Some("Bob".into());
    bob.email = Some("bob@example.com".into());
    bob.teams = strs(&["t1"]);
    bob.profiles = vec![profile("support", Some(3)), profile("base", None)];
    bob.grants = strs(&["bot.flows.view@bot:7"]);
    let mut alice = record(&[], &[]);
    alice.active = false;
    let (rb, ra) = (bob.revision(), alice.revision());
    let text = export(&[("bob".into(), bob), ("alice".into(), alice)]);
    assert_eq!(
        text,
        format!(
            "\u{feff}user,name,email,partners,teams,roles,profiles,grants,active,revision\r\n\
             alice,,,,,,,,false,{ra}\r\n\
             bob,Bob,bob@example.com,acme;globex,t1,agent;developer@bot:42,base;support:3,bot.flows.view@bot:7,true,{rb}\r\n"
        )
    );
}

/// A revision is `r` and 16 hex digits, the same for the same record and
/// different for any change to it (the `active` flag, a role, the time of
/// a deactivation).
#[test]
fn a_revision_follows_every_change_of_the_stored_record() {
    let a = record(&["acme"], &["agent"]);
    let r = a.revision();
    assert!(is_revision(&r), "{r}");
    assert_eq!(record(&["acme"], &["agent"]).revision(), r);
    let mut b = a.clone();
    b.active = false;
    let mut c = a.clone();
    c.roles.push("developer@bot:1".into());
    let mut d = b.clone();
    d.deactivated_ms = Some(5);
    let all = [r, b.revision(), c.revision(), d.revision()];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(x, y);
        }
    }
}

/// A `revision` cell is read (any case), empty is none, anything else is
/// a row problem; without the column, no row has one.
#[test]
fn revision_cells_are_read_and_checked() {
    let r = record(&[], &[]).revision();
    let text = format!(
        "user,revision\nalice,{}\nbob,\ncarol,not-a-revision\n",
        r.to_uppercase()
    );
    let err = import_rows(text.as_bytes()).err().unwrap();
    assert_eq!(err.rows.len(), 1);
    assert_eq!(err.rows[0].row, 4);
    assert!(
        err.rows[0].reason.starts_with("revision:"),
        "{:?}",
        err.rows
    );
    let text = format!("user,revision\nalice,{r}\nbob,\n");
    let file = import_rows(text.as_bytes()).unwrap();
    assert!(file.revision_given);
    assert_eq!(file.rows[0].3.as_deref(), Some(r.as_str()));
    assert_eq!(file.rows[1].3, None);
    let file = import_rows(b"user\nalice\n").unwrap();
    assert!(!file.revision_given);
    assert_eq!(file.rows[0].3, None);
}

#[test]
fn export_of_no_users_is_the_header_and_imports_as_nothing() {
    let text = export(&[]);
    assert_eq!(
        text,
        "\u{feff}user,name,email,partners,teams,roles,profiles,grants,active,revision\r\n"
    );
    assert_eq!(import(text.as_bytes()).unwrap(), vec![]);
}

#[test]
fn export_quotes_commas_quotes_and_newlines() {
    let mut r = record(&[], &[]);
    r.name = Some("Doe, \"Jo\"\nsecond line".into());
    let text = export(&[("u".into(), r)]);
    assert!(
        text.contains("u,\"Doe, \"\"Jo\"\"\nsecond line\","),
        "{text}"
    );
}

// -------------------------------------------------------------- round trip

#[test]
fn every_field_kind_round_trips() {
    let mut full = record(&["acme", "globex"], &["agent", "developer@bot:42"]);
    full.name = Some("Zoë Example".into());
    full.email = Some("zoe@example.com".into());
    full.teams = strs(&["north", "south"]);
    full.profiles = vec![profile("base", None), profile("support", Some(12))];
    full.grants = strs(&["bot.*", "bot.flows.view@bot:7", "analytics.view"]);
    let mut inactive = record(&["acme"], &[]);
    inactive.active = false;
    let empty = UserRecord {
        active: true,
        ..UserRecord::default()
    };
    round_trip(vec![
        ("zoe".into(), full),
        ("ina".into(), inactive),
        ("nobody".into(), empty),
    ]);
}

#[test]
fn awkward_text_round_trips() {
    let mut r = record(&["a;b", "back\\slash", "c:d"], &["weird;role", "r\\x"]);
    r.name = Some("Doe, \"Jo\"; the 2nd\r\nline two\nline three".into());
    r.email = Some("o'brien@example.com".into());
    r.teams = strs(&["t;1"]);
    r.profiles = vec![
        profile("a:3", None),
        profile("p;q:r\\s", Some(2)),
        profile("plain", Some(1)),
    ];
    let text = round_trip(vec![("user, \"quoted\"; semi".into(), r)]);
    // The escapes as a spreadsheet user sees them.
    assert!(text.contains("a\\;b;back\\\\slash;c:d"), "{text}");
    assert!(text.contains("a\\:3;p\\;q\\:r\\\\s:2;plain:1"), "{text}");
}

#[test]
fn formula_cells_are_quoted_on_export_and_restored_on_import() {
    let cases = [
        ("=1+1", "'=1+1"),
        ("+33 1 23", "'+33 1 23"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "\"'\rx\""),
        // A quote that import would remove is doubled...
        ("'=x", "''=x"),
        ("''", "'''"),
        ("'-", "''-"),
        // ...and one it would not remove is left alone.
        ("'Tis", "'Tis"),
        ("'", "'"),
        ("a=b", "a=b"),
    ];
    for (name, cell) in cases {
        let mut r = record(&[], &[]);
        r.name = Some(name.into());
        let text = round_trip(vec![("u".into(), r)]);
        assert!(
            text.contains(&format!("\r\nu,{cell},")),
            "{name:?} should export as {cell:?}: {text:?}"
        );
    }
    // The subject, e-mail and list cells are guarded too (whole cell).
    let mut r = record(&["-acme", "b"], &["+role"]);
    r.email = Some("=x@example.com".into());
    r.grants = strs(&["bot.view"]);
    let text = round_trip(vec![("@user".into(), r)]);
    assert!(
        text.contains("'@user,,'=x@example.com,'-acme;b,,'+role,,bot.view,true"),
        "{text}"
    );
}

#[test]
fn a_spreadsheet_that_drops_the_guard_imports_the_same_value() {
    let text = file(&["user,name", "u,=1+1", "v,'=1+1"]);
    let got = import(&text).unwrap();
    assert_eq!(got[0].1.name.as_deref(), Some("=1+1"));
    assert_eq!(got[1].1.name.as_deref(), Some("=1+1"));
}

#[test]
fn the_exported_file_has_no_cell_a_spreadsheet_would_evaluate() {
    let nasty = ["=cmd|' /C calc'!A0", "+1", "-1", "@x", "\t=1", "\r=1"];
    let mut users = Vec::new();
    for (i, n) in nasty.iter().enumerate() {
        let mut r = record(&[n], &[]);
        r.name = Some(n.to_string());
        r.teams = strs(&[n]);
        users.push((format!("{n}{i}"), r));
    }
    let text = export(&users);
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    for rec in rdr.records() {
        for cell in rec.unwrap().iter() {
            assert!(!cell.starts_with(is_formula_start), "{cell:?} in {text:?}");
        }
    }
}

// ---------------------------------------------------------- import: reading

#[test]
fn import_accepts_bom_crlf_lf_and_cr() {
    let want = vec![
        ("a".to_string(), record(&["p"], &["agent"])),
        ("b".to_string(), record(&[], &[])),
    ];
    for sep in ["\r\n", "\n", "\r"] {
        for bom in ["", "\u{feff}"] {
            let text = format!("{bom}user,partners,roles{sep}a,p,agent{sep}b,,{sep}");
            assert_eq!(import(text.as_bytes()).unwrap(), want, "{text:?}");
            // Without a final line ending too.
            let text = text.trim_end_matches(sep);
            assert_eq!(import(text.as_bytes()).unwrap(), want, "{text:?}");
        }
    }
}

#[test]
fn columns_come_in_any_order_any_case_and_missing_ones_default() {
    let text = file(&[" Roles ,USER", "agent,a"]);
    let got = import(&text).unwrap();
    assert_eq!(got, vec![("a".to_string(), record(&[], &["agent"]))]);
    assert!(got[0].1.active, "active defaults to true");
    let only_user = import(&file(&["user", "x"])).unwrap();
    assert_eq!(
        only_user,
        vec![(
            "x".to_string(),
            UserRecord {
                active: true,
                ..UserRecord::default()
            }
        )]
    );
}

#[test]
fn lists_are_trimmed_deduplicated_sorted_and_skip_empty_items() {
    let text = file(&["user,partners,profiles", "u, b ; a;;a; ,base : 2 ; other"]);
    let got = import(&text).unwrap();
    let r = &got[0].1;
    assert_eq!(r.partners, strs(&["a", "b"]));
    assert_eq!(
        r.profiles,
        vec![profile("base", Some(2)), profile("other", None)]
    );
}

#[test]
fn active_takes_true_false_yes_no_in_any_case() {
    for (cell, want) in [
        ("true", true),
        ("TRUE", true),
        (" Yes ", true),
        ("false", false),
        ("FALSE", false),
        ("no", false),
    ] {
        let got = import(&file(&["user,active", &format!("u,{cell}")])).unwrap();
        assert_eq!(got[0].1.active, want, "{cell:?}");
    }
}

#[test]
fn empty_rows_are_skipped_but_counted() {
    // A cleared spreadsheet row (commas only), a blank line and a row of
    // spaces: skipped, but the next row's number still counts them.
    let text = b"user,roles\r\n,\r\n\r\n   ,  \r\nok,agent\r\nbad,bad role\r\n";
    let e = import(text).unwrap_err();
    assert_eq!(e.rows.len(), 1, "{e:?}");
    assert_eq!(e.rows[0].row, 6, "{e:?}");
}

#[test]
fn rows_are_numbered_as_a_spreadsheet_shows_them() {
    // Row 2 spans three lines (a quoted name); row 3 is blank; row 4 is bad.
    for sep in ["\r\n", "\n", "\r"] {
        let text =
            format!("user,name,roles{sep}a,\"x{sep}y{sep}z\",agent{sep}{sep}b,,bad role{sep}");
        assert_eq!(
            bad_rows(text.as_bytes()),
            vec![(
                4,
                "roles: \"bad role\" is not a role binding (role or role@kind:id)".to_string()
            )],
            "{text:?}"
        );
    }
    // Blank lines before the header count too.
    assert_eq!(bad_rows(b"\n\nuser,roles\nb,bad role\n")[0].0, 4);
}

// -------------------------------------------------------- import: bad rows

#[test]
fn every_bad_row_is_reported_with_its_row_number() {
    let text = file(&[
        "user,name,email,partners,teams,roles,profiles,grants,active",
        "good,Good,good@example.com,acme,t,agent,base:1,bot.view,true", // 2
        ",,,,,agent,,,true",                                            // 3 no user
        "two,,no-at-sign,,,,,,true",                                    // 4
        "three,,a@b@c,,,,,,true",                                       // 5
        "four,,,acme corp,,,,,true",                                    // 6
        "five,,,,,agent@bot,,,true",                                    // 7
        "six,,,,,,base:0,,true",                                        // 8
        "seven,,,,,,,Bot.View,maybe",                                   // 9 two problems
        "eight,,,,,,,,",                                                // 10
        "good,,,,,,,,true",                                             // 11 duplicate
        "nine,,,,",                                                     // 12 short
        "ten,,,,,,,*,true",                                             // 13
        "eleven,,,,,,a:1;a:2,,true",                                    // 14
        "twelve,,,,,,x:1:2,,true",                                      // 15
        "thirteen,,,,,a\\b,,,true",                                     // 16
        "fourteen,,@example.com,,,,,,true",                             // 17
        "fifteen,,,,,,base:+3,,true",                                   // 18
        " sixteen,,,,,,,,true",                                         // 19
    ]);
    let got = bad_rows(&text);
    let rows: Vec<usize> = got.iter().map(|r| r.0).collect();
    assert_eq!(
        rows,
        vec![
            3, 4, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19
        ],
        "{got:#?}"
    );
    let reason = |row: usize, n: usize| -> &str {
        got.iter()
            .filter(|r| r.0 == row)
            .nth(n)
            .map(|r| r.1.as_str())
            .unwrap()
    };
    assert!(reason(3, 0).starts_with("user: empty"), "{got:#?}");
    assert!(
        reason(4, 0).starts_with("email: \"no-at-sign\""),
        "{got:#?}"
    );
    assert!(reason(5, 0).contains("exactly one @"), "{got:#?}");
    assert!(
        reason(6, 0).starts_with("partners: \"acme corp\" contains whitespace"),
        "{got:#?}"
    );
    assert!(
        reason(7, 0).starts_with("roles: \"agent@bot\" is not a role binding"),
        "{got:#?}"
    );
    assert!(
        reason(8, 0).contains("version \"0\" is not a positive integer"),
        "{got:#?}"
    );
    assert!(
        reason(9, 0).starts_with("grants: \"Bot.View\" names"),
        "{got:#?}"
    );
    assert!(reason(9, 1).starts_with("active: \"maybe\""), "{got:#?}");
    assert!(reason(10, 0).starts_with("active: empty"), "{got:#?}");
    assert_eq!(reason(11, 0), "user: \"good\" already appears in row 2");
    assert_eq!(reason(12, 0), "5 cells where the header has 9 columns");
    assert!(reason(13, 0).starts_with("grants: \"*\""), "{got:#?}");
    assert_eq!(reason(14, 0), "profiles: \"a\" is listed more than once");
    assert!(reason(15, 0).contains("more than one `:`"), "{got:#?}");
    assert!(
        reason(16, 0).starts_with("roles: \"a\\\\b\": a `\\` must be followed"),
        "{got:#?}"
    );
    assert!(reason(17, 0).contains("exactly one @"), "{got:#?}");
    assert!(
        reason(18, 0).contains("\"+3\" is not a positive integer"),
        "{got:#?}"
    );
    assert!(
        reason(19, 0).contains("leading or trailing whitespace"),
        "{got:#?}"
    );
    let e = import(&text).unwrap_err();
    assert_eq!(
        e.reason(),
        format!("17 invalid rows (first: row 3: {})", reason(3, 0))
    );
}

#[test]
fn row_numbers_hold_across_the_readers_buffer_boundaries() {
    // Thousands of CRLF rows (the reader refills its buffer many times, so
    // some CRLF pairs are split across refills), with blank lines,
    // multi-line cells and bad rows spread through.
    let mut text = String::from("user,roles,name\r\n");
    let mut row = 1;
    let mut want = Vec::new();
    for i in 0..3_000 {
        row += 1;
        if i % 97 == 0 {
            text.push_str("\r\n");
            row += 1;
        }
        if i % 101 == 0 {
            text.push_str(&format!("u{i},bad role,x\r\n"));
            want.push(row);
        } else {
            text.push_str(&format!("u{i},agent,\"two\r\nlines\"\r\n"));
        }
    }
    let got: Vec<usize> = bad_rows(text.as_bytes()).iter().map(|r| r.0).collect();
    assert_eq!(got, want);
}

#[test]
fn too_many_cells_and_control_characters_in_the_user() {
    let got = bad_rows(&file(&["user,name", "a,b,c", "\"x\u{7}\",ok"]));
    assert_eq!(
        got,
        vec![
            (2, "3 cells where the header has 2 columns".to_string()),
            (
                3,
                "user: \"x\\u{7}\" contains a control character".to_string()
            ),
        ]
    );
}

#[test]
fn a_bad_row_stops_nothing_else_from_being_checked_but_yields_no_records() {
    let e = import(&file(&["user,roles", "a,agent", "b,bad role", "c,agent"])).unwrap_err();
    assert_eq!(e.rows.len(), 1);
    assert!(e.file.is_none());
}

#[test]
fn row_errors_serialize_as_the_admin_api_lists_them() {
    let e = import(&file(&["user,active", "u,maybe"])).unwrap_err();
    assert_eq!(
        serde_json::to_value(&e.rows).unwrap(),
        serde_json::json!([{"row": 2, "reason": "active: \"maybe\" is not true, false, yes or no"}])
    );
}

// ------------------------------------------------------- import: the file

#[test]
fn header_problems_refuse_the_file_and_say_all_of_them() {
    let FileProblem::Header(why) = file_problem(&file(&["name,Name,colour,,roles", "x,y,z,,"]))
    else {
        panic!()
    };
    for part in [
        "column \"name\" appears more than once",
        "unknown column \"colour\"",
        "column 4 has no name",
        "no \"user\" column",
        "known columns: user, name",
    ] {
        assert!(why.contains(part), "{part:?} missing from {why:?}");
    }
}

#[test]
fn a_semicolon_separated_file_gets_a_hint() {
    let FileProblem::Header(why) = file_problem(b"user;name;roles\r\na;b;c\r\n") else {
        panic!()
    };
    assert!(why.contains("separated by `;`"), "{why}");
}

#[test]
fn empty_files_are_refused() {
    for text in [&b""[..], b"\xef\xbb\xbf", b"\r\n\r\n", b"\n"] {
        assert_eq!(file_problem(text), FileProblem::Empty, "{text:?}");
    }
}

#[test]
fn non_utf8_files_are_refused_with_the_row() {
    // Windows-1252 "é" in row 3.
    let text = b"user,name\r\na,ok\r\nb,Jos\xe9\r\n";
    assert_eq!(file_problem(text), FileProblem::NotUtf8 { row: 3 });
    // UTF-16 (Excel's "Unicode text"), either byte order.
    assert_eq!(
        file_problem(b"\xff\xfeu\0s\0e\0r\0"),
        FileProblem::NotUtf8 { row: 1 }
    );
    assert_eq!(
        file_problem(b"\xfe\xff\0u\0s\0e\0r"),
        FileProblem::NotUtf8 { row: 1 }
    );
}

#[test]
fn size_and_row_limits() {
    let mut text = String::from("user\r\n");
    for i in 0..MAX_IMPORT_ROWS {
        text.push_str(&format!("u{i}\r\n"));
    }
    assert_eq!(import(text.as_bytes()).unwrap().len(), MAX_IMPORT_ROWS);
    // Empty rows do not count...
    let with_blanks = format!("{text},\r\n\r\n");
    assert_eq!(
        import(with_blanks.as_bytes()).unwrap().len(),
        MAX_IMPORT_ROWS
    );
    // ...one more user does, bad rows included.
    text.push_str("one-too-many\r\n");
    assert_eq!(file_problem(text.as_bytes()), FileProblem::TooManyRows);

    let big = vec![b'a'; MAX_IMPORT_BYTES + 1];
    assert_eq!(
        file_problem(&big),
        FileProblem::TooLarge {
            bytes: MAX_IMPORT_BYTES + 1
        }
    );
}

#[test]
fn a_big_export_round_trips() {
    let users: Vec<(String, UserRecord)> = (0..2_000)
        .map(|i| {
            let mut r = record(&["acme", &format!("p{}", i % 7)], &["agent"]);
            r.name = Some(format!("User, number {i}"));
            r.profiles = vec![profile("base", Some(i % 5 + 1))];
            (format!("user-{i:05}"), r)
        })
        .collect();
    round_trip(users);
}

// ---------------------------------------------------------------- helpers

#[test]
fn guard_and_unguard_are_inverse() {
    for v in [
        "", "'", "''", "'''", "'=", "=", "==", "'a", "a'", "-", "'-", "''-", "\t", "'\r", "@", "x",
    ] {
        assert_eq!(unguard(&guard(v)), v, "{v:?} → {:?}", guard(v));
        assert!(!guard(v).starts_with(is_formula_start), "{v:?}");
    }
}

#[test]
fn escapes_split_and_resolve() {
    assert_eq!(split_escaped("a\\;b;c", ';').unwrap(), vec!["a\\;b", "c"]);
    assert_eq!(split_escaped("", ';').unwrap(), vec![""]);
    assert_eq!(unescape("a\\;b\\\\c\\:d"), "a;b\\c:d");
    assert!(split_escaped("a\\", ';').is_err());
    assert!(split_escaped("a\\b", ';').is_err());
    for item in ["a;b", "\\", ";;", "x:y", "\\;"] {
        assert_eq!(unescape(&escape(item, true)), item);
        assert_eq!(split_escaped(&escape(item, false), ';').unwrap().len(), 1);
    }
}

#[test]
fn the_readme_example_imports() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```csv\n")
        .expect("a ```csv block in README.md")
        + 7;
    let len = readme[start..].find("```").unwrap();
    let got = import(&readme.as_bytes()[start..start + len]).unwrap();
    let bob = &got[1].1;
    assert_eq!(got[1].0, "bob");
    assert_eq!(bob.roles, strs(&["-oddly-named-role"]));
    assert_eq!(bob.profiles, vec![profile("base", None)]);
    assert!(!bob.active);
    assert_eq!(got[0].1.name.as_deref(), Some("Doe, Alice"));
}
