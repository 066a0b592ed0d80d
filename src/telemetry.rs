//! Logging setup: JSON lines on stdout (one object per event), filtered by
//! `RUST_LOG` (default `info`; audit lines, target `rolegate::audit`, stay
//! on unless it names them). Access lines use target `rolegate::access`,
//! refusals caused by faults `rolegate::decision`.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber; `json: false` gives human-readable lines
/// (used by the demo). Lines go through [`LogBuffer`]; call [`flush`]
/// before the process exits.
pub fn init(json: bool) {
    JSON.store(json, std::sync::atomic::Ordering::Relaxed);
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Audit lines (admin actions, logouts) stay on when `RUST_LOG` lowers
    // the level (`warn`), unless it names their target itself.
    let names_audit = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rolegate::audit"));
    if !names_audit && let Ok(d) = "rolegate::audit=info".parse() {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogBuffer::global());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// Writes out every buffered log line (at shutdown).
pub fn flush() {
    if let Some(b) = BUFFER.get() {
        b.write_out(&[]);
    }
}

static BUFFER: OnceLock<&'static LogBuffer> = OnceLock::new();

/// JSON lines are on (`init(true)`): access lines are written by hand.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One request's access line (target `rolegate::access`).
pub struct Access<'a> {
    pub request_id: &'a str,
    pub client_request_id: &'a str,
    pub peer: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub subject: &'a str,
    pub status: u16,
    pub error: &'a str,
    pub detail: &'a str,
    pub reason: &'a str,
    pub duration_us: u64,
    /// When the request ended (the line's timestamp).
    pub at: std::time::SystemTime,
}

/// Logs one access line at INFO, target `rolegate::access`, if `RUST_LOG`
/// lets it through. With JSON lines on, the line is formatted here, the
/// same object tracing-subscriber's JSON formatter makes of the event
/// (timestamp, level, the fields in order, target), straight into the
/// buffer: through the generic formatter (a visitor and a `Debug`
/// round-trip per field) the line was ~5 % of a plain request's CPU.
pub fn access(a: &Access<'_>) {
    if !tracing::enabled!(target: "rolegate::access", tracing::Level::INFO) {
        return;
    }
    if !JSON.load(std::sync::atomic::Ordering::Relaxed) {
        access_event(a);
        return;
    }
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        access_json(line, a, a.at);
        LogBuffer::global().append(line);
    });
}

/// The access line as a tracing event (the human-readable format, and
/// the reference the JSON line is tested against).
fn access_event(a: &Access<'_>) {
    tracing::info!(
        target: "rolegate::access",
        request_id = %a.request_id,
        client_request_id = a.client_request_id,
        peer = %a.peer,
        method = %a.method,
        path = %a.path,
        route = a.route,
        subject = a.subject,
        status = a.status,
        error = a.error,
        detail = a.detail,
        reason = a.reason,
        duration_us = a.duration_us,
    );
}

/// `a` as one JSON line, stamped `at`.
fn access_json(out: &mut Vec<u8>, a: &Access<'_>, at: std::time::SystemTime) {
    // Each string value is written between the static text around it,
    // which carries its quotes: `…","request_id":"` + value + `","…`, one
    // copy per piece rather than one per quote, key and value. Written
    // field by field (not looped over a table) so that each static
    // text's length is known where it is copied.
    out.reserve(256 + a.path.len() + a.reason.len() + a.detail.len());
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, at);
    json_field(
        out,
        b"\",\"level\":\"INFO\",\"request_id\":\"",
        a.request_id,
    );
    json_field(out, b"\",\"client_request_id\":\"", a.client_request_id);
    json_field(out, b"\",\"peer\":\"", a.peer);
    json_field(out, b"\",\"method\":\"", a.method);
    json_field(out, b"\",\"path\":\"", a.path);
    json_field(out, b"\",\"route\":\"", a.route);
    json_field(out, b"\",\"subject\":\"", a.subject);
    out.extend_from_slice(b"\",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(a.status).as_bytes());
    json_field(out, b",\"error\":\"", a.error);
    json_field(out, b"\",\"detail\":\"", a.detail);
    json_field(out, b"\",\"reason\":\"", a.reason);
    out.extend_from_slice(b"\",\"duration_us\":");
    out.extend_from_slice(itoa::Buffer::new().format(a.duration_us).as_bytes());
    out.extend_from_slice(b",\"target\":\"rolegate::access\"}\n");
}

/// `text`, then `v` as the inside of a JSON string (its quotes are in the
/// texts around it).
#[inline(always)]
fn json_field(out: &mut Vec<u8>, text: &[u8], v: &str) {
    out.extend_from_slice(text);
    if plain_json(v.as_bytes()) {
        // Nothing JSON escapes (most values): copied as it is.
        out.extend_from_slice(v.as_bytes());
    } else {
        // Escaping a `str` into a `Vec` cannot fail; the quotes it adds
        // are taken off again.
        let start = out.len();
        let _ = serde_json::to_writer(&mut *out, v);
        out.remove(start);
        out.pop();
    }
}

