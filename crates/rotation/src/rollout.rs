//! `keyhole roll --wait`: whether a workload's rollout is done, by the rules of
//! `kubectl rollout status` (kubectl's `polymorphichelpers/rollout_status.go`),
//! and the watch that follows it there.
//!
//! [`Rollout::progress`] is pure; [`wait`] is the watch around it.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tracing::warn;

use crate::workload::{Kind, Workload};

/// Where a rollout stands, as one status of the workload shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Still rolling: what it waits for.
    Waiting(String),
    /// Rolled out: what finished.
    Done(String),
    /// Waiting longer will not finish it.
    Failed(Stuck),
}

/// Why a rollout will not finish by waiting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stuck {
    #[error(
        "the rollout exceeded its progress deadline (spec.progressDeadlineSeconds): the events of its new \
         ReplicaSet and of its pods say why"
    )]
    ProgressDeadline,
    #[error(
        "its update strategy is {strategy}: pods take the new template only when they are deleted, so there is no \
         rollout to wait for (delete the pods, or roll without --wait)"
    )]
    NotRolling { strategy: String },
}

/// Why `--wait` ended without a completed rollout.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{kind}/{name} in namespace {namespace}: cannot watch it to follow the rollout: {source}")]
    Watch { kind: Kind, namespace: String, name: String, source: watcher::Error },
    #[error("{kind}/{name} in namespace {namespace} was deleted during the rollout")]
    Deleted { kind: Kind, namespace: String, name: String },
    #[error("{kind}/{name} in namespace {namespace}: {why}")]
    Stuck { kind: Kind, namespace: String, name: String, why: Stuck },
    #[error(
        "{kind}/{name} in namespace {namespace} did not finish rolling out within {timeout:?} (last: {last}); \
         wait longer with --timeout, or look at its pods"
    )]
    Timeout { kind: Kind, namespace: String, name: String, timeout: Duration, last: String },
    #[error("{kind} has no rollout to follow: --wait follows deployments, statefulsets and daemonsets")]
    NoRollout { kind: Kind },
}

/// A workload whose status says how far its rollout got.
pub trait Rollout: Workload {
    fn progress(&self) -> Progress;
}

impl Rollout for Deployment {
    fn progress(&self) -> Progress {
        let status = self.status.clone().unwrap_or_default();
        if self.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
            return Progress::Waiting("waiting for the spec update to be observed".into());
        }
        let deadline = status.conditions.iter().flatten().any(|c| {
            c.type_.as_deref() == Some("Progressing") && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        if deadline {
            return Progress::Failed(Stuck::ProgressDeadline);
        }
        let updated = status.updated_replicas.unwrap_or(0);
        let replicas = status.replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        if let Some(want) = self.spec.replicas
            && updated < want
        {
            return Progress::Waiting(format!("{updated} of {want} new replicas updated"));
        }
        if replicas > updated {
            return Progress::Waiting(format!("{} old replicas pending termination", replicas - updated));
        }
        if available < updated {
            return Progress::Waiting(format!("{available} of {updated} updated replicas available"));
        }
        Progress::Done("successfully rolled out".into())
    }
}

/// The strategy a workload declares, when it is not RollingUpdate (the API
/// server's default, so an unset one is read as it).
fn not_rolling(strategy: Option<&str>) -> Option<Stuck> {
    match strategy {
        None | Some("RollingUpdate") => None,
        Some(other) => Some(Stuck::NotRolling { strategy: other.to_owned() }),
    }
}

impl Rollout for StatefulSet {
    fn progress(&self) -> Progress {
        let spec = &self.spec;
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        if let Some(stuck) = not_rolling(strategy.type_.as_deref()) {
            return Progress::Failed(stuck);
        }
        let status = self.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0);
        if observed == 0 || self.metadata.generation.unwrap_or(0) > observed {
            return Progress::Waiting("waiting for the spec update to be observed".into());
        }
        let ready = status.ready_replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        if let Some(want) = spec.replicas
            && ready < want
        {
            return Progress::Waiting(format!("{} pods not ready yet", want - ready));
        }
        // As kubectl: with rollingUpdate set (the API server sets it, partition 0),
        // done when the pods above the partition are updated.
        if let Some(rolling) = strategy.rolling_update {
            if let (Some(want), Some(partition)) = (spec.replicas, rolling.partition)
                && updated < want - partition
            {
                let of = want - partition;
                return Progress::Waiting(match partition {
                    0 => format!("{updated} of {of} new pods updated"),
                    _ => format!("{updated} of {of} new pods updated (partition {partition})"),
                });
            }
            return Progress::Done(format!("successfully rolled out: {updated} new pods updated"));
        }
        let revision = status.update_revision.unwrap_or_default();
        if status.current_revision.as_deref() != Some(revision.as_str()) {
            return Progress::Waiting(format!("{updated} pods at revision {revision}, waiting for the rest"));
        }
        Progress::Done(format!(
            "successfully rolled out: {} pods at revision {revision}",
            status.current_replicas.unwrap_or(0)
        ))
    }
}

