//! CSV masking (`text/csv`, RFC 4180): columns by header name.
//!
//! Owns: parsing decoded CSV bytes with `csv_core`'s push reader, mapping the
//! policy's field rules and detector scope onto columns, and writing masked
//! records back out. Serves phase 7 (respond) via
//! [`BodyMasker`](super::BodyMasker). Must not: pass a selected cell through
//! unmasked, guess at ambiguous input (ragged rows fail), or buffer more than
//! one record.
//!
//! Semantics:
//! - The first record is the header. A column is selected by a field rule
//!   whose selector's LAST key segment equals the header name (`$..phone`,
//!   `$.phone`, `$[*].phone`, `$.customer.phone` and `$['phone']` all select
//!   column `phone`); a last segment `.*` selects every column; an index
//!   `[*]`/`[N]` is skipped (`$..phones[*]` selects column `phones`), and
//!   a selector of indexes alone (`$[*]`) selects none. Header names are compared after
//!   trimming surrounding whitespace, ASCII-case-insensitively when
//!   `policy.case_insensitive`. The first matching field rule wins.
//! - Per cell, via [`strategy::mask_text`](super::strategy::mask_text):
//!   `remove` drops the whole column (header included); `null` gives an
//!   empty cell; every other strategy writes the masked text.
//! - Detectors ([`strategy::scrub`](super::strategy::scrub)): with
//!   `DetectScope::All` every cell of every record after the header is
//!   scrubbed, with `Fields(sels)` the cells of the columns those selectors
//!   name; cells already masked by a field rule are not scrubbed.
//! - Output: fields are quoted when they contain `,`, `"`, CR or LF (quotes
//!   doubled), a record holding one empty field is written `""`, and every
//!   record ends with CRLF. Empty lines in the input are skipped (csv_core).
//! - Strict RFC 4180 syntax ([`Syntax`], checked on every byte before
//!   `csv_core` sees it, because `csv_core` is lenient and would read any of
//!   these as *some* record — with cells shifted out of their columns): a
//!   `"` may only open a field (first byte of the body, or right after `,`,
//!   CR or LF); inside a quoted field `""` is a quote and the closing `"`
//!   must be followed by `,`, CR, LF or the end of the body; the body may not
//!   end inside a quoted field. Anything else → [`BodyError::Csv`].
//! - Fail closed: a record with more *or fewer* fields than the header, a
//!   cell that is not UTF-8, or a record larger than
//!   [`unit_limit`](super::unit_limit) → [`BodyError::Csv`]. (A short row
//!   is how an unterminated quote swallowing the next cells shows up; a
//!   ragged file is not RFC 4180 and its columns cannot be trusted.) A
//!   selector whose text cannot be read → `Csv` error at the first byte.
//! - Rows stream out as their records end; the last record may lack a line
//!   ending.

use std::sync::Arc;

use csv_core::{ReadRecordResult, Reader};

use super::strategy::{mask_text, scrub};
use super::{BodyError, DetectScope, Policy, Strategy, unit_limit};

/// What a selector names in CSV terms: its last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Last {
    /// `.key`, `..key`, `['key']`: the column with that header name.
    Key(String),
    /// `.*`: every column.
    AnyColumn,
    /// `$`, `$[*]`, `$[N]`: no column (an index after a key keeps the key's).
    NoColumn,
}

impl Last {
    fn selects(&self, header: &str, case_insensitive: bool) -> bool {
        match self {
            Last::Key(k) if case_insensitive => k.eq_ignore_ascii_case(header),
            Last::Key(k) => k == header,
            Last::AnyColumn => true,
            Last::NoColumn => false,
        }
    }
}