/// Whether JSON escapes none of these bytes (no control character, `"`
/// or `\`): most values, tested eight bytes at a time.
fn plain_json(v: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of `w` is zero (exact as a yes/no, the usual bit trick).
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS != 0;
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
        // Some byte below 0x20 (exact for a bound up to 0x80), `"`, `\`.
        if w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0
            || zero(w ^ (ONES * u64::from(b'"')))
            || zero(w ^ (ONES * u64::from(b'\\')))
        {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `at` as humantime's `format_rfc3339_micros` writes it
/// (`2026-12-06T04:05:06.123456Z`); the part up to the seconds is made
/// once per second (per thread), the microseconds by hand.
fn timestamp(out: &mut Vec<u8>, at: std::time::SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, [u8; 19])> =
            const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != secs {
            let whole = humantime::format_rfc3339_seconds(at).to_string();
            prefix.copy_from_slice(&whole.as_bytes()[..19]);
            *second = secs;
        }
        out.extend_from_slice(prefix);
    });
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut n = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Log lines on their way to stdout, written in batches as nginx's
/// `access_log ... buffer= flush=` does: a line of level INFO or below is
/// appended to a shared buffer, which is written out when the next line
/// would take it over [`LogBuffer::LIMIT`] bytes, every [`LogBuffer::EVERY`] (a background
/// thread), at a WARN or ERROR line (written at once, after what is
/// buffered, so order is kept and problems show without delay) and at
/// shutdown. One `write` per batch instead of one per request line; a
/// crash loses at most one interval of INFO lines.
///
/// Written by hand: tracing-appender's non-blocking writer moves each line
/// to a thread through a channel (an allocation and often a wake-up per
/// line), which costs a single-core gateway more than the write it saves.
pub struct LogBuffer {
    lines: Mutex<Vec<u8>>,
    /// Held while writing out, taken before `lines` is released, so
    /// batches reach stdout in the order their lines were logged.
    out: Mutex<Box<dyn Write + Send>>,
}

impl LogBuffer {
    const LIMIT: usize = 64 * 1024;
    const EVERY: Duration = Duration::from_millis(200);

    fn new(out: Box<dyn Write + Send>) -> LogBuffer {
        LogBuffer {
            lines: Mutex::new(Vec::with_capacity(Self::LIMIT)),
            out: Mutex::new(out),
        }
    }

    /// The process's buffer, and its flushing thread, made on first use.
    pub fn global() -> &'static LogBuffer {
        BUFFER.get_or_init(|| {
            let b: &'static LogBuffer =
                Box::leak(Box::new(LogBuffer::new(Box::new(std::io::stdout()))));
            let _ = std::thread::Builder::new()
                .name("rolegate-log".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Self::EVERY);
                        b.write_out(&[]);
                    }
                });
            b
        })
    }

    /// Appends `line`; writes the buffer out first when the line would not
    /// fit (a full buffer is never grown and copied to take one more line).
    fn append(&self, line: &[u8]) {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() + line.len() > Self::LIMIT {
            self.drain(lines, line);
            return;
        }
        let mut lines = lines;
        lines.extend_from_slice(line);
    }

    /// Writes out what is buffered, then `now`.
    fn write_out(&self, now: &[u8]) {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.is_empty() && now.is_empty() {
            return;
        }
        self.drain(lines, now);
    }

    fn drain(&self, mut lines: std::sync::MutexGuard<'_, Vec<u8>>, now: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let batch = std::mem::replace(&mut *lines, Vec::with_capacity(Self::LIMIT));
        drop(lines);
        // Nowhere to report a failed write to: the log is the report.
        let _ = out.write_all(&batch);
        let _ = out.write_all(now);
        let _ = out.flush();
    }
}

