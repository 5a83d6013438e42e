//! The workload kinds keyhole knows: one enum for admission (which templates
//! `/validate` checks) and rotation (which workloads it rolls), never strings.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 6] = [
        WorkloadKind::Deployment,
        WorkloadKind::ReplicaSet,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    /// The API kind, as in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }

    /// The kind exactly as the API writes it; `None` for anything else.
    pub fn from_api_kind(kind: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn api_version(self) -> &'static str {
        match self {
            WorkloadKind::Job | WorkloadKind::CronJob => "batch/v1",
            _ => "apps/v1",
        }
    }

    /// Where the pod template lies in the object, as JSON pointer tokens.
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            WorkloadKind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }

    /// The pod template inside `object` (the workload as JSON); `Null` if absent.
    pub fn template_in(self, object: &serde_json::Value) -> &serde_json::Value {
        self.template_path().iter().fold(object, |v, key| &v[*key])
    }

    /// The kind of the object that owns the pods (a Deployment's pods belong to
    /// a ReplicaSet, a CronJob's to a Job).
    pub fn pod_owner(self) -> WorkloadKind {
        match self {
            WorkloadKind::Deployment => WorkloadKind::ReplicaSet,
            WorkloadKind::CronJob => WorkloadKind::Job,
            other => other,
        }
    }

    /// Whether rotation rolls it by patching its template (a ReplicaSet belongs
    /// to its Deployment; Jobs run once).
    pub fn rolls(self) -> bool {
        matches!(self, WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet)
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name kubectl would take for a kind keyhole does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a workload kind keyhole knows: write deployment, statefulset, daemonset, replicaset, job or cronjob"
)]
pub struct UnknownKind(pub String);

/// kubectl's spellings: `deployment`, `deployments`, `deploy`, `deployment.apps`, ...
impl FromStr for WorkloadKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        let lower = s.to_ascii_lowercase();
        let bare = lower.split_once('.').map_or(lower.as_str(), |(k, _)| k);
        Ok(match bare {
            "deployment" | "deployments" | "deploy" => WorkloadKind::Deployment,
            "replicaset" | "replicasets" | "rs" => WorkloadKind::ReplicaSet,
            "statefulset" | "statefulsets" | "sts" => WorkloadKind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => WorkloadKind::DaemonSet,
            "job" | "jobs" => WorkloadKind::Job,
            "cronjob" | "cronjobs" | "cj" => WorkloadKind::CronJob,
            _ => return Err(UnknownKind(s.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_take_kubectls_spellings() {
        for k in WorkloadKind::ALL {
            assert_eq!(WorkloadKind::from_api_kind(k.as_str()), Some(k));
            assert_eq!(k.as_str().parse::<WorkloadKind>(), Ok(k));
        }
        assert_eq!("deploy".parse(), Ok(WorkloadKind::Deployment));
        assert_eq!("statefulset.apps".parse(), Ok(WorkloadKind::StatefulSet));
        assert_eq!("ds".parse(), Ok(WorkloadKind::DaemonSet));
        assert!("pod".parse::<WorkloadKind>().unwrap_err().to_string().contains("write deployment"));
        assert_eq!(WorkloadKind::from_api_kind("deployment"), None);
    }

    #[test]
    fn templates_and_owners() {
        assert_eq!(WorkloadKind::CronJob.template_path(), ["spec", "jobTemplate", "spec", "template"]);
        let cj = serde_json::json!({"spec": {"jobTemplate": {"spec": {"template": {"metadata": {"name": "t"}}}}}});
        assert_eq!(WorkloadKind::CronJob.template_in(&cj)["metadata"]["name"], "t");
        assert!(WorkloadKind::Deployment.template_in(&cj).is_null());
        assert_eq!(WorkloadKind::Deployment.pod_owner(), WorkloadKind::ReplicaSet);
        assert_eq!(WorkloadKind::CronJob.pod_owner(), WorkloadKind::Job);
        assert_eq!(WorkloadKind::Job.api_version(), "batch/v1");
        assert!(WorkloadKind::Deployment.rolls() && !WorkloadKind::Job.rolls() && !WorkloadKind::ReplicaSet.rolls());
    }
}
