//! The `rolegate` command line: a thin shell over the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use rolegate::config::{self, Diagnostic, Loaded, Severity};
use rolegate::session::Store;
use rolegate::{Gateway, explain, policytest, proxy, telemetry, token};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            telemetry::init(true);
            let Some(loaded) = load(&config) else {
                return Ok(ExitCode::from(2));
            };
            print_diagnostics(&loaded.warnings);
            serve(loaded)
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
        Command::Demo { listen, admin } => demo(listen, admin),
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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

/// SIGHUP's default action ends the process; until hot reload exists the
/// gateway ignores it (and says so), so a `kill -HUP` meant as "reload"
/// does not take the gateway down. Must run inside the runtime.
fn ignore_hangup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::warn!(
                            "SIGHUP received: configuration reload is not supported yet; ignored (restart to apply a new config)"
                        );
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP; it will stop the gateway"),
        }
    }
}

fn serve(loaded: Loaded) -> Result<ExitCode> {
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
    let rt = tokio_runtime()?;
    rt.block_on(async move {
        // Before anything listens: once the port answers, SIGHUP is safe.
        ignore_hangup();
        let store = Store::open(&loaded.runtime.sessions)
            .await
            .map_err(anyhow::Error::msg)
            .context("opening the session store")?;
        let listeners = proxy::listener::bind(&loaded.runtime.listen).await?;
        let admin = match &loaded.runtime.admin {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a.addr)
                    .await
                    .with_context(|| format!("binding admin {}", a.addr))?,
            ),
            None => None,
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
        let gateway = Gateway::new(loaded.runtime, store);
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

        let state = std::env::temp_dir().join(format!("rolegate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        #[cfg(unix)]
        {
            // The demo's secrets and session journal: owner-only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", state.display()))?;
        }
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
        proxy::listener::run(gateway, listener, Some(admin_listener), shutdown_signal()).await;
        let _ = std::fs::remove_dir_all(&state);
        Ok(ExitCode::SUCCESS)
    })
}
