//! Hot reload: the config file (and its rules and the files they name)
//! turned into a new [`Runtime`] exactly as `rolegate check` does, then
//! swapped in whole (`Gateway::swap`), or not at all.
//!
//! Owns the reload lock (one reload at a time, whatever triggered it), the
//! status the admin API shows (`GET /status`: the policy in force and the
//! last attempt with its errors) and the file watcher. It does not touch
//! requests or connections: each request loads the runtime once, when it
//! starts, and keeps it to its end; a connection reads its listener's
//! settings (TLS certificates among them) when it is accepted. So a request
//! is decided wholly by the old policy or wholly by the new one, open
//! connections and websockets carry on, and sessions (in the store, which
//! a reload never replaces) survive.
//!
//! What a running process cannot take from a new config (addresses it
//! listens on, the session store, the audit log file) is compared here: a
//! reload that changes any of it is refused, with the reason, and the old
//! runtime stays in force.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::{self, Diagnostic, Runtime, Sources};
use crate::proxy::Gateway;
use crate::session::{StoreKind, now_ms};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The configuration loaded when the gateway started.
    Start,
    /// SIGHUP.
    Signal,
    /// The file watcher saw a watched file change.
    Watch,
    /// `POST /reload` on the admin API.
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Signal => "sighup",
            Trigger::Watch => "watch",
            Trigger::Admin => "admin",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The new runtime is in force.
    Reloaded,
    /// The new configuration has errors; the old one stays in force.
    Failed,
    /// The new configuration changes what only a restart can change; the
    /// old one stays in force.
    RestartRequired,
    /// There is no configuration file to read again (the built-in demo).
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Reloaded => "reloaded",
            Outcome::Failed => "failed",
            Outcome::RestartRequired => "restart_required",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One reload attempt, as `GET /status` and `POST /reload` show it.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at_ms: u64,
    pub trigger: Trigger,
    pub result: Outcome,
    /// The new policy's hash (reloaded only).
    pub policy_hash: Option<String>,
    /// Every error, or every reason a restart is needed.
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Attempt {
    pub fn to_json(&self) -> Value {
        json!({
            "at_ms": self.at_ms,
            "trigger": self.trigger.as_str(),
            "result": self.result.as_str(),
            "policy_hash": self.policy_hash,
            "errors": self.errors.iter().map(diag_json).collect::<Vec<_>>(),
            "warnings": self.warnings.iter().map(diag_json).collect::<Vec<_>>(),
        })
    }
}

fn diag_json(d: &Diagnostic) -> Value {
    json!({ "file": d.file, "line": d.line, "message": d.message })
}

/// The policy in force and the reload history the admin API shows.
struct State {
    /// The config file read again on reload; `None`: nothing to reload.
    path: Option<PathBuf>,
    sources: Sources,
    loaded_at_ms: u64,
    loaded_by: Trigger,
    last: Option<Attempt>,
    /// The watched files as they were when the runtime in force (or the
    /// last failed attempt) was read; the watcher reloads when they differ.
    seen: Fingerprint,
}

/// Reloads, one at a time, and remembers how they went.
pub struct Reloader {
    /// Held for a whole reload: a second trigger waits, then reads the
    /// files again (so the last change always wins).
    lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

impl Default for Reloader {
    fn default() -> Self {
        Reloader {
            lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                path: None,
                sources: Sources::default(),
                loaded_at_ms: now_ms(),
                loaded_by: Trigger::Start,
                last: None,
                seen: Fingerprint::default(),
            }),
        }
    }
}

impl Reloader {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the starting runtime was built from: `path` is read
    /// again on reload (`None`: the runtime has no file, reload is
    /// unavailable).
    pub fn configure(&self, path: Option<PathBuf>, sources: Sources) {
        let seen = fingerprint(&sources);
        let mut s = self.state();
        s.path = path;
        s.sources = sources;
        s.seen = seen;
        s.loaded_at_ms = now_ms();
    }

    /// Reads the configuration again and, when it is valid and changes
    /// nothing that needs a restart, swaps it in. Logs every error.
    pub async fn reload(&self, gw: &Gateway, trigger: Trigger) -> Attempt {
        let _one_at_a_time = self.lock.lock().await;
        self.reload_locked(gw, trigger).await
    }

    /// The watcher's reload: only while `reload.watch` is on in the
    /// runtime in force, decided under the reload lock (a reload that just
    /// turned the watcher off wins).
    async fn reload_watched(&self, gw: &Gateway) {
        let _one_at_a_time = self.lock.lock().await;
        if gw.runtime().reload.watch {
            self.reload_locked(gw, Trigger::Watch).await;
        }
    }