impl Rollout for DaemonSet {
    fn progress(&self) -> Progress {
        let strategy = self.spec.update_strategy.as_ref().and_then(|s| s.type_.as_deref());
        if let Some(stuck) = not_rolling(strategy) {
            return Progress::Failed(stuck);
        }
        let status = self.status.clone().unwrap_or_default();
        if self.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
            return Progress::Waiting("waiting for the spec update to be observed".into());
        }
        let desired = status.desired_number_scheduled;
        let updated = status.updated_number_scheduled.unwrap_or(0);
        let available = status.number_available.unwrap_or(0);
        if updated < desired {
            return Progress::Waiting(format!("{updated} of {desired} new pods updated"));
        }
        if available < desired {
            return Progress::Waiting(format!("{available} of {desired} updated pods available"));
        }
        Progress::Done("successfully rolled out".into())
    }
}

/// Follows the rollout of `kind/name` until it is done, `say`ing each new
/// status text; fails when it cannot finish, or after `timeout`.
pub async fn wait(
    client: &kube::Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    timeout: Duration,
    say: impl FnMut(&str),
) -> Result<(), RolloutError> {
    match kind {
        Kind::Deployment => follow::<Deployment>(client, namespace, name, timeout, say).await,
        Kind::StatefulSet => follow::<StatefulSet>(client, namespace, name, timeout, say).await,
        Kind::DaemonSet => follow::<DaemonSet>(client, namespace, name, timeout, say).await,
        Kind::ReplicaSet | Kind::Job | Kind::CronJob => Err(RolloutError::NoRollout { kind }),
    }
}

