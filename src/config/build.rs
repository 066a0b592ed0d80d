//! `FileConfig` + rules files → [`Runtime`], or every error found.
//!
//! Order: parse all files (main config, then rules files sorted by path)
//! → merge roles/profiles/routes (a name defined twice is an error at both
//! places) → compile the policy → compile routes and the router → load
//! issuers and keys → upstreams. Every step keeps going after an error so
//! that `check` can print all of them; only a clean result becomes a
//! `Runtime`. Warnings never block loading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_saphyr::Spanned;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::file::{
    FileBalance, FileClientCert, FileConfig, FileListen, FileListener, FileRedirect, FileRequire,
    FileRoute, FileRules, FileTls, FileUpstream,
};
use super::{AdminSettings, ForwardSettings, ListenSettings, Route, Runtime, Upstream};
use super::{ClientCertRule, Listener, Rate, RateLimits, Redirect, ReloadSettings};
use super::{
    MaskingSettings, OwnerColumns, PullSource, PushSource, RelationSource, RouteMask,
    RouteOwnerColumns,
};
use crate::auth::keys::KeySet;
use crate::auth::{AuthSettings, Authenticator, ClaimNames, DevSecret, Issuer};
use crate::mask;
use crate::policy::{
    IssueSubject, LevelLadder, Policy, PolicySpec, ProfileDef, Requirement, RoleDef, RoutePolicy,
    Severity as PSeverity,
};
use crate::proxy::pool::{Balance, Check, Health, Pool, Server};
use crate::proxy::tls::{self, ClientAuth};
use crate::proxy::upstream::{ClientSettings, Roots, TlsSettings};
use crate::route::{CanonOptions, IssueKind, RouteSpec, Router};
use crate::session::{OnStoreError, SessionSettings, StoreKind};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding of `build`, with the place it refers to.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line > 0 {
            write!(f, "{}:{}: {sev}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {sev}: {}", self.file, self.message)
        }
    }
}

/// A successfully built runtime and the warnings found on the way.
pub struct Loaded {
    pub runtime: Runtime,
    pub warnings: Vec<Diagnostic>,
    /// What it was built from (hot reload watches these).
    pub sources: Sources,
}

/// The files a configuration was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// SHA-256 (hex) of the config file's text and every rules file's name
    /// and text, in load order: which policy is in force.
    pub policy_hash: String,
    /// Every file read: the config file, rules files, and the files they
    /// name (certificates, keys, secrets, JWKS, token files).
    pub files: Vec<PathBuf>,
    /// The rules directory (`rules:` naming a directory), walked again to
    /// see rules files added or removed.
    pub rules_dir: Option<PathBuf>,
    /// The files among `files` that hold secrets: private keys, HMAC
    /// secrets, the admin token, the masking hash key.
    pub secrets: Vec<PathBuf>,
}

impl Sources {
    /// The secret files any user may read (Unix: a permission bit for
    /// others; the group is the service's, see the README), with their mode.
    pub fn loose_secrets(&self) -> Vec<(PathBuf, u32)> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.secrets
                .iter()
                .filter_map(|p| {
                    let mode = std::fs::metadata(p).ok()?.permissions().mode() & 0o777;
                    (mode & 0o007 != 0).then(|| (p.clone(), mode))
                })
                .collect()
        }
        #[cfg(not(unix))]
        {
            Vec::new()
        }
    }
}

/// Where rules come from when not from the config's `rules:` directory.
pub enum RulesSource {
    /// Read `rules:` from disk, relative to the config file.
    FromConfig,
    /// Use these `(name, text)` files instead (the embedded demo rules).
    Embedded(Vec<(String, String)>),
}

/// Loads `path` and the rules it names.
pub fn load(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![diag(Severity::Error, &name, 0, format!("cannot read: {e}"))])?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut loaded = load_from_text(&name, &text, &base, RulesSource::FromConfig)?;
    loaded.sources.files.insert(0, path.to_path_buf());
    Ok(loaded)
}

/// Loads a config given as text; relative file names resolve against `base`.
pub fn load_from_text(
    name: &str,
    text: &str,
    base: &Path,
    rules: RulesSource,
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut b = Builder {
        diags: Vec::new(),
        base: base.to_path_buf(),
        sources: Default::default(),
    };
    let runtime = b.build(name, text, rules);
    let has_error = b.diags.iter().any(|d| d.severity == Severity::Error);
    match runtime {
        Some(runtime) if !has_error => Ok(Loaded {
            runtime,
            warnings: b.diags,
            sources: b.sources.into_inner(),
        }),
        _ => {
            b.diags.sort_by_key(|d| std::cmp::Reverse(d.severity));
            Err(b.diags)
        }
    }
}

/// The rules files under `dir` (every `*.yaml`/`*.yml` below it, except
/// the top-level `tests/` folder and hidden entries, whose name starts
/// with `.`), sorted by path. Hidden entries are skipped because a
/// Kubernetes ConfigMap volume holds every file three times: the visible
/// links, `..data` and the `..<timestamp>` directory it points to; editors
/// leave hidden files too.
pub fn rules_files(dir: &Path) -> Vec<PathBuf> {
    walk_rules_dir(dir).0
}

/// [`rules_files`], and the directories that could not be read.
fn walk_rules_dir(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut paths = Vec::new();
    let mut unreadable = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                unreadable.push((d, e));
                continue;
            }
        };
        for entry in entries {
            // An entry that cannot be read or followed (a dangling link to
            // a directory of route files, a permission error) is an error,
            // never skipped: its routes missing could let requests fall to
            // looser ones.
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    unreadable.push((d.clone(), e));
                    continue;
                }
            };
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let p = entry.path();
            let is_rules = p
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                // Gone since the listing (a tool's temporary file), or a
                // link to another kind of file left dangling for a moment
                // (a Kubernetes ConfigMap key being removed): not rules.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && (std::fs::symlink_metadata(&p).is_err()
                            || (!is_rules && p.extension().is_some())) =>
                {
                    continue;
                }
                Err(e) => {
                    unreadable.push((p, e));
                    continue;
                }
            };
            if meta.is_dir() {
                if !(d == dir && p.file_name().is_some_and(|n| n == "tests")) {
                    stack.push(p);
                }
            } else if is_rules {
                paths.push(p);
            }
        }
    }
    paths.sort();
    (paths, unreadable)
}

/// [`Sources::policy_hash`]: the config text, then each rules file's name
/// and text, each length-prefixed (no two inputs hash alike).
fn policy_hash(config: &str, rules: &[(String, String)]) -> String {
    use aws_lc_rs::digest::{Context, SHA256};
    let mut h = Context::new(&SHA256);
    let mut part = |b: &[u8]| {
        h.update(&(b.len() as u64).to_be_bytes());
        h.update(b);
    };
    part(config.as_bytes());
    for (name, text) in rules {
        part(name.as_bytes());
        part(text.as_bytes());
    }
    h.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn diag(severity: Severity, file: &str, line: u64, message: String) -> Diagnostic {
    Diagnostic {
        severity,
        file: file.to_string(),
        line,
        message,
    }
}

/// One mask as `build_masks` compiled it.
struct CompiledMask {
    policy: Arc<mask::Policy>,
    unmask_with: String,
    owner: Option<Arc<OwnerColumns>>,
}

/// Parses a humantime duration (`15m`, `1h30m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// A request rate: `N/s`, `N/m`, `N/h` or `N/<duration>` (`10/30s`) →
/// (N, period). N and the time between two requests must be above zero.
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let bad = |why: &str| {
        format!("invalid rate {s:?}: {why} (write e.g. \"100/s\", \"600/m\", \"10/30s\")")
    };
    let (n, per) = s.trim().split_once('/').ok_or_else(|| bad("no '/'"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| bad("the count is not a whole number"))?;
    if n == 0 {
        return Err(bad("the count must be greater than zero"));
    }
    let period = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => humantime::parse_duration(other).map_err(|_| bad("unknown period"))?,
    };
    if (period / n).is_zero() {
        return Err(bad(
            "the period must allow at least a nanosecond per request",
        ));
    }
    Ok((n, period))
}

/// Every relation name a requirement mentions.
fn relation_names<'r>(req: &'r Requirement, out: &mut Vec<&'r str>) {
    match req {
        Requirement::Relation { name, .. } => out.push(name),
        Requirement::Any(v) | Requirement::All(v) => {
            for c in v {
                relation_names(c, out);
            }
        }
        _ => {}
    }
}

struct Builder {
    diags: Vec<Diagnostic>,
    base: PathBuf,
    /// Files read so far (a `RefCell`: paths are resolved in argument
    /// position all over, where `&mut self` is already taken).
    sources: std::cell::RefCell<Sources>,
}

/// A definition and where it was written.
struct Located<T> {
    file: String,
    line: u64,
    value: T,
}

impl Builder {
    fn error(&mut self, file: &str, line: u64, message: impl Into<String>) {
        self.diags
            .push(diag(Severity::Error, file, line, message.into()));
    }