    async fn reload_locked(&self, gw: &Gateway, trigger: Trigger) -> Attempt {
        self.reload_locked_with(gw, trigger, config::load).await
    }

    /// [`Reloader::reload`] with `load` reading the configuration (tests:
    /// a file changed while a reload reads them).
    #[doc(hidden)]
    pub async fn reload_with(
        &self,
        gw: &Gateway,
        trigger: Trigger,
        load: impl FnOnce(&Path) -> Result<config::Loaded, Vec<Diagnostic>> + Send + 'static,
    ) -> Attempt {
        let _one_at_a_time = self.lock.lock().await;
        self.reload_locked_with(gw, trigger, load).await
    }

    async fn reload_locked_with(
        &self,
        gw: &Gateway,
        trigger: Trigger,
        load: impl FnOnce(&Path) -> Result<config::Loaded, Vec<Diagnostic>> + Send + 'static,
    ) -> Attempt {
        let (path, old_sources) = {
            let s = self.state();
            (s.path.clone(), s.sources.clone())
        };
        let Some(path) = path else {
            return Attempt {
                at_ms: now_ms(),
                trigger,
                result: Outcome::Unavailable,
                policy_hash: None,
                errors: vec![note(
                    "",
                    "this gateway runs on an embedded configuration: there is no file to reload",
                )],
                warnings: Vec::new(),
            };
        };
        // Taken before the files are read: a change made while they are
        // being read is seen by the next look of the watcher.
        let before = fingerprint(&old_sources);
        let load_path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&load_path))
            .await
            .unwrap_or_else(|e| Err(vec![note("", &format!("the reload task failed: {e}"))]));
        let mut attempt = Attempt {
            at_ms: now_ms(),
            trigger,
            result: Outcome::Failed,
            policy_hash: None,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut seen = before;
        match loaded {
            Err(diags) => {
                attempt.warnings = diags
                    .iter()
                    .filter(|d| d.severity == config::Severity::Warning)
                    .cloned()
                    .collect();
                attempt.errors = diags
                    .into_iter()
                    .filter(|d| d.severity == config::Severity::Error)
                    .collect();
            }
            Ok(loaded) => {
                let reasons = restart_only_changes(&gw.runtime(), &loaded.runtime);
                attempt.warnings = loaded.warnings;
                if reasons.is_empty() {
                    attempt
                        .warnings
                        .extend(orphaned_owner_choices(&loaded.runtime, gw.store()));
                    attempt.warnings.extend(loose_secrets(&loaded.sources));
                    attempt.result = Outcome::Reloaded;
                    attempt.policy_hash = Some(loaded.sources.policy_hash.clone());
                    let policy_changed = loaded.sources.policy_hash != old_sources.policy_hash;
                    gw.swap_policy(loaded.runtime, policy_changed);
                    // Files the new configuration watches: as they were
                    // before the load (never stat'ed after it, which would
                    // take a change written meanwhile as seen); one not
                    // watched before counts as changed, for one more
                    // (idempotent) reload.
                    if loaded.sources != old_sources {
                        seen = seen.rebased(watched(&loaded.sources));
                    }
                    let mut s = self.state();
                    s.sources = loaded.sources;
                    s.loaded_at_ms = attempt.at_ms;
                    s.loaded_by = trigger;
                } else {
                    attempt.result = Outcome::RestartRequired;
                    attempt.errors = reasons
                        .into_iter()
                        .map(|r| note(&path.display().to_string(), &r))
                        .collect();
                }
            }
        }
        log(&path, &attempt);
        if attempt.result != Outcome::Reloaded {
            // Log rotation reloads after renaming the audit log: a config
            // that does not load then must not leave records going to the
            // renamed (soon compressed and deleted) file.
            gw.reopen_audit();
        }
        let mut s = self.state();
        s.seen = seen;
        s.last = Some(attempt.clone());
        attempt
    }

    /// `GET /status`.
    pub fn status(&self, watching: bool) -> Value {
        let s = self.state();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": s.path.as_ref().map(|p| p.display().to_string()),
            "policy": {
                "hash": s.sources.policy_hash,
                "loaded_at_ms": s.loaded_at_ms,
                "trigger": s.loaded_by.as_str(),
            },
            "watch": watching && s.path.is_some(),
            "last_reload": s.last.as_ref().map(Attempt::to_json),
        })
    }

    /// The last attempt found files that do not load (not one that
    /// needs a restart: trying again changes nothing until the files do).
    fn last_failed(&self) -> bool {
        self.state()
            .last
            .as_ref()
            .is_some_and(|a| a.result == Outcome::Failed)
    }

    /// The watched files changed since they were last read.
    fn changed(&self) -> bool {
        let (sources, seen) = {
            let s = self.state();
            if s.path.is_none() {
                return false;
            }
            (s.sources.clone(), s.seen.clone())
        };
        fingerprint(&sources) != seen
    }
}

