//! Logging setup: JSON lines on stdout (one object per event), filtered by
//! `RUST_LOG` (default `info`). Access lines use target `rolegate::access`,
//! refusals caused by faults `rolegate::decision`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `json: false` gives human-readable lines
/// (used by the demo).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
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
        use std::io::Write;
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