async fn follow<K: Rollout>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    mut say: impl FnMut(&str),
) -> Result<(), RolloutError> {
    let (kind, ns, nm) = (K::KIND, namespace.to_owned(), name.to_owned());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut last = String::from("no status read yet");
    let watch = async {
        let mut seen = false;
        // Its list is a quorum read (ListSemantic::MostRecent): the first status is
        // that of the patched spec, never an older cached one that looks complete.
        let mut stream = watcher::watch_object(api, name).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let obj = match event {
                Ok(Some(obj)) => obj,
                Ok(None) => return Err(RolloutError::Deleted { kind, namespace: ns.clone(), name: nm.clone() }),
                // Refused from the start (RBAC: no list or watch): say so now.
                Err(source) if !seen => {
                    return Err(RolloutError::Watch { kind, namespace: ns.clone(), name: nm.clone(), source });
                }
                // Later the watcher re-lists by itself, after a backoff.
                Err(e) => {
                    warn!(error = %e, "the watch failed; watching again");
                    continue;
                }
            };
            seen = true;
            let (text, done) = match obj.progress() {
                Progress::Waiting(text) => (text, false),
                Progress::Done(text) => (text, true),
                Progress::Failed(why) => {
                    return Err(RolloutError::Stuck { kind, namespace: ns.clone(), name: nm.clone(), why });
                }
            };
            if text != last {
                say(&text);
                last = text;
            }
            if done {
                return Ok(());
            }
        }
        // The watcher's stream never ends; were it to, the workload is gone from it.
        Err(RolloutError::Deleted { kind, namespace: ns.clone(), name: nm.clone() })
    };
    match tokio::time::timeout(timeout, watch).await {
        Ok(outcome) => outcome,
        Err(_) => Err(RolloutError::Timeout { kind, namespace: ns, name: nm, timeout, last }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn obj<K: serde::de::DeserializeOwned>(generation: i64, spec: Value, status: Value) -> K {
        serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "n", "generation": generation},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn deployment(replicas: i32, status: Value) -> Progress {
        let spec = json!({"replicas": replicas, "selector": {}, "template": {}});
        obj::<Deployment>(2, spec, status).progress()
    }

    fn waiting(text: &str) -> Progress {
        Progress::Waiting(text.into())
    }

    fn done(text: &str) -> Progress {
        Progress::Done(text.into())
    }

    #[test]
    fn a_deployment_is_done_when_every_replica_is_new_and_available() {
        let cases = [
            (
                json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
                waiting("waiting for the spec update to be observed"),
            ),
            (json!({}), waiting("waiting for the spec update to be observed")),
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}),
                waiting("1 of 3 new replicas updated"),
            ),
            (
                json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
                waiting("1 old replicas pending termination"),
            ),
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
                waiting("2 of 3 updated replicas available"),
            ),
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
                done("successfully rolled out"),
            ),
            (
                json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
                done("successfully rolled out"),
            ),
        ];
        for (status, want) in cases {
            assert_eq!(deployment(3, status.clone()), want, "{status}");
        }
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_fails() {
        let condition = |reason: &str| {
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False", "reason": reason}]})
        };
        assert_eq!(deployment(3, condition("ProgressDeadlineExceeded")), Progress::Failed(Stuck::ProgressDeadline));
        assert_eq!(deployment(3, condition("ReplicaSetUpdated")), waiting("1 of 3 new replicas updated"));
        // Read only once the controller saw the spec: an old deadline is not this rollout's.
        let mut stale = condition("ProgressDeadlineExceeded");
        stale["observedGeneration"] = json!(1);
        assert_eq!(deployment(3, stale), waiting("waiting for the spec update to be observed"));
    }

    fn statefulset(strategy: Value, status: Value) -> Progress {
        let spec = json!({"replicas": 3, "selector": {}, "template": {}, "updateStrategy": strategy});
        obj::<StatefulSet>(2, spec, status).progress()
    }

    #[test]
    fn a_statefulset_is_done_when_its_pods_are_ready_and_new() {
        let rolling = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
        let cases = [
            (
                json!({"replicas": 3, "observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3}),
                waiting("waiting for the spec update to be observed"),
            ),
            (
                json!({"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3}),
                waiting("waiting for the spec update to be observed"),
            ),
            (
                json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 3}),
                waiting("1 pods not ready yet"),
            ),
            (
                json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1}),
                waiting("1 of 3 new pods updated"),
            ),
            (
                json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3}),
                done("successfully rolled out: 3 new pods updated"),
            ),
        ];
        for (status, want) in cases {
            assert_eq!(statefulset(rolling.clone(), status.clone()), want, "{status}");
        }
        let partitioned = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        let status = json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 0});
        assert_eq!(statefulset(partitioned.clone(), status), waiting("0 of 1 new pods updated (partition 2)"));
        let status = json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1});
        assert_eq!(statefulset(partitioned, status), done("successfully rolled out: 1 new pods updated"));
    }

    #[test]
    fn a_statefulset_without_rolling_update_parameters_is_done_at_one_revision() {
        let bare = json!({"type": "RollingUpdate"});
        let status = |current: &str| {
            json!({"replicas": 3, "observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
                   "currentReplicas": 3, "currentRevision": current, "updateRevision": "db-2"})
        };
        assert_eq!(statefulset(bare.clone(), status("db-1")), waiting("3 pods at revision db-2, waiting for the rest"));
        assert_eq!(statefulset(bare, status("db-2")), done("successfully rolled out: 3 pods at revision db-2"));
    }

    #[test]
    fn on_delete_cannot_be_waited_for() {
        let on_delete = json!({"type": "OnDelete"});
        let status = json!({"replicas": 3, "observedGeneration": 2});
        let stuck = Stuck::NotRolling { strategy: "OnDelete".into() };
        assert_eq!(statefulset(on_delete.clone(), status.clone()), Progress::Failed(stuck.clone()));
        let ds = obj::<DaemonSet>(2, json!({"selector": {}, "template": {}, "updateStrategy": on_delete}), status);
        assert_eq!(ds.progress(), Progress::Failed(stuck.clone()));
        assert!(stuck.to_string().contains("roll without --wait"));
    }

    #[test]
    fn a_daemonset_is_done_when_every_scheduled_pod_is_new_and_available() {
        let base = json!({"currentNumberScheduled": 4, "desiredNumberScheduled": 4, "numberMisscheduled": 0,
                          "numberReady": 4, "observedGeneration": 2});
        let with = |extra: Value| {
            let mut s = base.clone();
            s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            s
        };
        let cases = [
            (
                with(json!({"observedGeneration": 1, "updatedNumberScheduled": 4, "numberAvailable": 4})),
                waiting("waiting for the spec update to be observed"),
            ),
            (with(json!({"updatedNumberScheduled": 1, "numberAvailable": 4})), waiting("1 of 4 new pods updated")),
            (
                with(json!({"updatedNumberScheduled": 4, "numberAvailable": 3})),
                waiting("3 of 4 updated pods available"),
            ),
            (with(json!({"updatedNumberScheduled": 4, "numberAvailable": 4})), done("successfully rolled out")),
        ];
        let spec = json!({"selector": {}, "template": {}, "updateStrategy": {"type": "RollingUpdate"}});
        for (status, want) in cases {
            assert_eq!(obj::<DaemonSet>(2, spec.clone(), status.clone()).progress(), want, "{status}");
        }
    }

    #[test]
    fn the_errors_name_the_workload() {
        let e = RolloutError::Timeout {
            kind: Kind::Deployment,
            namespace: "shop".into(),
            name: "web".into(),
            timeout: Duration::from_secs(1),
            last: "1 of 3 updated replicas available".into(),
        };
        assert_eq!(
            e.to_string(),
            "Deployment/web in namespace shop did not finish rolling out within 1s (last: 1 of 3 updated replicas \
             available); wait longer with --timeout, or look at its pods"
        );
        let e = RolloutError::Stuck {
            kind: Kind::Deployment,
            namespace: "shop".into(),
            name: "web".into(),
            why: Stuck::ProgressDeadline,
        };
        assert!(
            e.to_string().starts_with("Deployment/web in namespace shop: the rollout exceeded its progress deadline")
        );
    }
}
