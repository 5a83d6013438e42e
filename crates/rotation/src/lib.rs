//! Rollout-triggered rotation: a controller (one active per cluster, chosen by a
//! Lease) that watches the Deployments, StatefulSets and DaemonSets whose pod
//! template opted in, polls the backends for *versions* only, and when a
//! referenced value has a new version patches the template annotation
//! `keyhole.dev/versions`, so the workload rolls and its new pods fetch the new
//! value. State lives on the workload (`keyhole.dev/observed-versions`), so the
//! first observation and a controller restart roll nothing.
//!
//! The pure parts: [`refs`] (what a workload watches), [`state`] (digest and
//! decision), [`schedule`] (due-ness, batching, rollout budget), [`lease`]'s
//! decision, [`health`]'s probes. The rest is I/O around them.

pub mod backend;
pub mod cli;
pub mod controller;
pub mod health;
pub mod lease;
pub mod metrics;
pub mod refs;
pub mod rollout;
pub mod schedule;
pub mod state;
pub mod workload;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use keyhole_contract::Stores;
use keyhole_contract::annotations::{OBSERVED_VERSIONS, VERSIONS};
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tracing::{info, warn};

use self::backend::Backends;
use self::controller::{Controller, Settings};
use self::health::Health;
use self::lease::LeaseConfig;
use self::metrics::RotationMetrics;
use self::refs::Interest;
use self::workload::{Candidate, Kind};

pub use self::cli::{Cli, RollArgs};

/// The controller's name in Events and as field manager.
pub const CONTROLLER: &str = "keyhole-rotation";
/// Where the Deployment in `manifests/` mounts the projected tokens.
pub const DEFAULT_TOKEN_DIR: &str = "/var/run/secrets/keyhole.dev/rotation";

#[derive(Clone, Debug)]
pub struct RotationConfig {
    pub stores: Stores,
    pub settings: Settings,
    pub lease: LeaseConfig,
    pub token_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("{kind}/{name} in namespace {namespace}: {source}")]
    Get { kind: Kind, namespace: String, name: String, source: kube::Error },
    #[error("{kind}/{name} in namespace {namespace} does not opt in to keyhole ({why})")]
    NotKeyhole { kind: Kind, namespace: String, name: String, why: String },
    #[error("{kind}/{name} in namespace {namespace} reaches outside what its store grants the namespace: {reason}")]
    Denied { kind: Kind, namespace: String, name: String, reason: String },
    #[error("{kind}/{name} in namespace {namespace}: the patch failed: {source}")]
    Patch { kind: Kind, namespace: String, name: String, source: kube::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
}

/// What the admin listener serves: the metrics, and the probes' answers.
struct Status {
    metrics: Arc<RotationMetrics>,
    health: Arc<Health>,
}

impl keyhole_admin::Admin for Status {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn ready(&self) -> Result<(), &'static str> {
        self.health.ready()
    }
    fn live(&self) -> Result<(), &'static str> {
        self.health.live()
    }
}

/// Runs the controller until `shutdown` resolves: lease election, watches,
/// polls, and `/metrics`, `/healthz` and `/readyz` on `metrics_listen`.
pub async fn run(
    config: RotationConfig,
    metrics_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RotationError> {
    let RotationConfig { stores, settings, lease, token_dir } = config;
    let client = kube::Client::try_default().await.map_err(RotationError::Client)?;
    let metrics = Arc::new(RotationMetrics::default());
    let health = Arc::new(Health::new(health::Limits::of(&lease)));
    let (stop_tx, stop_rx) = watch::channel(false);

    let metrics_task = match metrics_listen {
        Some(addr) => {
            let listener = keyhole_admin::bind(addr).await.map_err(|source| RotationError::Metrics { addr, source })?;
            let mut rx = stop_rx.clone();
            let status = Arc::new(Status { metrics: metrics.clone(), health: health.clone() });
            Some(keyhole_admin::spawn(listener, status, async move {
                let _ = rx.wait_for(|s| *s).await;
            }))
        }
        None => None,
    };

    let backends = Backends::new(stores.clone(), token_dir, lease.identity.clone(), metrics.clone());
    for (store, why) in backends.unusable() {
        warn!(store = %store, reason = %why, "workloads of this store are not rotated");
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &lease.namespace);
    info!(
        identity = %lease.identity,
        lease = %format!("{}/{}", lease.namespace, lease.name),
        interval_s = settings.interval.as_secs_f64(),
        max_rollouts = settings.max_rollouts,
        namespace = settings.namespace.as_deref().unwrap_or("(all)"),
        "keyhole rotation controller starting"
    );
    let (leader, lease_task) = lease::spawn(leases, lease.clone(), health.clone(), stop_rx.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: CONTROLLER.into(), instance: Some(lease.identity.clone()) },
    );
    let (controller, wake, watch_tasks) =
        Controller::start(client, stores, settings, backends, leader, metrics, health, recorder).await;
    let poll_task = tokio::spawn(controller.run(wake, stop_rx.clone()));

    shutdown.await;
    info!("shutting down: releasing the lease");
    let _ = stop_tx.send(true);
    let _ = poll_task.await;
    let _ = lease_task.await;
    for t in watch_tasks {
        t.abort();
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    info!("stopped");
    Ok(())
}

/// What the manual trigger did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rolled {
    pub digest: String,
    /// Versions looked up and recorded; `None` when the look-up failed and
    /// the recorded ones were kept.
    pub versions: Option<String>,
}

