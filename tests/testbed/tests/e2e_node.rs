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
use keyhole_contract::names;
use keyhole_testbed::app::{AdmissionLoad, admit_dry_run, deploy, field, phase, reports, rollout, sha256, terminated};
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
        a_pod_running_as_root_gets_an_injector_the_kubelet_runs,
        a_missing_secret_keeps_the_pod_in_init_error_with_the_reason_in_describe,
        secret_output_the_app_env_holds_the_values_through_env_from,
        rotation_a_new_version_rolls_the_deployment_to_completion,
        rotation_max_rollouts_holds_when_five_workloads_share_the_changed_value,
        webhook_down_opted_in_pods_are_refused_others_run,
        webhook_certificate_rotated_in_its_secret_no_admission_fails,
        the_config_edited_in_its_configmap_is_taken_without_a_restart_and_a_broken_one_is_not,
        bench_pod_create_to_ready,
        a_killed_bed_leaves_no_process_mount_cgroup_or_directory,
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
    let (p, msg) = app_report(bed, &ns, &pod).await?;

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

    let ini = format!("[db]\npassword = {pw}");
    let want = format!("fs=tmpfs mode=400 owner=1000 uid=1000 pw={} ini={}", sha256(&pw), sha256(&ini));
    ensure!(msg.trim() == want, "the app saw\n  {}\nnot\n  {want}", msg.trim());

    // The plan reached the injector through its annotation, and `kubectl
    // describe pod` shows it as one shortened line, not in the env.
    let plan = p.metadata.annotations.as_ref().and_then(|a| a.get(names::PLAN_ANNOTATION)).context("no plan")?;
    ensure!(plan.len() > 200, "the control: the plan ({} bytes) is longer than describe shows", plan.len());
    let describe = bed.kubectl(&["-n", &ns, "describe", "pod", "files"]).await?;
    leaks::scan("kubectl describe pod", &describe)?;
    let spec = describe.split("\nEvents:").next().unwrap_or_default();
    let long: Vec<&str> = spec.lines().filter(|l| l.len() > 200).collect();
    ensure!(long.is_empty(), "kubectl describe pod has long lines:\n{}", long.join("\n"));
    let digest = keyhole_contract::Plan::json_sha256(plan);
    let shortened = spec.lines().any(|l| l.trim().starts_with("{\"version\":") && l.ends_with("..."));
    ensure!(spec.contains("keyhole.dev/plan:") && shortened, "no shortened plan annotation in:\n{describe}");
    ensure!(describe.contains(&digest), "the injector's env does not bind the plan:\n{describe}");
    ensure!(!describe.contains("\"items\""), "the plan's items show in describe:\n{describe}");
    Ok(())
}

/// Creates `pod`, waits for it to succeed, and returns it with its app
/// container's report (its termination message), scanned for leaks.
async fn app_report(bed: &Bed, ns: &str, pod: &Pod) -> Result<(Pod, String)> {
    let name = pod.metadata.name.clone().context("the pod's name")?;
    Api::<Pod>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), pod).await?;
    let p = bed.wait_pod(ns, &name, "succeed", Duration::from_secs(60), |p| phase(p) == "Succeeded").await?;
    let (_, msg) = terminated(&p, "app", false).context("app not terminated")?;
    leaks::scan("the app's report", &msg)?;
    Ok((p, msg))
}

/// A pod-level `runAsUser: 0` used to reach the injector, which says
/// `runAsNonRoot: true`: the kubelet refused it (CreateContainerConfigError) and
/// the pod never started. The injector now runs as 65532 and the files are 0444.
async fn a_pod_running_as_root_gets_an_injector_the_kubelet_runs(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "node-root").await?;
    let pw = secret("node-root-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    let report = r#"f=/keyhole/secrets/pw
echo "mode=$(stat -L -c %a $f) owner=$(stat -L -c %u $f) uid=$(id -u) pw=$(sha256sum < $f | cut -d' ' -f1)" > /dev/termination-log"#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "root",
            "annotations": {
                "keyhole.dev/inject": "true",
                "keyhole.dev/role": ns,
                "keyhole.dev/secret-pw": format!("secret/{ns}/db#password"),
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "containers": [{
                "name": "app",
                "image": image::APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", report],
            }],
        }
    }))?;
    let (_, msg) = app_report(bed, &ns, &pod).await?;
    let want = format!("mode=444 owner=65532 uid=0 pw={}", sha256(&pw));
    ensure!(msg.trim() == want, "the app saw\n  {}\nnot\n  {want}", msg.trim());

    // Control: the injector as it was (no UID of its own, runAsNonRoot) in the
    // same pod is refused by the kubelet.
    let old: Pod = serde_json::from_value(json!({
        "metadata": {"name": "old-shape"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "initContainers": [{
                "name": "injector-as-before",
                "image": image::APP_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["true"],
                "securityContext": {"runAsNonRoot": true},
            }],
            "containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["true"]}],
        }
    }))?;
    Api::<Pod>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &old).await?;
    bed.wait_pod(&ns, "old-shape", "be refused by the kubelet", Duration::from_secs(60), |p| {
        p.status.iter().flat_map(|s| s.init_container_statuses.iter().flatten()).any(|c| {
            c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                == Some("CreateContainerConfigError")
        })
    })
    .await?;
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

