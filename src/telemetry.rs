//! Logging setup: JSON lines on stdout (one object per event), filtered by
//! `RUST_LOG` (default `info`). Access lines use target `rolegate::access`,
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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

/// Log lines on their way to stdout, written in batches as nginx's
/// `access_log ... buffer= flush=` does: a line of level INFO or below is
/// appended to a shared buffer, which is written out when it holds
/// [`LogBuffer::LIMIT`] bytes, every [`LogBuffer::EVERY`] (a background
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
    out: Mutex<std::io::Stdout>,
}

impl LogBuffer {
    const LIMIT: usize = 64 * 1024;
    const EVERY: Duration = Duration::from_millis(200);

    /// The process's buffer, and its flushing thread, made on first use.
    pub fn global() -> &'static LogBuffer {
        BUFFER.get_or_init(|| {
            let b: &'static LogBuffer = Box::leak(Box::new(LogBuffer {
                lines: Mutex::new(Vec::with_capacity(Self::LIMIT)),
                out: Mutex::new(std::io::stdout()),
            }));
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

    /// Appends `line`; writes the buffer out once it is full.
    fn append(&self, line: &[u8]) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.extend_from_slice(line);
        if lines.len() >= Self::LIMIT {
            self.drain(lines, &[]);
        }
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
        let file = guard.insert(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        file.write_all(&line)
    }
}
