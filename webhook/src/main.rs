use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use keyhole_webhook::metrics::Metrics;
use keyhole_webhook::rotation::{self, RotationConfig, controller::Settings, lease::LeaseConfig, workload::Kind};
use keyhole_webhook::tls::CertStore;
use keyhole_webhook::{App, Config};
use tokio::net::TcpListener;

/// mimalloc rather than glibc's malloc: a review allocates many small strings on
/// two threads, and glibc's arenas cost about a tenth of a review's CPU here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keyhole's admission webhook.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    /// The operator's config (injector image, stores).
    #[arg(long, env = "KEYHOLE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: json (production) or text.
    #[arg(long, env = "KEYHOLE_LOG_FORMAT", default_value = "json", global = true)]
    log_format: String,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
struct ServeArgs {
    /// Serving certificate (PEM); reloaded when the file changes.
    #[arg(long, env = "KEYHOLE_TLS_CERT", required = true)]
    tls_cert: Option<PathBuf>,
    /// Serving key (PEM).
    #[arg(long, env = "KEYHOLE_TLS_KEY", required = true)]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "KEYHOLE_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYHOLE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often the certificate files are re-read.
    #[arg(long, env = "KEYHOLE_CERT_RELOAD_SECONDS", default_value_t = 5)]
    cert_reload_seconds: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Print the pods of a manifest as the webhook would patch them (or the denial).
    Render {
        /// A manifest file; `-` or nothing for stdin.
        file: Option<PathBuf>,
    },
    /// Run the rotation controller: roll workloads whose referenced values got a new version.
    Rotate(RotateArgs),
    /// Roll one workload now, with the rotation controller's own patch.
    Roll(RollArgs),
}

#[derive(Args)]
struct RotateArgs {
    /// The poll interval (a workload's keyhole.dev/refresh-interval overrides it), and
    /// the window of the rollout budget.
    #[arg(long, env = "KEYHOLE_ROTATION_INTERVAL", default_value = "60s", value_parser = rotation::parse_duration)]
    interval: Duration,
    /// Rollouts started per interval at most; the rest follow in the next ones.
    #[arg(long, env = "KEYHOLE_MAX_ROLLOUTS", default_value_t = 10)]
    max_rollouts: usize,
    /// The Lease that elects the one active controller.
    #[arg(long, env = "KEYHOLE_LEASE_NAME", default_value = "keyhole-rotation")]
    lease_name: String,
    #[arg(long, env = "KEYHOLE_LEASE_NAMESPACE", default_value = "keyhole-system")]
    lease_namespace: String,
    /// How long a silent holder keeps the lease.
    #[arg(long, env = "KEYHOLE_LEASE_DURATION", default_value = "15s", value_parser = rotation::parse_duration)]
    lease_duration: Duration,
    /// This instance's name in the Lease; default: the host name (the pod name).
    #[arg(long, env = "KEYHOLE_IDENTITY")]
    identity: Option<String>,
    /// Watch one namespace only; default: the whole cluster.
    #[arg(long, env = "KEYHOLE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    #[command(flatten)]
    tokens: TokenArgs,
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYHOLE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Args)]
struct TokenArgs {
    /// Directory of the projected service-account tokens, one file per store audience.
    #[arg(long, env = "KEYHOLE_TOKEN_DIR", default_value = rotation::DEFAULT_TOKEN_DIR)]
    token_dir: PathBuf,
}

#[derive(Args)]
struct RollArgs {
    /// `<kind>/<name>`: deployment/web, statefulset/db, daemonset/agent.
    #[arg(value_parser = rotation::workload::parse_target)]
    target: (Kind, String),
    #[arg(short, long, env = "KEYHOLE_NAMESPACE", default_value = "default")]
    namespace: String,
    #[command(flatten)]
    tokens: TokenArgs,
}

fn main() -> Result<()> {
    let Cli { config, log_format, serve, command } = Cli::parse();
    init_logs(&log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config_path = config.context("--config (or KEYHOLE_CONFIG) is required")?;
    let config = Config::load(&config_path)?;
    match command {
        Some(Command::Render { file }) => render(&config, file),
        Some(Command::Rotate(args)) => runtime()?.block_on(rotate(config, args)),
        Some(Command::Roll(args)) => runtime()?.block_on(roll(config, args)),
        None => runtime()?.block_on(run(config, serve)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

async fn rotate(config: Config, args: RotateArgs) -> Result<()> {
    let RotateArgs {
        interval,
        max_rollouts,
        lease_name,
        lease_namespace,
        lease_duration,
        identity,
        watch_namespace,
        tokens: TokenArgs { token_dir },
        metrics_listen,
    } = args;
    let identity = identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("keyhole-rotation-{}", std::process::id()));
    let config = RotationConfig {
        stores: config.stores,
        settings: Settings { interval, max_rollouts, namespace: watch_namespace },
        lease: LeaseConfig { name: lease_name, namespace: lease_namespace, identity, duration: lease_duration },
        token_dir,
    };
    rotation::run(config, metrics_listen, shutdown_signal()).await?;
    Ok(())
}

async fn roll(config: Config, args: RollArgs) -> Result<()> {
    let RollArgs { target: (kind, name), namespace, tokens: TokenArgs { token_dir } } = args;
    let rolled = rotation::roll(&config.stores, token_dir, kind, &namespace, &name).await?;
    tracing::info!(
        workload = %format!("{kind}/{namespace}/{name}"),
        digest = %rolled.digest,
        versions = rolled.versions.as_deref().unwrap_or("(kept)"),
        "rolled out"
    );
    println!(
        "{}/{name} in {namespace}: rolling out (keyhole.dev/versions={})",
        kind.as_str().to_ascii_lowercase(),
        rolled.digest
    );
    Ok(())
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

fn render(config: &Config, file: Option<PathBuf>) -> Result<()> {
    let text = match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?,
        None => std::io::read_to_string(std::io::stdin())?,
    };
    match keyhole_webhook::render::render(config, &text) {
        Ok(out) => {
            print!("{out}");
            Ok(())
        }
        Err(denials) => {
            for d in &denials {
                eprintln!("{d}");
            }
            std::process::exit(1);
        }
    }
}

async fn run(config: Config, serve: ServeArgs) -> Result<()> {
    let ServeArgs { tls_cert, tls_key, listen, metrics_listen, cert_reload_seconds } = serve;
    let (cert, key) = (tls_cert.context("--tls-cert is required")?, tls_key.context("--tls-key is required")?);
    let metrics = std::sync::Arc::new(Metrics::default());
    let certs = CertStore::load(&cert, &key, metrics.clone())?;
    certs.spawn_reloader(Duration::from_secs(cert_reload_seconds.max(1)));
    let listener = TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?),
        None => None,
    };
    tracing::info!(%listen, metrics = ?metrics_listen, stores = config.stores.stores.len(), "keyhole-webhook serving");
    let app = App::new(config, metrics);
    keyhole_webhook::serve(listener, metrics_listener, app, certs, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