/// The SHA-256 fingerprint of the certificate served at `ip:8443`, seen from
/// inside the cluster network.
async fn served_fingerprint(bed: &Bed, ip: &str) -> Result<String> {
    let node = bed.node.as_ref().context("node")?;
    let pem = node.in_netns("openssl", &["s_client", "-connect", &format!("{ip}:8443"), "-showcerts"], b"").await?;
    fingerprint(&pem).await
}

async fn fingerprint(pem: &str) -> Result<String> {
    let mut child = tokio::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().context("stdin")?, pem.as_bytes()).await?;
    drop(child.stdin.take());
    let out = child.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn webhook_certificate_rotated_in_its_secret_no_admission_fails(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("node-certs").await?;
    let install = bed.installed.as_ref().context("keyhole is not installed")?;
    let sys: Api<Pod> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    let ips: Vec<String> = sys
        .list(&ListParams::default().labels("app.kubernetes.io/component=webhook"))
        .await?
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    ensure!(ips.len() == 2, "webhook pod IPs: {ips:?}");
    let old = served_fingerprint(bed, &ips[0]).await?;

    let load = AdmissionLoad::start(bed, &ns)?;
    // `make certs` again: same CA (the caBundle stays), a new leaf; then apply.
    let out = tokio::process::Command::new("bash")
        .arg(keyhole_testbed::webhook::repo_root().join("certs/make-certs.sh"))
        .env("CERTS_OUT", &install.certs)
        .output()
        .await?;
    ensure!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
    let new = fingerprint(&std::fs::read_to_string(install.certs.join("tls.crt"))?).await?;
    ensure!(new != old, "make-certs.sh did not make a new certificate");
    bed.kubectl(&["apply", "-k", &install.overlay.display().to_string()]).await?;
    let swapped = wait_until("both webhook pods to serve the new certificate", Duration::from_secs(150), || {
        let ips = ips.clone();
        let new = new.clone();
        async move {
            for ip in &ips {
                if served_fingerprint(bed, ip).await.ok().as_deref() != Some(new.as_str()) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = load.finish("the certificate swap", 20).await;
    swapped?;
    let ok = ok?;
    eprintln!("    {ok} admissions during the certificate swap, none failed");
    Ok(())
}

/// The kustomize install has no checksum roll: the webhook re-reads its
/// mounted ConfigMap, the rotation controller restarts itself on a changed one.
/// An edit (a new store) is taken by both webhook replicas without a restart,
/// and each rotation controller restarts once; a broken edit is refused by all
/// (logged), admission goes on with the last good config, and nothing
/// restarts. The original is put back at the end.
async fn the_config_edited_in_its_configmap_is_taken_without_a_restart_and_a_broken_one_is_not(
    bed: &Bed,
) -> Result<()> {
    let ns = bed.namespace("node-config").await?;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    let original = maps.get("keyhole-config").await?;
    let text = original.data.as_ref().and_then(|d| d.get("config.yaml")).context("no config.yaml")?.clone();
    let sys: Api<Pod> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    let pods_of = |component: &'static str| {
        let sys = sys.clone();
        async move {
            let list =
                sys.list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}"))).await?;
            anyhow::Ok(list.items)
        }
    };
    let restarts = |component: &'static str| async move {
        let pods = pods_of(component).await?;
        let count = |p: &Pod| {
            p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).map(|c| c.restart_count).sum::<i32>()
        };
        anyhow::Ok(pods.iter().map(|p| (p.metadata.uid.clone().unwrap_or_default(), count(p))).collect::<Vec<_>>())
    };
    let logs_say = |component: &'static str, needle: &'static str| async move {
        for p in pods_of(component).await.unwrap_or_default() {
            let name = p.metadata.name.unwrap_or_default();
            let logs = bed.kubectl(&["-n", install::NAMESPACE, "logs", &name]).await.unwrap_or_default();
            if !logs.contains(needle) {
                return false;
            }
        }
        true
    };
    let webhooks_before = restarts("webhook").await?;
    let rotation_before = restarts("rotation").await?;
    ensure!(webhooks_before.len() == 2 && rotation_before.len() == 2, "{webhooks_before:?} {rotation_before:?}");
    let refused = admit_dry_run(bed, &ns, "vault-new").await?;
    ensure!(
        refused.as_ref().is_err_and(|e| e.contains("unknown store \"vault-new\"")),
        "the control: vault-new is not configured yet: {refused:?}"
    );
    let put = |yaml: String| {
        let maps = maps.clone();
        async move {
            let patch = json!({"data": {"config.yaml": yaml}});
            maps.patch("keyhole-config", &PatchParams::default(), &Patch::Merge(&patch)).await?;
            anyhow::Ok(())
        }
    };

    let result = async {
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
        let vault = config["stores"]["vault"].clone();
        config["stores"]["vault-new"] = vault;
        let with_new = serde_yaml::to_string(&config)?;
        put(with_new.clone()).await?;
        let t0 = std::time::Instant::now();
        wait_until("both webhook pods to log the reload", ROLLOUT, || logs_say("webhook", "config reloaded")).await?;
        for _ in 0..10 {
            // Both replicas answer behind the Service: ten in a row are admitted.
            admit_dry_run(bed, &ns, "vault-new").await?.map_err(|e| anyhow::anyhow!("after the reload: {e}"))?;
        }
        eprintln!("    the webhook took the new store {:.1?} after the ConfigMap edit", t0.elapsed());
        let restarted_once: Vec<_> = rotation_before.iter().map(|(uid, n)| (uid.clone(), n + 1)).collect();
        wait_until("each rotation controller to restart once", ROLLOUT, || async {
            restarts("rotation").await.is_ok_and(|now| now == restarted_once)
        })
        .await?;
        bed.kubectl(&["-n", install::NAMESPACE, "rollout", "status", "deployment/keyhole-rotation", "--timeout=60s"])
            .await?;
        eprintln!("    the rotation controllers restarted with it {:.1?} after the edit", t0.elapsed());

        put(format!("{with_new}defaultStore: nowhere\n")).await?;
        let refusal = "the changed config does not load; still";
        wait_until("every keyhole pod to refuse the broken config", ROLLOUT, || async {
            logs_say("webhook", refusal).await && logs_say("rotation", refusal).await
        })
        .await?;
        for _ in 0..10 {
            admit_dry_run(bed, &ns, "vault-new").await?.map_err(|e| anyhow::anyhow!("after the broken edit: {e}"))?;
        }
        ensure!(restarts("webhook").await? == webhooks_before, "a webhook pod restarted or was replaced");
        ensure!(restarts("rotation").await? == restarted_once, "a rotation controller restarted on the broken config");
        anyhow::Ok(())
    }
    .await;
    put(text).await?;
    result
}

