//! The user directory as a CSV file (seed 002, "Bulk Updates"): a Partner
//! Admin downloads the users of a partner, edits the sheet in a spreadsheet
//! and uploads it back.
//!
//! Owns the file format in both directions ([`export`], [`import`]) and the
//! validation of a whole file: [`import`] reads every row and reports every
//! bad one ([`ImportError`]), so one upload shows everything to fix. Must
//! not: read or write the store, or decide who may change what. The admin
//! API (`GET`/`POST /directory/users.csv`) calls these functions, checks
//! each row with [`check_change`](super::check_change) and
//! [`check_requirements`](super::check_requirements), and applies the
//! records all or nothing.
//!
//! # Format
//!
//! - **Encoding.** UTF-8. [`export`] starts the file with a byte-order mark
//!   (U+FEFF), because Excel reads a CSV file without one in the machine's
//!   legacy code page and would garble every non-ASCII name. [`import`]
//!   accepts the file with or without it. Other encodings (a UTF-16 "Unicode
//!   text" save, a Windows-1252 "CSV" save) are refused as a whole
//!   ([`FileProblem::NotUtf8`]).
//! - **Syntax.** RFC 4180: fields separated by `,`; a field holding `,`,
//!   `"`, CR or LF is quoted, with `"` doubled (the `csv` crate writes and
//!   reads it). Export ends each record with CRLF; import accepts CRLF, LF
//!   or CR.
//! - **Header** (row 1). Export writes [`COLUMNS`] in that order:
//!   `user,name,email,partners,teams,roles,profiles,grants,active,revision`
//!   (`revision`: the entry's, checked by the endpoint on import). Import
//!   takes them in any order, compared case-insensitively and ignoring
//!   surrounding spaces. `user` is required; every other column is optional
//!   (missing: no name, no e-mail, empty lists, `active` true). An unknown,
//!   unnamed or repeated column refuses the file.
//! - **Rows.** One per user, export sorted by subject (byte order). Rows are
//!   numbered as a spreadsheet shows them: the header is row 1, a quoted
//!   multi-line cell stays in its row, and a blank line is a row of its own.
//!   A row whose cells are all empty or blank (a row cleared in a
//!   spreadsheet, a blank line) is skipped. Every other row needs as many
//!   cells as the header.
//! - **Cells.**
//!   - `user`: the subject (the token's `sub`), exactly as written: not
//!     empty, no control characters, no leading or trailing whitespace (a
//!     stray space would otherwise create a new user). A user appears at
//!     most once per file: a second row for the same user is an error.
//!   - `name`: any text, as written (commas, quotes, newlines included);
//!     empty means no name.
//!   - `email`: empty means none; otherwise exactly one `@` with text on both
//!     sides, and no whitespace or control characters.
//!   - `partners`, `teams`: lists of ids; an id has no whitespace or control
//!     characters (partner ids are matched against `partner:<id>` scopes,
//!     where neither can occur).
//!   - `roles`: a list of role bindings, `role` or `role@kind:id`
//!     ([`parse_binding`]), the role part a valid role name. Whether the
//!     role exists is the endpoint's check (it knows the loaded policy).
//!   - `profiles`: a list of `name` (the profile's latest version: the
//!     endpoint records which) or `name:N`, N a positive integer written in
//!     digits. A profile appears at most once per row.
//!   - `grants`: a list of `capability`, `prefix.*`, or either of them
//!     `@kind:id` ([`parse_binding`], [`is_valid_grant`]).
//!   - `active`: `true`/`false`, also `yes`/`no`, in any case (spreadsheets
//!     turn `true` into `TRUE`), surrounding spaces ignored. An empty cell is
//!     an error, not "true": clearing the cell must not silently re-activate
//!     a deactivated user. Export writes `true`/`false`.
//!   - `revision`: the entry's revision when it was exported
//!     ([`UserRecord::revision`]: `r` and 16 hex digits, read in any case);
//!     empty means the user had no entry. The endpoint refuses a row whose
//!     entry is no longer at that revision.
//! - **Lists** (`partners`, `teams`, `roles`, `profiles`, `grants`): items
//!   separated by `;` (the field separator is `,`, so a list stays one
//!   cell). Items are trimmed, empty items dropped (`a; ;b;` is `a;b`),
//!   duplicates merged and the list sorted ([`UserRecord::normalise`]).
//!   Escapes keep any item representable: in a list, `\;`, `\:` and `\\`
//!   stand for `;`, `:` and `\`; any other `\` is an error. Export escapes
//!   `\` and `;` in every item, and `:` in profile names, where an unescaped
//!   `:` starts the version. Without the escapes a partner `a;b` would come
//!   back as two partners.
//! - **Formula injection** (OWASP "CSV injection"). A spreadsheet evaluates
//!   a cell that starts with `=`, `+`, `-`, `@`, tab or CR. Export prefixes
//!   such a cell with a single quote `'`, which makes a spreadsheet show it
//!   as text; it also prefixes a cell that starts with `'` followed by one
//!   of those characters or by another `'`, so that every quote import
//!   removes is one export added. Import removes one leading `'` from a cell
//!   exactly when the next character is `=`, `+`, `-`, `@`, tab, CR or `'`.
//!   So `import(export(x))` is `x`: `-1` exports as `'-1`, `'=x` as `''=x`,
//!   `'Tis` as itself. A spreadsheet that drops the prefix on saving (Excel
//!   keeps it as a display flag, not in the value) writes the bare value,
//!   which imports as the same value. The prefix applies to the whole cell,
//!   after list joining and escaping (`-x;y` → `'-x;y`).
//! - **Limits.** At most [`MAX_IMPORT_BYTES`] (5 MiB) and
//!   [`MAX_IMPORT_ROWS`] (10,000) users, i.e. rows not skipped; beyond
//!   either the whole file is refused before any row is judged.
//!
//! A row is a **full replacement** of that user's record (a column left out
//! gives its default); users not in the file are untouched; a file with any
//! bad row yields no records at all.