/// Reads the last segment of a selector's text (`Selector::as_str`), in the
/// selector syntax: `$`, `.key`, `..key`, `.*`, `[*]`, `[N]`, `['key']`.
fn last_segment(selector: &str) -> Result<Last, String> {
    let bad = || format!("selector {selector:?} cannot be applied to CSV columns");
    let rest = selector.trim().strip_prefix('$').ok_or_else(bad)?;
    let b = rest.as_bytes();
    let mut i = 0;
    let mut last = Last::NoColumn;
    while i < b.len() {
        match b[i] {
            b'.' => {
                i += 1;
                if b.get(i) == Some(&b'.') {
                    i += 1; // recursive descent: the key still names the column
                }
                if b.get(i) == Some(&b'[') {
                    continue; // `..['key']`
                }
                let start = i;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                last = match &rest[start..i] {
                    "" => return Err(bad()),
                    "*" => Last::AnyColumn,
                    key => Last::Key(key.to_string()),
                };
            }
            b'[' => {
                i += 1;
                match b.get(i) {
                    Some(&q @ (b'\'' | b'"')) => {
                        i += 1;
                        let mut key = Vec::new();
                        loop {
                            match b.get(i) {
                                None => return Err(bad()),
                                Some(b'\\') => {
                                    key.push(*b.get(i + 1).ok_or_else(bad)?);
                                    i += 2;
                                }
                                Some(&c) if c == q => {
                                    i += 1;
                                    break;
                                }
                                Some(&c) => {
                                    key.push(c);
                                    i += 1;
                                }
                            }
                        }
                        last = Last::Key(String::from_utf8(key).map_err(|_| bad())?);
                    }
                    // An index names no column of its own: the key before it
                    // still does (`$..phones[*]`: column `phones`, a list
                    // flattened into one cell), fail closed.
                    Some(b'*') => {
                        i += 1;
                    }
                    Some(c) if c.is_ascii_digit() => {
                        while b.get(i).is_some_and(u8::is_ascii_digit) {
                            i += 1;
                        }
                    }
                    _ => return Err(bad()),
                }
                if b.get(i) != Some(&b']') {
                    return Err(bad());
                }
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    Ok(last)
}

/// The policy in CSV terms.
struct Rules {
    fields: Vec<(Last, Strategy)>,
    /// Where detectors run (`Nowhere` when the policy has none).
    detect: Detect,
}

enum Detect {
    Nowhere,
    Everywhere,
    Columns(Vec<Last>),
}

impl Rules {
    fn new(policy: &Policy) -> Result<Rules, String> {
        let fields = policy
            .fields
            .iter()
            .map(|(sel, strategy)| Ok((last_segment(sel.as_str())?, strategy.clone())))
            .collect::<Result<Vec<_>, String>>()?;
        let detect = match &policy.detect_in {
            _ if policy.detectors.is_empty() => Detect::Nowhere,
            DetectScope::None => Detect::Nowhere,
            DetectScope::All => Detect::Everywhere,
            DetectScope::Fields(sels) => Detect::Columns(
                sels.iter()
                    .map(|s| last_segment(s.as_str()))
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Rules { fields, detect })
    }

    fn column(&self, header: &str, ci: bool) -> Column {
        let header = header.trim();
        let action = match self
            .fields
            .iter()
            .find(|(last, _)| last.selects(header, ci))
        {
            None => Action::Keep,
            Some((_, Strategy::Remove)) => Action::Drop,
            Some((_, Strategy::Null)) => Action::Empty,
            Some((_, strategy)) => Action::Mask(strategy.clone()),
        };
        let scrub = match &self.detect {
            Detect::Nowhere => false,
            Detect::Everywhere => true,
            Detect::Columns(lasts) => lasts.iter().any(|l| l.selects(header, ci)),
        };
        Column { action, scrub }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Keep,
    Drop,
    Empty,
    Mask(Strategy),
}

#[derive(Debug, Clone)]
struct Column {
    action: Action,
    scrub: bool,
}

/// The RFC 4180 syntax check that runs ahead of `csv_core` (which accepts
/// stray quotes, text after a closing quote and an unterminated quoted field
/// without complaint). State carries across pushes, so any split of the body
/// gives the same verdict.
#[derive(Debug, Default)]
struct Syntax {
    state: Quoting,
    /// The last byte of the previous push (`None` at the start of the body):
    /// tells whether a `"` at the start of a push opens a field.
    prev: Option<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Outside quotes: at a field start or in an unquoted field.
    #[default]
    Outside,
    /// Inside a quoted field.
    Quoted,
    /// Just read a `"` inside a quoted field: the closing quote, or the
    /// first of a doubled `""`.
    QuoteSeen,
}

impl Syntax {
    /// Checks the next bytes of the body.
    fn scan(&mut self, input: &[u8]) -> Result<(), BodyError> {
        let r = self.scan_inner(input);
        if let Some(&last) = input.last() {
            self.prev = Some(last);
        }
        r.map_err(|why| BodyError::Csv(why.into()))
    }

    fn scan_inner(&mut self, input: &[u8]) -> Result<(), &'static str> {
        let mut i = 0;
        loop {
            match self.state {
                Quoting::Outside => {
                    let Some(k) = memchr::memchr(b'"', &input[i..]) else {
                        return Ok(());
                    };
                    let q = i + k;
                    let before = match q {
                        0 => self.prev,
                        _ => input.get(q - 1).copied(),
                    };
                    if !matches!(before, None | Some(b',' | b'\r' | b'\n')) {
                        return Err("a quote inside an unquoted field");
                    }
                    self.state = Quoting::Quoted;
                    i = q + 1;
                }
                Quoting::Quoted => {
                    let Some(k) = memchr::memchr(b'"', &input[i..]) else {
                        return Ok(());
                    };
                    self.state = Quoting::QuoteSeen;
                    i += k + 1;
                }
                Quoting::QuoteSeen => {
                    match input.get(i) {
                        None => return Ok(()),
                        Some(b'"') => self.state = Quoting::Quoted,
                        Some(b',' | b'\r' | b'\n') => self.state = Quoting::Outside,
                        Some(_) => return Err("text after the closing quote of a field"),
                    }
                    i += 1;
                }
            }
        }
    }

    /// The body ended: not inside a quoted field.
    fn finish(&self) -> Result<(), BodyError> {
        match self.state {
            Quoting::Quoted => Err(BodyError::Csv("the body ends inside a quoted field".into())),
            Quoting::Outside | Quoting::QuoteSeen => Ok(()),
        }
    }
}

/// Push-based CSV masker for one body.
pub struct CsvMasker {
    policy: Arc<Policy>,
    rules: Result<Rules, String>,
    /// Strict syntax, checked before `reader` sees the bytes.
    syntax: Syntax,
    reader: Reader,
    /// The current record's field bytes and field ends (csv_core output).
    fields: Vec<u8>,
    ends: Vec<usize>,
    nout: usize,
    nend: usize,
    /// Column plan, from the header record.
    columns: Option<Vec<Column>>,
    limit: usize,
    /// Records seen (1 = header), for error messages.
    records: u64,
    masked: u64,
}

impl CsvMasker {
    pub fn new(policy: Arc<Policy>) -> Self {
        CsvMasker {
            rules: Rules::new(&policy),
            limit: unit_limit(&policy),
            policy,
            syntax: Syntax::default(),
            reader: Reader::new(),
            fields: vec![0; 4096],
            ends: vec![0; 64],
            nout: 0,
            nend: 0,
            columns: None,
            records: 0,
            masked: 0,
        }
    }

    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.check_rules()?;
        self.syntax.scan(input)?;
        while !input.is_empty() {
            self.make_room()?;
            let (res, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.fields[self.nout..],
                &mut self.ends[self.nend..],
            );
            input = &input[nin..];
            self.nout += nout;
            self.nend += nend;
            if res == ReadRecordResult::Record {
                self.record(out)?;
            }
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.check_rules()?;
        // Before csv_core flushes the last record: an unterminated quoted
        // field would come out as a short record holding the rest of the body.
        self.syntax.finish()?;
        // Empty input tells csv_core the data ended: it yields the last,
        // unterminated record (if any), then End.
        for _ in 0..8 {
            self.make_room()?;
            let (res, _, nout, nend) = self.reader.read_record(
                &[],
                &mut self.fields[self.nout..],
                &mut self.ends[self.nend..],
            );
            self.nout += nout;
            self.nend += nend;
            match res {
                ReadRecordResult::Record => self.record(out)?,
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
                ReadRecordResult::End | ReadRecordResult::InputEmpty => return Ok(()),
            }
        }
        Err(BodyError::Csv(
            "reader did not reach the end of the data".into(),
        ))
    }

    pub fn masked_count(&self) -> u64 {
        self.masked
    }

    fn check_rules(&self) -> Result<(), BodyError> {
        match &self.rules {
            Ok(_) => Ok(()),
            Err(e) => Err(BodyError::Csv(e.clone())),
        }
    }

    /// Keeps free space in both csv_core buffers, within the record limit.
    fn make_room(&mut self) -> Result<(), BodyError> {
        if self.nout > self.limit || self.nend > self.limit {
            return Err(BodyError::Csv(format!(
                "record {} is larger than {} bytes",
                self.records + 1,
                self.limit
            )));
        }
        if self.nout == self.fields.len() {
            self.fields.resize(self.fields.len() * 2, 0);
        }
        if self.nend == self.ends.len() {
            self.ends.resize(self.ends.len() * 2, 0);
        }
        Ok(())
    }

    /// A record ended: write it (masked) to `out`.
    fn record(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.records += 1;
        let (nout, nend) = (
            std::mem::take(&mut self.nout),
            std::mem::take(&mut self.nend),
        );
        let data = &self.fields[..nout];
        let ends = &self.ends[..nend];
        let cells = ends.iter().scan(0, |start, &end| {
            let cell = data.get(*start..end).unwrap_or(&[]);
            *start = end;
            Some(cell)
        });
        let row = self.records;
        fn text(row: u64, i: usize, cell: &[u8]) -> Result<&str, BodyError> {
            std::str::from_utf8(cell).map_err(|_| {
                BodyError::Csv(format!("record {row} field {} is not valid UTF-8", i + 1))
            })
        }
        let Ok(rules) = &self.rules else {
            return self.check_rules();
        };
        let mut writer = RecordWriter::new(out);
        match &self.columns {
            None => {
                // The header decides which columns are masked, so a body
                // that is not really comma-separated (a `;`/tab export,
                // JSON labelled text/csv) must not pass as one wide column
                // of "unknown" data: refuse it.
                let first = cells.clone().next().unwrap_or(&[]);
                if nend <= 1 && first.iter().any(|b| matches!(b, b';' | b'\t' | b'|')) {
                    return Err(BodyError::Csv("header is not comma-separated".into()));
                }
                if matches!(first.trim_ascii_start().first(), Some(b'{' | b'[')) {
                    return Err(BodyError::Csv("body looks like JSON, not CSV".into()));
                }
                // Excel's `sep=` line: the real header is the next record,
                // which would be taken as data.
                if first.len() >= 4 && first[..4].eq_ignore_ascii_case(b"sep=") {
                    return Err(BodyError::Csv("a `sep=` line instead of a header".into()));
                }
                let mut columns = Vec::with_capacity(nend);
                let p = &*self.policy;
                for (i, cell) in cells.enumerate() {
                    let name = text(row, i, cell)?;
                    // UTF-16 without a byte-order mark is valid UTF-8 with
                    // a NUL in every other byte: no name would match.
                    if name.contains('\0') {
                        return Err(BodyError::Csv("a header name contains NUL".into()));
                    }
                    let column = rules.column(name, p.case_insensitive);
                    if column.action != Action::Drop {
                        // Through the detectors too, whatever their scope:
                        // an answer without its header row (`?header=false`,
                        // a page after the first) has a row of data here,
                        // and no column name looks like an address or a
                        // number (the columns are still chosen by the
                        // names as sent).
                        let scrubbed = scrub(&p.detectors, name);
                        if scrubbed != name {
                            self.masked += 1;
                        }
                        writer.cell(scrubbed.as_bytes());
                    }
                    columns.push(column);
                }
                self.columns = Some(columns);
            }
            Some(columns) => {
                if nend != columns.len() {
                    return Err(BodyError::Csv(format!(
                        "record {row} has {nend} fields, the header has {}",
                        columns.len()
                    )));
                }
                let p = &*self.policy;
                for ((i, cell), column) in cells.enumerate().zip(columns) {
                    let value = text(row, i, cell)?;
                    match &column.action {
                        Action::Drop => self.masked += 1,
                        Action::Empty => {
                            self.masked += 1;
                            writer.cell(b"");
                        }
                        Action::Mask(strategy) => {
                            self.masked += 1;
                            let masked =
                                mask_text(strategy, value, &p.hash_key).unwrap_or_default();
                            writer.cell(masked.as_bytes());
                        }
                        Action::Keep if column.scrub => {
                            let scrubbed = scrub(&p.detectors, value);
                            if scrubbed != value {
                                self.masked += 1;
                            }
                            writer.cell(scrubbed.as_bytes());
                        }
                        Action::Keep => writer.cell(cell),
                    }
                }
            }
        }
        writer.end();
        Ok(())
    }
}

/// Writes one record: comma-separated, RFC 4180 quoting, CRLF.
struct RecordWriter<'a> {
    out: &'a mut Vec<u8>,
    written: usize,
    last_empty: bool,
}

impl<'a> RecordWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        RecordWriter {
            out,
            written: 0,
            last_empty: false,
        }
    }

    fn cell(&mut self, cell: &[u8]) {
        if self.written > 0 {
            self.out.push(b',');
        }
        self.written += 1;
        self.last_empty = cell.is_empty();
        let needs_quotes = memchr::memchr3(b',', b'"', b'\n', cell).is_some()
            || memchr::memchr(b'\r', cell).is_some();
        if !needs_quotes {
            self.out.extend_from_slice(cell);
            return;
        }
        self.out.push(b'"');
        for part in cell.split_inclusive(|b| *b == b'"') {
            self.out.extend_from_slice(part);
            if part.last() == Some(&b'"') {
                self.out.push(b'"');
            }
        }
        self.out.push(b'"');
    }

    fn end(self) {
        // A record of one empty field would read back as an empty line
        // (which readers skip): quote it to keep the record.
        if self.written == 1 && self.last_empty {
            self.out.extend_from_slice(b"\"\"");
        }
        self.out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_segment_of_each_selector_form() {
        let key = |k: &str| Ok(Last::Key(k.into()));
        assert_eq!(last_segment("$..phone"), key("phone"));
        assert_eq!(last_segment("$.phone"), key("phone"));
        assert_eq!(last_segment("$[*].phone"), key("phone"));
        assert_eq!(last_segment("$.customer.phone"), key("phone"));
        assert_eq!(last_segment("$['phone number']"), key("phone number"));
        assert_eq!(last_segment("$..['it\\'s']"), key("it's"));
        assert_eq!(last_segment("$.a[\"b.c\"]"), key("b.c"));
        assert_eq!(last_segment("$.*"), Ok(Last::AnyColumn));
        assert_eq!(last_segment("$[*].*"), Ok(Last::AnyColumn));
        assert_eq!(last_segment("$.items[*]"), Ok(Last::Key("items".into())));
        assert_eq!(
            last_segment("$..phones[12]"),
            Ok(Last::Key("phones".into()))
        );
        assert_eq!(last_segment("$.*[0]"), Ok(Last::AnyColumn));
        assert_eq!(last_segment("$[*]"), Ok(Last::NoColumn));
        assert_eq!(last_segment("$[3]"), Ok(Last::NoColumn));
        assert_eq!(last_segment("$"), Ok(Last::NoColumn));
        for bad in ["phone", "$.", "$[", "$['x", "$[x]", "$x", "$.a[*"] {
            assert!(last_segment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unreadable_selector_fails_closed_at_first_byte() {
        let mut m = CsvMasker::new(policy(&[], Vec::new(), DetectScope::None));
        m.rules = Err("selector \"?\" cannot be applied to CSV columns".into());
        let mut out = Vec::new();
        assert!(matches!(m.push(b"a\n", &mut out), Err(BodyError::Csv(_))));
        assert!(matches!(m.finish(&mut out), Err(BodyError::Csv(_))));
        assert!(out.is_empty());
    }

    /// A body without its header row: its first row of data is taken as
    /// the header, and still goes through the detectors.
    #[test]
    fn a_first_row_of_data_taken_as_the_header_is_scrubbed() {
        use super::super::{Detector, Selector};
        for detect_in in [
            DetectScope::All,
            DetectScope::Fields(vec![Selector::parse("$..notes").unwrap()]),
        ] {
            let detectors = vec![Detector::Email, Detector::Phone];
            let mut m = CsvMasker::new(policy(&[("$..name", "redact")], detectors, detect_in));
            let mut out = Vec::new();
            m.push(
                b"c1,jane@example.com,+1 415 555 0100\r\nc2,bo@example.com,+1 415 555 0101\r\n",
                &mut out,
            )
            .unwrap();
            m.finish(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(
                !text.contains("jane@example.com") && !text.contains("555 0100"),
                "{text}"
            );
            assert!(text.starts_with("c1,"), "{text}");
        }
        // A real header is not changed by it.
        let mut m = CsvMasker::new(name_policy());
        let mut out = Vec::new();
        m.push(b"id,name,email\r\n", &mut out).unwrap();
        assert_eq!(out, b"id,name,email\r\n");
    }

    /// A policy with these field rules (selector, strategy), detectors
    /// and detector scope.
    fn policy(
        fields: &[(&str, &str)],
        detectors: Vec<super::super::Detector>,
        detect_in: DetectScope,
    ) -> Arc<Policy> {
        use super::super::{Selector, Strategy};
        Arc::new(Policy {
            name: "t".into(),
            fields: fields
                .iter()
                .map(|(sel, st)| (Selector::parse(sel).unwrap(), Strategy::parse(st).unwrap()))
                .collect(),
            detectors,
            detect_in,
            case_insensitive: false,
            hash_key: Vec::new(),
            limits: super::super::Limits {
                max_depth: 8,
                max_string_bytes: 1024,
            },
            compiled: Default::default(),
        })
    }

    fn name_policy() -> Arc<Policy> {
        policy(&[("$..name", "redact")], Vec::new(), DetectScope::None)
    }

    /// Pushes `body` in `chunk`-byte pieces; returns everything written
    /// and the first error.
    fn mask_in_chunks(body: &[u8], chunk: usize) -> (Vec<u8>, Result<(), BodyError>) {
        let mut m = CsvMasker::new(name_policy());
        let mut out = Vec::new();
        for piece in body.chunks(chunk) {
            if let Err(e) = m.push(piece, &mut out) {
                return (out, Err(e));
            }
        }
        let r = m.finish(&mut out);
        (out, r)
    }

    #[test]
    fn invalid_csv_is_refused_and_never_leaks_a_cell() {
        let bad: &[(&str, &[u8])] = &[
            // The reported leak: the quoted field runs to the end of the
            // body, a short record that carried the name unmasked.
            (
                "unterminated quote",
                b"id,tier,name\r\nc1,\"gold,Jane Canary\r\n",
            ),
            (
                "unterminated quote, later rows",
                b"id,tier,name\r\nc1,\"gold,Jane Canary\r\nc2,silver,Bo\r\n",
            ),
            (
                "unterminated header",
                b"\"id,tier,name\r\nc1,gold,Jane Canary\r\n",
            ),
            (
                "quote inside an unquoted field",
                b"id,tier,name\r\nc1,go\"ld,Jane Canary\r\n",
            ),
            (
                "quote after a space",
                b"id,tier,name\r\nc1, \"gold\",Jane Canary\r\n",
            ),
            (
                "text after the closing quote",
                b"id,tier,name\r\nc1,\"gold\"x,Jane Canary\r\n",
            ),
            ("short row", b"id,tier,name\r\nc1,Jane Canary\r\n"),
            ("long row", b"id,tier,name\r\nc1,gold,x,Jane Canary\r\n"),
            (
                "short last row, no line end",
                b"id,tier,name\r\nc1,gold,x\r\nJane Canary",
            ),
            // Excel's separator line: the header would be taken as data.
            ("sep= line", b"sep=,\r\nid,name\r\nc1,Jane Canary\r\n"),
            ("SEP= line", b"SEP=;\r\nid,name\r\nc1,Jane Canary\r\n"),
            // UTF-16 (little-endian, no byte-order mark).
            (
                "UTF-16 header",
                b"i\0d\0,\0n\0a\0m\0e\0\r\0\n\0c\x001\0,\0Jane\r\0\n\0",
            ),
        ];
        for (what, body) in bad {
            for chunk in [1, 2, 5, body.len()] {
                let (out, r) = mask_in_chunks(body, chunk);
                let e = r.expect_err(&format!("{what} (chunk {chunk}) was accepted"));
                assert_eq!(e.code(), "invalid_csv", "{what}");
                let text = String::from_utf8_lossy(&out);
                assert!(
                    !text.contains("Jane"),
                    "{what} (chunk {chunk}) leaked: {text}"
                );
            }
        }
        // Valid RFC 4180 that looks like the above still passes.
        let good: &[(&[u8], &str)] = &[
            (
                b"id,tier,name\r\nc1,\"gold,\"\"x\"\"\",Jane Canary\r\n",
                "id,tier,name\r\nc1,\"gold,\"\"x\"\"\",[REDACTED]\r\n",
            ),
            (
                b"\"id\",\"tier\",\"name\"\nc1,\"a\r\nb\",\"Jane\"",
                "id,tier,name\r\nc1,\"a\r\nb\",[REDACTED]\r\n",
            ),
            (
                b"id,tier,name\r\n\r\nc1,,\"\"\r\n",
                "id,tier,name\r\nc1,,[REDACTED]\r\n",
            ),
        ];
        for (body, want) in good {
            for chunk in [1, 3, body.len()] {
                let (out, r) = mask_in_chunks(body, chunk);
                assert!(r.is_ok(), "{:?}: {r:?}", String::from_utf8_lossy(body));
                assert_eq!(String::from_utf8_lossy(&out), *want);
            }
        }
    }

    #[test]
    fn writer_quotes_only_when_needed() {
        let mut out = Vec::new();
        let mut w = RecordWriter::new(&mut out);
        for c in [
            &b"plain"[..],
            b"a,b",
            b"say \"hi\"",
            b"two\nlines",
            b"cr\r",
            b" spaced ",
        ] {
            w.cell(c);
        }
        w.end();
        assert_eq!(
            out,
            b"plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\", spaced \r\n"
        );
        let mut out = Vec::new();
        let mut w = RecordWriter::new(&mut out);
        w.cell(b"");
        w.end();
        assert_eq!(out, b"\"\"\r\n");
    }
}
