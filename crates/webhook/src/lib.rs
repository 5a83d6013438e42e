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
pub mod reload;
pub mod review;
pub mod slim;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use crate::cli::Cli;
use crate::metrics::Metrics;
use crate::tls::CertStore;
pub use keyhole_contract::config::Config;

/// What one client can make the server hold, and for how long. Every review is
/// bounded in time (handshake, headers, body, answer) and in memory (the body
/// caps of [`review`], the slots below), so no input, slow or huge, can take
/// the webhook down for the pods that need it.
#[derive(Clone, Debug)]
pub struct Limits {
    /// To finish the TLS handshake, and then to send a request's headers (an
    /// idle keep-alive connection is closed after it too).
    pub handshake_timeout: Duration,
    /// To send a request's body and get the answer, waiting for a slot
    /// included. The API server gives up after the webhook's `timeoutSeconds`
    /// (5 s in the manifests, 30 s at most) anyway.
    pub request_timeout: Duration,
    /// Open connections; past it the server stops accepting until one closes.
    pub max_connections: usize,
    /// Bytes of reviews read or worked on at once, counted by Content-Length
    /// (a large review counts as [`review::SMALL_BODY`] here: its own slots
    /// bound it). With hyper's read buffer capped at [`READ_BUFFER`] a
    /// connection, this is what bounds the webhook's memory.
    pub max_in_flight_bytes: usize,
    /// Reviews larger than [`review::SMALL_BODY`] read at once: with
    /// [`review::MAX_BODY`] each, what bounds the memory a flood can take.
    pub max_large_in_flight: usize,
    /// Bytes of large reviews read per second, all together. The slots bound
    /// the memory a flood of huge reviews can take; this bounds the CPU, so
    /// ordinary reviews keep their latency while it lasts. Pods over
    /// [`review::SMALL_BODY`] are rare: 48 MiB/s is a dozen of the largest a second.
    pub large_bytes_per_second: usize,
    /// After SIGTERM: how long the server answers, not ready, before it stops
    /// accepting, so the Service's endpoints drop it first.
    pub shutdown_grace: Duration,
    /// Then: how long in-flight requests get to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_in_flight_bytes: 32 << 20,
            max_large_in_flight: 2,
            large_bytes_per_second: 48 << 20,
            shutdown_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
        }
    }
}

pub struct App {
    /// Swapped whole by [`reload`]; a review works on the one it took.
    config: RwLock<Arc<Config>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    ready: AtomicBool,
    /// Set when the accept loop of [`serve`] ended other than by shutdown:
    /// nothing takes connections any more, and only a restart helps.
    accept_ended: AtomicBool,
    slots: Semaphore,
    large_slots: Semaphore,
    large_budget: tokio::sync::Mutex<Bucket>,
}

impl App {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Arc<App> {
        App::with_limits(config, metrics, Limits::default())
    }

    pub fn with_limits(config: Config, metrics: Arc<Metrics>, limits: Limits) -> Arc<App> {
        Arc::new(App {
            config: RwLock::new(Arc::new(config)),
            metrics,
            ready: AtomicBool::new(true),
            accept_ended: AtomicBool::new(false),
            slots: Semaphore::new(limits.max_in_flight_bytes.div_ceil(1024).max(1)),
            large_slots: Semaphore::new(limits.max_large_in_flight),
            large_budget: tokio::sync::Mutex::new(Bucket::new(limits.large_bytes_per_second)),
            limits,
        })
    }
    /// The config in use now.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock").clone()
    }

    /// Replaces the config for the reviews that start from now on.
    pub fn set_config(&self, config: Config) {
        *self.config.write().expect("config lock") = Arc::new(config);
    }

    /// Waits until `bytes` more may be held in flight; released on drop.
    pub(crate) async fn in_flight(&self, bytes: usize) -> tokio::sync::SemaphorePermit<'_> {
        let total = self.limits.max_in_flight_bytes.div_ceil(1024).max(1);
        let kib = bytes.div_ceil(1024).clamp(1, total) as u32;
        self.slots.acquire_many(kib).await.expect("the semaphore is never closed")
    }

    /// Waits for the bytes of one large review within [`Limits::large_bytes_per_second`].
    pub(crate) async fn large_budget(&self, bytes: usize) {
        self.large_budget.lock().await.take(bytes).await;
    }
}