use std::collections::HashMap;

use serde::Serialize;

use super::{ProfileRef, UserRecord};
use crate::policy::{is_valid_grant, is_valid_name, parse_binding};

/// Largest file [`import`] reads (5 MiB).
pub const MAX_IMPORT_BYTES: usize = 5 * 1024 * 1024;
/// Most users (non-empty data rows) [`import`] reads.
pub const MAX_IMPORT_ROWS: usize = 10_000;
/// The columns, in the order [`export`] writes them.
pub const COLUMNS: [&str; 10] = [
    "user", "name", "email", "partners", "teams", "roles", "profiles", "grants", "active",
    "revision",
];

const BOM: &str = "\u{feff}";
const LIST_SEPARATOR: char = ';';
const VERSION_SEPARATOR: char = ':';
const ESCAPE: char = '\\';

/// The directory's users as a CSV file (see the module docs for the
/// format): one row per user, sorted by subject, every list normalised.
pub fn export(users: &[(String, UserRecord)]) -> String {
    let mut sorted: Vec<&(String, UserRecord)> = users.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from(BOM);
    // Writing to a `Vec` cannot fail, and every record has the header's
    // length, so the csv writer has no error to report: an empty body
    // stands for the impossible case rather than a panic.
    match write_rows(&sorted) {
        Ok(body) => out.push_str(&body),
        Err(_) => out.clear(),
    }
    out
}

fn write_rows(users: &[&(String, UserRecord)]) -> Result<String, Box<dyn std::error::Error>> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for (user, rec) in users {
        // Of the record as stored.
        let revision = rec.revision();
        let mut rec = rec.clone();
        rec.normalise();
        let profiles = rec.profiles.iter().map(|p| {
            let name = escape(&p.name, true);
            match p.version {
                Some(v) => format!("{name}{VERSION_SEPARATOR}{v}"),
                None => name,
            }
        });
        let row = [
            guard(user),
            guard(rec.name.as_deref().unwrap_or("")),
            guard(rec.email.as_deref().unwrap_or("")),
            guard(&join(rec.partners.iter().map(|s| escape(s, false)))),
            guard(&join(rec.teams.iter().map(|s| escape(s, false)))),
            guard(&join(rec.roles.iter().map(|s| escape(s, false)))),
            guard(&join(profiles)),
            guard(&join(rec.grants.iter().map(|s| escape(s, false)))),
            rec.active.to_string(),
            revision,
        ];
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes)?)
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(&LIST_SEPARATOR.to_string())
}

