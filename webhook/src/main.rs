use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use keyhole_webhook::metrics::Metrics;
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
}

fn main() -> Result<()> {
    let Cli { config, log_format, serve, command } = Cli::parse();
    init_logs(&log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config_path = config.context("--config (or KEYHOLE_CONFIG) is required")?;
    let config = Config::load(&config_path)?;
    match command {
        Some(Command::Render { file }) => render(&config, file),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(config, serve)),
    }
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
