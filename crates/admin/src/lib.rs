//! keyhole-admin: what every keyhole server shares, so that they behave alike.
//! The admin endpoints (`/metrics` in OpenMetrics text, `/healthz`, `/readyz`),
//! the metrics every server shares ([`metrics`]: build info, process), the
//! plain-HTTP listener that serves them until told to stop, the shutdown
//! signal (SIGTERM or Ctrl-C), and the logging set-up (JSON in production).
#![forbid(unsafe_code)]

pub mod metrics;
pub mod watched;

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
    /// The metrics, encoded as OpenMetrics text (one `# EOF`): a registry with
    /// [`metrics::register`] at its root and the server's families below it.
    fn metrics(&self) -> String;
    /// `Err(why)` while the server should get no traffic (starting, draining):
    /// `/readyz` answers 503 with `why`.
    fn ready(&self) -> Result<(), &'static str> {
        Ok(())
    }
    /// `Err(why)` when the server is stuck and only a restart helps: `/healthz`
    /// answers 503 with `why`, and the kubelet restarts the container. Called on
    /// every probe: cheap, no I/O.
    fn live(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// `/healthz` (liveness) and `/readyz` (readiness), for any listener.
pub fn probes(admin: Arc<dyn Admin>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(admin)
}

async fn healthz(State(admin): State<Arc<dyn Admin>>) -> impl IntoResponse {
    answer(admin.live())
}

async fn readyz(State(admin): State<Arc<dyn Admin>>) -> impl IntoResponse {
    answer(admin.ready())
}

fn answer(state: Result<(), &'static str>) -> (StatusCode, &'static str) {
    match state {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    struct Probe {
        stuck: AtomicBool,
    }

    impl Admin for Probe {
        fn metrics(&self) -> String {
            "# EOF\n".into()
        }
        fn ready(&self) -> Result<(), &'static str> {
            Err("starting")
        }
        fn live(&self) -> Result<(), &'static str> {
            if self.stuck.load(Ordering::Relaxed) { Err("the loop stopped") } else { Ok(()) }
        }
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let r = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_asks_live_and_readyz_asks_ready() {
        let probe = Arc::new(Probe { stuck: AtomicBool::new(false) });
        let router = router(probe.clone());
        assert_eq!(get(&router, "/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(get(&router, "/readyz").await, (StatusCode::SERVICE_UNAVAILABLE, "starting".into()));
        probe.stuck.store(true, Ordering::Relaxed);
        assert_eq!(get(&router, "/healthz").await, (StatusCode::SERVICE_UNAVAILABLE, "the loop stopped".into()));
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "# EOF\n"));
    }
}