/// A list item with `\`, `;` (and in a profile name `:`) escaped.
fn escape(item: &str, profile_name: bool) -> String {
    let mut out = String::with_capacity(item.len());
    for c in item.chars() {
        if c == ESCAPE || c == LIST_SEPARATOR || (profile_name && c == VERSION_SEPARATOR) {
            out.push(ESCAPE);
        }
        out.push(c);
    }
    out
}

/// A spreadsheet evaluates a cell starting with one of these (OWASP).
fn is_formula_start(c: char) -> bool {
    matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r')
}

/// Does [`unguard`] remove a quote from `cell`?
fn is_guarded(cell: &str) -> bool {
    let mut cs = cell.chars();
    cs.next() == Some('\'') && cs.next().is_some_and(|c| is_formula_start(c) || c == '\'')
}

/// The exported form of a cell: `'` added where a spreadsheet would
/// evaluate the cell, or where import would otherwise remove a quote that
/// is part of the value.
fn guard(cell: &str) -> String {
    if cell.starts_with(is_formula_start) || is_guarded(cell) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

/// The value of an imported cell: the quote [`guard`] added, removed.
fn unguard(cell: &str) -> &str {
    if is_guarded(cell) { &cell[1..] } else { cell }
}

/// Why a file is refused as a whole (no row is judged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    #[error("the file is empty: it needs at least the header row ({})", COLUMNS.join(","))]
    Empty,
    #[error("the file has {bytes} bytes; at most {MAX_IMPORT_BYTES} are accepted")]
    TooLarge { bytes: usize },
    /// `row` 1 for a UTF-16 byte-order mark.
    #[error("row {row} is not UTF-8 text: save the file as \"CSV UTF-8\"")]
    NotUtf8 { row: usize },
    #[error("more than {MAX_IMPORT_ROWS} users: split the file")]
    TooManyRows,
    /// Every problem of the header, joined.
    #[error("bad header: {0}")]
    Header(String),
}

/// One problem of one row. A row with several problems is listed once per
/// problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// As a spreadsheet numbers it: the header is row 1.
    pub row: usize,
    /// Starts with the column's name, e.g. `roles: "x y" is not a role
    /// binding (role or role@kind:id)`.
    pub reason: String,
}

/// Why [`import`] refused a file: a problem of the whole file, or every bad
/// row (in row order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// Set when the file is refused as a whole; `rows` is then empty.
    pub file: Option<FileProblem>,
    pub rows: Vec<RowError>,
}

impl ImportError {
    /// One line for the whole error: the file's problem, or how many rows
    /// are bad and the first problem.
    pub fn reason(&self) -> String {
        if let Some(f) = &self.file {
            return f.to_string();
        }
        let mut rows: Vec<usize> = self.rows.iter().map(|r| r.row).collect();
        rows.dedup();
        match self.rows.first() {
            Some(first) => format!(
                "{} invalid row{} (first: row {}: {})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" },
                first.row,
                first.reason
            ),
            None => "invalid file".to_string(),
        }
    }
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for ImportError {}

impl From<FileProblem> for ImportError {
    fn from(p: FileProblem) -> Self {
        ImportError {
            file: Some(p),
            rows: Vec::new(),
        }
    }
}

/// [`import_rows`] without the row numbers.
#[cfg(test)]
pub fn import(text: &[u8]) -> Result<Vec<(String, UserRecord)>, ImportError> {
    import_rows(text).map(|f| f.rows.into_iter().map(|(_, u, r, _)| (u, r)).collect())
}

/// A file read by [`import_rows`].
pub struct Imported {
    /// Every user's record, normalised, in file order, with its
    /// spreadsheet row number and its `revision` cell (`None`: empty).
    pub rows: Vec<(usize, String, UserRecord, Option<String>)>,
    /// Whether the file has an `active` column: without one, the records'
    /// `active: true` is a default that must not reactivate anyone (the
    /// endpoint keeps each existing user's state).
    pub active_given: bool,
    /// Whether the file has a `revision` column: then each row must match
    /// the entry as it is now (an empty cell: no entry).
    pub revision_given: bool,
}

