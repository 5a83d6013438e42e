//! The server's flags: the `keyhole-webhook` binary and `keyhole webhook` both
//! parse these and call [`Cli::main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keyhole_admin::LogFormat;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{App, Limits};
use keyhole_contract::config::ConfigError;
use keyhole_contract::duration;

/// keyhole's admission webhook: POST /mutate for pods, POST /validate for workloads.
#[derive(clap::Parser)]
#[command(name = "keyhole-webhook", version)]
pub struct Cli {
    /// The operator's config (injector image, stores).
    #[arg(long, env = "KEYHOLE_CONFIG")]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, env = "KEYHOLE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Serving certificate (PEM); reloaded when the file changes.
    #[arg(long, env = "KEYHOLE_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long, env = "KEYHOLE_TLS_KEY")]
    pub tls_key: PathBuf,
    #[arg(long, env = "KEYHOLE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYHOLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// After SIGTERM, how long the webhook keeps answering while not ready,
    /// before it stops accepting connections (then it drains for up to 15 s).
    #[arg(long, env = "KEYHOLE_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration::parse_flag)]
    pub shutdown_grace: Duration,
    /// How long a client has to send one review's body and get the answer.
    #[arg(long, env = "KEYHOLE_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration::parse_flag)]
    pub request_timeout: Duration,
    /// How often the certificate files are re-read.
    #[arg(long, env = "KEYHOLE_CERT_RELOAD_SECONDS", default_value_t = 5)]
    pub cert_reload_seconds: u64,
    /// How often the config file is re-read; a changed, valid one replaces the
    /// config in use, a broken one is reported and the last good one stays.
    #[arg(long, env = "KEYHOLE_CONFIG_RELOAD", default_value = "5s", value_parser = duration::parse_flag)]
    pub config_reload: Duration,
}

impl Cli {
    /// Logs, crypto provider, config, then serves until SIGTERM.
    pub fn main(self) -> Result<()> {
        let Self {
            config,
            log_format,
            tls_cert,
            tls_key,
            listen,
            metrics_listen,
            shutdown_grace,
            request_timeout,
            cert_reload_seconds,
            config_reload,
        } = self;
        keyhole_admin::init_logs(log_format, "info");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config_path = config;
        let seen = std::fs::read(&config_path)
            .map_err(|source| ConfigError::Read { path: config_path.display().to_string(), source })?;
        let config = crate::reload::load(&config_path, &seen)?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async move {
            let metrics = Arc::new(Metrics::default());
            let certs = CertStore::load(&tls_cert, &tls_key, metrics.clone())?;
            certs.spawn_reloader(Duration::from_secs(cert_reload_seconds.max(1)));
            let listener = TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
            let metrics_listener = match metrics_listen {
                Some(addr) => Some(keyhole_admin::bind(addr).await.with_context(|| format!("listen on {addr}"))?),
                None => None,
            };
            tracing::info!(%listen, metrics = ?metrics_listen, stores = config.stores.stores.len(), "keyhole-webhook serving");
            let limits = Limits { shutdown_grace, request_timeout, ..Limits::default() };
            let app = App::with_limits(config, metrics, limits);
            crate::reload::spawn(app.clone(), config_path, seen, config_reload.max(Duration::from_secs(1)));
            crate::serve(listener, metrics_listener, app, certs, keyhole_admin::shutdown_signal()).await?;
            tracing::info!("stopped");
            Ok(())
        })
    }
}