/// The manual trigger: rolls one workload now with the controller's own patch.
/// It looks the current versions up (with the controller's credentials, when it
/// runs where they are) so the controller does not roll the workload again for
/// a change this rollout already brought; without them it keeps the recorded ones.
pub async fn roll(
    client: &kube::Client,
    stores: &Stores,
    token_dir: PathBuf,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Rolled, RotationError> {
    let api = workload::api(client, kind, namespace);
    let obj = api.get(name).await.map_err(|source| RotationError::Get {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let template: std::collections::BTreeMap<String, String> =
        serde_json::from_value(obj.data["spec"]["template"]["metadata"]["annotations"].clone()).unwrap_or_default();
    let not = |why: String| RotationError::NotKeyhole { kind, namespace: namespace.into(), name: name.into(), why };
    let watched = match refs::interest(&template, namespace, stores) {
        Interest::NotOptedIn => return Err(not("no keyhole.dev/inject: \"true\" on its pod template".into())),
        Interest::Unreadable(e) => return Err(not(format!("its annotations do not parse: {e}"))),
        Interest::Denied(reason) => {
            return Err(RotationError::Denied { kind, namespace: namespace.into(), name: name.into(), reason });
        }
        Interest::Watch(w) => Some(w),
        Interest::OptedOut | Interest::NothingToWatch(_) => None,
    };
    let meta = &obj.metadata;
    let recorded = state::decode(meta.annotations.as_ref().and_then(|a| a.get(OBSERVED_VERSIONS)).map(String::as_str));
    let looked_up = match &watched {
        Some(w) => {
            let backends =
                Backends::new(stores.clone(), token_dir, "roll".into(), Arc::new(RotationMetrics::default()));
            let found = controller::current_versions(&backends, w).await;
            backends.close().await;
            match found {
                Ok(v) => Some(v),
                Err(e) => {
                    warn!(reason = %e, "could not look the versions up; keeping the recorded ones");
                    None
                }
            }
        }
        None => None,
    };
    let versions = looked_up.clone().or(recorded).unwrap_or_default();
    let nonce = k8s_openapi::jiff::Timestamp::now().to_string();
    let digest = state::digest(&versions, Some(&nonce));
    let body = match &looked_up {
        Some(v) => workload::roll_patch(v, &digest),
        None => serde_json::json!({"spec": {"template": {"metadata": {"annotations": {VERSIONS: digest}}}}}),
    };
    let candidate = Candidate {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
        observed: None,
        template,
        reference: k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(workload::api_resource(kind).api_version),
            kind: Some(kind.as_str().into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: meta.uid.clone(),
            ..Default::default()
        },
    };
    workload::patch(client, &candidate, &body).await.map_err(|source| RotationError::Patch {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: CONTROLLER.into(), instance: Some("roll".into()) });
    let note = format!("rolled out on request (keyhole roll); set {VERSIONS}={digest}");
    workload::event(&recorder, &candidate, workload::REASON_TRIGGERED, note).await;
    Ok(Rolled { digest, versions: looked_up.as_ref().map(state::encode) })
}
