//! keyhole-webhook: the mutating admission webhook (`POST /mutate` for pods), the
//! validating webhook for workloads (`POST /validate`), health and metrics.
//!
//! The work is the pure [`mutate::mutate`]; this crate's server is thin around it,
//! and tests build it from a plain [`Config`] with [`serve`]. It serves only:
//! rotation and the operator CLI are crates of their own.
#![forbid(unsafe_code)]

pub mod cli;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod slim;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use crate::cli::Cli;
use crate::metrics::Metrics;
use crate::tls::CertStore;
pub use keyhole_contract::config::Config;

/// How long a client has to finish the TLS handshake and send its headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl App {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<App> {
        Arc::new(App { config, metrics, ready: AtomicBool::new(true) })
    }
}

impl keyhole_admin::Admin for App {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) { Ok(()) } else { Err("draining") }
    }
}

/// The admission endpoints and probes (served over TLS).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(review::mutate_handler))
        .route("/validate", post(review::validate_handler))
        .with_state(app.clone())
        .merge(keyhole_admin::probes(app))
}

/// Serves until `shutdown` resolves, then stops accepting, marks itself not
/// ready, and lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    app: Arc<App>,
    certs: Arc<CertStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        let mut rx = stop_rx.clone();
        keyhole_admin::spawn(l, app.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    });

    let acceptor = TlsAcceptor::from(certs.server_config());
    let service = router(app.clone());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT).keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(service.clone());
        let watcher = graceful.watcher();
        let http = http.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let conn = http.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    info!("shutting down: no new connections, draining in-flight requests");
    app.ready.store(false, Ordering::Relaxed);
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!("drain timed out; closing the remaining connections");
    }
    let _ = stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(())
}