/// A second bed with a node, a pod running on it, then SIGKILL: the kernel and
/// the janitor must leave nothing (processes, mounts, cgroups, its directory).
async fn a_killed_bed_leaves_no_process_mount_cgroup_or_directory(_bed: &Bed) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let bin = keyhole_testbed::workspace_bin("keyhole-bed")?;
    let mut child = tokio::process::Command::new(&bin)
        .args(["up", "--node"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let (mut kubeconfig, mut dir, mut cgroup) = (String::new(), String::new(), String::new());
    while let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await?? {
        if let Some(k) = line.trim().strip_prefix("export KUBECONFIG=") {
            kubeconfig = k.to_owned();
        }
        if let Some(rest) = line.trim().strip_prefix("node keyhole-node Ready") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            dir = words.iter().skip_while(|w| **w != "dir").nth(1).unwrap_or(&"").to_string();
            cgroup = words.iter().skip_while(|w| **w != "cgroup-root").nth(1).unwrap_or(&"").to_string();
            break;
        }
    }
    ensure!(!dir.is_empty() && !cgroup.is_empty() && !kubeconfig.is_empty(), "keyhole-bed up --node printed no node");
    let client = keyhole_testbed::kube_client(std::path::Path::new(&kubeconfig)).await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        "spec": {"containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_until("the pod on the second bed to run", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move { pods.get("sleeper").await.is_ok_and(|p| phase(&p) == "Running") }
    })
    .await?;
    let holding = |needle: String| -> Vec<String> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains(&needle)
                    .then(|| format!("{}: {}", e.file_name().to_string_lossy(), &cmd[..cmd.len().min(100)]))
            })
            .collect()
    };
    let shims = holding(format!("{dir}/node/containerd.sock"));
    ensure!(shims.iter().any(|p| p.contains("containerd-shim")), "no shim before the kill: {shims:?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().context("pid")? as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    child.wait().await?;
    let cgroups = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(&cgroup))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect()
    };
    let left = || {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
        (holding(dir.clone()), mounts.len(), cgroups(), std::path::Path::new(&dir).exists())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (procs, mounts, cgs, dir_left) = left();
        if procs.is_empty() && mounts == 0 && cgs.is_empty() && !dir_left {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "left behind 20 s after SIGKILL: processes {procs:?}, {mounts} mounts, cgroups {cgs:?}, directory {dir_left}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The installed controller with `--max-rollouts=2 --interval=10s` (patched
/// into its Deployment as an operator would): five Deployments on one changed
/// value start rolling two per 10 s window, and all five complete.
async fn rotation_max_rollouts_holds_when_five_workloads_share_the_changed_value(bed: &Bed) -> Result<()> {
    let args = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/args",
        "value": ["--config=/etc/keyhole/config.yaml", "--interval=10s", "--max-rollouts=2", "--metrics-listen=0.0.0.0:9090"]}]);
    bed.kubectl(&[
        "-n",
        install::NAMESPACE,
        "patch",
        "deployment/keyhole-rotation",
        "--type=json",
        "-p",
        &args.to_string(),
    ])
    .await?;
    rollout(bed, install::NAMESPACE, "keyhole-rotation", ROLLOUT).await?;

    let ns = app_namespace(bed, "node-max").await?;
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": secret("max-v1")}}))).await?;
    let names: Vec<String> = (0..5).map(|i| format!("web-{i}")).collect();
    for name in &names {
        deploy(bed, &ns, name, "app", 1, vault_annotations(&ns, "files"), "DB_PASSWORD").await?;
    }
    let deploys: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns);
    wait_until("the controller's baseline for all five", Duration::from_secs(60), || {
        let deploys = deploys.clone();
        async move {
            deploys.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.len() == 5
                    && l.items.iter().all(|d| {
                        d.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("keyhole.dev/observed-versions"))
                    })
            })
        }
    })
    .await?;
    let start: Vec<i64> = {
        let mut g = Vec::new();
        for n in &names {
            g.push(deploys.get(n).await?.metadata.generation.unwrap_or_default());
        }
        g
    };
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": secret("max-v2")}}))).await?;
    let changed = std::time::Instant::now();
    // When each Deployment's template moved, seconds after the change.
    let mut rolled_at: Vec<Option<f64>> = vec![None; 5];
    while rolled_at.iter().any(Option::is_none) {
        ensure!(changed.elapsed() < Duration::from_secs(120), "not all rolled in 120 s: {rolled_at:?}");
        for (i, n) in names.iter().enumerate() {
            if rolled_at[i].is_none() && deploys.get(n).await?.metadata.generation.unwrap_or_default() > start[i] {
                rolled_at[i] = Some(changed.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times: Vec<f64> = rolled_at.into_iter().flatten().collect();
    times.sort_by(f64::total_cmp);
    eprintln!("    rollouts started at {times:.1?} s after the change");
    // No 10 s window (less a second of polling slack) holds more than two starts.
    for w in times.windows(3) {
        ensure!(w[2] - w[0] >= 9.0, "three rollouts started within {:.1} s: {times:?}", w[2] - w[0]);
    }
    for n in &names {
        rollout(bed, &ns, n, ROLLOUT).await?;
    }
    Ok(())
}