/// Owner-chosen columns stored for a mask the runtime has no
/// `owner_columns` mask of (renamed, or removed): those columns are no
/// longer masked. A warning at start and on every reload; the choices
/// stay stored, and apply again if the mask comes back under its name.
pub fn orphaned_owner_choices(rt: &Runtime, store: &crate::session::Store) -> Vec<Diagnostic> {
    const NS: &str = "mask.";
    let mut orphans: Vec<String> = store
        .shared()
        .namespaces(NS, now_ms())
        .into_iter()
        .filter_map(|ns| ns.strip_prefix(NS).map(str::to_string))
        .filter(|mask| !rt.owner_masks.contains_key(mask))
        .collect();
    orphans.sort();
    orphans
        .into_iter()
        .map(|mask| Diagnostic {
            severity: config::Severity::Warning,
            file: format!("masks.{mask}"),
            line: 0,
            message: format!(
                "owner-chosen columns are stored for mask {mask}, which is not configured with owner_columns: they are no longer masked (a renamed mask keeps its choices only under its old name)"
            ),
        })
        .collect()
}

/// Secret files (private keys, HMAC secrets, the admin token, the masking
/// hash key) that any user may read: a warning at start and
/// on every reload, not an error (`check` does not ask: files written for
/// a test or a build are rarely owner-only, and the service user is what
/// matters).
pub fn loose_secrets(sources: &Sources) -> Vec<Diagnostic> {
    sources
        .loose_secrets()
        .into_iter()
        .map(|(path, mode)| Diagnostic {
            severity: config::Severity::Warning,
            file: path.display().to_string(),
            line: 0,
            message: format!(
                "holds a secret and any user may read it (mode {mode:03o}): make it readable by its owner and the service's group only (chmod 640 or 600)"
            ),
        })
        .collect()
}

fn note(file: &str, message: &str) -> Diagnostic {
    Diagnostic {
        severity: config::Severity::Error,
        file: file.to_string(),
        line: 0,
        message: message.to_string(),
    }
}

fn log(path: &Path, a: &Attempt) {
    let trigger = a.trigger.as_str();
    match a.result {
        Outcome::Reloaded => tracing::info!(
            target: "rolegate::reload",
            config = %path.display(),
            trigger,
            policy_hash = a.policy_hash.as_deref().unwrap_or(""),
            warnings = a.warnings.len(),
            "configuration reloaded"
        ),
        _ => {
            for d in &a.errors {
                tracing::error!(
                    target: "rolegate::reload",
                    file = %d.file,
                    line = d.line,
                    error = %d.message,
                    "reload: {d}"
                );
            }
            tracing::error!(
                target: "rolegate::reload",
                config = %path.display(),
                trigger,
                result = a.result.as_str(),
                errors = a.errors.len(),
                "configuration NOT reloaded; the previous one stays in force"
            );
        }
    }
    for d in &a.warnings {
        tracing::warn!(target: "rolegate::reload", file = %d.file, line = d.line, "reload: {d}");
    }
}

/// What a new configuration changes that a running gateway cannot take
/// (documented in the README under "Hot reload").
pub fn restart_only_changes(old: &Runtime, new: &Runtime) -> Vec<String> {
    let mut out = Vec::new();
    let addrs = |rt: &Runtime| {
        rt.listen
            .listeners
            .iter()
            .map(|l| l.addr)
            .collect::<Vec<_>>()
    };
    if addrs(old) != addrs(new) {
        out.push(format!(
            "the public listener addresses changed ({:?} → {:?}); restart to listen elsewhere",
            addrs(old),
            addrs(new)
        ));
    }
    let admin = |rt: &Runtime| rt.admin.as_ref().map(|a| a.addr);
    if admin(old) != admin(new) {
        out.push(format!(
            "the admin listener changed ({:?} → {:?}); restart to apply",
            admin(old),
            admin(new)
        ));
    }
    let (o, n) = (&old.sessions, &new.sessions);
    let store_same = match (&o.store, &n.store) {
        (StoreKind::Embedded { state_dir: a }, StoreKind::Embedded { state_dir: b }) => a == b,
        (StoreKind::Redis { url: a }, StoreKind::Redis { url: b }) => a == b,
        _ => false,
    };
    if !store_same {
        out.push("sessions.store changed; restart to open the other store".into());
    }
    if o.flush_interval != n.flush_interval || o.retention != n.retention {
        out.push(
            "sessions.flush_interval or sessions.retention changed; the store applies them at start"
                .into(),
        );
    }
    if matches!(n.store, StoreKind::Redis { .. }) && o.max_lifetime != n.max_lifetime {
        out.push(
            "sessions.max_lifetime changed with the Redis store, which applies it at start".into(),
        );
    }
    if old.masking.audit_log != new.masking.audit_log {
        out.push("masking.audit_log changed; restart to write the audit log elsewhere".into());
    }
    out
}

