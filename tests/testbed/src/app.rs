//! Test apps on the real node: the app image's busybox reports what it got as
//! SHA-256 digests (never the values) in its termination-log file, which the
//! tests and the demo read through `kubectl exec`.

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Bed, image};

pub fn sha256(v: &str) -> String {
    Sha256::digest(v.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

/// Exit code and termination message of a terminated (init) container.
pub fn terminated(p: &Pod, container: &str, init: bool) -> Option<(i32, String)> {
    let s = p.status.as_ref()?;
    let list = if init { s.init_container_statuses.as_ref()? } else { s.container_statuses.as_ref()? };
    let t = list.iter().find(|c| c.name == container)?.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.message.clone().unwrap_or_default()))
}

/// The app's command: `env=<digest of $env_var>`, then for each file keyhole
/// wrote `<name>=<digest>:<mode>:<owner>`, and the mount's file system; then it
/// stays up (Ready once the report exists) until deleted.
pub fn report_script(env_var: &str) -> String {
    format!(
        r#"d=/keyhole/secrets
r="env=$(printf %s "${env_var}" | sha256sum | cut -c1-64)"
if [ -d $d ]; then
  r="$r fs=$(grep " $d " /proc/mounts | cut -d' ' -f3)"
  for f in $d/*; do r="$r $(basename $f)=$(sha256sum < $f | cut -c1-64):$(stat -L -c %a:%u $f)"; done
fi
echo "$r" > /dev/termination-log
exec sleep 3600"#
    )
}

/// A Deployment (UID 1000, no API token of its own: keyhole mounts one into the
/// injector only) of one container `app`; new revisions come up in full at once.
pub fn deployment(name: &str, sa: &str, replicas: i32, annotations: Value, app: Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": sa,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [app],
                }
            }
        }
    }))?)
}

/// Creates a [`deployment`] of the app image whose pods report `env_var` and
/// keyhole's files.
pub async fn deploy(
    bed: &Bed,
    ns: &str,
    name: &str,
    sa: &str,
    replicas: i32,
    annotations: Value,
    env_var: &str,
) -> Result<()> {
    let app = json!({
        "name": "app",
        "image": image::APP_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", report_script(env_var)],
        "readinessProbe": {"exec": {"command": ["test", "-s", "/dev/termination-log"]}, "periodSeconds": 1},
    });
    let d = deployment(name, sa, replicas, annotations, app)?;
    Api::<Deployment>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), &d).await?;
    Ok(())
}

/// `kubectl rollout status` of a Deployment.
pub async fn rollout(bed: &Bed, ns: &str, name: &str, timeout: Duration) -> Result<()> {
    let timeout = format!("--timeout={}s", timeout.as_secs());
    bed.kubectl(&["-n", ns, "rollout", "status", &format!("deployment/{name}"), &timeout]).await?;
    Ok(())
}

/// `(pod, report)` of each Running pod of `app=name` that is not being deleted.
pub async fn reports(bed: &Bed, ns: &str, name: &str) -> Result<Vec<(String, String)>> {
    let pods = Api::<Pod>::namespaced(bed.client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?;
    let mut out = Vec::new();
    for p in pods.items.iter().filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none()) {
        let pod = p.metadata.name.clone().unwrap_or_default();
        let report = bed.kubectl(&["-n", ns, "exec", &pod, "-c", "app", "--", "cat", "/dev/termination-log"]).await?;
        crate::leaks::scan("the app's report", &report)?;
        out.push((pod, report.trim().to_owned()));
    }
    Ok(out)
}

/// One field of a report: `env`, `fs`, or a file name (`digest:mode:owner`).
pub fn field<'a>(report: &'a str, key: &str) -> Result<&'a str> {
    match report.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('='))) {
        Some(v) => Ok(v),
        None => bail!("the report has no {key}: {report}"),
    }
}

/// A dry-run create of an opted-in pod naming `store` (role: its namespace):
/// admitted with the injector, or the refusal.
pub async fn admit_dry_run(bed: &Bed, ns: &str, store: &str) -> Result<std::result::Result<(), String>> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "probe-", "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/role": ns,
            "keyhole.dev/store": store, "keyhole.dev/secret-x": format!("secret/{ns}/x#y")}},
        "spec": {"containers": [{"name": "app", "image": image::APP_IMAGE}]}
    }))?;
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    Ok(match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
        Ok(p) if p.spec.as_ref().is_some_and(|s| s.init_containers.is_some()) => Ok(()),
        Ok(_) => Err("admitted without the injector".into()),
        Err(e) => Err(e.to_string()),
    })
}

/// Opted-in pods created without pause (dry run: admission runs, nothing is
/// stored) while something changes under the webhook: a certificate, an
/// upgrade. [`AdmissionLoad::finish`] fails on any admission that failed or
/// came back without the injector.
pub struct AdmissionLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u32, Vec<String>)>,
}

impl AdmissionLoad {
    pub fn start(bed: &Bed, ns: &str) -> Result<AdmissionLoad> {
        let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"generateName": "dry-", "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/role": "r",
                "keyhole.dev/secret-x": format!("secret/{ns}/x#y")}},
            "spec": {"containers": [{"name": "app", "image": image::APP_IMAGE}]}
        }))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
                        Ok(p) if p.spec.as_ref().is_some_and(|s| s.init_containers.is_some()) => ok += 1,
                        Ok(_) => failed.push("admitted without the injector".to_owned()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        };
        Ok(AdmissionLoad { stop, task })
    }

    /// Stops the load; the number of admissions, all of which succeeded, or
    /// why not. `during` names what happened meanwhile, for the messages.
    pub async fn finish(self, during: &str, at_least: u32) -> Result<u32> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self.task.await?;
        if !failed.is_empty() {
            bail!(
                "{} of {} admissions failed during {during}: {:?}",
                failed.len(),
                ok as usize + failed.len(),
                &failed[..failed.len().min(3)]
            );
        }
        if ok < at_least {
            bail!("only {ok} admissions during {during}");
        }
        Ok(ok)
    }
}
