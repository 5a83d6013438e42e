//! keyhole-admin: what every keyhole server shares, so that they behave alike.
//! The admin endpoints (`/metrics` in OpenMetrics text, `/healthz`, `/readyz`),
//! the plain-HTTP listener that serves them until told to stop, the shutdown
//! signal (SIGTERM or Ctrl-C), and the logging set-up (JSON in production).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a server tells its admin endpoints.
pub trait Admin: Send + Sync + 'static {
    /// The metrics, encoded as OpenMetrics text.
    fn metrics(&self) -> String;
    /// `Err(why)` while the server should get no traffic (starting, draining).
    fn ready(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// `/healthz` and `/readyz`, for any listener.
pub fn probes(admin: Arc<dyn Admin>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(readyz)).with_state(admin)
}

async fn readyz(State(admin): State<Arc<dyn Admin>>) -> impl IntoResponse {
    match admin.ready() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// `/metrics` and the probes: what the admin listener serves.
pub fn router(admin: Arc<dyn Admin>) -> Router {
    let metrics = Router::new()
        .route(
            "/metrics",
            get(|State(admin): State<Arc<dyn Admin>>| async move {
                ([(header::CONTENT_TYPE, OPENMETRICS)], admin.metrics())
            }),
        )
        .with_state(admin.clone());
    metrics.merge(probes(admin))
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves [`router`] on `listener` until `stop` resolves, then finishes the
/// requests in flight.
pub fn spawn(
    listener: TcpListener,
    admin: Arc<dyn Admin>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(admin)).with_graceful_shutdown(stop).await {
            tracing::warn!(error = %e, "the admin listener stopped");
        }
    })
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines.
    Text,
}

/// Logs on stderr, filtered by `KEYHOLE_LOG` (default `default_filter`).
pub fn init_logs(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYHOLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
