//! keyhole as it ships, on a real node: the image from the `image` profile's
//! binary, a kubelet with containerd and CNI, keyhole installed from
//! `manifests/` with `make certs`'s overlay; pods really run.
//!
//! No value is ever printed: app containers report SHA-256 digests of what they
//! read, and the leak scanner checks what the tests saw.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use keyhole_testbed::app::{deploy, field, phase, reports, rollout, sha256, terminated};
use keyhole_testbed::leaks::{self, secret};
use keyhole_testbed::proc::wait_until;
use keyhole_testbed::workload::secret_output_rbac;
use keyhole_testbed::{Bed, create_service_account, e2e_tests, image, install};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const SA: &str = "default";
const ROLLOUT: Duration = Duration::from_secs(90);

fn main() {
    keyhole_testbed::harness::run_on_node_installed(e2e_tests![
        a_pod_runs_on_the_node_with_a_pod_ip,
        files_output_the_app_reads_its_values_from_tmpfs_as_its_own_uid,
        a_missing_secret_keeps_the_pod_in_init_error_with_the_reason_in_describe,
        secret_output_the_app_env_holds_the_values_through_env_from,
        rotation_a_new_version_rolls_the_deployment_to_completion,
        webhook_down_opted_in_pods_are_refused_others_run,
        bench_pod_create_to_ready,
        // Last: stops OpenBao and moto for good.
        with_the_backends_stopped_scaling_1_to_5_brings_the_new_pods_to_running,
    ]);
}

async fn vault_namespace(bed: &Bed, prefix: &str) -> Result<String> {
    let ns = bed.namespace(prefix).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    Ok(ns)
}

async fn a_pod_runs_on_the_node_with_a_pod_ip(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("node-smoke").await?;
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hello"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app",
                "image": image::APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo hello from $(id -u) > /dev/termination-log"],
                "securityContext": {"runAsUser": 1000},
            }],
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let p = bed.wait_pod(&ns, "hello", "succeed", Duration::from_secs(60), |p| phase(p) == "Succeeded").await?;
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
    ensure!(ip.starts_with("10.244.0."), "pod IP {ip:?} is not in the pod network");
    let (_, msg) = terminated(&p, "app", false).context("app not terminated")?;
    ensure!(msg.trim() == "hello from 1000", "termination message: {msg:?}");
    Ok(())
}

async fn files_output_the_app_reads_its_values_from_tmpfs_as_its_own_uid(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "node-files").await?;
    let pw = secret("node-files-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    // The app reports the mount's file system, the file's mode and owner, its own
    // UID, and digests of what it read; never the values.
    let report = r#"set -e
d=/keyhole/secrets
fs=$(grep " $d " /proc/mounts | cut -d' ' -f3)
echo "fs=$fs mode=$(stat -L -c %a $d/db_password) owner=$(stat -L -c %u $d/db_password) uid=$(id -u)" \
     "pw=$(sha256sum < $d/db_password | cut -d' ' -f1) ini=$(sha256sum < $d/db.ini | cut -d' ' -f1)" > /dev/termination-log"#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "files",
            "annotations": {
                "keyhole.dev/inject": "true",
                "keyhole.dev/role": ns,
                "keyhole.dev/secret-db_password": format!("secret/{ns}/db#password"),
                "keyhole.dev/template-db.ini": "[db]\npassword = {{ secrets[\"db_password\"] }}",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            // An istio-style init container: keyhole's must run before it.
            "initContainers": [{
                "name": "istio-init",
                "image": image::APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["true"],
            }],
            "containers": [{
                "name": "app",
                "image": image::APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", report],
            }],
        }
    }))?;
    Api::<Pod>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &pod).await?;
    let p = bed.wait_pod(&ns, "files", "succeed", Duration::from_secs(60), |p| phase(p) == "Succeeded").await?;

    let init: Vec<Value> = serde_json::to_value(&p.spec.as_ref().context("spec")?.init_containers)?
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = init.iter().filter_map(|c| c["name"].as_str()).collect();
    ensure!(names == ["keyhole-injector", "istio-init"], "init containers in order: {names:?}");
    let status = p.status.as_ref().context("status")?;
    let finished = |name: &str| {
        status.init_container_statuses.iter().flatten().find(|c| c.name == name).and_then(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((t.exit_code, t.started_at.clone()?.0, t.finished_at.clone()?.0))
        })
    };
    let (code, _, injector_done) = finished("keyhole-injector").context("the injector did not terminate")?;
    let (_, istio_started, _) = finished("istio-init").context("istio-init did not terminate")?;
    ensure!(code == 0, "the injector exited {code}");
    ensure!(injector_done <= istio_started, "istio-init started before keyhole's injector finished");

    let (_, msg) = terminated(&p, "app", false).context("app not terminated")?;
    leaks::scan("the app's report", &msg)?;
    let ini = format!("[db]\npassword = {pw}");
    let want = format!("fs=tmpfs mode=400 owner=1000 uid=1000 pw={} ini={}", sha256(&pw), sha256(&ini));
    ensure!(msg.trim() == want, "the app saw\n  {}\nnot\n  {want}", msg.trim());
    Ok(())
}