/// Reads a whole CSV file (see the module docs): every user's record,
/// normalised, in file order, with its spreadsheet row number (the header
/// is row 1; skipped blank rows count, as a spreadsheet shows them); or
/// every problem found.
pub fn import_rows(text: &[u8]) -> Result<Imported, ImportError> {
    if text.len() > MAX_IMPORT_BYTES {
        return Err(FileProblem::TooLarge { bytes: text.len() }.into());
    }
    if text.starts_with(&[0xff, 0xfe]) || text.starts_with(&[0xfe, 0xff]) {
        return Err(FileProblem::NotUtf8 { row: 1 }.into());
    }
    let body = text.strip_prefix(BOM.as_bytes()).unwrap_or(text);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(body);
    let mut numbering = RowNumbers::new(body);
    let mut record = csv::ByteRecord::new();

    let mut columns: Option<Columns> = None;
    let mut users: Vec<(usize, String, UserRecord, Option<String>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut bad: Vec<RowError> = Vec::new();
    // Data rows judged (skipped empty rows are not counted).
    let mut judged = 0usize;
    loop {
        let start = rdr.position().byte();
        let more = rdr.read_byte_record(&mut record);
        let row = numbering.next(usize::try_from(start).unwrap_or(usize::MAX));
        match more {
            Ok(true) => {}
            Ok(false) => break,
            // A byte slice cannot fail to read and `flexible` accepts any
            // record length, so this does not happen; if it did, the rows
            // from here on could not be trusted: stop, refusing the file.
            Err(e) => {
                bad.push(RowError {
                    row,
                    reason: format!("unreadable from here on: {e}"),
                });
                break;
            }
        }
        let mut cells = Vec::with_capacity(record.len());
        for field in &record {
            match std::str::from_utf8(field) {
                Ok(s) => cells.push(s),
                Err(_) => return Err(FileProblem::NotUtf8 { row }.into()),
            }
        }
        let Some(cols) = &columns else {
            columns = Some(Columns::from_header(&cells)?);
            continue;
        };
        if cells.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        judged += 1;
        if judged > MAX_IMPORT_ROWS {
            return Err(FileProblem::TooManyRows.into());
        }
        if cells.len() != cols.len {
            bad.push(RowError {
                row,
                reason: format!(
                    "{} cells where the header has {} columns",
                    cells.len(),
                    cols.len
                ),
            });
            continue;
        }
        let (user, rec, revision, problems) = parse_row(cols, &cells);
        for reason in problems {
            bad.push(RowError { row, reason });
        }
        if !user.is_empty() {
            match seen.get(&user) {
                Some(first) => bad.push(RowError {
                    row,
                    reason: format!("user: {user:?} already appears in row {first}"),
                }),
                None => {
                    seen.insert(user.clone(), row);
                }
            }
        }
        users.push((row, user, rec, revision));
    }
    let Some(columns) = columns else {
        return Err(FileProblem::Empty.into());
    };
    if !bad.is_empty() {
        return Err(ImportError {
            file: None,
            rows: bad,
        });
    }
    Ok(Imported {
        rows: users,
        active_given: columns.has("active"),
        revision_given: columns.has("revision"),
    })
}

/// Spreadsheet row numbers. The csv reader skips blank lines, which a
/// spreadsheet shows as empty rows: they are counted here, from the bytes
/// between one record and the next.
struct RowNumbers<'a> {
    text: &'a [u8],
    records: usize,
    blank: usize,
}

impl<'a> RowNumbers<'a> {
    fn new(text: &'a [u8]) -> Self {
        RowNumbers {
            text,
            records: 0,
            blank: 0,
        }
    }

    /// The row of the record the reader starts at byte `start`: just past
    /// the previous record's content and at least the first byte of its
    /// terminator (the LF of a CRLF may be left), or 0.
    fn next(&mut self, start: usize) -> usize {
        let t = self.text;
        let mut i = start;
        if i > 0 && t.get(i - 1) == Some(&b'\r') && t.get(i) == Some(&b'\n') {
            i += 1;
        }
        while let Some(&b) = t.get(i) {
            match b {
                b'\n' => i += 1,
                b'\r' => {
                    i += 1;
                    if t.get(i) == Some(&b'\n') {
                        i += 1;
                    }
                }
                _ => break,
            }
            self.blank += 1;
        }
        self.records += 1;
        self.records + self.blank
    }
}

