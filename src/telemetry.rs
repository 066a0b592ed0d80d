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