impl keyhole_admin::Admin for App {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn ready(&self) -> Result<(), &'static str> {
        if self.ready.load(Ordering::Relaxed) { Ok(()) } else { Err("draining") }
    }
    /// A stuck runtime does not answer the probe at all; this catches the
    /// accept loop gone while the admin listener still answers.
    fn live(&self) -> Result<(), &'static str> {
        if self.accept_ended.load(Ordering::Relaxed) { Err("the TLS accept loop ended") } else { Ok(()) }
    }
}

/// Marks the accept loop ended when it is dropped (returned, panicked, or its
/// future dropped) before shutdown turned the app not ready.
struct Accepting(Arc<App>);

impl Drop for Accepting {
    fn drop(&mut self) {
        if self.0.ready.load(Ordering::Relaxed) {
            warn!("the TLS accept loop ended without a shutdown: liveness fails");
            self.0.accept_ended.store(true, Ordering::Relaxed);
        }
    }
}

/// hyper's read buffer per connection (its default is about 400 KiB): a TLS
/// record's 16 KiB of plaintext and headers fit; bodies stream through it.
pub const READ_BUFFER: usize = 32 << 10;

/// A token bucket of bytes: a burst of one largest review, then `rate` a second.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn new(rate: usize) -> Bucket {
        Bucket { rate: rate.max(1) as f64, tokens: review::MAX_BODY as f64, at: std::time::Instant::now() }
    }

    /// Waits until `bytes` may be read, then takes them.
    async fn take(&mut self, bytes: usize) {
        let now = std::time::Instant::now();
        let cap = (review::MAX_BODY as f64).max(self.rate);
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(cap);
        self.at = now;
        let bytes = bytes as f64;
        if self.tokens < bytes {
            let wait = Duration::from_secs_f64((bytes - self.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            self.tokens = bytes;
            self.at = std::time::Instant::now();
        }
        self.tokens -= bytes;
    }
}

/// The admission endpoints and probes (served over TLS).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(review::mutate_handler))
        .route("/validate", post(review::validate_handler))
        .with_state(app.clone())
        .merge(keyhole_admin::probes(app.clone()))
        .layer(axum::middleware::map_response_with_state(app, close_when_draining))
}

/// While draining, every answer says `Connection: close`, so clients leave
/// their keep-alive connections during the grace period instead of having a
/// request cut when the drain closes them.
async fn close_when_draining(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if !app.ready.load(Ordering::Relaxed) {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Serves until `shutdown` resolves; then turns not ready and keeps serving for
/// [`Limits::shutdown_grace`], so the endpoints drop it before it refuses a
/// connection; then stops accepting and lets in-flight requests finish (up to
/// [`Limits::drain_timeout`]).
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
    let limits = app.limits.clone();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER);
    let http = Arc::new(http);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (grace_over_tx, mut grace_over) = tokio::sync::watch::channel(false);
    let grace_app = app.clone();
    let grace = limits.shutdown_grace;
    tokio::spawn(async move {
        shutdown.await;
        info!(grace = ?grace, "shutting down: not ready, still serving while the endpoints drop this pod");
        grace_app.ready.store(false, Ordering::Relaxed);
        tokio::time::sleep(grace).await;
        let _ = grace_over_tx.send(true);
    });
    let accepting = Accepting(app.clone());
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = set(&mut grace_over) => break,
        };
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
            () = set(&mut grace_over) => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(service.clone());
        let watcher = graceful.watcher();
        let http = http.clone();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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

    drop(accepting);
    info!("no new connections; draining in-flight requests");
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        warn!("drain timed out; closing the remaining connections");
    }
    let _ = stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(())
}

/// Resolves once the flag is set (the guard `wait_for` returns is not `Send`).
async fn set(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