/// Where each known column is in the file.
struct Columns {
    /// Index of each of [`COLUMNS`], if present.
    at: [Option<usize>; COLUMNS.len()],
    /// Cells per row.
    len: usize,
}

impl Columns {
    fn from_header(cells: &[&str]) -> Result<Columns, FileProblem> {
        let mut at = [None; COLUMNS.len()];
        let mut problems = Vec::new();
        for (i, raw) in cells.iter().enumerate() {
            let name = raw.trim().to_ascii_lowercase();
            if name.is_empty() {
                problems.push(format!("column {} has no name", i + 1));
                continue;
            }
            match COLUMNS.iter().position(|c| *c == name) {
                Some(k) if at[k].is_some() => {
                    problems.push(format!("column {name:?} appears more than once"));
                }
                Some(k) => at[k] = Some(i),
                None => problems.push(format!("unknown column {:?}", raw.trim())),
            }
        }
        if at[0].is_none() {
            problems.push("no \"user\" column".to_string());
        }
        if problems.is_empty() {
            return Ok(Columns {
                at,
                len: cells.len(),
            });
        }
        let mut reason = problems.join("; ");
        if cells.len() == 1 && cells[0].contains(';') {
            reason.push_str(
                " (the columns seem separated by `;`: save the file with `,` between columns)",
            );
        }
        reason.push_str(&format!(" (known columns: {})", COLUMNS.join(", ")));
        Err(FileProblem::Header(reason))
    }

    fn has(&self, name: &str) -> bool {
        COLUMNS
            .iter()
            .position(|c| *c == name)
            .is_some_and(|k| self.at[k].is_some())
    }

    /// The cell of column `name` in `cells`, the export's quote removed.
    fn get<'c>(&self, cells: &[&'c str], name: &str) -> Option<&'c str> {
        let k = COLUMNS.iter().position(|c| *c == name)?;
        let i = self.at[k]?;
        cells.get(i).map(|c| unguard(c))
    }
}

