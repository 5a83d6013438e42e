//! The controller's flags, and the manual trigger's: the `keyhole-rotation`
//! binary, `keyhole rotation` and `keyhole roll` parse these.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use keyhole_admin::LogFormat;
use keyhole_admin::watched::{Change, WatchedFile};
use keyhole_contract::config::{Config, ConfigError};
use keyhole_contract::duration;

use crate::controller::Settings;
use crate::lease::LeaseConfig;
use crate::workload::{Kind, parse_target};
use crate::{DEFAULT_TOKEN_DIR, RotationConfig};

/// keyhole's rotation controller: rolls the workloads whose referenced values got a new version.
#[derive(clap::Parser)]
#[command(name = "keyhole-rotation", version)]
pub struct Cli {
    /// The operator's config (the stores; the rest is the webhook's).
    #[arg(long, env = "KEYHOLE_CONFIG")]
    pub config: PathBuf,
    #[arg(long, env = "KEYHOLE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// The poll interval (a workload's keyhole.dev/refresh-interval overrides it), and
    /// the window of the rollout budget.
    #[arg(long, env = "KEYHOLE_ROTATION_INTERVAL", default_value = "60s", value_parser = duration::parse_flag)]
    pub interval: Duration,
    /// Rollouts started per interval at most; the rest follow in the next ones.
    #[arg(long, env = "KEYHOLE_MAX_ROLLOUTS", default_value_t = 10)]
    pub max_rollouts: usize,
    /// The Lease that elects the one active controller.
    #[arg(long, env = "KEYHOLE_LEASE_NAME", default_value = "keyhole-rotation")]
    pub lease_name: String,
    #[arg(long, env = "KEYHOLE_LEASE_NAMESPACE", default_value = "keyhole-system")]
    pub lease_namespace: String,
    /// How long a silent holder keeps the lease.
    #[arg(long, env = "KEYHOLE_LEASE_DURATION", default_value = "15s", value_parser = duration::parse_flag)]
    pub lease_duration: Duration,
    /// This instance's name in the Lease; default: the host name (the pod name).
    #[arg(long, env = "KEYHOLE_IDENTITY")]
    pub identity: Option<String>,
    /// Watch one namespace only; default: the whole cluster.
    #[arg(long, env = "KEYHOLE_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Directory of the projected service-account tokens, one file per store audience.
    #[arg(long, env = "KEYHOLE_TOKEN_DIR", default_value = DEFAULT_TOKEN_DIR)]
    pub token_dir: PathBuf,
    /// Plain-HTTP listener for /metrics, /healthz and /readyz.
    #[arg(long, env = "KEYHOLE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often the config file is re-read. A changed, valid config stops
    /// the controller cleanly (the lease released) for the kubelet to start it
    /// again with it; a broken one is logged and the controller runs on.
    #[arg(long, env = "KEYHOLE_CONFIG_RELOAD", default_value = "5s", value_parser = duration::parse_flag)]
    pub config_reload: Duration,
}

impl Cli {
    /// Logs, crypto provider, config, then runs until SIGTERM.
    pub fn main(self) -> Result<()> {
        let Self {
            config,
            log_format,
            interval,
            max_rollouts,
            lease_name,
            lease_namespace,
            lease_duration,
            identity,
            watch_namespace,
            token_dir,
            metrics_listen,
            config_reload,
        } = self;
        keyhole_admin::init_logs(log_format, "info");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let seen = std::fs::read(&config)
            .map_err(|source| ConfigError::Read { path: config.display().to_string(), source })?;
        let config_file = WatchedFile::new(config.clone(), seen.clone());
        let text = std::str::from_utf8(&seen).map_err(|e| ConfigError::Read {
            path: config.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let config = Config::parse(text).map_err(|e| e.at(&config.display().to_string()))?;
        let identity = identity
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("keyhole-rotation-{}", std::process::id()));
        let config = RotationConfig {
            stores: config.stores,
            settings: Settings { interval, max_rollouts, namespace: watch_namespace },
            lease: LeaseConfig { name: lease_name, namespace: lease_namespace, identity, duration: lease_duration },
            token_dir,
        };
        let stop = async move {
            tokio::select! {
                () = keyhole_admin::shutdown_signal() => {}
                () = config_changed(config_file, config_reload.max(Duration::from_secs(1))) => {}
            }
        };
        runtime()?.block_on(crate::run(config, metrics_listen, stop))?;
        Ok(())
    }
}

/// Resolves when the config file holds a new config that loads. The
/// controller's stores reach its backends, watches and look-ups, so it stops
/// and starts again rather than swap them under a poll.
async fn config_changed(mut file: WatchedFile, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let path = file.path.display().to_string();
        let error = match file.look() {
            Change::Unchanged => continue,
            Change::Changed(bytes) => match std::str::from_utf8(bytes).map(Config::parse) {
                Err(e) => ConfigError::Read { path, source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) },
                Ok(Ok(_)) => {
                    tracing::info!(config = %path, "the config changed: stopping, to start again with it");
                    return;
                }
                Ok(Err(e)) => e.at(&path),
            },
            Change::Unreadable(source) => ConfigError::Read { path, source },
        };
        tracing::warn!(error = %error, "the changed config does not load; still running with the last good one");
    }
}

/// `keyhole roll`: roll one workload now, with the controller's own patch.
#[derive(clap::Args)]
pub struct RollArgs {
    /// `<kind>/<name>`: deployment/web, statefulset/db, daemonset/agent.
    #[arg(value_parser = parse_target)]
    pub target: (Kind, String),
    /// The workload's namespace; default: the current kubeconfig context's (in a
    /// pod: the pod's), else `default`, as kubectl.
    #[arg(short, long, env = "KEYHOLE_NAMESPACE")]
    pub namespace: Option<String>,
    /// The operator's config (the stores).
    #[arg(long, env = "KEYHOLE_CONFIG")]
    pub config: PathBuf,
    /// Directory of the projected service-account tokens, one file per store audience.
    #[arg(long, env = "KEYHOLE_TOKEN_DIR", default_value = DEFAULT_TOKEN_DIR)]
    pub token_dir: PathBuf,
    /// Then follow the rollout until it is done, as `kubectl rollout status`;
    /// exit non-zero when it fails or times out.
    #[arg(long, env = "KEYHOLE_ROLL_WAIT")]
    pub wait: bool,
    /// How long `--wait` waits for the rollout.
    #[arg(long, env = "KEYHOLE_ROLL_TIMEOUT", default_value = "5m", value_parser = duration::parse_flag)]
    pub timeout: Duration,
}

impl RollArgs {
    pub fn main(self) -> Result<()> {
        let Self { target: (kind, name), namespace, config, token_dir, wait, timeout } = self;
        keyhole_admin::init_logs(LogFormat::Text, "warn");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::load(&config)?;
        runtime()?.block_on(async {
            let client = kube::Client::try_default().await.map_err(crate::RotationError::Client)?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            let rolled = crate::roll(&client, &config.stores, token_dir, kind, &namespace, &name).await?;
            let target = format!("{}/{name} in {namespace}", kind.as_str().to_ascii_lowercase());
            println!(
                "{target}: rolling out (keyhole.dev/versions={}; versions {})",
                rolled.digest,
                rolled.versions.as_deref().unwrap_or("kept")
            );
            if wait {
                crate::rollout::wait(&client, kind, &namespace, &name, timeout, |text| println!("{target}: {text}"))
                    .await?;
            }
            Ok(())
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