async fn a_missing_secret_keeps_the_pod_in_init_error_with_the_reason_in_describe(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "node-missing").await?;
    let reference = format!("secret/{ns}/nothing-here#password");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "missing",
            "annotations": {
                "keyhole.dev/inject": "true",
                "keyhole.dev/role": ns,
                "keyhole.dev/secret-db_password": reference,
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 1000},
            "containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["true"]}],
        }
    }))?;
    Api::<Pod>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &pod).await?;
    let p = bed
        .wait_pod(&ns, "missing", "fail in its init container", Duration::from_secs(60), |p| {
            terminated(p, "keyhole-injector", true).is_some()
        })
        .await?;
    let (code, msg) = terminated(&p, "keyhole-injector", true).context("no injector status")?;
    ensure!(code != 0, "the injector exited 0 for a missing secret");
    ensure!(msg.lines().count() == 1, "the termination message is not one line: {msg:?}");
    ensure!(msg.contains("keyhole.dev/secret-db_password") && msg.contains(&reference), "message: {msg}");
    let describe = bed.kubectl(&["-n", &ns, "describe", "pod", "missing"]).await?;
    ensure!(describe.contains(&reference), "kubectl describe lacks the reason:\n{describe}");
    let get = bed.kubectl(&["-n", &ns, "get", "pod", "missing", "--no-headers"]).await?;
    ensure!(get.contains("Init:Error"), "kubectl get pod: {get}");
    leaks::scan("describe", &describe)?;
    Ok(())
}

/// A namespace with the app's service account, the Secret-output RBAC from
/// manifests/examples, and a Vault role for it.
async fn app_namespace(bed: &Bed, prefix: &str) -> Result<String> {
    let ns = bed.namespace(prefix).await?;
    create_service_account(&bed.client, &ns, "app").await?;
    secret_output_rbac(bed, &ns, "app").await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, "app", "vault", &ns).await?;
    Ok(ns)
}

fn vault_annotations(ns: &str, output: &str) -> Value {
    json!({"keyhole.dev/inject": "true", "keyhole.dev/output": output, "keyhole.dev/role": ns,
           "keyhole.dev/refresh-interval": "10s",
           "keyhole.dev/secret-DB_PASSWORD": format!("secret/{ns}/db#password")})
}

async fn secret_output_the_app_env_holds_the_values_through_env_from(bed: &Bed) -> Result<()> {
    let ns = app_namespace(bed, "node-secret").await?;
    let pw = secret("node-secret-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    deploy(bed, &ns, "web", "app", 2, vault_annotations(&ns, "secret"), "DB_PASSWORD").await?;
    rollout(bed, &ns, "web", ROLLOUT).await?;
    let got = reports(bed, &ns, "web").await?;
    ensure!(got.len() == 2, "Running pods: {got:?}");
    for (pod, report) in &got {
        ensure!(field(report, "env")? == sha256(&pw), "{pod}: DB_PASSWORD in its env is not the value ({report})");
        ensure!(field(report, "fs").is_err(), "{pod}: Secret output mounted files ({report})");
    }
    Ok(())
}

async fn rotation_a_new_version_rolls_the_deployment_to_completion(bed: &Bed) -> Result<()> {
    let ns = app_namespace(bed, "node-rotate").await?;
    let (v1, v2) = (secret("node-rotate-v1"), secret("node-rotate-v2"));
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": v1}}))).await?;
    deploy(bed, &ns, "web", "app", 2, vault_annotations(&ns, "files"), "DB_PASSWORD").await?;
    rollout(bed, &ns, "web", ROLLOUT).await?;
    let deploys: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns);
    // The controller (installed from manifests/, under its own RBAC) records the
    // baseline versions first.
    wait_until("the rotation controller's baseline", Duration::from_secs(60), || {
        let deploys = deploys.clone();
        async move {
            deploys
                .get("web")
                .await
                .is_ok_and(|d| d.metadata.annotations.unwrap_or_default().contains_key("keyhole.dev/observed-versions"))
        }
    })
    .await?;
    let generation = deploys.get("web").await?.metadata.generation.unwrap_or_default();
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": v2}}))).await?;
    wait_until("the rotation controller to roll the Deployment", Duration::from_secs(60), || {
        let deploys = deploys.clone();
        async move { deploys.get("web").await.is_ok_and(|d| d.metadata.generation.unwrap_or_default() > generation) }
    })
    .await?;
    rollout(bed, &ns, "web", ROLLOUT).await?;
    let got = reports(bed, &ns, "web").await?;
    ensure!(got.len() == 2, "Running pods after the rollout: {got:?}");
    for (pod, report) in &got {
        ensure!(field(report, "env")? == sha256(""), "{pod}: files output must not set env ({report})");
        let want = format!("{}:400:1000", sha256(&v2));
        ensure!(field(report, "DB_PASSWORD")? == want, "{pod}: the new pod's file is not the new version ({report})");
    }
    Ok(())
}

