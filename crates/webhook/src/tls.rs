//! The serving certificate, reloaded when its files change. The files are re-read
//! on an interval and compared by content, which also sees a kubelet's atomic swap
//! of a Secret volume's `..data` symlink (a watch on the file paths can miss it).
//! New handshakes get the new certificate; a broken new pair is reported and the
//! last good one stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: no usable PEM private key in it: {reason}")]
    Key { path: String, reason: String },
    #[error("{cert} and {key} do not belong together: {reason}")]
    Mismatch { cert: String, key: String, reason: String },
    #[error("{path}: the certificate cannot be parsed: {reason}")]
    Parse { path: String, reason: String },
}

struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
}

pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("cert_path", &self.cert_path).finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair once; a broken pair at start is an error (nothing to fall back on).
    pub fn load(cert_path: &Path, key_path: &Path, metrics: Arc<Metrics>) -> Result<Arc<CertStore>, TlsError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let loaded = parse_pair(&cert, &key, cert_path, key_path)?;
        metrics.cert_expiry.set(loaded.not_after);
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(loaded.key),
            seen: Mutex::new((cert, key)),
            metrics,
        }))
    }

    /// Re-reads the files; swaps in a changed, valid pair. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = read_pair(&self.cert_path, &self.key_path)?;
        {
            let seen = self.seen.lock().expect("cert lock");
            if seen.0 == cert && seen.1 == key {
                return Ok(false);
            }
        }
        match parse_pair(&cert, &key, &self.cert_path, &self.key_path) {
            Ok(loaded) => {
                *self.current.write().expect("cert lock") = loaded.key;
                self.metrics.cert_expiry.set(loaded.not_after);
                *self.seen.lock().expect("cert lock") = (cert, key);
                Ok(true)
            }
            Err(e) => {
                // Remember the broken bytes so one bad pair is reported once.
                *self.seen.lock().expect("cert lock") = (cert, key);
                Err(e)
            }
        }
    }

    /// Polls the files every `interval` until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.reload() {
                    Ok(true) => info!(cert = %store.cert_path.display(), "serving certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        store.metrics.cert_reload_failures.inc();
                        warn!(error = %e, "new certificate files are unusable; still serving the last good certificate");
                    }
                }
            }
        })
    }

    /// TLS 1.2 and 1.3 on ring, HTTP/1.1, certificates from this store.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    Ok((read(cert)?, read(key)?))
}

fn parse_pair(cert: &[u8], key: &[u8], cert_path: &Path, key_path: &Path) -> Result<Loaded, TlsError> {
    let cp = cert_path.display().to_string();
    let kp = key_path.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert).filter_map(Result::ok).collect();
    let Some(leaf) = chain.first() else { return Err(TlsError::NoCertificate { path: cp }) };
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| TlsError::Parse { path: cp.clone(), reason: e.to_string() })?
        .1
        .validity()
        .not_after
        .timestamp();
    let key_der =
        PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key { path: kp.clone(), reason: e.to_string() })?;
    let signing = ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Key { path: kp.clone(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch { cert: cp, key: kp, reason: e.to_string() })?;
    Ok(Loaded { key: Arc::new(certified), not_after })
}
