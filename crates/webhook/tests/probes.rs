//! The probes mean something: `/healthz` fails once the TLS accept loop is
//! gone while the admin listener still answers, and not while the server drains
//! after SIGTERM (then `/readyz` fails instead).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyhole_webhook::metrics::Metrics;
use keyhole_webhook::tls::CertStore;
use keyhole_webhook::{App, Config, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    addr: SocketAddr,
    admin: SocketAddr,
    ca: String,
    app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

/// The webhook, with its admin listener served on its own (as the binary
/// does, but outliving `serve` so the probes can be asked after it).
async fn start() -> Server {
    let ca = common::ca();
    let (cert, key, _) = common::leaf(&ca);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let metrics = Arc::new(Metrics::default());
    let certs = CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"), metrics.clone()).unwrap();
    let config = Config::parse("injector: {image: x}\nstores: {}\n").unwrap();
    let limits = Limits { shutdown_grace: Duration::from_millis(500), ..Limits::default() };
    let app = App::with_limits(config, metrics, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    keyhole_admin::spawn(admin, app.clone(), std::future::pending());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keyhole_webhook::serve(listener, None, app.clone(), certs, async {
        let _ = stopped.await;
    }));
    Server { addr, admin: admin_addr, ca: ca.pem, app, stop: Some(stop), task, _dir: dir }
}

/// `GET path` on the admin listener: the status and the body.
async fn probe(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn serving(server: &Server) -> bool {
    let Ok(mut s) = common::try_handshake(server.addr, &server.ca).await else { return false };
    matches!(common::exchange(&mut s, "GET", "/healthz", b"").await, Ok((200, _)))
}

#[tokio::test]
async fn liveness_fails_once_the_accept_loop_is_gone() {
    let mut server = start().await;
    assert!(serving(&server).await);
    assert_eq!(probe(server.admin, "/healthz").await, (200, "ok".into()));
    server.task.abort();
    let _ = (&mut server.task).await;
    assert!(!serving(&server).await, "the TLS port still answers");
    assert_eq!(probe(server.admin, "/healthz").await, (503, "the TLS accept loop ended".into()));
    assert_eq!(probe(server.admin, "/readyz").await.0, 200, "readiness is as before: only draining fails it");
}

#[tokio::test]
async fn draining_fails_readiness_and_keeps_liveness() {
    let mut server = start().await;
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe(server.admin, "/readyz").await, (503, "draining".into()));
    assert_eq!(probe(server.admin, "/healthz").await, (200, "ok".into()));
    (&mut server.task).await.unwrap().unwrap();
    assert_eq!(probe(server.admin, "/healthz").await, (200, "ok".into()), "a shutdown is not a failure");
    assert!(keyhole_admin::Admin::live(&*server.app).is_ok());
}