async fn webhook_down_opted_in_pods_are_refused_others_run(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("node-down").await?;
    bed.kubectl(&["-n", install::NAMESPACE, "scale", "deployment/keyhole-webhook", "--replicas=0"]).await?;
    let sys: Api<Pod> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    wait_until("the webhook pods to be gone", Duration::from_secs(60), || {
        let sys = sys.clone();
        async move {
            sys.list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
                .await
                .is_ok_and(|l| l.items.is_empty())
        }
    })
    .await?;
    let result = async {
        let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
        let pod = |name: &str, inject: bool| -> Result<Pod> {
            let mut ann = json!({});
            if inject {
                ann = json!({"keyhole.dev/inject": "true", "keyhole.dev/secret-x": format!("secret/{ns}/x#y")});
            }
            Ok(serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": ann},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["true"]}]}
            }))?)
        };
        let refused = pods.create(&PostParams::default(), &pod("opted-in", true)?).await;
        let msg = match refused {
            Err(kube::Error::Api(s)) => s.message,
            other => anyhow::bail!("an opted-in pod was admitted with the webhook down: {other:?}"),
        };
        ensure!(msg.contains("inject.keyhole.dev"), "refusal does not name keyhole's webhook: {msg}");
        pods.create(&PostParams::default(), &pod("plain", false)?).await.context("a pod that did not opt in")?;
        bed.wait_pod(&ns, "plain", "succeed", Duration::from_secs(60), |p| phase(p) == "Succeeded").await?;
        Ok(())
    }
    .await;
    bed.kubectl(&["-n", install::NAMESPACE, "scale", "deployment/keyhole-webhook", "--replicas=2"]).await?;
    bed.kubectl(&["-n", install::NAMESPACE, "rollout", "status", "deployment/keyhole-webhook", "--timeout=90s"])
        .await?;
    result
}

async fn with_the_backends_stopped_scaling_1_to_5_brings_the_new_pods_to_running(bed: &Bed) -> Result<()> {
    let ns = app_namespace(bed, "node-offline").await?;
    let pw = secret("node-offline-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    deploy(bed, &ns, "web", "app", 1, vault_annotations(&ns, "secret"), "DB_PASSWORD").await?;
    rollout(bed, &ns, "web", ROLLOUT).await?;
    ensure!(bed.stop_part("openbao") && bed.stop_part("moto"), "OpenBao or moto was not running");
    ensure!(bed.http.get(format!("{}/v1/sys/health", bed.vault_addr)).send().await.is_err(), "OpenBao still answers");
    Api::<Deployment>::namespaced(bed.client.clone(), &ns)
        .patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 5}})))
        .await?;
    rollout(bed, &ns, "web", ROLLOUT).await?;
    let got = reports(bed, &ns, "web").await?;
    ensure!(got.len() == 5, "Running pods with the backends stopped: {got:?}");
    for (pod, report) in &got {
        ensure!(field(report, "env")? == sha256(&pw), "{pod}: not the revision's value ({report})");
    }
    Ok(())
}

/// `make bench` runs 10 rounds (`KEYHOLE_POD_START_ROUNDS`); 3 here.
async fn bench_pod_create_to_ready(bed: &Bed) -> Result<()> {
    let rounds = std::env::var("KEYHOLE_POD_START_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let rows = keyhole_testbed::bench_node::pod_start(bed, rounds).await?;
    keyhole_testbed::bench_node::print(&rows);
    Ok(())
}
