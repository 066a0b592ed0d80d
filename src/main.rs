//! The `rolegate` command line: a thin shell over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use rolegate::config::{self, Diagnostic, Loaded, Severity};
use rolegate::session::Store;
use rolegate::{Gateway, explain, policytest, proxy, reload, telemetry, token};

#[derive(Parser)]
#[command(
    name = "rolegate",
    version,
    about = "Reverse-proxy authorization gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(short, long, default_value = "rolegate.yaml")]
        config: PathBuf,
    },
    /// Validate and lint the configuration and rules.
    Check {
        #[arg(short, long, default_value = "rolegate.yaml")]
        config: PathBuf,
        /// Exit 1 when there are warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Print the full decision trace for one request, offline.
    Explain {
        #[arg(short, long, default_value = "rolegate.yaml")]
        config: PathBuf,
        /// A JWT, verified as the gateway would.
        #[arg(long, conflicts_with = "claims", required_unless_present = "claims")]
        token: Option<String>,
        /// A JSON claims object (not verified: what-if analysis).
        #[arg(long)]
        claims: Option<String>,
        /// A relation to take as answered, for this principal:
        /// `active_conversation(c1)=true` (repeatable). Relation sources are
        /// never called; any other relation is unknown.
        #[arg(long = "relation", value_name = "NAME(ARGS)=true|false")]
        relations: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// HTTP method, e.g. GET.
        method: String,
        /// `/path?query` or `http://host/path?query`.
        url: String,
    },
    /// Mint a development token with a `dev: true` HMAC issuer.
    Token {
        #[arg(short, long, default_value = "rolegate.yaml")]
        config: PathBuf,
        #[arg(long)]
        sub: String,
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        partners: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        teams: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        grants: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 8h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Session id (random by default).
        #[arg(long)]
        sid: Option<String>,
        /// The dev issuer to use, when there are several.
        #[arg(long)]
        iss: Option<String>,
    },
    /// Run policy test tables.
    Test {
        #[arg(short, long, default_value = "rolegate.yaml")]
        config: PathBuf,
        /// Print every case, not only failures and pending ones.
        #[arg(short, long)]
        verbose: bool,
        /// A table file or a directory of tables.
        #[arg(default_value = "rules/tests")]
        path: PathBuf,
    },
    /// Export or import the user directory as CSV, through a running
    /// gateway's admin API.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Run the built-in demo: sample backend + gateway on loopback.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Write the users as CSV to standard output (GET /directory/users.csv).
    Export {
        /// Only the users of this partner.
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Upload a CSV file (POST /directory/users.csv): all rows or none are
    /// applied. Prints the answer; lists every bad row on standard error.
    Import {
        /// The CSV file (`-`: standard input).
        file: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API listens and the token it wants.
#[derive(clap::Args)]
struct AdminArgs {
    /// Configuration file, read for `admin.addr` and `admin.token_file`
    /// (only when --admin or --token-file is not given).
    #[arg(short, long, default_value = "rolegate.yaml")]
    config: PathBuf,
    /// The admin listener, HOST:PORT [default: the config's `admin.addr`].
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// File holding the admin token [default: the config's
    /// `admin.token_file`].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

fn print_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// Loads a config or prints every error; `None` means exit 2.
fn load(path: &Path) -> Option<Loaded> {
    match config::load(path) {
        Ok(l) => Some(l),
        Err(diags) => {
            print_diagnostics(&diags);
            let n = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("{}: {n} error(s); not loaded", path.display());
            None
        }
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Log lines still buffered (see `telemetry::LogBuffer`).
    telemetry::flush();
    code
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            telemetry::init(true);
            // Read by absolute path: a reload reads the same files, and
            // paths in the config resolve the same way, whatever the
            // working directory is by then.
            let config = std::path::absolute(&config).unwrap_or(config);
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            print_diagnostics(&loaded.warnings);
            serve(loaded, config)
        }
        Command::Check { config, strict } => {
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            print_diagnostics(&loaded.warnings);
            let rt = &loaded.runtime;
            println!(
                "{}: ok ({} routes, {} upstreams, {} issuers, {} warning(s))",
                config.display(),
                rt.routes.len(),
                rt.upstreams.len(),
                rt.auth.issuers().len(),
                loaded.warnings.len()
            );
            Ok(if strict && !loaded.warnings.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Explain {
            config,
            token,
            claims,
            relations,
            json,
            method,
            url,
        } => {
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            let cred = match (&token, &claims) {
                (Some(t), _) => explain::Credential::Token(t),
                (None, Some(c)) => explain::Credential::Claims(c),
                (None, None) => anyhow::bail!("give --token or --claims"),
            };
            let mut stated = Vec::new();
            for r in &relations {
                let (k, v) = r.rsplit_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--relation {r:?}: expected NAME(ARGS)=true|false")
                })?;
                let v: bool = v
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--relation {r:?}: expected =true or =false"))?;
                stated.push((k, v));
            }
            let stated = rolegate::policy::Stated::parse(stated)
                .map_err(|e| anyhow::anyhow!("--relation: {e}"))?;
            let report = explain::explain(&loaded.runtime, &method, &url, cred, &stated);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", explain::render_text(&report));
            }
            Ok(if report["decision"] == "allow" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Token {
            config,
            sub,
            roles,
            partners,
            teams,
            profiles,
            grants,
            ttl,
            sid,
            iss,
        } => {
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            let ttl = config::parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            let req = token::TokenRequest {
                subject: sub,
                roles,
                partners,
                teams,
                profiles,
                grants,
                ttl,
                issuer: iss,
                session: sid,
            };
            match token::mint(&loaded.runtime.auth, &req) {
                Ok(t) => {
                    println!("{t}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Test {
            config,
            verbose,
            path,
        } => {
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            let summary = policytest::run_path(&loaded.runtime, &path);
            print!("{}", policytest::render(&summary, verbose));
            Ok(if summary.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Users { command } => users(command),
        Command::Demo { listen, admin } => demo(listen, admin),
    }
}

// ------------------------------------------------------------------ users
//
// `rolegate users export|import`: thin clients of the admin API's
// `/directory/users.csv`; the file format and its validation live in
// `rolegate::directory::csv`, applied by the gateway.

/// How long to wait for the TCP connection to the admin listener.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole admin call may take (an import of 10,000 users writes
/// each to the store).
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The admin API to call: `HOST:PORT` and the bearer token.
struct AdminTarget {
    addr: String,
    token: String,
}

fn users(command: UsersCommand) -> Result<ExitCode> {
    match command {
        UsersCommand::Export { partner, admin } => {
            let Some(target) = admin_target(&admin)? else {
                return Ok(ExitCode::from(2));
            };
            let path = match &partner {
                Some(p) => format!("/directory/users.csv?partner={}", query_escape(p)),
                None => "/directory/users.csv".to_string(),
            };
            let (status, body) = admin_call(&target, http::Method::GET, &path, None)?;
            if status.is_success() {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&body)
                    .and_then(|()| out.flush())
                    .context("writing to standard output")?;
                return Ok(ExitCode::SUCCESS);
            }
            Ok(refused("export", status, &body))
        }
        UsersCommand::Import { file, admin } => {
            let text = if file.as_os_str() == "-" {
                use std::io::Read;
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading standard input")?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let Some(target) = admin_target(&admin)? else {
                return Ok(ExitCode::from(2));
            };
            let (status, body) = admin_call(
                &target,
                http::Method::POST,
                "/directory/users.csv",
                Some(text),
            )?;
            if status.is_success() || status.is_client_error() {
                let answer = String::from_utf8_lossy(&body);
                println!("{}", answer.trim_end());
            }
            if status.is_success() {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(refused("import", status, &body))
        }
    }
}

/// Reports an answer other than 2xx on standard error: 4xx (the gateway
/// refused) → exit 1, with one line per bad row when the answer lists
/// them; anything else → exit 2.
fn refused(what: &str, status: http::StatusCode, body: &[u8]) -> ExitCode {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = |k: &str| {
        json.as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let why = match (text("error"), text("reason")) {
        (Some(code), Some(reason)) => format!("{code}: {reason}"),
        (Some(code), None) => code,
        (None, Some(reason)) => reason,
        (None, None) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if !status.is_client_error() {
        eprintln!("error: the admin API answered {status} to the {what}: {why}");
        return ExitCode::from(2);
    }
    eprintln!("error: the gateway refused the {what} ({status}): {why}");
    let rows = json
        .as_ref()
        .and_then(|v| v.get("rows"))
        .and_then(|r| r.as_array());
    for r in rows.into_iter().flatten() {
        let row = r.get("row").and_then(|n| n.as_u64()).unwrap_or(0);
        let reason = r.get("reason").and_then(|s| s.as_str()).unwrap_or("");
        eprintln!("row {row}: {reason}");
    }
    ExitCode::from(1)
}

/// The admin API's address and token: the flags, else the config's
/// `admin:` (loaded as `serve` loads it, so `token_file` resolves against
/// the config's directory). `None`: the config did not load (its errors
/// are printed).
fn admin_target(args: &AdminArgs) -> Result<Option<AdminTarget>> {
    let from_config = match (&args.admin, &args.token_file) {
        (Some(_), Some(_)) => None,
        _ => {
            let Some(loaded) = load(&args.config) else {
                return Ok(None);
            };
            let Some(admin) = loaded.runtime.admin else {
                anyhow::bail!(
                    "{}: no `admin:` section, so no admin API to call: give --admin and --token-file",
                    args.config.display()
                );
            };
            Some(admin)
        }
    };
    let addr = match (&args.admin, &from_config) {
        (Some(a), _) => {
            let ok = a
                .parse::<http::uri::Authority>()
                .is_ok_and(|au| au.port_u16().is_some() && !a.contains('@'));
            if !ok {
                anyhow::bail!("--admin {a:?}: expected HOST:PORT, e.g. 127.0.0.1:9901");
            }
            a.clone()
        }
        (None, Some(c)) => {
            // A listener on every address is reached on loopback.
            let mut addr = c.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            addr.to_string()
        }
        (None, None) => anyhow::bail!("no admin address: give --admin"),
    };
    let token = match (&args.token_file, from_config) {
        (Some(f), _) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("--token-file {}", f.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                anyhow::bail!("--token-file {}: the file is empty", f.display());
            }
            t
        }
        (None, Some(c)) => c.token,
        (None, None) => anyhow::bail!("no admin token: give --token-file"),
    };
    Ok(Some(AdminTarget { addr, token }))
}

/// A query-string value: everything but RFC 3986's unreserved characters
/// percent-encoded (UTF-8 bytes).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One admin API call over plain HTTP/1.1 (hyper-util's client on a
/// current-thread runtime: one request, nothing to run in parallel).
/// Errors (exit 2): no connection, no answer in time, a cut answer.
fn admin_call(
    target: &AdminTarget,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(http::StatusCode, bytes::Bytes)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::{Client, connect::HttpConnector};

    let url = format!("http://{}{path}", target.addr);
    let mut req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", target.token),
        )
        .header(http::header::ACCEPT, "text/csv, application/json");
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "text/csv; charset=utf-8");
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("building the request to {url}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(ADMIN_CONNECT_TIMEOUT));
        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let call = async {
            let res = client.request(req).await.map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "cannot reach the admin API at http://{}",
                    target.addr
                ))
            })?;
            let status = res.status();
            let body = res
                .into_body()
                .collect()
                .await
                .with_context(|| format!("reading the answer of {url}"))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(ADMIN_CALL_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("{url}: no answer within {} s", ADMIN_CALL_TIMEOUT.as_secs()),
        }
    })
}

/// The gateway's runtime: one worker per CPU the process may use, or
/// `TOKIO_WORKER_THREADS` (checked here: tokio would panic on a bad value).
/// One worker is tokio's single-threaded scheduler, as one nginx worker is
/// one event loop: with nobody to steal work from, the multi-threaded
/// scheduler's run queues, wake-ups across threads and per-batch clock
/// reads were a few per cent of each request's CPU.
fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    let workers = match std::env::var_os("TOKIO_WORKER_THREADS") {
        Some(v) => v
            .to_str()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .with_context(|| format!("TOKIO_WORKER_THREADS={v:?}: not a positive integer"))?,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().build().context("starting the async runtime")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The operator's signals: SIGHUP reloads the configuration (as `POST
/// /reload` does; a failed reload keeps the old one and logs why), SIGUSR1
/// opens the audit log anew (log rotation). Registered first thing in the
/// runtime, before the store opens: both signals' default action ends the
/// process, and a service manager may send them as soon as it exists. One
/// that arrives before the gateway runs is acted on once it does.
#[cfg(unix)]
struct OperatorSignals {
    hangup: Option<tokio::signal::unix::Signal>,
    user1: Option<tokio::signal::unix::Signal>,
}

#[cfg(not(unix))]
struct OperatorSignals;

impl OperatorSignals {
    /// Must run inside the runtime.
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let take = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle {name}; it will stop the gateway");
                    None
                }
            };
            OperatorSignals {
                hangup: take(SignalKind::hangup(), "SIGHUP"),
                user1: take(SignalKind::user_defined1(), "SIGUSR1"),
            }
        }
        #[cfg(not(unix))]
        OperatorSignals
    }

    /// Acts on the signals for `gateway` from now on.
    fn serve(self, gateway: &std::sync::Arc<Gateway>) {
        #[cfg(unix)]
        {
            if let Some(mut hup) = self.hangup {
                let gw = std::sync::Arc::downgrade(gateway);
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let Some(gw) = gw.upgrade() else { return };
                        tracing::info!(target: "rolegate::reload", "SIGHUP received: reloading the configuration");
                        gw.reloader().reload(&gw, reload::Trigger::Signal).await;
                    }
                });
            }
            if let Some(mut usr1) = self.user1 {
                let gw = std::sync::Arc::downgrade(gateway);
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        let Some(gw) = gw.upgrade() else { return };
                        tracing::info!(
                            "SIGUSR1 received: the audit log is opened anew at its next record"
                        );
                        gw.reopen_audit();
                    }
                });
            }
        }
        #[cfg(not(unix))]
        let _ = gateway;
    }
}