/// One log line's writer: buffered (INFO and below) or written at once.
pub struct LineWriter {
    buffer: &'static LogBuffer,
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.urgent {
            self.buffer.write_out(b);
        } else {
            self.buffer.append(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for &'static LogBuffer {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            buffer: self,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter {
            buffer: self,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// The JSON-lines audit log of unmasked PII access (`masking.audit_log`).
///
/// One line per response that carried unmasked PII to a principal holding
/// the mask's `unmask_with`: who, which route, which record, when. Opened
/// lazily (created with its directory); a failed write is reported to the
/// caller, which refuses the unmasked answer rather than leave no trace.
pub struct AuditLog {
    path: std::path::PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
}

/// One audit record.
#[derive(serde::Serialize)]
pub struct UnmaskedAccess<'a> {
    pub at_ms: u64,
    pub event: &'static str,
    pub user: &'a str,
    pub issuer: &'a str,
    pub session: Option<&'a str>,
    pub route: &'a str,
    pub mask: &'a str,
    pub record: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// The gateway's own, unique id of the request.
    pub request_id: &'a str,
    /// The client's `X-Request-Id`, if it sent a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<&'a str>,
}

impl AuditLog {
    pub fn new(path: std::path::PathBuf) -> Self {
        AuditLog {
            path,
            file: std::sync::Mutex::new(None),
        }
    }

    /// Closes the file; the next record opens the path again (after a
    /// rotation, the new file).
    pub fn reopen(&self) {
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one record (one `write` call, so lines never interleave).
    pub fn write(&self, rec: &UnmaskedAccess<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = guard.as_mut() {
            return file.write_all(&line);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Who saw which unmasked record: owner-only from its creation on.
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let file = guard.insert(opts.open(&self.path)?);
        file.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Each `write` the buffer makes, apart.
    #[derive(Clone, Default)]
    struct Writes(std::sync::Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if !b.is_empty() {
                self.0.lock().unwrap().push(b.to_vec());
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batches_keep_the_order_and_stay_within_the_limit() {
        let writes = Writes::default();
        let buffer = LogBuffer::new(Box::new(writes.clone()));
        let mut sent = Vec::new();
        for i in 0..2_000usize {
            // Lines of 40 to ~400 bytes, a 70 KB one (over the limit) among them.
            let len = if i == 777 {
                70_000
            } else {
                40 + (i * 37) % 360
            };
            let mut line = vec![b'a' + (i % 26) as u8; len];
            line.push(b'\n');
            buffer.append(&line);
            sent.extend_from_slice(&line);
            if i == 1_500 {
                // An urgent line: after what is buffered.
                buffer.write_out(b"urgent\n");
                sent.extend_from_slice(b"urgent\n");
            }
        }
        buffer.write_out(&[]);
        let writes = writes.0.lock().unwrap();
        assert!(writes.len() > 3, "{} writes", writes.len());
        assert_eq!(writes.concat(), sent, "lines lost or out of order");
        // A batch over the limit is one the buffer grew to take (a copy
        // of everything buffered); only the one line over it alone is.
        for w in writes.iter() {
            assert!(
                w.len() <= LogBuffer::LIMIT || w.len() == 70_001,
                "a write of {} bytes",
                w.len()
            );
        }
    }

    proptest::proptest! {
        /// The eight-bytes-at-a-time test says what the byte rule says,
        /// wherever in a value the byte that needs escaping stands.
        #[test]
        fn plain_values_are_told_as_the_byte_rule_tells_them(
            v in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(vec![0x1f, 0x20, b'"', b'\\', 0x7f, 0x80, 0xa2, 0xdc, b'a']),
                ],
                0..40,
            ),
        ) {
            let rule = v.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
            proptest::prop_assert_eq!(plain_json(&v), rule);
        }
    }

    #[test]
    fn timestamps_are_humantimes_to_the_microsecond() {
        let base = std::time::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for micros in [0, 7, 123_456, 999_999] {
            for extra in [0, 1, 86_400] {
                let at = base + Duration::from_secs(extra) + Duration::from_micros(micros);
                let mut ours = Vec::new();
                timestamp(&mut ours, at);
                let theirs = humantime::format_rfc3339_micros(at).to_string();
                assert_eq!(String::from_utf8(ours).unwrap(), theirs);
            }
        }
    }

    /// The hand-written access line is the object tracing-subscriber's JSON
    /// formatter (as `init(true)` sets it up) makes of the same event: the
    /// same keys in the same order, the same values, escaping included.
    #[test]
    fn access_line_matches_the_json_formatter() {
        let a = Access {
            request_id: "0a1b2c3d-7",
            client_request_id: "",
            peer: "127.0.0.1:40000",
            method: "GET",
            path: "/api/customers/\"q\"\\\u{1}é",
            route: "profile",
            subject: "agent-7",
            status: 403,
            error: "forbidden",
            detail: "missing_capability",
            reason: "needs customer.profile.view",
            duration_us: 1234,
            at: std::time::SystemTime::now(),
        };
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || access_event(&a));
        let theirs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let mut ours = Vec::new();
        access_json(&mut ours, &a, std::time::SystemTime::now());
        let ours = String::from_utf8(ours).unwrap();
        assert!(ours.ends_with('\n') && theirs.ends_with('\n'));
        assert_eq!(ours.matches('\n').count(), 1, "one line: {ours}");
        // Everything but the timestamp's digits is the same text.
        let cut = |s: &str| s[s.find("\",\"level\"").unwrap()..].to_string();
        assert_eq!(cut(&ours), cut(&theirs));
        let ts = |s: &str| {
            let v: serde_json::Value = serde_json::from_str(s).unwrap();
            v["timestamp"].as_str().unwrap().to_string()
        };
        let (o, t) = (ts(&ours), ts(&theirs));
        assert_eq!(o.len(), t.len(), "{o} vs {t}");
        assert!(humantime::parse_rfc3339(&o).is_ok(), "{o}");
    }
}