/// One data row: the user (empty when missing), the record, its revision
/// (`None`: empty or no column), and every problem found (each prefixed
/// with its column).
fn parse_row(cols: &Columns, cells: &[&str]) -> (String, UserRecord, Option<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut rec = UserRecord {
        active: true,
        ..UserRecord::default()
    };

    let user = cols.get(cells, "user").unwrap_or("");
    if user.is_empty() {
        problems.push("user: empty (every row needs the user's subject)".to_string());
    } else if user.chars().any(char::is_control) {
        problems.push(format!("user: {user:?} contains a control character"));
    } else if user.trim() != user {
        problems.push(format!("user: {user:?} has leading or trailing whitespace"));
    }

    if let Some(name) = cols.get(cells, "name").filter(|n| !n.is_empty()) {
        rec.name = Some(name.to_string());
    }
    if let Some(email) = cols.get(cells, "email").filter(|e| !e.is_empty()) {
        match check_email(email) {
            Ok(()) => rec.email = Some(email.to_string()),
            Err(why) => problems.push(format!("email: {email:?} {why}")),
        }
    }

    let mut list = |column: &str, check: &dyn Fn(&str) -> Result<(), String>| -> Vec<String> {
        let cell = cols.get(cells, column).unwrap_or("");
        let items = match split_escaped(cell, LIST_SEPARATOR) {
            Ok(items) => items,
            Err(why) => {
                problems.push(format!("{column}: {why}"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for raw in items {
            let item = unescape(raw.trim());
            if item.is_empty() {
                continue;
            }
            match check(&item) {
                Ok(()) => out.push(item),
                Err(why) => problems.push(format!("{column}: {item:?} {why}")),
            }
        }
        out
    };
    rec.partners = list("partners", &check_id);
    rec.teams = list("teams", &check_id);
    rec.roles = list("roles", &check_role);
    rec.grants = list("grants", &check_grant);

    if let Some(cell) = cols.get(cells, "profiles") {
        match parse_profiles(cell) {
            Ok(p) => rec.profiles = p,
            Err(mut why) => problems.append(&mut why),
        }
    }

    if let Some(cell) = cols.get(cells, "active") {
        match cell.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" => rec.active = true,
            "false" | "no" => rec.active = false,
            "" => problems.push("active: empty (write true or false)".to_string()),
            _ => problems.push(format!("active: {cell:?} is not true, false, yes or no")),
        }
    }

    let revision = cols
        .get(cells, "revision")
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty());
    if let Some(r) = &revision
        && !is_revision(r)
    {
        problems.push(format!(
            "revision: {r:?} is not a revision (as exported: r and 16 hex digits)"
        ));
    }

    rec.normalise();
    (user.to_string(), rec, revision, problems)
}

/// `r` and 16 lower-case hex digits ([`UserRecord::revision`]).
fn is_revision(r: &str) -> bool {
    r.len() == 17
        && r.starts_with('r')
        && r[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_email(email: &str) -> Result<(), &'static str> {
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(())
        }
        _ => Err("is not an e-mail address (exactly one @ with text on both sides)"),
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character".to_string());
    }
    Ok(())
}

fn check_role(raw: &str) -> Result<(), String> {
    match parse_binding(raw) {
        Some(b) if is_valid_name(b.name) => Ok(()),
        Some(_) => Err("has an invalid role name".to_string()),
        None => Err("is not a role binding (role or role@kind:id)".to_string()),
    }
}

fn check_grant(raw: &str) -> Result<(), String> {
    match parse_binding(raw) {
        Some(b) if is_valid_grant(b.name) => Ok(()),
        Some(b) => Err(format!(
            "names {:?}, not a capability ([a-z0-9_-] segments separated by dots, optionally ending in .*)",
            b.name
        )),
        None => Err("is not a grant (capability or capability@kind:id)".to_string()),
    }
}

/// `name` or `name:N` items; every problem, each prefixed `profiles: `.
fn parse_profiles(cell: &str) -> Result<Vec<ProfileRef>, Vec<String>> {
    let items =
        split_escaped(cell, LIST_SEPARATOR).map_err(|why| vec![format!("profiles: {why}")])?;
    let mut problems = Vec::new();
    let mut out: Vec<ProfileRef> = Vec::new();
    for raw in items {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        // `raw` passed `split_escaped` whole, so its escapes are valid.
        let parts = split_escaped(raw, VERSION_SEPARATOR).unwrap_or_default();
        let shown = unescape(raw);
        let (name, version) = match parts.as_slice() {
            [name] => (unescape(name.trim()), None),
            [name, version] => (unescape(name.trim()), Some(version.trim())),
            _ => {
                problems.push(format!(
                    "profiles: {shown:?} has more than one `:` (write `\\:` for a `:` in the name)"
                ));
                continue;
            }
        };
        if !is_valid_name(&name) {
            problems.push(format!(
                "profiles: {shown:?}: {name:?} is not a profile name (not empty, no @, whitespace or control characters)"
            ));
            continue;
        }
        let version = match version {
            None => None,
            Some(v) => match parse_version(v) {
                Some(n) => Some(n),
                None => {
                    problems.push(format!(
                        "profiles: {shown:?}: the version {v:?} is not a positive integer"
                    ));
                    continue;
                }
            },
        };
        if out.iter().any(|p| p.name == name) {
            problems.push(format!("profiles: {name:?} is listed more than once"));
            continue;
        }
        out.push(ProfileRef { name, version });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Digits only (no sign, no spaces), greater than zero, fits in a `u64`.
fn parse_version(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|n| *n > 0)
}

/// Splits `s` at every `sep` not escaped by `\`, keeping the escapes in the
/// pieces. A `\` must be followed by `\`, `;` or `:`.
fn split_escaped(s: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut pieces = Vec::new();
    let mut from = 0;
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        if c == ESCAPE {
            match it.next() {
                Some((_, n)) if n == ESCAPE || n == LIST_SEPARATOR || n == VERSION_SEPARATOR => {}
                _ => {
                    return Err(format!(
                        "{s:?}: a `\\` must be followed by `;`, `:` or `\\` (write `\\\\` for a backslash)"
                    ));
                }
            }
        } else if c == sep {
            pieces.push(&s[from..i]);
            from = i + c.len_utf8();
        }
    }
    pieces.push(&s[from..]);
    Ok(pieces)
}

/// `s` with its (valid) escapes resolved.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == ESCAPE {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