fn serve(loaded: Loaded, config_path: PathBuf) -> Result<ExitCode> {
    if loaded.runtime.auth.issuers().iter().any(|i| i.dev) {
        tracing::warn!(
            "a `dev: true` issuer is configured: tokens can be minted with `rolegate token`; never use it in production"
        );
    }
    for up in loaded
        .runtime
        .upstreams
        .iter()
        .filter(|u| u.insecure_skip_verify)
    {
        tracing::warn!(
            upstream = %up.name,
            "insecure_skip_verify: the upstream's TLS certificate is not verified; anyone on the network path can impersonate it"
        );
    }
    // Before the runtime starts its threads: it clears LISTEN_FDS.
    let inherited = proxy::listener::inherited(
        &loaded.runtime.listen,
        loaded.runtime.admin.as_ref().map(|a| a.addr),
    )
    .context("socket activation")?;
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let signals = OperatorSignals::register();
        let store = Store::open(&loaded.runtime.sessions)
            .await
            .map_err(anyhow::Error::msg)
            .context("opening the session store")?;
        let rt = &loaded.runtime;
        // Owner-chosen columns stored under a record's exact spelling by
        // an older version: folded into the lower-cased key before any
        // request is served.
        match rolegate::admin::masks::fold_legacy_choices(
            &store,
            rt.owner_masks.keys().map(String::as_str),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                choices = n,
                "owner-chosen column choices folded to lower-cased records"
            ),
            Err(e) => anyhow::bail!("folding owner-chosen column choices: {e}"),
        }
        let (listeners, admin) = match inherited {
            Some(fds) => {
                tracing::info!(
                    sockets = fds.public.len() + usize::from(fds.admin.is_some()),
                    "listening on sockets handed over by socket activation"
                );
                let public = fds
                    .public
                    .into_iter()
                    .map(tokio::net::TcpListener::from_std)
                    .collect::<std::io::Result<Vec<_>>>()?;
                let admin = fds
                    .admin
                    .map(tokio::net::TcpListener::from_std)
                    .transpose()?;
                (public, admin)
            }
            None => (proxy::listener::bind(&rt.listen).await?, None),
        };
        let admin = match (admin, &rt.admin) {
            (Some(l), _) => Some(l),
            (None, Some(a)) => Some(
                tokio::net::TcpListener::bind(a.addr)
                    .await
                    .with_context(|| format!("binding admin {}", a.addr))?,
            ),
            (None, None) => None,
        };
        for (l, spec) in listeners.iter().zip(&loaded.runtime.listen.listeners) {
            tracing::info!(
                addr = %l.local_addr()?,
                tls = spec.tls.is_some(),
                client_auth = ?spec.client_auth,
                h2c = spec.h2c,
                redirect_https = spec.redirect.is_some(),
                "public listener"
            );
        }
        let first = listeners.first().map(|l| l.local_addr()).transpose()?;
        tracing::info!(
            addr = %first.map(|a| a.to_string()).unwrap_or_default(),
            admin = ?admin.as_ref().and_then(|l| l.local_addr().ok()),
            routes = loaded.runtime.routes.len(),
            "rolegate listening"
        );
        for d in reload::orphaned_owner_choices(&loaded.runtime, &store)
            .into_iter()
            .chain(reload::loose_secrets(&loaded.sources))
        {
            tracing::warn!(target: "rolegate::config", "{d}");
        }
        let gateway = Gateway::new(loaded.runtime, store);
        gateway
            .reloader()
            .configure(Some(config_path), loaded.sources);
        signals.serve(&gateway);
        tokio::spawn(reload::watch(std::sync::Arc::downgrade(&gateway)));
        proxy::listener::run_all(gateway, listeners, admin, shutdown_signal()).await;
        tracing::info!("rolegate stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> Result<ExitCode> {
    telemetry::init(false);
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo backend")?;
        let backend_addr = backend.local_addr()?;
        tokio::spawn(rolegate::demo::serve_backend(backend));

        // The demo's secrets and session journal: a directory made afresh
        // (never one that was there: another local user could own it, or
        // have planted links in it), owner-only from its creation on.
        let state = std::env::temp_dir().join(format!(
            "rolegate-demo-{}-{}",
            std::process::id(),
            &rolegate::token::random_id()[..8]
        ));
        let mut dir = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(&state)
            .with_context(|| format!("creating {}", state.display()))?;
        let loaded = match rolegate::demo::runtime(listen, admin, backend_addr, &state) {
            Ok(l) => l,
            Err(diags) => {
                print_diagnostics(&diags);
                anyhow::bail!("the embedded demo configuration did not load");
            }
        };
        let store = Store::open(&loaded.runtime.sessions)
            .await
            .map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let admin_listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("binding admin {admin}"))?;
        let addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        println!(
            "{}",
            rolegate::demo::banner(
                &loaded.runtime,
                addr,
                admin_addr,
                Duration::from_secs(8 * 3600),
                &state,
            )
        );
        let gateway = Gateway::new(loaded.runtime, store);
        gateway.reloader().configure(None, loaded.sources);
        proxy::listener::run(gateway, listener, Some(admin_listener), shutdown_signal()).await;
        let _ = std::fs::remove_dir_all(&state);
        Ok(ExitCode::SUCCESS)
    })
}
