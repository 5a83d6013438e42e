//! The operator's config, re-read when its file changes: the kubelet updates a
//! mounted ConfigMap in place (an atomic swap of its `..data` link), so an edit
//! of `keyhole-config` takes effect within the kubelet's sync period plus one
//! interval, without a restart. As for the certificate ([`crate::tls`]), the
//! file is re-read on an interval and compared by content; a new config that
//! does not load is logged and counted once, and the last good one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyhole_admin::watched::{Change, WatchedFile};
use keyhole_contract::config::{Config, ConfigError};
use tracing::{info, warn};

use crate::App;

/// Re-reads `path` every `interval` and swaps a changed, valid config into
/// `app`, until the process ends. `seen` is the text the current config came from.
pub fn spawn(app: Arc<App>, path: PathBuf, seen: Vec<u8>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let mut watch = Watch::new(path, seen);
    app.metrics.config_last_reload_successful.set(1);
    app.metrics.config_last_reload_success.set(now());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watch.once(&app);
        }
    })
}

/// The config file, and what a look at it did.
pub struct Watch(WatchedFile);

/// What one look at the file did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Reloaded,
    /// The new content does not load; the last good config stays.
    Refused,
}

impl Watch {
    /// `seen`: the text the config in use came from.
    pub fn new(path: PathBuf, seen: Vec<u8>) -> Watch {
        Watch(WatchedFile::new(path, seen))
    }

    /// One look: reads the file, and if its content changed, loads it.
    pub fn once(&mut self, app: &App) -> Outcome {
        let path = self.0.path.clone();
        let loaded = match self.0.look() {
            Change::Unchanged => return Outcome::Unchanged,
            Change::Changed(bytes) => load(&path, bytes),
            Change::Unreadable(source) => Err(ConfigError::Read { path: path.display().to_string(), source }),
        };
        match loaded {
            Ok(config) => {
                let stores: Vec<&str> = config.stores.stores.keys().map(String::as_str).collect();
                info!(config = %path.display(), stores = %stores.join(","), "config reloaded");
                app.set_config(config);
                app.metrics.config_last_reload_successful.set(1);
                app.metrics.config_last_reload_success.set(now());
                Outcome::Reloaded
            }
            Err(error) => {
                app.metrics.config_reload_failures.inc();
                app.metrics.config_last_reload_successful.set(0);
                warn!(error = %error, "the changed config does not load; still serving with the last good one");
                Outcome::Refused
            }
        }
    }
}

/// The config in `bytes`, read from `path`.
pub fn load(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
    let p = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Read {
        path: p.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Config::parse(text).map_err(|e| e.at(&p))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}
