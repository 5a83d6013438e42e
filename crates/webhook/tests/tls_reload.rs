//! The serving certificate and the config are reloaded the way a kubelet
//! updates a mounted Secret or ConfigMap: a new timestamped directory and an
//! atomic rename of the `..data` symlink. New handshakes get the new
//! certificate, open connections keep working, new reviews get the new config,
//! and broken new files keep the last good certificate or config and are counted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyhole_webhook::metrics::Metrics;
use keyhole_webhook::reload::{Outcome, Watch};
use keyhole_webhook::tls::CertStore;
use keyhole_webhook::{App, Config, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{ca, handshake, leaf, review, send};

/// Writes `..<ts>/tls.{crt,key}` and points `..data` at it by an atomic rename,
/// as the kubelet's AtomicWriter does.
fn kubelet_write(dir: &Path, ts: &str, cert: &str, key: &str) {
    kubelet_write_files(dir, ts, &[("tls.crt", cert), ("tls.key", key)]);
}

fn kubelet_write_files(dir: &Path, ts: &str, files: &[(&str, &str)]) {
    let data = dir.join(format!("..{ts}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, content) in files {
        std::fs::write(data.join(name), content).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{ts}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (f, _) in files {
        if std::fs::symlink_metadata(dir.join(f)).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

fn peer_der(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn healthz(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_swapped_through_data_symlink_is_served_and_broken_files_keep_the_last_good() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, d1) = leaf(&ca);
    kubelet_write(dir.path(), "2026_11_23_01", &c1, &k1);

    let metrics = Arc::new(Metrics::default());
    let certs = CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"), metrics.clone()).unwrap();
    certs.spawn_reloader(Duration::from_millis(50));
    let config = Config::parse("injector: {image: x}\nstores: {}\n").unwrap();
    let limits = Limits { shutdown_grace: Duration::from_millis(100), ..Limits::default() };
    let app = App::with_limits(config, metrics.clone(), limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyhole_webhook::serve(listener, None, app, certs, async {
        let _ = stop_rx.await;
    }));

    let mut first = handshake(addr, &ca.pem).await;
    assert_eq!(peer_der(&first), d1);
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));

    // The kubelet swaps in a new pair.
    let (c2, k2, d2) = leaf(&ca);
    kubelet_write(dir.path(), "2026_11_23_02", &c2, &k2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = handshake(addr, &ca.pem).await;
    assert_eq!(peer_der(&second), d2, "a new handshake did not get the new certificate");
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"), "the open connection broke");

    // A broken pair (a key that does not match) is refused; the last good one stays.
    let (c3, _, _) = leaf(&ca);
    kubelet_write(dir.path(), "2026_11_23_03", &c3, &k2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer_der(&handshake(addr, &ca.pem).await), d2);
    // Garbage, too.
    kubelet_write(dir.path(), "2026_11_23_04", "not a certificate", "not a key");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer_der(&handshake(addr, &ca.pem).await), d2);
    let text = metrics.encode();
    let failures: f64 = text
        .lines()
        .find(|l| l.starts_with("keyhole_webhook_tls_certificate_reload_failures_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(failures, 2.0, "{text}");
    assert!(text.contains("keyhole_webhook_tls_certificate_expiry_timestamp_seconds "));

    drop(first);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[test]
fn a_broken_pair_at_start_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c"), "junk").unwrap();
    std::fs::write(dir.path().join("k"), "junk").unwrap();
    let err = CertStore::load(&dir.path().join("c"), &dir.path().join("k"), Arc::new(Metrics::default())).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Whether the app admits a pod that asks for `store`, and its message if not.
async fn admits(app: &Arc<App>, store: &str) -> (bool, String) {
    let pod = serde_json::json!({
        "metadata": {"name": "p", "namespace": "shop", "annotations": {
            "keyhole.dev/inject": "true", "keyhole.dev/store": store, "keyhole.dev/secret-pw": "secret/shop/db#pw"}},
        "spec": {"containers": [{"name": "app", "image": "app:1", "securityContext": {"runAsUser": 1000}}]}
    });
    let (_, body) = send(app, "/mutate", serde_json::to_vec(&review(&pod, "u1")).unwrap()).await;
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = answer["response"]["status"]["message"].as_str().unwrap_or_default().to_owned();
    (answer["response"]["allowed"] == true, message)
}

const STORE_A: &str = "  a: {kind: vault, address: \"https://a:8200\", auth: {method: kubernetes}, defaultRole: app}\n";
const STORE_B: &str = "  b: {kind: vault, address: \"https://b:8200\", auth: {method: kubernetes}, defaultRole: app}\n";

/// A ConfigMap edit takes effect without a restart; a broken one is refused
/// once (log and metrics), the last good config keeps serving, and a fixed
/// one is taken again.
#[tokio::test]
async fn a_changed_config_is_taken_and_a_broken_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let first = format!("injector: {{image: x}}\nstores:\n{STORE_A}");
    kubelet_write_files(dir.path(), "2026_12_03_01", &[("config.yaml", &first)]);
    let path = dir.path().join("config.yaml");
    let metrics = Arc::new(Metrics::default());
    let seen = std::fs::read(&path).unwrap();
    let app = App::new(keyhole_webhook::reload::load(&path, &seen).unwrap(), metrics.clone());
    let mut watch = Watch::new(path, seen);
    assert_eq!(watch.once(&app), Outcome::Unchanged);
    assert!(admits(&app, "a").await.0);
    let (allowed, message) = admits(&app, "b").await;
    assert!(!allowed && message.contains("unknown store \"b\""), "the control: b is not there yet: {message}");

    let second = format!("{first}{STORE_B}");
    kubelet_write_files(dir.path(), "2026_12_03_02", &[("config.yaml", &second)]);
    assert_eq!(watch.once(&app), Outcome::Reloaded);
    assert!(admits(&app, "b").await.0, "the new store is not in use");
    assert_eq!(metric(&metrics.encode(), "keyhole_webhook_config_last_reload_successful"), 1.0);

    // Broken: YAML that parses but names a default store that does not exist.
    let broken = format!("{second}defaultStore: nowhere\n");
    kubelet_write_files(dir.path(), "2026_12_03_03", &[("config.yaml", &broken)]);
    assert_eq!(watch.once(&app), Outcome::Refused);
    assert_eq!(watch.once(&app), Outcome::Unchanged, "one broken file is reported once");
    let text = metrics.encode();
    assert_eq!(metric(&text, "keyhole_webhook_config_reload_failures_total"), 1.0);
    assert_eq!(metric(&text, "keyhole_webhook_config_last_reload_successful"), 0.0);
    assert!(admits(&app, "b").await.0, "the last good config stopped serving");
    let (allowed, message) = admits(&app, "a").await;
    assert!(allowed, "the last good config changed: {message}");
    kubelet_write_files(dir.path(), "2026_12_03_04", &[("config.yaml", "not: [yaml")]);
    assert_eq!(watch.once(&app), Outcome::Refused);
    assert!(admits(&app, "b").await.0);

    kubelet_write_files(dir.path(), "2026_12_03_05", &[("config.yaml", &first)]);
    assert_eq!(watch.once(&app), Outcome::Reloaded);
    assert!(!admits(&app, "b").await.0, "the fixed config (without b) is not in use");
    let text = metrics.encode();
    assert_eq!(metric(&text, "keyhole_webhook_config_last_reload_successful"), 1.0);
    assert_eq!(metric(&text, "keyhole_webhook_config_reload_failures_total"), 2.0);
}