/// The size, modification time and inode of every watched file (and the
/// list of rules files under the rules directory), in a fixed order.
/// Metadata only: nothing is read, so a look costs a few `stat` calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fingerprint(Vec<(PathBuf, Option<Stat>)>);

/// Size, modification time, inode.
type Stat = (u64, SystemTime, u64);

fn stat(p: &Path) -> Option<Stat> {
    // `metadata` follows symlinks: a swapped link target (Kubernetes
    // ConfigMaps, `ln -sf`) is a change of the file.
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.len(), m.modified().ok()?, ino))
}

/// Every file a configuration's reload watches, sorted.
fn watched(s: &Sources) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = s.files.clone();
    if let Some(dir) = &s.rules_dir {
        files.extend(config::rules_files(dir));
    }
    files.sort();
    files.dedup();
    files
}

fn fingerprint(s: &Sources) -> Fingerprint {
    Fingerprint(
        watched(s)
            .into_iter()
            .map(|p| {
                let st = stat(&p);
                (p, st)
            })
            .collect(),
    )
}

impl Fingerprint {
    /// This fingerprint's stats for `files`; a file it has none of gets
    /// one no file has (it reads as changed at the next look).
    fn rebased(&self, files: Vec<PathBuf>) -> Fingerprint {
        const UNSEEN: Stat = (u64::MAX, SystemTime::UNIX_EPOCH, u64::MAX);
        Fingerprint(
            files
                .into_iter()
                .map(|p| {
                    let st = match self.0.binary_search_by(|(q, _)| q.cmp(&p)) {
                        Ok(i) => self.0[i].1,
                        Err(_) => Some(UNSEEN),
                    };
                    (p, st)
                })
                .collect(),
        )
    }
}

/// The file watcher: every `reload.watch_interval` it looks at the watched
/// files' metadata; a change that has settled (the same on two looks in a
/// row, so a file written in pieces is read whole) triggers a reload.
///
/// A reload that failed (by any trigger) is tried again after
/// [`RETRY_FIRST`], then twice as long each time up to [`RETRY_MOST`],
/// until one loads or the files change: what it failed on may be a file
/// the configuration in force does not name, hence does not watch (a new
/// certificate or rules file written after the config that names it).
///
/// Polling rather than inotify (the `notify` crate): it sees a file
/// replaced by rename or behind a swapped symlink, on any file system, with
/// the same few lines of code, and a handful of `stat` calls a second cost
/// nothing. Runs until the gateway is dropped; off while `reload.watch` is
/// false (read from the runtime in force at every look).
pub async fn watch(gw: std::sync::Weak<Gateway>) {
    // The next retry of a failed reload, and the wait after it.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let interval = match gw.upgrade() {
            Some(g) => g.runtime().reload.watch_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(g) = gw.upgrade() else { return };
        if !g.runtime().reload.watch {
            continue;
        }
        let r = g.reloader();
        retry = match (r.last_failed(), retry) {
            (false, _) => None,
            (true, None) => Some((tokio::time::Instant::now() + RETRY_FIRST, RETRY_FIRST)),
            (true, kept) => kept,
        };
        if !blocking(&g, |g| g.reloader().changed()).await {
            if let Some((at, wait)) = retry
                && tokio::time::Instant::now() >= at
            {
                let wait = (wait * 2).min(RETRY_MOST);
                retry = Some((tokio::time::Instant::now() + wait, wait));
                r.reload_watched(&g).await;
            }
            continue;
        }
        // Settled: the same again after a short pause.
        let first = {
            let s = r.state();
            s.sources.clone()
        };
        let a = fingerprint_blocking(first.clone()).await;
        tokio::time::sleep(interval.min(Duration::from_millis(250))).await;
        if fingerprint_blocking(first).await != a {
            continue;
        }
        r.reload_watched(&g).await;
    }
}

/// The first retry of a failed reload comes this long after it.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Retries of a failed reload come at least this often.
pub const RETRY_MOST: Duration = Duration::from_secs(30);

async fn blocking(g: &std::sync::Arc<Gateway>, f: fn(&Gateway) -> bool) -> bool {
    let g = g.clone();
    tokio::task::spawn_blocking(move || f(&g))
        .await
        .unwrap_or(false)
}

async fn fingerprint_blocking(s: Sources) -> Fingerprint {
    tokio::task::spawn_blocking(move || fingerprint(&s))
        .await
        .unwrap_or_default()
}