    fn warn(&mut self, file: &str, line: u64, message: impl Into<String>) {
        self.diags
            .push(diag(Severity::Warning, file, line, message.into()));
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// [`Self::resolve`] for a file the config is built from (recorded in
    /// [`Sources::files`]).
    fn input(&self, p: &str) -> PathBuf {
        let path = self.resolve(p);
        let mut s = self.sources.borrow_mut();
        if !s.files.contains(&path) {
            s.files.push(path.clone());
        }
        path
    }

    /// [`Self::input`] for a file that holds a secret.
    fn secret_input(&self, p: &str) -> PathBuf {
        let path = self.input(p);
        let mut s = self.sources.borrow_mut();
        if !s.secrets.contains(&path) {
            s.secrets.push(path.clone());
        }
        path
    }

    fn parse<T: for<'de> serde::Deserialize<'de>>(&mut self, name: &str, text: &str) -> Option<T> {
        match serde_saphyr::from_str::<T>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                // One line, as every diagnostic: the parser's message
                // without its source excerpt, and without the "error:" and
                // line the diagnostic itself prints.
                let text = e.without_snippet().to_string();
                let text = text.strip_prefix("error: ").unwrap_or(&text).trim();
                let msg = text.lines().next().unwrap_or_default().to_string();
                let line = e.location().map(|l| l.line()).unwrap_or(0);
                self.error(name, line, msg);
                None
            }
        }
    }

    fn build(&mut self, name: &str, text: &str, rules: RulesSource) -> Option<Runtime> {
        let cfg: FileConfig = self.parse(name, text)?;

        // Rules: inline in the main file first, then each rules file.
        let mut files: Vec<(String, FileRules)> = vec![(
            name.to_string(),
            FileRules {
                capability_levels: cfg.capability_levels,
                roles: cfg.roles,
                profiles: cfg.profiles,
                routes: cfg.routes,
                masks: cfg.masks,
            },
        )];
        let rule_texts = match rules {
            RulesSource::Embedded(list) => list,
            RulesSource::FromConfig => match &cfg.rules {
                Some(dir) => self.read_rules_dir(name, &self.resolve(dir)),
                None => Vec::new(),
            },
        };
        self.sources.borrow_mut().policy_hash = policy_hash(text, &rule_texts);
        for (fname, ftext) in &rule_texts {
            if let Some(r) = self.parse::<FileRules>(fname, ftext) {
                files.push((fname.clone(), r));
            }
        }

        // Merge, remembering where each thing was defined.
        let mut roles: BTreeMap<String, Located<super::file::FileRole>> = BTreeMap::new();
        let mut profiles: BTreeMap<String, Located<super::file::FileProfile>> = BTreeMap::new();
        let mut routes: Vec<Located<FileRoute>> = Vec::new();
        let mut masks: BTreeMap<String, Located<super::file::FileMask>> = BTreeMap::new();
        let mut levels: BTreeMap<String, Located<Vec<String>>> = BTreeMap::new();
        for (file, r) in files {
            for (k, v) in r.capability_levels {
                self.merge_named(&mut levels, "capability level ladder", k, &file, v);
            }
            for (k, v) in r.roles {
                self.merge_named(&mut roles, "role", k, &file, v);
            }
            for (k, v) in r.profiles {
                self.merge_named(&mut profiles, "profile", k, &file, v);
            }
            for (k, v) in r.masks {
                self.merge_named(&mut masks, "mask", k, &file, v);
            }
            for v in r.routes {
                routes.push(Located {
                    file: file.clone(),
                    line: v.referenced.line(),
                    value: v.value,
                });
            }
        }

        let policy = self.build_policy(&levels, &roles, &profiles);
        let upstreams = self.build_upstreams(name, cfg.upstreams);
        let masking = self.build_masking(name, &cfg.masking);
        let compiled_masks = self.build_masks(&masks, &policy, &masking);
        let pass_default = cfg.forward.pass_credentials;
        let (router, mut compiled_routes) =
            self.build_routes(&routes, &policy, &upstreams, pass_default);
        if let Some(compiled) = &mut compiled_routes {
            self.attach_masks(&routes, compiled, &compiled_masks, &masks);
        }
        if let Some(compiled) = &compiled_routes {
            self.lint_unused_roles(&policy, &roles, compiled);
        }
        let relations = self.build_relations(name, cfg.relations, &upstreams);
        if let (Some(compiled), Some(relations)) = (&compiled_routes, &relations) {
            self.lint_relations(&routes, compiled, relations);
        }
        let sessions = self.build_sessions(name, cfg.sessions);
        let admin = match cfg.admin {
            Some(a) => self.build_admin(name, a),
            None => Some(None),
        };
        let cookie = cfg.identity.cookie.clone();
        let cookie_origins = self.origins(
            name,
            0,
            "identity.cookie_origins",
            &cfg.identity.cookie_origins,
        );
        if !cookie_origins.is_empty() && cookie.is_none() {
            self.warn(
                name,
                0,
                "identity.cookie_origins has no effect without identity.cookie",
            );
        }
        let issuer_names: Vec<String> = cfg
            .identity
            .issuers
            .iter()
            .map(|i| i.value.iss.clone())
            .collect();
        let reload_interval =
            self.positive_duration(name, 0, "reload.watch_interval", &cfg.reload.watch_interval);
        let drain_timeout = self.positive_duration(
            name,
            0,
            "shutdown.drain_timeout",
            &cfg.shutdown.drain_timeout,
        );
        let directory = match cfg.directory {
            None => Some(None),
            Some(d) => self.build_directory(name, d, &issuer_names).map(Some),
        };
        let auth = self.build_auth(name, cfg.identity);
        let listen = self.build_listen(name, cfg.listen, cfg.listeners);
        let forward = self.build_forward(name, cfg.forward, cookie, cookie_origins);
        if let (Some(listen), Some(Some(a))) = (&listen, &admin) {
            for l in &listen.listeners {
                if same_socket(l.addr, a.addr) {
                    self.error(
                        name,
                        0,
                        format!(
                            "admin.addr {} is the public listener's address ({}): the admin API must have its own listener",
                            a.addr, l.addr
                        ),
                    );
                    return None;
                }
            }
        }
        if let (Some(auth), Some(listen)) = (&auth, &listen) {
            self.refuse_published_secret(name, auth, listen);
        }
        if let (Some(compiled), Some(listen)) = (&compiled_routes, &listen)
            && !listen.listeners.iter().any(|l| l.client_auth.is_some())
        {
            for (r, c) in routes.iter().zip(compiled) {
                if c.client_cert.is_some() {
                    self.warn(
                        &r.file,
                        r.line,
                        format!(
                            "route {}: client_cert is required but no listener has tls.client_auth: every request to it is refused",
                            c.name
                        ),
                    );
                }
            }
        }

        Some(Runtime {
            listen: listen?,
            canon: CanonOptions {
                merge_slashes: cfg.path.merge_slashes,
                allow_semicolon: cfg.path.allow_semicolon,
            },
            router,
            routes: compiled_routes?,
            policy,
            auth: auth?,
            upstreams,
            forward: Arc::new(forward?),
            expose_reason: cfg.errors.expose_reason,
            masking,
            sessions: sessions?,
            admin: admin?,
            relations: relations?,
            relation_cache: Default::default(),
            directory: directory?,
            owner_masks: compiled_masks
                .iter()
                .filter_map(|(n, m)| Some((n.clone(), m.owner.clone()?)))
                .collect(),
            reload: ReloadSettings {
                watch: cfg.reload.watch,
                watch_interval: reload_interval?,
                close_websockets: cfg.reload.websockets == super::file::FileReloadWebsockets::Close,
                cut_streams: cfg.reload.streams == super::file::FileReloadWebsockets::Close,
            },
            drain_timeout: drain_timeout?,
            generation: super::next_generation(),
            websocket_epoch: 0,
            stream_epoch: 0,
        })
    }

    /// `relations:`: each source names a known upstream, a path and
    /// valid durations. `None` when any is wrong.
    fn build_relations(
        &mut self,
        file: &str,
        raw: BTreeMap<String, Spanned<super::file::FileRelation>>,
        upstreams: &[Upstream],
    ) -> Option<BTreeMap<String, RelationSource>> {
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (name, r) in raw {
            let line = r.referenced.line();
            if !crate::policy::is_valid_relation_name(&name) {
                self.error(
                    file,
                    line,
                    format!("relations.{name}: invalid relation name (expected [a-z0-9_-]+)"),
                );
                ok = false;
            }
            let source = match (r.value.pull, r.value.push) {
                (Some(pull), None) => self
                    .build_pull(file, line, &name, pull, upstreams)
                    .map(RelationSource::Pull),
                (None, Some(push)) => self
                    .build_push(file, line, &name, push)
                    .map(RelationSource::Push),
                _ => {
                    self.error(
                        file,
                        line,
                        format!("relations.{name}: exactly one of `pull` and `push` is needed"),
                    );
                    None
                }
            };
            match source {
                Some(src) => {
                    out.insert(name, src);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn build_pull(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        pull: super::file::FilePull,
        upstreams: &[Upstream],
    ) -> Option<PullSource> {
        let mut ok = true;
        let upstream = upstreams.iter().position(|u| u.name == pull.upstream);
        if upstream.is_none() {
            self.error(
                file,
                line,
                format!(
                    "relations.{name}: pull.upstream: unknown upstream {:?}",
                    pull.upstream
                ),
            );
            ok = false;
        }
        if !pull.path.starts_with('/') || pull.path.contains(['?', '#']) {
            self.error(
                file,
                line,
                format!(
                    "relations.{name}: pull.path {:?} must start with `/` and have no query",
                    pull.path
                ),
            );
            ok = false;
        }
        let timeout =
            self.relation_duration(file, line, name, "pull.timeout", &pull.timeout, false);
        let cache_ttl =
            self.relation_duration(file, line, name, "pull.cache_ttl", &pull.cache_ttl, true);
        let negative_ttl = self.relation_duration(
            file,
            line,
            name,
            "pull.negative_ttl",
            &pull.negative_ttl,
            true,
        );
        Some(PullSource {
            upstream: upstream?,
            path: pull.path,
            timeout: timeout?,
            cache_ttl: cache_ttl?,
            negative_ttl: negative_ttl?,
            cache_entries: pull.cache_entries,
        })
        .filter(|_| ok)
    }

    fn build_push(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        push: super::file::FilePush,
    ) -> Option<PushSource> {
        let dur = |b: &mut Self, key: &str, v: Option<String>| match v {
            None => Some(None),
            Some(v) => b
                .relation_duration(file, line, name, key, &v, false)
                .map(Some),
        };
        let default_ttl = dur(self, "push.default_ttl", push.default_ttl);
        let max_ttl = dur(self, "push.max_ttl", push.max_ttl);
        let (default_ttl, max_ttl) = (default_ttl?, max_ttl?);
        if let (Some(d), Some(m)) = (default_ttl, max_ttl)
            && d > m
        {
            self.error(
                file,
                line,
                format!("relations.{name}: push.default_ttl is above push.max_ttl"),
            );
            return None;
        }
        if max_ttl.is_some() && default_ttl.is_none() {
            self.warn(
                file,
                line,
                format!(
                    "relations.{name}: push.max_ttl bounds only the ttl a push asks for; a tuple pushed without one stays until removed (set push.default_ttl to bound those too)"
                ),
            );
        }
        Some(PushSource {
            default_ttl,
            max_ttl,
        })
    }

    /// A relation setting's duration; zero only where `zero_ok`.
    fn relation_duration(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        key: &str,
        v: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
        match parse_duration(v) {
            Ok(d) if zero_ok || !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(
                    file,
                    line,
                    format!("relations.{name}: {key} must be above 0"),
                );
                None
            }
            Err(e) => {
                self.error(file, line, format!("relations.{name}: {key}: {e}"));
                None
            }
        }
    }

    /// A route that names a relation with no source is valid (the leaf is
    /// always unknown, so it fails closed) but almost surely a mistake.
    fn lint_relations(
        &mut self,
        routes: &[Located<FileRoute>],
        compiled: &[Route],
        relations: &BTreeMap<String, RelationSource>,
    ) {
        for (r, c) in routes.iter().zip(compiled) {
            let mut names = Vec::new();
            if let Some(req) = &c.policy.require {
                relation_names(req, &mut names);
            }
            if let Some(req) = c.mask.as_ref().and_then(|m| m.unmask.require.as_ref()) {
                relation_names(req, &mut names);
            }
            names.sort_unstable();
            names.dedup();
            for n in names.into_iter().filter(|n| !relations.contains_key(*n)) {
                self.warn(
                    &r.file,
                    r.line,
                    format!(
                        "route {}: relation {n:?} has no source under `relations:`: it is always unknown, so a decision that depends on it denies (relation_unavailable)",
                        c.name
                    ),
                );
            }
        }
    }

    fn merge_named<T>(
        &mut self,
        into: &mut BTreeMap<String, Located<T>>,
        what: &str,
        key: String,
        file: &str,
        v: Spanned<T>,
    ) {
        let line = v.referenced.line();
        if let Some(prev) = into.get(&key) {
            let msg = format!(
                "{what} {key:?} is already defined at {}:{}",
                prev.file, prev.line
            );
            self.error(file, line, msg);
            return;
        }
        into.insert(
            key,
            Located {
                file: file.to_string(),
                line,
                value: v.value,
            },
        );
    }

    /// Every `*.yaml`/`*.yml` below `dir`, sorted by path, except the
    /// `tests/` folder (policy test tables, run by `rolegate test`).
    fn read_rules_dir(&mut self, cfg_name: &str, dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if dir.is_file() {
            self.sources.borrow_mut().files.push(dir.to_path_buf());
            match std::fs::read_to_string(dir) {
                Ok(t) => out.push((dir.display().to_string(), t)),
                Err(e) => self.error(
                    cfg_name,
                    0,
                    format!("rules: cannot read {}: {e}", dir.display()),
                ),
            }
            return out;
        }
        let (paths, unreadable) = walk_rules_dir(dir);
        for (d, e) in unreadable {
            self.error(
                cfg_name,
                0,
                format!("rules: cannot read {}: {e}", d.display()),
            );
        }
        {
            let mut sources = self.sources.borrow_mut();
            sources.rules_dir = Some(dir.to_path_buf());
            sources.files.extend(paths.iter().cloned());
        }
        for p in paths {
            match std::fs::read_to_string(&p) {
                Ok(t) => out.push((p.display().to_string(), t)),
                Err(e) => self.error(
                    cfg_name,
                    0,
                    format!("rules: cannot read {}: {e}", p.display()),
                ),
            }
        }
        out
    }

    fn build_policy(
        &mut self,
        levels: &BTreeMap<String, Located<Vec<String>>>,
        roles: &BTreeMap<String, Located<super::file::FileRole>>,
        profiles: &BTreeMap<String, Located<super::file::FileProfile>>,
    ) -> Policy {
        let mut spec = PolicySpec::default();
        for (prefix, l) in levels {
            spec.levels.push(LevelLadder {
                prefix: prefix.clone(),
                levels: l.value.clone(),
            });
        }
        for (name, r) in roles {
            let idle_timeout = match r.value.idle_timeout.as_deref().map(parse_duration) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    self.error(&r.file, r.line, format!("role {name}: idle_timeout: {e}"));
                    None
                }
                None => None,
            };
            spec.roles.push(RoleDef {
                name: name.clone(),
                description: r.value.description.clone(),
                grants: r.value.grants.clone(),
                includes: r.value.includes.clone(),
                requires: r.value.requires.clone(),
                idle_timeout,
                scope: r.value.scope.clone(),
            });
        }
        for (name, p) in profiles {
            spec.profiles.push(ProfileDef {
                name: name.clone(),
                description: p.value.description.clone(),
                roles: p.value.roles.clone(),
                grants: p.value.grants.clone(),
            });
        }
        let (policy, issues) = Policy::compile(spec);
        for issue in issues {
            let (file, line) = match &issue.subject {
                IssueSubject::Role(n) => roles.get(n).map(|r| (r.file.clone(), r.line)),
                IssueSubject::Profile(n) => profiles.get(n).map(|p| (p.file.clone(), p.line)),
                IssueSubject::Levels(n) => levels.get(n).map(|l| (l.file.clone(), l.line)),
                IssueSubject::Route(_) => None,
            }
            .unwrap_or_else(|| ("rules".to_string(), 0));
            let sev = if issue.severity == PSeverity::Error {
                Severity::Error
            } else {
                Severity::Warning
            };
            let what = match &issue.subject {
                IssueSubject::Role(n) => format!("role {n}"),
                IssueSubject::Profile(n) => format!("profile {n}"),
                IssueSubject::Route(n) => format!("route {n}"),
                IssueSubject::Levels(n) => format!("capability_levels {n}"),
            };
            self.diags
                .push(diag(sev, &file, line, format!("{what}: {}", issue.message)));
        }
        policy
    }

    /// A role whose grants no route requires does nothing: warn, so a typo
    /// in a capability name does not go unnoticed.
    fn lint_unused_roles(
        &mut self,
        policy: &Policy,
        roles: &BTreeMap<String, Located<super::file::FileRole>>,
        routes: &[Route],
    ) {
        let mut required: Vec<&str> = Vec::new();
        // A route's requirement and its mask's `unmask_with` both make a
        // grant matter.
        let requirements = routes.iter().flat_map(|r| {
            [
                r.policy.require.as_ref(),
                r.mask.as_ref().and_then(|m| m.unmask.require.as_ref()),
            ]
        });
        for req in requirements.flatten() {
            req.walk(&mut |node, _| {
                if let Requirement::Capability(c) = node {
                    required.push(c);
                }
            });
        }
        for role in policy.roles() {
            let used = role
                .grants
                .iter()
                .any(|g| required.iter().any(|c| policy.grant_covers(g, c)));
            if !role.grants.is_empty() && !used && role.idle_timeout.is_none() {
                let (file, line) = roles
                    .get(&role.name)
                    .map(|r| (r.file.clone(), r.line))
                    .unwrap_or_default();
                self.warn(
                    &file,
                    line,
                    format!(
                        "role {}: unused: none of its grants is required by any route or unmasks any route's mask",
                        role.name
                    ),
                );
            }
        }
    }

    fn build_requirement(&mut self, r: &FileRequire, file: &str, line: u64) -> Option<Requirement> {
        match r {
            FileRequire::Leaf(s) => match Requirement::parse(s) {
                Ok(req) => Some(req),
                Err(e) => {
                    self.error(file, line, format!("require {s:?}: {e}"));
                    None
                }
            },
            FileRequire::Any { any } | FileRequire::All { all: any } if any.is_empty() => {
                // An empty all() is true for anyone authenticated, an empty
                // any() is false for everyone: both are mistakes, never intent.
                self.error(
                    file,
                    line,
                    "require: an empty any: [] or all: [] is not allowed",
                );
                None
            }
            FileRequire::Any { any } => {
                let items: Option<Vec<_>> = any
                    .iter()
                    .map(|r| self.build_requirement(r, file, line))
                    .collect();
                items.map(Requirement::Any)
            }
            FileRequire::All { all } => {
                let items: Option<Vec<_>> = all
                    .iter()
                    .map(|r| self.build_requirement(r, file, line))
                    .collect();
                items.map(Requirement::All)
            }
        }
    }

    fn build_routes(
        &mut self,
        routes: &[Located<FileRoute>],
        policy: &Policy,
        upstreams: &[Upstream],
        pass_default: bool,
    ) -> (Router, Option<Vec<Route>>) {
        let mut ok = true;
        let mut compiled = Vec::new();
        let mut names: BTreeMap<&str, (String, u64)> = BTreeMap::new();
        for r in routes {
            let (f, l, v) = (r.file.as_str(), r.line, &r.value);
            if let Some((pf, pl)) = names.get(v.name.as_str()) {
                let msg = format!("route name {:?} is already used at {pf}:{pl}", v.name);
                self.error(f, l, msg);
            }
            names.insert(&v.name, (f.to_string(), l));
            let require = match &v.require {
                Some(req) => {
                    let built = self.build_requirement(req, f, l);
                    ok &= built.is_some();
                    built
                }
                None => None,
            };
            if v.public && require.is_some() {
                self.error(
                    f,
                    l,
                    format!(
                        "route {}: public routes cannot also require something",
                        v.name
                    ),
                );
            }
            let only = v
                .scope
                .as_ref()
                .and_then(|m| m.iter().next().filter(|_| m.len() == 1));
            let scope = match (&v.scope, only) {
                (None, _) => None,
                (Some(_), Some((kind, param))) => {
                    match param.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                        Some(p) => Some((kind.clone(), p.to_string())),
                        None => {
                            self.error(f, l, format!("route {}: scope value must be a path parameter like \"{{{kind}}}\"", v.name));
                            None
                        }
                    }
                }
                (Some(_), None) => {
                    self.error(
                        f,
                        l,
                        format!("route {}: scope names exactly one resource kind", v.name),
                    );
                    None
                }
            };
            let upstream = match &v.upstream {
                Some(u) => upstreams.iter().position(|x| &x.name == u),
                None if upstreams.len() == 1 => Some(0),
                None => None,
            };
            let upstream = match upstream {
                Some(i) => i,
                None => {
                    let msg = match &v.upstream {
                        Some(u) => format!("route {}: unknown upstream {u:?}", v.name),
                        None => format!(
                            "route {}: no upstream (required when more than one upstream is configured)",
                            v.name
                        ),
                    };
                    self.error(f, l, msg);
                    ok = false;
                    0
                }
            };
            if v.websocket && upstreams.get(upstream).is_some_and(|u| u.http2) {
                // An HTTP/1.1 upgrade cannot travel over HTTP/2, and
                // websockets over HTTP/2 (RFC 8441) are not supported.
                self.error(
                    f,
                    l,
                    format!(
                        "route {}: websocket: true needs an HTTP/1.1 upstream, and {} has http2: true",
                        v.name,
                        upstreams[upstream].name
                    ),
                );
                ok = false;
            }
            let spec = RouteSpec {
                host: v.matcher.host.as_ref().map(|h| h.to_ascii_lowercase()),
                methods: v
                    .matcher
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
                path: v.matcher.path.clone(),
            };
            let rp = RoutePolicy {
                name: v.name.clone(),
                public: v.public,
                require,
                scope,
            };
            let passive = match v.activity.as_deref() {
                None | Some("active") => false,
                Some("passive") => {
                    if v.public {
                        self.warn(
                            f,
                            l,
                            format!(
                                "route {}: activity: passive has no effect on a public route",
                                v.name
                            ),
                        );
                    }
                    true
                }
                Some(other) => {
                    self.error(
                        f,
                        l,
                        format!(
                            "route {}: activity must be active or passive, not {other:?}",
                            v.name
                        ),
                    );
                    false
                }
            };
            if !v.websocket_origins.is_empty() && !v.websocket {
                self.warn(
                    f,
                    l,
                    format!(
                        "route {}: websocket_origins has no effect without websocket: true",
                        v.name
                    ),
                );
            }
            let websocket_origins = self.origins(
                f,
                l,
                &format!("route {}: websocket_origins", v.name),
                &v.websocket_origins,
            );
            if v.websocket {
                if v.mask.is_some() {
                    self.error(
                        f,
                        l,
                        format!(
                            "route {}: websocket: true cannot be combined with mask (websocket frames are not masked)",
                            v.name
                        ),
                    );
                }
                if !v.matcher.methods.is_empty()
                    && !v
                        .matcher
                        .methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case("GET"))
                {
                    self.error(
                        f,
                        l,
                        format!(
                            "route {}: websocket: true needs the route to match GET (a websocket handshake is a GET)",
                            v.name
                        ),
                    );
                }
            }
            let pass_credentials = v
                .pass_credentials
                .or_else(|| upstreams.get(upstream).and_then(|u| u.pass_credentials))
                .unwrap_or(pass_default);
            if pass_credentials && v.public {
                self.warn(
                    f,
                    l,
                    format!(
                        "route {}: pass_credentials has no effect on a public route (nothing is verified there, so nothing is forwarded)",
                        v.name
                    ),
                );
            }
            let client_cert = match &v.client_cert {
                None => None,
                Some(FileClientCert::Required(s)) if s == "required" => {
                    Some(ClientCertRule::Required)
                }
                Some(FileClientCert::Required(s)) => {
                    self.error(
                        f,
                        l,
                        format!(
                            "route {}: client_cert must be `required` or {{ allow: [names] }}, not {s:?}",
                            v.name
                        ),
                    );
                    None
                }
                Some(FileClientCert::Allow(a))
                    if a.allow.is_empty() || a.allow.iter().any(|n| n.trim().is_empty()) =>
                {
                    self.error(
                        f,
                        l,
                        format!(
                            "route {}: client_cert.allow must list at least one name, none empty",
                            v.name
                        ),
                    );
                    None
                }
                Some(FileClientCert::Allow(a)) => Some(ClientCertRule::Allow(a.allow.clone())),
            };
            compiled.push(Route {
                name: v.name.as_str().into(),
                spec,
                policy: rp,
                upstream,
                origin: format!("{f}:{l}"),
                passive,
                websocket: v.websocket,
                websocket_origins,
                pass_credentials,
                mask: None,
                record: None,
                client_cert,
            });
        }

        let specs: Vec<RouteSpec> = compiled.iter().map(|r| r.spec.clone()).collect();
        let (router, issues) = Router::build(&specs);
        for issue in issues {
            let r = &routes[issue.route];
            let msg = format!("route {}: {}", r.value.name, issue.message);
            match issue.kind {
                IssueKind::Error => self.error(&r.file, r.line, msg),
                IssueKind::Warning => self.warn(&r.file, r.line, msg),
            }
        }
        self.lint_trailing_slash(&router, routes, &compiled);
        for (i, route) in compiled.iter().enumerate() {
            let params = template_params(&route.spec.path);
            for issue in policy.check_route(&route.policy, &params) {
                let sev = if issue.severity == PSeverity::Error {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                self.diags.push(diag(
                    sev,
                    &routes[i].file,
                    routes[i].line,
                    format!("route {}: {}", route.name, issue.message),
                ));
            }
        }
        (router, ok.then_some(compiled))
    }

    /// Warns when a route's path with a trailing slash added is decided
    /// by another route with another policy: rolegate keeps the slash
    /// (paths differ), but many backends (Express, Spring before 6, Flask
    /// with `strict_slashes=False`) serve `/admin/5/` as `/admin/5`. Probed
    /// with `1` for every parameter; routes whose parameters refuse `1`,
    /// and catch-alls, are not probed.
    fn lint_trailing_slash(
        &mut self,
        router: &Router,
        routes: &[Located<super::file::FileRoute>],
        compiled: &[Route],
    ) {
        for (i, c) in compiled.iter().enumerate() {
            let path = &c.spec.path;
            if path.ends_with('/') || path.contains("**") {
                continue;
            }
            let sample = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let host = c.spec.host.as_ref().map(|h| h.replacen('*', "a", 1));
            let method = c.spec.methods.first().map_or("GET", String::as_str);
            let at = |p: &str| router.at(host.as_deref(), method, p).map(|m| m.route);
            if at(&sample) != Some(i) {
                continue;
            }
            let Some(j) = at(&format!("{sample}/")) else {
                continue;
            };
            let other = &compiled[j];
            if j != i
                && (other.policy.public != c.policy.public
                    || other.policy.require != c.policy.require
                    || other.policy.scope != c.policy.scope)
            {
                self.warn(
                    &routes[i].file,
                    routes[i].line,
                    format!(
                        "route {}: {sample}/ (with a trailing slash) is decided by route {}, with another policy; backends that ignore a trailing slash serve it as {sample}: add the slashed path to this route's policy (a route for {path}/), or make sure the backend tells them apart",
                        c.name, other.name
                    ),
                );
            }
        }
    }

    fn build_upstreams(
        &mut self,
        file: &str,
        ups: BTreeMap<String, Spanned<super::file::FileUpstream>>,
    ) -> Vec<Upstream> {
        let mut out = Vec::new();
        for (name, u) in ups {
            let line = u.referenced.line();
            let mut u = u.value;
            let servers = self.upstream_servers(file, line, &name, &mut u);
            let connect_timeout = self.duration(
                file,
                line,
                &format!("upstream {name}: connect_timeout"),
                &u.connect_timeout,
            );
            let timeout =
                self.duration(file, line, &format!("upstream {name}: timeout"), &u.timeout);
            let body_idle_timeout = self.positive_duration(
                file,
                line,
                &format!("upstream {name}: body_idle_timeout"),
                &u.body_idle_timeout,
            );
            let max_requests = self.count(
                file,
                &format!("upstream {name}: max_requests"),
                &u.max_requests,
                1024,
                1 << 24,
            );
            let health = match &u.health {
                Some(h) => self.upstream_health(file, h.referenced.line(), &name, &h.value),
                None => self.upstream_health(file, line, &name, &Default::default()),
            };
            if u.http2 && u.preserve_host {
                // HTTP/2 carries the host in `:authority`, which must agree
                // with `Host` (RFC 9113 §8.3.1) and is what the pool and
                // the connection are chosen by.
                self.error(
                    file,
                    line,
                    format!("upstream {name}: preserve_host cannot be combined with http2: true"),
                );
            }
            let Some((https, base_path, servers)) = servers else {
                continue;
            };
            let tls = if https {
                self.upstream_tls(file, line, &name, &u)
            } else {
                self.no_tls_keys(file, line, &name, &u);
                Some(None)
            };
            let (Some(tls), Some(health), Some(body_idle_timeout)) =
                (tls, health, body_idle_timeout)
            else {
                continue;
            };
            let clients = match crate::proxy::upstream::new_clients(ClientSettings {
                connect_timeout,
                http2: u.http2,
                tls,
            }) {
                Ok(c) => c,
                Err(e) => {
                    // Only the client key can be refused (unsupported, or
                    // not the key of `client_cert`).
                    let at = u.client_key.as_ref().map_or(line, |k| k.referenced.line());
                    self.error(file, at, format!("upstream {name}: client_key: {e}"));
                    continue;
                }
            };
            let balance = match u.balance {
                FileBalance::RoundRobin => Balance::RoundRobin,
                FileBalance::LeastOutstanding => Balance::LeastOutstanding,
            };
            let pool = Pool::new(
                name.clone(),
                servers,
                balance,
                health,
                max_requests,
                clients,
            );
            out.push(Upstream {
                name,
                base_path,
                timeout,
                body_idle_timeout,
                preserve_host: u.preserve_host,
                pass_credentials: u.pass_credentials,
                http2: u.http2,
                insecure_skip_verify: u.insecure_skip_verify,
                pool: Arc::new(pool),
            });
        }
        out
    }

    /// `url` or `servers`: the servers, whether they are `https://`, and
    /// their shared base path. Every server is a full URL with the same
    /// scheme and base path (TLS settings are the upstream's, so they are
    /// shared too); each mistake is reported at its own line.
    fn upstream_servers(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        u: &mut FileUpstream,
    ) -> Option<(bool, String, Vec<Server>)> {
        let urls: Vec<(String, u64)> = match (u.url.take(), u.servers.take()) {
            (Some(url), None) => vec![(url, line)],
            (None, Some(list)) if !list.is_empty() => list
                .into_iter()
                .map(|s| (s.value, s.referenced.line()))
                .collect(),
            (None, Some(_)) => {
                self.error(
                    file,
                    line,
                    format!("upstream {name}: servers must list at least one server"),
                );
                return None;
            }
            (None, None) => {
                self.error(
                    file,
                    line,
                    format!("upstream {name}: one of `url` and `servers` is needed"),
                );
                return None;
            }
            (Some(_), Some(_)) => {
                self.error(
                    file,
                    line,
                    format!(
                        "upstream {name}: `url` and `servers` exclude each other (`url` is one server)"
                    ),
                );
                return None;
            }
        };
        let several = urls.len() > 1;
        let mut ok = true;
        let mut first: Option<(bool, String, String)> = None;
        let mut servers: Vec<Server> = Vec::new();
        for (url, at) in urls {
            let what = if several {
                format!("upstream {name}: server {url:?}")
            } else {
                format!("upstream {name}: url")
            };
            let uri = match http::Uri::from_str(&url) {
                Ok(uri) => uri,
                Err(e) => {
                    let msg = if several {
                        format!("{what} is invalid: {e}")
                    } else {
                        format!("upstream {name}: invalid url {url:?}: {e}")
                    };
                    self.error(file, at, msg);
                    ok = false;
                    continue;
                }
            };
            let https = match uri.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => {
                    self.error(
                        file,
                        at,
                        format!("{what} must start with http:// or https://"),
                    );
                    ok = false;
                    continue;
                }
            };
            if uri.query().is_some() {
                self.error(file, at, format!("{what} must not have a query"));
                ok = false;
                continue;
            }
            let Some(authority) = uri.authority().cloned() else {
                self.error(file, at, format!("{what} has no host"));
                ok = false;
                continue;
            };
            let base = uri.path().trim_end_matches('/').to_string();
            match &first {
                None => first = Some((https, base, url.clone())),
                Some((f_https, f_base, f_url)) => {
                    if *f_https != https {
                        self.error(
                            file,
                            at,
                            format!(
                                "{what}: its scheme differs from {f_url:?} (the servers of an upstream share scheme, base path and TLS settings)"
                            ),
                        );
                        ok = false;
                    } else if *f_base != base {
                        self.error(
                            file,
                            at,
                            format!(
                                "{what}: its base path {base:?} differs from {f_base:?} of {f_url:?} (the servers of an upstream share scheme, base path and TLS settings)"
                            ),
                        );
                        ok = false;
                    }
                }
            }
            if servers.iter().any(|s| {
                s.authority
                    .as_str()
                    .eq_ignore_ascii_case(authority.as_str())
            }) {
                self.error(file, at, format!("{what} is listed twice"));
                ok = false;
                continue;
            }
            let scheme = if https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            };
            servers.push(Server::new(scheme, authority));
        }
        let (https, base, _) = first?;
        ok.then_some((https, base, servers))
    }

    /// `health:` of an upstream; `None` after reporting every problem.
    fn upstream_health(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        h: &super::file::FileHealth,
    ) -> Option<Health> {
        let eject_for = self.positive_duration(
            file,
            line,
            &format!("upstream {name}: health.eject_for"),
            &h.eject_for,
        );
        let max_eject_for = self.positive_duration(
            file,
            line,
            &format!("upstream {name}: health.max_eject_for"),
            &h.max_eject_for,
        );
        let mut ok = true;
        if let (Some(e), Some(m)) = (eject_for, max_eject_for)
            && m < e
        {
            self.error(
                file,
                line,
                format!("upstream {name}: health.max_eject_for is below health.eject_for"),
            );
            ok = false;
        }
        let check = match &h.check {
            None => None,
            Some(c) => {
                let at = c.referenced.line();
                let c = &c.value;
                let path = if c.path.starts_with('/') {
                    match c.path.parse::<http::uri::PathAndQuery>() {
                        Ok(p) => Some(p),
                        Err(e) => {
                            self.error(
                                file,
                                at,
                                format!("upstream {name}: health.check.path {:?}: {e}", c.path),
                            );
                            None
                        }
                    }
                } else {
                    self.error(
                        file,
                        at,
                        format!(
                            "upstream {name}: health.check.path {:?} must start with `/`",
                            c.path
                        ),
                    );
                    None
                };
                let interval = self.positive_duration(
                    file,
                    at,
                    &format!("upstream {name}: health.check.interval"),
                    &c.interval,
                );
                let timeout = self.positive_duration(
                    file,
                    at,
                    &format!("upstream {name}: health.check.timeout"),
                    &c.timeout,
                );
                Some(Check {
                    path: path?,
                    interval: interval?,
                    timeout: timeout?,
                })
            }
        };
        Some(Health {
            failures: h.failures,
            eject_for: eject_for?,
            max_eject_for: max_eject_for?,
            check,
        })
        .filter(|_| ok)
    }

    /// The TLS keys of an `http://` upstream are errors: they would
    /// suggest a protection the connection does not have.
    fn no_tls_keys(&mut self, file: &str, line: u64, name: &str, u: &FileUpstream) {
        let keys = [
            ("ca_file", &u.ca_file),
            ("client_cert", &u.client_cert),
            ("client_key", &u.client_key),
            ("server_name", &u.server_name),
        ];
        for (key, v) in keys {
            if let Some(v) = v {
                self.error(
                    file,
                    v.referenced.line(),
                    format!("upstream {name}: {key} applies to https:// upstreams only"),
                );
            }
        }
        if u.insecure_skip_verify {
            self.error(
                file,
                line,
                format!("upstream {name}: insecure_skip_verify applies to https:// upstreams only"),
            );
        }
    }

    /// Reads and checks the TLS settings of an `https://` upstream;
    /// `None` after reporting every problem found.
    fn upstream_tls(
        &mut self,
        file: &str,
        line: u64,
        name: &str,
        u: &FileUpstream,
    ) -> Option<Option<TlsSettings>> {
        let mut ok = true;
        let roots = match (&u.ca_file, u.insecure_skip_verify) {
            (Some(ca), true) => {
                self.error(
                    file,
                    ca.referenced.line(),
                    format!(
                        "upstream {name}: ca_file and insecure_skip_verify contradict each other"
                    ),
                );
                ok = false;
                Roots::Unverified
            }
            (None, true) => {
                self.warn(
                    file,
                    line,
                    format!(
                        "upstream {name}: insecure_skip_verify: the upstream's certificate is not verified; anyone on the network path can impersonate it"
                    ),
                );
                Roots::Unverified
            }
            (None, false) => Roots::Default,
            (Some(ca), false) => match self.pem_certs(file, name, "ca_file", ca) {
                Some(certs) => {
                    let mut store = RootCertStore::empty();
                    for (i, c) in certs.into_iter().enumerate() {
                        if let Err(e) = store.add(c) {
                            self.error(
                                file,
                                ca.referenced.line(),
                                format!(
                                    "upstream {name}: ca_file {}: certificate {} is not a usable CA certificate: {e}",
                                    ca.value,
                                    i + 1
                                ),
                            );
                            ok = false;
                        }
                    }
                    Roots::Only(store)
                }
                None => {
                    ok = false;
                    Roots::Default
                }
            },
        };
        let client_auth = match (&u.client_cert, &u.client_key) {
            (None, None) => None,
            (Some(c), None) => {
                self.error(
                    file,
                    c.referenced.line(),
                    format!("upstream {name}: client_cert needs client_key"),
                );
                ok = false;
                None
            }
            (None, Some(k)) => {
                self.error(
                    file,
                    k.referenced.line(),
                    format!("upstream {name}: client_key needs client_cert"),
                );
                ok = false;
                None
            }
            (Some(c), Some(k)) => {
                let chain = self.pem_certs(file, name, "client_cert", c);
                let key = self.pem_key(file, name, k);
                match (chain, key) {
                    (Some(chain), Some(key)) => Some((chain, key)),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let server_name = match &u.server_name {
            None => None,
            Some(sn) => match ServerName::try_from(sn.value.clone()) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.error(
                        file,
                        sn.referenced.line(),
                        format!("upstream {name}: server_name {:?}: {e}", sn.value),
                    );
                    ok = false;
                    None
                }
            },
        };
        ok.then_some(Some(TlsSettings {
            roots,
            client_auth,
            server_name,
        }))
    }

    /// Every certificate of a PEM file (at least one).
    fn pem_certs(
        &mut self,
        file: &str,
        name: &str,
        key: &str,
        path: &Spanned<String>,
    ) -> Option<Vec<CertificateDer<'static>>> {
        let line = path.referenced.line();
        let full = self.input(&path.value);
        // The listeners' loader: the same messages for the same mistakes.
        match tls::load_certs(&full) {
            Ok(certs) => Some(certs),
            Err(e) => {
                self.error(file, line, format!("upstream {name}: {key} {e}"));
                None
            }
        }
    }

    /// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
    fn pem_key(
        &mut self,
        file: &str,
        name: &str,
        path: &Spanned<String>,
    ) -> Option<PrivateKeyDer<'static>> {
        let line = path.referenced.line();
        let full = self.secret_input(&path.value);
        let bytes = match std::fs::read(&full) {
            Ok(b) => b,
            Err(e) => {
                self.error(
                    file,
                    line,
                    format!("upstream {name}: client_key {}: {e}", full.display()),
                );
                return None;
            }
        };
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(k) => Some(k),
            Err(e) => {
                self.error(
                    file,
                    line,
                    format!(
                        "upstream {name}: client_key {}: no usable PEM private key: {e}",
                        full.display()
                    ),
                );
                None
            }
        }
    }

    /// A duration above zero; `None` after reporting it.
    fn positive_duration(
        &mut self,
        file: &str,
        line: u64,
        what: &str,
        s: &str,
    ) -> Option<Duration> {
        match parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(file, line, format!("{what} must be above 0"));
                None
            }
            Err(e) => {
                self.error(file, line, format!("{what}: {e}"));
                None
            }
        }
    }

    /// An optional `listen` duration: `default` when absent; zero or
    /// unparsable is an error at its line.
    fn listen_duration(
        &mut self,
        file: &str,
        what: &str,
        v: &Option<Spanned<String>>,
        default: &str,
    ) -> Duration {
        let (line, text) = match v {
            Some(v) => (v.referenced.line(), v.value.as_str()),
            None => (0, default),
        };
        let d = self.duration(file, line, what, text);
        if v.is_some() && d.is_zero() && parse_duration(text).is_ok() {
            self.error(file, line, format!("{what} must be greater than zero"));
        }
        d
    }

    /// An optional `listen` count in `1..=max`: `default` when absent.
    fn count(
        &mut self,
        file: &str,
        what: &str,
        v: &Option<Spanned<u64>>,
        default: usize,
        max: u64,
    ) -> usize {
        let Some(v) = v else {
            return default;
        };
        let line = v.referenced.line();
        if v.value == 0 {
            self.error(file, line, format!("{what} must be greater than zero"));
        } else if v.value > max {
            self.error(file, line, format!("{what} must be at most {max}"));
        }
        usize::try_from(v.value.clamp(1, max)).unwrap_or(default)
    }

    /// One `rate_limit` bucket; `None` (and an error at its line) when
    /// invalid.
    fn rate(&mut self, file: &str, what: &str, b: &Spanned<super::file::FileRate>) -> Option<Rate> {
        let line = b.value.rate.referenced.line();
        let (count, period) = match parse_rate(&b.value.rate.value) {
            Ok(x) => x,
            Err(e) => {
                self.error(file, line, format!("{what}.rate: {e}"));
                return None;
            }
        };
        let burst = match &b.value.burst {
            None => count,
            Some(v) => match u32::try_from(v.value) {
                Ok(n) if n > 0 => n,
                _ => {
                    self.error(
                        file,
                        v.referenced.line(),
                        format!("{what}.burst must be between 1 and {}", u32::MAX),
                    );
                    return None;
                }
            },
        };
        Some(Rate {
            count,
            period,
            burst,
        })
    }

    fn duration(&mut self, file: &str, line: u64, what: &str, s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| {
            self.error(file, line, format!("{what}: {e}"));
            Duration::ZERO
        })
    }

    fn build_masking(&mut self, file: &str, m: &super::file::FileMasking) -> MaskingSettings {
        let hash_key = match &m.hash_key_file {
            Some(f) => {
                let path = self.secret_input(f);
                match std::fs::read(&path) {
                    Ok(k) if k.trim_ascii().len() >= 32 => Some(k.trim_ascii().to_vec()),
                    Ok(_) => {
                        self.error(
                            file,
                            0,
                            "masking.hash_key_file: the key must be at least 32 bytes",
                        );
                        None
                    }
                    Err(e) => {
                        self.error(
                            file,
                            0,
                            format!("masking.hash_key_file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            None => None,
        };
        if m.max_depth == 0 || m.max_string_bytes == 0 || m.max_body_bytes == 0 {
            self.error(
                file,
                0,
                "masking: max_depth, max_string_bytes and max_body_bytes must be greater than zero",
            );
        }
        if m.max_held_bytes < m.buffer_bytes {
            self.error(
                file,
                0,
                format!(
                    "masking.max_held_bytes {} is below masking.buffer_bytes {}",
                    m.max_held_bytes, m.buffer_bytes
                ),
            );
        }
        MaskingSettings {
            hash_key,
            max_body_bytes: m.max_body_bytes,
            buffer_bytes: m.buffer_bytes,
            max_held_bytes: m.max_held_bytes,
            limits: mask::Limits {
                max_depth: m.max_depth,
                max_string_bytes: m.max_string_bytes,
            },
            audit_log: self.resolve(&m.audit_log),
        }
    }

    /// Compiles every mask policy; errors (bad selector, strategy, detector,
    /// `hash` without a key) are collected with the mask's file:line.
    fn build_masks(
        &mut self,
        masks: &BTreeMap<String, Located<super::file::FileMask>>,
        policy: &Policy,
        settings: &MaskingSettings,
    ) -> BTreeMap<String, CompiledMask> {
        let mut out = BTreeMap::new();
        for (name, m) in masks {
            let (f, l, v) = (m.file.as_str(), m.line, &m.value);
            let mut ok = true;
            let mut fields = Vec::new();
            for field in &v.fields {
                let sel = mask::Selector::parse(&field.path);
                let strat = mask::Strategy::parse(&field.strategy);
                match (sel, strat) {
                    (Ok(sel), Ok(strat)) => {
                        if strat == mask::Strategy::Hash && settings.hash_key.is_none() {
                            self.error(
                                f,
                                l,
                                format!("mask {name}: strategy hash needs masking.hash_key_file"),
                            );
                            ok = false;
                        }
                        fields.push((sel, strat));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        self.error(f, l, format!("mask {name}: field {:?}: {e}", field.path));
                        ok = false;
                    }
                }
            }
            let mut detectors = Vec::new();
            for d in &v.detect {
                match mask::Detector::parse(d) {
                    Ok(d) => detectors.push(d),
                    Err(e) => {
                        self.error(f, l, format!("mask {name}: detect: {e}"));
                        ok = false;
                    }
                }
            }
            let detect_in = match (&v.detect_in, detectors.is_empty()) {
                (_, true) => mask::DetectScope::None,
                (None, false) => mask::DetectScope::All,
                (Some(super::file::FileDetectIn::All(s)), false) if s == "all" => {
                    mask::DetectScope::All
                }
                (Some(super::file::FileDetectIn::All(s)), false) => {
                    self.error(
                        f,
                        l,
                        format!(
                            "mask {name}: detect_in must be `all` or a list of paths, not {s:?}"
                        ),
                    );
                    ok = false;
                    mask::DetectScope::None
                }
                (Some(super::file::FileDetectIn::Paths(p)), false) => {
                    let mut sels = Vec::new();
                    for path in p {
                        match mask::Selector::parse(path) {
                            Ok(s) => sels.push(s),
                            Err(e) => {
                                self.error(f, l, format!("mask {name}: detect_in {path:?}: {e}"));
                                ok = false;
                            }
                        }
                    }
                    mask::DetectScope::Fields(sels)
                }
            };
            if !crate::policy::is_valid_capability(&v.unmask_with) {
                self.error(
                    f,
                    l,
                    format!(
                        "mask {name}: unmask_with {:?} is not a capability name",
                        v.unmask_with
                    ),
                );
                ok = false;
            } else if let Some(msg) = policy.check_capability(&v.unmask_with) {
                self.error(f, l, format!("mask {name}: unmask_with: {msg}"));
                ok = false;
            } else if !policy.grants_cover(&v.unmask_with) {
                self.warn(f, l, format!("mask {name}: no role or profile grants {}: every principal sees masked data", v.unmask_with));
            }
            let owner = match &v.owner_columns {
                None => None,
                Some(o) => {
                    let strategy = mask::Strategy::parse(&o.strategy);
                    if !crate::policy::is_valid_scope_kind(&o.scope) {
                        self.error(
                            f,
                            l,
                            format!(
                                "mask {name}: owner_columns.scope {:?} is not a scope kind",
                                o.scope
                            ),
                        );
                        ok = false;
                    }
                    if !crate::policy::is_valid_capability(&o.manage_with) {
                        self.error(f, l, format!("mask {name}: owner_columns.manage_with {:?} is not a capability name", o.manage_with));
                        ok = false;
                    }
                    match strategy {
                        Ok(mask::Strategy::Hash) if settings.hash_key.is_none() => {
                            self.error(
                                f,
                                l,
                                format!("mask {name}: strategy hash needs masking.hash_key_file"),
                            );
                            ok = false;
                            None
                        }
                        Ok(strategy) => Some(Arc::new(OwnerColumns {
                            scope: o.scope.clone(),
                            manage_with: o.manage_with.clone(),
                            strategy,
                        })),
                        Err(e) => {
                            self.error(f, l, format!("mask {name}: owner_columns.as: {e}"));
                            ok = false;
                            None
                        }
                    }
                }
            };
            if fields.is_empty() && detectors.is_empty() && owner.is_none() {
                self.error(
                    f,
                    l,
                    format!("mask {name}: no fields and no detectors: it would mask nothing"),
                );
                ok = false;
            }
            if ok {
                let p = mask::Policy {
                    name: name.clone(),
                    fields,
                    detectors,
                    detect_in,
                    case_insensitive: v.case_insensitive,
                    hash_key: settings.hash_key.clone().unwrap_or_default(),
                    limits: settings.limits.clone(),
                    compiled: Default::default(),
                };
                out.insert(
                    name.clone(),
                    CompiledMask {
                        policy: Arc::new(p),
                        unmask_with: v.unmask_with.clone(),
                        owner,
                    },
                );
            }
        }
        out
    }

    /// Resolves each route's `mask:` and `record:`; warns about masks no
    /// route uses.
    fn attach_masks(
        &mut self,
        routes: &[Located<FileRoute>],
        compiled: &mut [Route],
        masks: &BTreeMap<String, CompiledMask>,
        defined: &BTreeMap<String, Located<super::file::FileMask>>,
    ) {
        let mut used = std::collections::BTreeSet::new();
        for (r, c) in routes.iter().zip(compiled.iter_mut()) {
            let (f, l) = (r.file.as_str(), r.line);
            if let Some(rec) = &r.value.record {
                match rec.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(p) if template_params(&c.spec.path).iter().any(|x| x == p) => {
                        c.record = Some(p.to_string())
                    }
                    _ => self.error(
                        f,
                        l,
                        format!(
                            "route {}: record must name a path parameter like \"{{id}}\"",
                            c.name
                        ),
                    ),
                }
            }
            let Some(name) = &r.value.mask else { continue };
            used.insert(name.clone());
            match masks.get(name) {
                Some(CompiledMask {
                    policy: p,
                    unmask_with,
                    owner,
                }) => {
                    let owner = match (owner, &c.policy.scope) {
                        (None, _) => None,
                        (Some(spec), Some((kind, param))) if *kind == spec.scope => {
                            Some(RouteOwnerColumns {
                                spec: spec.clone(),
                                scope_param: param.clone(),
                                record_param: c.record.clone(),
                            })
                        }
                        (Some(spec), _) => {
                            self.error(
                                f,
                                l,
                                format!(
                                    "route {}: mask {name} has owner_columns per {}: the route needs `scope: {{ {}: \"{{param}}\" }}`",
                                    c.name, spec.scope, spec.scope
                                ),
                            );
                            None
                        }
                    };
                    c.mask = Some(RouteMask {
                        policy: p.clone(),
                        unmask: RoutePolicy {
                            name: format!("{} (unmask)", c.name),
                            public: false,
                            require: Some(Requirement::Capability(unmask_with.clone())),
                            scope: c.policy.scope.clone(),
                        },
                        owner,
                    });
                }
                None if defined.contains_key(name) => {} // its own errors were reported
                None => self.error(f, l, format!("route {}: unknown mask {name:?}", c.name)),
            }
        }
        for (name, m) in defined {
            if !used.contains(name) {
                self.warn(
                    &m.file,
                    m.line,
                    format!("mask {name}: unused: no route names it"),
                );
            }
        }
        // The same resource through another method: a PUT or PATCH that
        // echoes the updated record returns what the masked GET hides.
        let shape = |c: &Route| (c.spec.host.clone(), template_shape(&c.spec.path));
        for (r, c) in routes.iter().zip(compiled.iter()) {
            if c.mask.is_some() {
                continue;
            }
            let masked = compiled.iter().find_map(|m| {
                m.mask
                    .as_ref()
                    .filter(|_| shape(m) == shape(c))
                    .map(|mk| (m, mk))
            });
            if let Some((m, mk)) = masked {
                self.warn(
                    &r.file,
                    r.line,
                    format!(
                        "route {}: answers on the path of masked route {} without a mask: what it returns (a PUT or PATCH that echoes the record) is not masked; add `mask: {}` unless it never returns the record",
                        c.name, m.name, mk.policy.name
                    ),
                );
            }
        }
    }

    fn build_sessions(
        &mut self,
        file: &str,
        s: super::file::FileSessions,
    ) -> Option<SessionSettings> {
        let idle_timeout = self.duration(file, 0, "sessions.idle_timeout", &s.idle_timeout);
        let max_lifetime = s
            .max_lifetime
            .as_deref()
            .map(|m| self.duration(file, 0, "sessions.max_lifetime", m));
        let flush_interval = self.duration(file, 0, "sessions.flush_interval", &s.flush_interval);
        let retention = self.duration(file, 0, "sessions.retention", &s.retention);
        if idle_timeout.is_zero() {
            self.error(file, 0, "sessions.idle_timeout must be greater than zero");
        }
        if flush_interval > Duration::from_secs(5) || flush_interval < Duration::from_millis(10) {
            self.error(
                file,
                0,
                "sessions.flush_interval must be between 10ms and 5s",
            );
        }
        let store = if s.store == "embedded" {
            StoreKind::Embedded {
                state_dir: self.resolve(&s.state_dir),
            }
        } else if s.store.starts_with("redis://") {
            StoreKind::Redis {
                url: s.store.clone(),
            }
        } else {
            self.error(
                file,
                0,
                format!(
                    "sessions.store must be `embedded` or a redis:// URL, not {:?}",
                    s.store
                ),
            );
            return None;
        };
        if !s.logout_path.starts_with('/') {
            self.error(file, 0, "sessions.logout_path must start with /");
        }
        let on_store_error = match s.on_store_error.as_str() {
            "deny" => OnStoreError::Deny,
            "allow" => OnStoreError::Allow,
            other => {
                self.error(
                    file,
                    0,
                    format!("sessions.on_store_error must be deny or allow, not {other:?}"),
                );
                OnStoreError::Deny
            }
        };
        if let Some(u) = &s.login_url
            && http::HeaderValue::from_str(u).is_err()
        {
            self.error(
                file,
                0,
                format!("sessions.login_url {u:?} is not a valid Location"),
            );
        }
        Some(SessionSettings {
            idle_timeout,
            max_lifetime,
            store,
            flush_interval,
            retention,
            logout_path: s.logout_path,
            login_url: s.login_url,
            on_store_error,
        })
    }

    /// `directory:`: a known issuer (default: the only one) and valid
    /// capability names.
    fn build_directory(
        &mut self,
        file: &str,
        d: super::file::FileDirectory,
        issuers: &[String],
    ) -> Option<crate::directory::DirectorySettings> {
        let issuer = match d.issuer {
            Some(i) if issuers.contains(&i) => i,
            Some(i) => {
                self.error(
                    file,
                    0,
                    format!("directory.issuer {i:?} is not a configured issuer"),
                );
                return None;
            }
            None if issuers.len() == 1 => issuers[0].clone(),
            None => {
                self.error(
                    file,
                    0,
                    "directory.issuer is required when several issuers are configured".to_string(),
                );
                return None;
            }
        };
        let mut ok = true;
        for (key, cap) in [
            ("manage_with", &d.manage_with),
            ("share_with", &d.share_with),
            ("profiles_with", &d.profiles_with),
        ] {
            if !crate::policy::is_valid_capability(cap) {
                self.error(
                    file,
                    0,
                    format!("directory.{key} {cap:?} is not a capability name"),
                );
                ok = false;
            }
        }
        ok.then_some(crate::directory::DirectorySettings {
            issuer,
            manage_with: d.manage_with,
            share_with: d.share_with,
            profiles_with: d.profiles_with,
        })
    }

    fn build_admin(
        &mut self,
        file: &str,
        a: super::file::FileAdmin,
    ) -> Option<Option<AdminSettings>> {
        let addr = match a.addr.parse() {
            Ok(x) => x,
            Err(e) => {
                self.error(file, 0, format!("admin.addr {:?}: {e}", a.addr));
                return None;
            }
        };
        let path = self.secret_input(&a.token_file);
        let token = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                self.error(file, 0, format!("admin.token_file {}: {e}", path.display()));
                return None;
            }
        };
        if token.len() < 16 {
            self.error(
                file,
                0,
                "admin.token_file: the admin token must be at least 16 characters",
            );
            return None;
        }
        Some(Some(AdminSettings { addr, token }))
    }

    fn build_listen(
        &mut self,
        file: &str,
        l: FileListen,
        listeners: Vec<Spanned<FileListener>>,
    ) -> Option<ListenSettings> {
        if l.max_header_bytes < 8192 {
            self.error(file, 0, "listen.max_header_bytes must be at least 8192");
        }
        if l.max_concurrent_streams == 0 {
            self.error(
                file,
                0,
                "listen.max_concurrent_streams must be greater than zero",
            );
        }
        let header_read_timeout = self.duration(
            file,
            0,
            "listen.header_read_timeout",
            &l.header_read_timeout,
        );
        let keepalive_timeout = self.listen_duration(
            file,
            "listen.keepalive_timeout",
            &l.keepalive_timeout,
            "60s",
        );
        let request_timeout =
            self.listen_duration(file, "listen.request_timeout", &l.request_timeout, "2m");
        let body_read_timeout = self.listen_duration(
            file,
            "listen.body_read_timeout",
            &l.body_read_timeout,
            "30s",
        );
        let send_timeout =
            self.listen_duration(file, "listen.send_timeout", &l.send_timeout, "60s");
        let websocket_message_timeout = self.listen_duration(
            file,
            "listen.websocket_message_timeout",
            &l.websocket_message_timeout,
            "2m",
        );
        let websocket_idle_timeout = self.listen_duration(
            file,
            "listen.websocket_idle_timeout",
            &l.websocket_idle_timeout,
            "1h",
        );
        let max_uri_bytes =
            self.count(file, "listen.max_uri_bytes", &l.max_uri_bytes, 8192, 65_534);
        if let Some(v) = &l.max_uri_bytes
            && v.value >= l.max_header_bytes as u64
        {
            self.warn(
                file,
                v.referenced.line(),
                format!(
                    "listen.max_uri_bytes {} is not below listen.max_header_bytes {}: a target that long is refused by the head limit first (431 without a JSON body)",
                    v.value, l.max_header_bytes
                ),
            );
        }
        let max_headers = self.count(file, "listen.max_headers", &l.max_headers, 100, 1000);
        let max_connections = self.count(
            file,
            "listen.max_connections",
            &l.max_connections,
            4096,
            1 << 24,
        );
        let max_connections_per_ip = self.count(
            file,
            "listen.max_connections_per_ip",
            &l.max_connections_per_ip,
            256,
            1 << 24,
        );
        let max_streams_per_ip = self.count(
            file,
            "listen.max_streams_per_ip",
            &l.max_streams_per_ip,
            256,
            1 << 24,
        );
        let rate_limit = match &l.rate_limit {
            None => RateLimits::default(),
            Some(r) => RateLimits {
                per_ip: r
                    .value
                    .per_ip
                    .as_ref()
                    .and_then(|b| self.rate(file, "listen.rate_limit.per_ip", b)),
                per_principal: r
                    .value
                    .per_principal
                    .as_ref()
                    .and_then(|b| self.rate(file, "listen.rate_limit.per_principal", b)),
            },
        };
        let single = FileListener {
            addr: l.addr.clone().unwrap_or_else(|| "127.0.0.1:8080".into()),
            tls: l.tls,
            h2c: l.h2c.unwrap_or(false),
            redirect_https: l.redirect_https,
        };
        let specs: Vec<(u64, String, FileListener)> = if listeners.is_empty() {
            vec![(0, "listen".to_string(), single)]
        } else {
            if l.addr.is_some()
                || single.tls.is_some()
                || l.h2c.is_some()
                || single.redirect_https.is_some()
            {
                self.error(
                    file,
                    listeners[0].referenced.line(),
                    "listeners: cannot be combined with listen.addr, listen.tls, listen.h2c or listen.redirect_https (move them into the list; listen keeps the limits)",
                );
            }
            listeners
                .into_iter()
                .enumerate()
                .map(|(i, s)| (s.referenced.line(), format!("listeners[{i}]"), s.value))
                .collect()
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (line, what, spec) in specs {
            match self.build_listener(file, line, &what, spec) {
                Some(x) => {
                    if let Some(prev) = out.iter().find(|p: &&Listener| same_socket(p.addr, x.addr))
                    {
                        self.error(
                            file,
                            line,
                            format!(
                                "{what}: address {} is already used by listener {}",
                                x.addr, prev.addr
                            ),
                        );
                        ok = false;
                    }
                    out.push(x);
                }
                None => ok = false,
            }
        }
        if ok && out.iter().all(|x| x.redirect.is_some()) {
            self.error(
                file,
                0,
                "every listener only redirects to https: nothing would be served",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(ListenSettings {
            addr: out.first()?.addr,
            max_header_bytes: l.max_header_bytes,
            max_body_bytes: l.max_body_bytes,
            max_websocket_message_bytes: l.max_websocket_message_bytes,
            header_read_timeout,
            max_concurrent_streams: l.max_concurrent_streams,
            keepalive_timeout,
            request_timeout,
            body_read_timeout,
            send_timeout,
            websocket_message_timeout,
            websocket_idle_timeout,
            max_uri_bytes,
            max_headers,
            max_connections,
            max_connections_per_ip,
            max_streams_per_ip,
            rate_limit,
            listeners: out,
        })
    }

    /// One listener: address, TLS (certificates read and checked now),
    /// h2c, redirect.
    fn build_listener(
        &mut self,
        file: &str,
        line: u64,
        what: &str,
        spec: FileListener,
    ) -> Option<Listener> {
        let addr = match spec.addr.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                self.error(file, line, format!("{what}.addr {:?}: {e}", spec.addr));
                None
            }
        };
        let redirect = match spec.redirect_https {
            None => None,
            Some(_) if spec.tls.is_some() => {
                self.error(
                    file,
                    line,
                    format!("{what}: redirect_https is for plain listeners; this one has tls"),
                );
                return None;
            }
            Some(FileRedirect::Port(0)) => {
                self.error(
                    file,
                    line,
                    format!("{what}.redirect_https: port 0 is not a port"),
                );
                return None;
            }
            Some(FileRedirect::Port(p)) => Some(Redirect::Port(p)),
            Some(FileRedirect::Url(u)) => {
                let base = u.trim_end_matches('/');
                let valid = base.parse::<http::Uri>().is_ok_and(|uri| {
                    uri.scheme_str() == Some("https")
                        && uri.authority().is_some()
                        && uri.query().is_none()
                        && http::HeaderValue::from_str(base).is_ok()
                });
                if !valid {
                    self.error(
                        file,
                        line,
                        format!(
                            "{what}.redirect_https: {u:?} must be a port or an https:// URL without query"
                        ),
                    );
                    return None;
                }
                Some(Redirect::Url(base.to_string()))
            }
        };
        let (tls, client_auth, client_ca_digest) = match spec.tls {
            None => (None, None, None),
            Some(t) => {
                let (cfg, mode, digest) = self.build_tls(file, what, t)?;
                (Some(Arc::new(cfg)), mode, digest)
            }
        };
        Some(Listener {
            addr: addr?,
            tls,
            client_auth,
            client_ca_digest,
            h2c: spec.h2c,
            redirect,
        })
    }

    /// Reads every certificate and key of a listener's `tls:` (each error
    /// at its own line) and builds the rustls config.
    fn build_tls(
        &mut self,
        file: &str,
        what: &str,
        t: FileTls,
    ) -> Option<(rustls::ServerConfig, Option<ClientAuth>, Option<Vec<u8>>)> {
        let provider = tls::provider();
        let mut ok = true;
        let line = t.cert.referenced.line();
        let default = match tls::load_key_pair(
            &self.input(&t.cert.value),
            &self.secret_input(&t.key.value),
            &provider,
        ) {
            Ok(k) => Some(k),
            Err(e) => {
                self.error(file, line, format!("{what}.tls: {e}"));
                None
            }
        };
        let mut extra = Vec::new();
        for s in &t.sni {
            let l = s.referenced.line();
            if s.value.names.is_empty() {
                self.error(file, l, format!("{what}.tls.sni: an entry needs names"));
                ok = false;
            }
            match tls::load_key_pair(
                &self.input(&s.value.cert),
                &self.secret_input(&s.value.key),
                &provider,
            ) {
                Ok(k) => extra.push((l, &s.value.names, k)),
                Err(e) => {
                    self.error(file, l, format!("{what}.tls.sni: {e}"));
                    ok = false;
                }
            }
        }
        let mut ca_digest = None;
        let client_auth = match &t.client_auth {
            None => None,
            Some(c) => {
                let l = c.referenced.line();
                let mode = match c.value.mode.as_str() {
                    "required" => Some(ClientAuth::Required),
                    "optional" => Some(ClientAuth::Optional),
                    other => {
                        self.error(
                            file,
                            l,
                            format!("{what}.tls.client_auth.mode must be required or optional, not {other:?}"),
                        );
                        None
                    }
                };
                let ca = self.input(&c.value.ca);
                // What the listener admits: the CA bundle and the
                // revocation lists (a change closes its connections).
                let mut admitted = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                admitted.update(&std::fs::read(&ca).unwrap_or_default());
                let mut crls = Vec::new();
                for f in &c.value.crls {
                    let path = self.input(f);
                    admitted.update(&std::fs::read(&path).unwrap_or_default());
                    match tls::load_crls(&path) {
                        Ok(mut list) => crls.append(&mut list),
                        Err(e) => {
                            self.error(file, l, format!("{what}.tls.client_auth.crls: {e}"));
                            ok = false;
                        }
                    }
                }
                ca_digest = Some(admitted.finish().as_ref().to_vec());
                match tls::load_roots(&ca) {
                    Ok(roots) => mode.map(|mode| tls::ClientVerification { mode, roots, crls }),
                    Err(e) => {
                        self.error(file, l, format!("{what}.tls.client_auth.ca: {e}"));
                        ok = false;
                        None
                    }
                }
            }
        };
        let mut resolver = tls::SniResolver::new(default?);
        for (l, names, key) in extra {
            for n in names {
                let valid = n.strip_prefix("*.").unwrap_or(n).split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !valid {
                    self.error(
                        file,
                        l,
                        format!("{what}.tls.sni: {n:?} is not a host name or *.domain"),
                    );
                    ok = false;
                } else if !resolver.add(n, key.clone()) {
                    self.error(
                        file,
                        l,
                        format!("{what}.tls.sni: name {n:?} is listed twice"),
                    );
                    ok = false;
                }
            }
        }
        if !ok || (t.client_auth.is_some() && client_auth.is_none()) {
            return None;
        }
        let mode = client_auth.as_ref().map(|c| c.mode);
        match tls::server_config(resolver, client_auth) {
            Ok(cfg) => Some((cfg, mode, ca_digest)),
            Err(e) => {
                self.error(file, line, format!("{what}.tls: {e}"));
                None
            }
        }
    }

    /// A `dev: true` issuer signing with the secret published in this
    /// repository (`demo/dev-hmac.secret`, for the quick start) on a
    /// listener that is not loopback: anyone who has read the repository
    /// mints tokens with any role for it. An error, not a warning: such a
    /// gateway must not start.
    fn refuse_published_secret(
        &mut self,
        file: &str,
        auth: &Authenticator,
        listen: &ListenSettings,
    ) {
        const PUBLISHED: &[u8] = include_bytes!("../../demo/dev-hmac.secret");
        let Some(public) = listen.listeners.iter().find(|l| !l.addr.ip().is_loopback()) else {
            return;
        };
        for is in auth.issuers() {
            if is
                .dev_secret
                .as_ref()
                .is_some_and(|d| d.secret == PUBLISHED.trim_ascii())
            {
                self.error(
                    file,
                    0,
                    format!(
                        "issuer {}: dev: true with the secret published in rolegate's repository (demo/dev-hmac.secret) on {}, which is not loopback: anyone can mint tokens for it; use a secret of your own (and no dev issuer in production)",
                        is.iss, public.addr
                    ),
                );
            }
        }
    }

    /// A list of page origins (`https://console.example`: scheme, host,
    /// optional port), as browsers write them in `Origin`: lower-cased,
    /// without a trailing `/` or the scheme's default port; each entry
    /// that is not one (a path, a query, user info) is an error.
    fn origins(&mut self, file: &str, line: u64, what: &str, list: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(list.len());
        for o in list {
            let origin = http::Uri::from_str(o).ok().and_then(|u| {
                let scheme = u.scheme_str()?.to_ascii_lowercase();
                let authority = u.authority()?;
                let default = if scheme == "https" { 443 } else { 80 };
                (matches!(scheme.as_str(), "http" | "https")
                    && !authority.as_str().contains('@')
                    && matches!(u.path(), "" | "/")
                    && u.query().is_none())
                .then(|| match authority.port_u16() {
                    Some(p) if p != default => format!("{scheme}://{}:{p}", authority.host()),
                    _ => format!("{scheme}://{}", authority.host()),
                })
                .map(|o| o.to_ascii_lowercase())
            });
            if let Some(origin) = origin {
                out.push(origin);
            } else {
                self.error(
                    file,
                    line,
                    format!("{what}: {o:?} is not an origin like https://console.example"),
                );
            }
        }
        out
    }

    fn build_forward(
        &mut self,
        file: &str,
        f: super::file::FileForward,
        cookie: Option<String>,
        cookie_origins: Vec<String>,
    ) -> Option<ForwardSettings> {
        let prefix = f.identity_header_prefix.to_ascii_lowercase();
        let identity = crate::proxy::headers::IdentityNames::new(&prefix);
        if prefix.len() < 3 || identity.is_none() {
            self.error(
                file,
                0,
                format!(
                    "forward.identity_header_prefix {:?} is not a usable header prefix",
                    f.identity_header_prefix
                ),
            );
            return None;
        }
        use crate::proxy::headers::STANDARD_NAMES;
        if let Some(std) = STANDARD_NAMES.iter().find(|n| n.starts_with(&prefix)) {
            self.error(
                file,
                0,
                format!(
                    "forward.identity_header_prefix {:?} also matches the standard header {std}, which would then be removed from requests and answers; use a prefix of its own such as X-Rolegate-",
                    f.identity_header_prefix
                ),
            );
            return None;
        }
        use crate::proxy::headers::{ALWAYS_STRIPPED, DEFAULT_STRIPPED, DEFAULT_STRIPPED_PREFIXES};
        let mut keep = Vec::new();
        for h in &f.keep_headers {
            let lower = h.to_ascii_lowercase();
            let Ok(n) = http::HeaderName::from_bytes(lower.as_bytes()) else {
                self.error(
                    file,
                    0,
                    format!("forward.keep_headers: {h:?} is not a header name"),
                );
                continue;
            };
            if ALWAYS_STRIPPED.contains(&lower.as_str())
                || lower.starts_with(&prefix)
                || lower.contains('_')
            {
                self.error(file, 0, format!("forward.keep_headers: {h} is always removed (a rewrite/override or forwarding header, the identity prefix, or a name with `_`) and cannot be kept"));
                continue;
            }
            if !DEFAULT_STRIPPED.contains(&lower.as_str())
                && !DEFAULT_STRIPPED_PREFIXES
                    .iter()
                    .any(|p| lower.starts_with(p))
            {
                self.warn(file, 0, format!("forward.keep_headers: {h} is not removed by default; keeping it has no effect"));
            }
            keep.push(n);
        }
        let mut strip = crate::proxy::headers::stripped_names(
            DEFAULT_STRIPPED
                .iter()
                .copied()
                .map(http::HeaderName::from_static)
                .filter(|n| !keep.contains(n)),
        );
        let mut strip_prefixes: crate::proxy::headers::Prefixes = DEFAULT_STRIPPED_PREFIXES
            .iter()
            .map(|p| p.to_string())
            .collect();
        for h in f.strip_headers {
            let lower = h.to_ascii_lowercase();
            if let Some(p) = lower.strip_suffix('*') {
                if p.is_empty() || http::HeaderName::from_bytes(p.as_bytes()).is_err() {
                    self.error(file, 0, format!("forward.strip_headers: {h:?} is not a header name or a prefix like X-Acme-*"));
                } else {
                    strip_prefixes.push(p.to_string());
                }
                continue;
            }
            match http::HeaderName::from_bytes(lower.as_bytes()) {
                Ok(n) if keep.contains(&n) => self.error(
                    file,
                    0,
                    format!("forward.strip_headers: {h} is also in forward.keep_headers"),
                ),
                Ok(n) => {
                    strip.insert(n);
                }
                Err(_) => self.error(
                    file,
                    0,
                    format!("forward.strip_headers: {h:?} is not a header name or a prefix like X-Acme-*"),
                ),
            }
        }
        Some(ForwardSettings {
            identity_prefix: prefix,
            identity: identity?,
            strip,
            strip_prefixes,
            keep,
            cookie,
            cookie_origins,
        })
    }

    fn build_auth(&mut self, file: &str, id: super::file::FileIdentity) -> Option<Authenticator> {
        let leeway = self.duration(file, 0, "identity.leeway", &id.leeway);
        if id.issuers.is_empty() {
            self.warn(
                file,
                0,
                "identity.issuers is empty: every non-public route will answer 401",
            );
        }
        if !id.bearer && id.cookie.is_none() {
            self.error(file, 0, "identity: bearer is off and no cookie is configured: no token can ever be presented");
        }
        let mut issuers = Vec::new();
        let mut ok = true;
        for s in id.issuers {
            let line = s.referenced.line();
            let is = s.value;
            let mut algorithms = Vec::new();
            for a in &is.algorithms {
                match Algorithm::from_str(a) {
                    Ok(alg) => algorithms.push(alg),
                    Err(_) => {
                        ok = false;
                        self.error(
                            file,
                            line,
                            format!(
                                "issuer {}: unknown algorithm {a:?} (none is never accepted)",
                                is.iss
                            ),
                        );
                    }
                }
            }
            if algorithms.is_empty() {
                ok = false;
                self.error(
                    file,
                    line,
                    format!(
                        "issuer {}: algorithms must list at least one algorithm",
                        is.iss
                    ),
                );
            }
            if is.audiences.is_empty() {
                ok = false;
                self.error(
                    file,
                    line,
                    format!(
                        "issuer {}: audiences must not be empty (RFC 8725 §3.9)",
                        is.iss
                    ),
                );
            }
            if is
                .types
                .iter()
                .any(|t| t.trim().is_empty() || t.trim() != t)
            {
                ok = false;
                self.error(
                    file,
                    line,
                    format!("issuer {}: types must be non-empty names without surrounding spaces (`at+jwt`)", is.iss),
                );
            }
            if issuers.iter().any(|i: &Issuer| i.iss == is.iss) {
                ok = false;
                self.error(file, line, format!("issuer {} is listed twice", is.iss));
            }
            let mut keys = KeySet::default();
            let mut dev_secret = None;
            for pem in &is.keys.pem {
                let path = self.input(&pem.file);
                let r = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
                if let Err(e) = r.and_then(|b| keys.add_pem(&b, pem.kid.clone(), &pem.file)) {
                    ok = false;
                    self.error(file, line, format!("issuer {}: {e}", is.iss));
                }
            }
            if let Some(j) = &is.keys.jwks_file {
                let path = self.input(j);
                let r = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
                if let Err(e) = r.and_then(|b| keys.add_jwks(&b, j)) {
                    ok = false;
                    self.error(file, line, format!("issuer {}: {e}", is.iss));
                }
            }
            let hmac = is
                .keys
                .hmac_secret_file
                .iter()
                .map(|f| (f, None))
                .chain(is.keys.hmac.iter().map(|k| (&k.file, k.kid.clone())));
            for (h, kid) in hmac {
                let path = self.secret_input(h);
                let r = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
                match r.and_then(|b| keys.add_hmac(&b, kid.clone(), h).map(|_| b)) {
                    // `rolegate token` signs with the first secret.
                    Ok(b) if is.dev && dev_secret.is_none() => {
                        dev_secret = Some(DevSecret {
                            secret: b.trim_ascii().to_vec(),
                            kid,
                        })
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ok = false;
                        self.error(file, line, format!("issuer {}: {e}", is.iss));
                    }
                }
            }
            if let Some(kid) = keys.duplicate_kid() {
                ok = false;
                self.error(
                    file,
                    line,
                    format!(
                        "issuer {}: kid {kid:?} names two keys of the same type",
                        is.iss
                    ),
                );
            }
            for alg in &algorithms {
                if !keys.has_family(alg.family()) {
                    ok = false;
                    self.error(file, line, format!("issuer {}: algorithm {alg:?} is allowed but no key of its family is configured", is.iss));
                }
            }
            let families: Vec<AlgorithmFamily> = algorithms.iter().map(|a| a.family()).collect();
            if families.contains(&AlgorithmFamily::Hmac)
                && families.iter().any(|f| *f != AlgorithmFamily::Hmac)
            {
                self.warn(file, line, format!("issuer {}: mixes HMAC and public-key algorithms; keys are only used with their own family, but one issuer per key type is clearer", is.iss));
            }
            issuers.push(Issuer {
                iss: is.iss,
                audiences: is.audiences,
                algorithms,
                keys,
                dev: is.dev,
                dev_secret,
                types: is.types.iter().map(|t| crate::auth::typ_key(t)).collect(),
            });
        }
        let c = id.claims;
        let settings = AuthSettings {
            bearer: id.bearer,
            cookie: id.cookie,
            max_token_bytes: id.max_token_bytes,
            leeway_secs: leeway.as_secs(),
            claims: ClaimNames {
                subject: c.subject,
                session: c.session,
                roles: c.roles,
                partners: c.partners,
                teams: c.teams,
                profiles: c.profiles,
                grants: c.grants,
            },
        };
        ok.then(|| Authenticator::new(settings, issuers, id.cache_entries))
    }
}

/// Two listen addresses that would collide (same port, same or a wildcard IP).
fn same_socket(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The parameter names of a path template (`{name}` / `{name:re}`).
/// A path template with its parameters unnamed (`/a/{id}` and `/a/{x}`
/// match the same paths).
fn template_shape(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(inner) => match inner.split_once(':') {
                    Some((_, re)) => format!("{{:{re}}}"),
                    None => "{}".to_string(),
                },
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn template_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|inner| inner.split(':').next().unwrap_or(inner).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "upstreams:\n  app: { url: \"http://127.0.0.1:9\" }\n";

    #[test]
    fn rates_parse_as_count_per_period() {
        let secs = Duration::from_secs;
        assert_eq!(parse_rate("100/s"), Ok((100, secs(1))));
        assert_eq!(parse_rate(" 600 / m "), Ok((600, secs(60))));
        assert_eq!(parse_rate("5/h"), Ok((5, secs(3600))));
        assert_eq!(parse_rate("10/30s"), Ok((10, secs(30))));
        assert_eq!(parse_rate("3/500ms"), Ok((3, Duration::from_millis(500))));
        for bad in [
            "",
            "100",
            "0/s",
            "-1/s",
            "1.5/s",
            "x/s",
            "10/",
            "10/fortnight",
            "2000000000/1ns",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listen_limits_default_when_absent() {
        let (rt, diags) = load_rules(&[]);
        let l = rt.unwrap_or_else(|| panic!("{diags:#?}")).listen;
        assert_eq!(l.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(l.request_timeout, Duration::from_secs(120));
        assert_eq!(l.body_read_timeout, Duration::from_secs(30));
        assert_eq!(l.send_timeout, Duration::from_secs(60));
        assert_eq!(l.websocket_message_timeout, Duration::from_secs(120));
        assert_eq!(l.websocket_idle_timeout, Duration::from_secs(3600));
        assert_eq!((l.max_uri_bytes, l.max_headers), (8192, 100));
        assert_eq!((l.max_connections, l.max_connections_per_ip), (4096, 256));
        assert_eq!(l.max_streams_per_ip, 256);
        assert_eq!(l.rate_limit, super::super::RateLimits::default());
    }

    /// Loads `MAIN` plus the given rules files; the diagnostics as
    /// `check` prints them, and the runtime when there was no error.
    fn load_rules(files: &[(&str, &str)]) -> (Option<Runtime>, Vec<String>) {
        let files = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let base = std::env::temp_dir();
        match load_from_text("rolegate.yaml", MAIN, &base, RulesSource::Embedded(files)) {
            Ok(l) => (
                Some(l.runtime),
                l.warnings.iter().map(ToString::to_string).collect(),
            ),
            Err(d) => (None, d.iter().map(ToString::to_string).collect()),
        }
    }

    /// Loads a whole config (no rules files): the runtime, or every
    /// diagnostic as `check` prints it.
    fn load_main(text: &str) -> Result<Runtime, Vec<String>> {
        let base = std::env::temp_dir();
        load_from_text("rolegate.yaml", text, &base, RulesSource::Embedded(vec![]))
            .map(|l| l.runtime)
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn max_held_bytes_defaults_to_256_mib_and_may_not_be_below_buffer_bytes() {
        let rt = load_main("upstreams: { app: { url: \"http://a.test\" } }\n").unwrap();
        assert_eq!(rt.masking.max_held_bytes, 256 << 20);
        let errs = load_main(
            "upstreams: { app: { url: \"http://a.test\" } }\nmasking: { buffer_bytes: 4096, max_held_bytes: 4095 }\n",
        )
        .err()
        .unwrap();
        assert!(
            errs.iter()
                .any(|e| e
                    .contains("masking.max_held_bytes 4095 is below masking.buffer_bytes 4096")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_push_max_ttl_without_a_default_warns() {
        let warnings = |push: &str| {
            let text = format!("relations:\n  member: {{ push: {push} }}\n{MAIN}");
            load_from_text(
                "rolegate.yaml",
                &text,
                &std::env::temp_dir(),
                RulesSource::Embedded(vec![]),
            )
            .map(|l| {
                l.warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|d| panic!("{d:?}"))
        };
        let w = warnings("{ max_ttl: 1h }");
        assert!(w.iter().any(|w| w.contains("push.default_ttl")), "{w:?}");
        let w = warnings("{ max_ttl: 1h, default_ttl: 10m }");
        assert!(!w.iter().any(|w| w.contains("push.default_ttl")), "{w:?}");
    }

    #[test]
    fn a_route_answering_unmasked_on_a_masked_path_warns() {
        let rules = |edit_mask: &str| {
            format!(
                "masks:\n  pii: {{ unmask_with: c.unmask, fields: [{{ path: \"$..email\", as: redact }}] }}\n\
                 roles:\n  r: {{ grants: [c.view, c.edit, c.unmask] }}\n\
                 routes:\n\
                 \x20 - {{ name: view, match: {{ methods: [GET], path: \"/c/{{id}}\" }}, mask: pii, require: c.view }}\n\
                 \x20 - {{ name: edit, match: {{ methods: [PUT], path: \"/c/{{cid}}\" }}, {edit_mask}require: c.edit }}\n\
                 \x20 - {{ name: sub, match: {{ methods: [PUT], path: \"/c/{{id}}/notes\" }}, require: c.edit }}\n"
            )
        };
        let (rt, w) = load_rules(&[("r.yaml", &rules(""))]);
        assert!(rt.is_some(), "{w:#?}");
        let hits: Vec<&String> = w.iter().filter(|w| w.contains("masked route")).collect();
        assert_eq!(hits.len(), 1, "{w:#?}");
        assert!(
            hits[0].contains("route edit: answers on the path of masked route view"),
            "{}",
            hits[0]
        );
        let (_, w) = load_rules(&[("r.yaml", &rules("mask: pii, "))]);
        assert!(!w.iter().any(|w| w.contains("masked route")), "{w:#?}");
    }

    /// A Kubernetes ConfigMap volume: the visible files are links into
    /// `..data`, itself a link to a `..<timestamp>` directory. Each file is
    /// read once, through its visible name.
    #[cfg(unix)]
    #[test]
    fn a_configmap_rules_volume_is_read_once() {
        let d = std::env::temp_dir().join(format!("rolegate-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let stamp = d.join("..2026_12_07_00_00_00.1");
        std::fs::create_dir_all(stamp.join("routes")).unwrap();
        std::fs::write(stamp.join("roles.yaml"), "roles: {}\n").unwrap();
        std::fs::write(stamp.join("routes/a.yaml"), "routes: []\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_07_00_00_00.1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/roles.yaml", d.join("roles.yaml")).unwrap();
        std::os::unix::fs::symlink("..data/routes", d.join("routes")).unwrap();
        std::fs::write(d.join(".roles.yaml.swp"), "garbage").unwrap();
        let files: Vec<String> = rules_files(&d)
            .iter()
            .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
            .collect();
        assert_eq!(files, ["roles.yaml", "routes/a.yaml"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A link that leads nowhere (a directory of route files gone) is an
    /// error of the walk, not an entry skipped; an upper-case extension is
    /// a rules file too.
    #[cfg(unix)]
    #[test]
    fn the_rules_walk_reports_dangling_links_and_reads_any_case_extension() {
        let d = std::env::temp_dir().join(format!("rolegate-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ROLES.YAML"), "roles: {}\n").unwrap();
        std::os::unix::fs::symlink("gone", d.join("routes")).unwrap();
        // A dangling link to a file that is not rules is passed over.
        std::os::unix::fs::symlink("gone.md", d.join("README.md")).unwrap();
        let (files, unreadable) = walk_rules_dir(&d);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["ROLES.YAML"]);
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        assert!(unreadable[0].0.ends_with("routes"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn origins_are_written_as_browsers_send_them() {
        let with = |list: &str| {
            load_main(&format!(
                "identity:\n  cookie: rg\n  cookie_origins: {list}\n{MAIN}"
            ))
        };
        let rt = with("[\"HTTPS://Console.example:443/\", \"http://a.example:8080\", \"http://b.example:80\"]")
            .expect("loads");
        assert_eq!(
            rt.forward.cookie_origins,
            [
                "https://console.example",
                "http://a.example:8080",
                "http://b.example"
            ]
        );
        for bad in [
            "https://u@x.example",
            "https://x.example/app",
            "x.example",
            "ftp://x.example",
        ] {
            let e = with(&format!("[\"{bad}\"]"))
                .err()
                .unwrap_or_default()
                .join("\n");
            assert!(e.contains("is not an origin like"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_trailing_slash_decided_by_a_looser_route_warns() {
        let rules = |catch_all: &str| {
            format!(
                "roles:\n  r: {{ grants: [a.x, b.view] }}\n\
                 routes:\n\
                 \x20 - {{ name: admin, match: {{ methods: [GET], path: \"/api/admin/{{id}}\" }}, require: a.x }}\n\
                 \x20 - {{ name: num, match: {{ methods: [GET], path: \"/api/n/{{id:[a-z]+}}\" }}, require: a.x }}\n\
                 \x20 - {{ name: rest, match: {{ methods: [GET], path: \"/api/**\" }}, require: {catch_all} }}\n"
            )
        };
        let (rt, w) = load_rules(&[("r.yaml", &rules("b.view"))]);
        assert!(rt.is_some(), "{w:#?}");
        let hits: Vec<&String> = w.iter().filter(|w| w.contains("trailing slash")).collect();
        // `num` refuses the probe value: not probed.
        assert_eq!(hits.len(), 1, "{w:#?}");
        assert!(
            hits[0].contains(
                "route admin: /api/admin/1/ (with a trailing slash) is decided by route rest"
            ),
            "{}",
            hits[0]
        );
        // The same policy on both: nothing gained by the slash.
        let (_, w) = load_rules(&[("r.yaml", &rules("a.x"))]);
        assert!(!w.iter().any(|w| w.contains("trailing slash")), "{w:#?}");
    }

    #[test]
    fn an_issuer_s_types_must_be_plain_names() {
        let with = |types: &str| {
            load_main(&format!(
                "identity:\n  issuers:\n    - {{ iss: a, audiences: [x], algorithms: [HS256], keys: {{ hmac_secret_file: /nonexistent }}, types: {types} }}\n{MAIN}"
            ))
            .err()
            .unwrap_or_default()
            .join("\n")
        };
        for bad in ["[\"\"]", "[\" at+jwt\"]", "[at+jwt, \"jwt \"]"] {
            let errs = with(bad);
            assert!(
                errs.contains("issuer a: types must be non-empty names"),
                "{bad}: {errs}"
            );
        }
        assert!(!with("[at+jwt, JWT]").contains("types must"));
    }

    #[test]
    fn an_identity_prefix_that_covers_a_standard_header_is_refused() {
        let with = |prefix: &str| {
            load_main(&format!(
                "forward: {{ identity_header_prefix: \"{prefix}\" }}\n{MAIN}"
            ))
        };
        for bad in [
            "con",
            "Content-",
            "x-forwarded-",
            "SET-",
            "x-req",
            "Referrer-",
            "cross-origin-",
            "permissions-",
        ] {
            let errors = with(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                errors.iter().any(|e| e.contains("standard header")),
                "{bad:?}: {errors:?}"
            );
        }
        for good in ["X-Rolegate-", "X-Auth-", "x-acme-user-"] {
            if let Err(e) = with(good) {
                panic!("{good:?} refused: {e:?}");
            }
        }
    }

    #[test]
    fn upstream_pools_load_with_their_servers_balance_and_health() {
        let rt = load_main(
            "upstreams:
  app:
    servers: [\"http://10.0.0.1:8080/studio/\", \"http://10.0.0.2:8080/studio\"]
    balance: least_outstanding
    body_idle_timeout: 30s
    max_requests: 200
    health:
      failures: 5
      eject_for: 2s
      max_eject_for: 1m
      check: { path: /healthz, interval: 1s }
  one: { url: \"https://api.test\" }
",
        )
        .unwrap();
        let app = &rt.upstreams[0];
        assert_eq!(app.base_path, "/studio");
        assert_eq!(app.body_idle_timeout, Duration::from_secs(30));
        let labels: Vec<&str> = app
            .pool
            .servers()
            .iter()
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(labels, ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
        let one = &rt.upstreams[1];
        assert_eq!(one.pool.servers()[0].label, "https://api.test");
        assert_eq!(one.body_idle_timeout, Duration::from_secs(300));
        assert_eq!(
            (app.pool.max_requests(), one.pool.max_requests()),
            (200, 1024)
        );
    }

    #[test]
    fn upstream_pool_mistakes_are_all_reported_at_their_line() {
        let text = "upstreams:
  mixed:
    servers:
      - \"http://a.test:1/x\"
      - \"https://b.test:2/x\"
      - \"http://c.test:3/y\"
      - \"http://A.test:1/x\"
  both: { url: \"http://a.test\", servers: [\"http://b.test\"] }
  none: { timeout: 1s }
  empty: { servers: [] }
  badcheck:
    url: \"http://a.test\"
    body_idle_timeout: 0s
    max_requests: 0
    health:
      eject_for: 1m
      max_eject_for: 10s
      check: { path: health, interval: 0s }
";
        let errs = load_main(text).err().unwrap();
        let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        for (msg, at) in [
            (
                "upstream mixed: server \"https://b.test:2/x\": its scheme differs",
                line("https://b.test:2/x"),
            ),
            (
                "upstream mixed: server \"http://c.test:3/y\": its base path \"/y\" differs",
                line("c.test:3"),
            ),
            (
                "upstream mixed: server \"http://A.test:1/x\" is listed twice",
                line("A.test"),
            ),
            (
                "upstream both: `url` and `servers` exclude each other",
                line("both:"),
            ),
            (
                "upstream none: one of `url` and `servers` is needed",
                line("none:"),
            ),
            (
                "upstream empty: servers must list at least one server",
                line("empty:"),
            ),
            // A block mapping's line is its first key's.
            (
                "upstream badcheck: body_idle_timeout must be above 0",
                line("badcheck:") + 1,
            ),
            (
                "upstream badcheck: max_requests must be greater than zero",
                line("max_requests: 0"),
            ),
            (
                "upstream badcheck: health.max_eject_for is below health.eject_for",
                line("eject_for: 1m"),
            ),
            (
                "upstream badcheck: health.check.path \"health\" must start with `/`",
                line("check: {"),
            ),
            (
                "upstream badcheck: health.check.interval must be above 0",
                line("check: {"),
            ),
        ] {
            let want = format!("rolegate.yaml:{at}: error: {msg}");
            assert!(
                errs.iter().any(|e| e.starts_with(&want)),
                "no {want:?} in:\n{}",
                errs.join("\n")
            );
        }
    }

    #[test]
    fn unknown_pool_keys_and_balances_are_errors() {
        for (text, needle) in [
            (
                "upstreams:\n  app:\n    url: \"http://a.test\"\n    health: { failure: 3 }\n",
                "unknown field `failure`",
            ),
            (
                "upstreams:\n  app:\n    url: \"http://a.test\"\n    health: { check: { path: /h, every: 1s } }\n",
                "unknown field `every`",
            ),
            (
                "upstreams:\n  app:\n    url: \"http://a.test\"\n    balance: random\n",
                "unknown variant `random`",
            ),
        ] {
            let errs = load_main(text).err().unwrap();
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("rolegate.yaml:4:") && e.contains(needle)),
                "{needle}: {errs:?}"
            );
        }
    }

    #[test]
    fn capability_levels_compile_into_the_policy() {
        let rules = "\
capability_levels:
  channel: [view, reply, manage]
  report: [read, write]
roles:
  lead: { grants: [channel.a.b.manage] }
  writer: { grants: [report.q.write] }
routes:
  - { name: read, match: { methods: [GET], path: /a/b }, require: channel.a.b.view }
  - { name: post, match: { methods: [POST], path: /a/b }, require: channel.a.b.reply }
  - { name: report, match: { methods: [GET], path: /q }, require: report.q.read }
";
        let (rt, diags) = load_rules(&[("rules/levels.yaml", rules)]);
        let rt = rt.unwrap_or_else(|| panic!("{diags:#?}"));
        // No "requires X, which no role grants" and no unused role: the
        // implied levels count.
        assert!(
            diags
                .iter()
                .all(|d| d.contains("identity.issuers is empty")),
            "{diags:#?}"
        );
        let p = &rt.policy;
        assert!(p.grants_cover("channel.a.b.view"));
        assert!(p.grants_cover("report.q.read"));
        assert!(!p.grants_cover("report.q.admin"));
        assert!(p.grant_covers("channel.x.manage", "channel.x.reply"));
        assert!(!p.grant_covers("channel.x.reply", "channel.x.manage"));
    }

    #[test]
    fn broken_ladders_and_unknown_levels_are_errors_with_file_and_line() {
        let levels = "\
capability_levels:
  channel: [view, reply, manage]
  empty: []
  twice: [view, view]
  absent: [none, view]
  channel.whatsapp: [view, reply]
";
        let rules = "\
roles:
  lead: { grants: [channel.a.b.edit] }
  ok: { grants: [channel.a.b.manage] }
profiles:
  p: { grants: [channel.a.b.none] }
masks:
  m: { unmask_with: channel.a.pii, fields: [{ path: $..phone, as: last4 }] }
routes:
  - { name: r, match: { path: /a/b }, require: channel.a.b.admin, mask: m }
";
        let again = "capability_levels:\n  channel: [view, reply]\n";
        let (rt, diags) = load_rules(&[
            ("rules/a-levels.yaml", levels),
            ("rules/b-roles.yaml", rules),
            ("rules/c-again.yaml", again),
        ]);
        assert!(rt.is_none(), "{diags:#?}");
        for want in [
            "rules/a-levels.yaml:3: error: capability_levels empty: empty ladder",
            "rules/a-levels.yaml:4: error: capability_levels twice: level `view` is listed twice",
            "rules/a-levels.yaml:5: error: capability_levels absent: `none` is not a level",
            "rules/a-levels.yaml:6: error: capability_levels channel.whatsapp: overlaps the ladder `channel`",
            "rules/b-roles.yaml:2: error: role lead: `channel.a.b.edit` is under the level ladder `channel` but `edit` is not one of its levels (view, reply, manage)",
            "rules/b-roles.yaml:5: error: profile p: `channel.a.b.none`: `none` is not a level of `channel`",
            "rules/b-roles.yaml:7: error: mask m: unmask_with: `channel.a.pii` is under the level ladder `channel`",
            "rules/b-roles.yaml:9: error: route r: `channel.a.b.admin` is under the level ladder `channel`",
            "rules/c-again.yaml:2: error: capability level ladder \"channel\" is already defined at rules/a-levels.yaml:2",
        ] {
            assert!(
                diags.iter().any(|d| d.starts_with(want)),
                "missing {want:?} in {diags:#?}"
            );
        }
        // `ok` is fine.
        assert!(
            !diags.iter().any(|d| d.contains("error: role ok")),
            "{diags:#?}"
        );
    }

    #[test]
    fn inline_capability_levels_in_the_main_file() {
        let main = format!(
            "{MAIN}capability_levels:\n  channel: [view, reply]\nroles:\n  r: {{ grants: [channel.a.reply] }}\nroutes:\n  - {{ name: x, match: {{ path: /x }}, require: channel.a.view }}\n"
        );
        let loaded = load_from_text(
            "rolegate.yaml",
            &main,
            &std::env::temp_dir(),
            RulesSource::Embedded(vec![]),
        );
        let rt = match loaded {
            Ok(l) => l.runtime,
            Err(d) => panic!("{d:#?}"),
        };
        assert!(rt.policy.grants_cover("channel.a.view"));
        let bad = format!("{MAIN}capability_levels:\n  channel: []\n");
        let diags = match load_from_text(
            "rolegate.yaml",
            &bad,
            &std::env::temp_dir(),
            RulesSource::Embedded(vec![]),
        ) {
            Ok(_) => panic!("an empty ladder loaded"),
            Err(d) => d,
        };
        assert!(
            diags.iter().any(|d| d
                .to_string()
                .starts_with("rolegate.yaml:4: error: capability_levels channel: empty ladder")),
            "{diags:#?}"
        );
    }
}
