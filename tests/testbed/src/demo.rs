//! `make demo`: keyhole's main job end to end, as it ships, on the bed's real node.
//!
//! The bed's API server, controller-manager, scheduler and a kubelet with
//! containerd run the pods; keyhole is installed from `manifests/` (with `make
//! certs`'s overlay) from its image; OpenBao and moto are processes on the host,
//! reached from pods like an external Vault. No secret value is printed: the app
//! containers report digests, and the demo says whether they match the backend.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::app::{self, field, sha256};
use crate::workload::{newest_rs, secret_output_rbac};
use crate::{Bed, create_namespace, create_service_account, image, install};

const NS: &str = "shop";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/shop-worker";
const ROLLOUT: Duration = Duration::from_secs(120);

pub async fn run() -> Result<()> {
    let t0 = Instant::now();
    let bed = Bed::start_with_node().await?;
    let node = bed.node.as_ref().context("no node")?;
    step(1, "the local cluster: control plane and a real node");
    println!(
        "   Kubernetes {} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), OpenBao and moto up in {:.1}s",
        bed.k8s_version,
        bed.started_in.as_secs_f64()
    );
    println!(
        "   node {} Ready in {:.1}s: kubelet {}, containerd and runc from Debian, CNI bridge; pod network {}",
        node.name,
        node.started_in.as_secs_f64(),
        bed.k8s_version,
        crate::node::POD_CIDR
    );
    for img in &node.images {
        println!("   image {} ({:.1} MB), imported locally", img.name, img.layer_bytes as f64 / 1e6);
    }

    step(2, "keyhole installed from manifests/: make certs, kubectl apply -k certs/out/overlay");
    let t = Instant::now();
    bed.install_keyhole(&bed.node_config_yaml(
        &[("rotationRole", install::VAULT_ROTATION_ROLE)],
        &[("rotationRole", "arn:aws:iam::123456789012:role/keyhole-rotation")],
    )?)
    .await?;
    println!("   installed and available in {:.1}s:", t.elapsed().as_secs_f64());
    print_indented(&bed.kubectl(&["-n", install::NAMESPACE, "get", "pods", "-o", "wide"]).await?);

    step(3, "the operator puts values in the backends and grants the workloads");
    create_namespace(&bed.client, NS).await?;
    for sa in ["shop-api", "shop-worker"] {
        create_service_account(&bed.client, NS, sa).await?;
    }
    let db_password = demo_value("db");
    let stripe_key = demo_value("stripe");
    bed.vault("POST", "secret/data/shop/db", Some(json!({"data": {"password": db_password}}))).await?;
    bed.vault_policy("shop-api", &["secret/data/shop/*"]).await?;
    bed.vault_kubernetes_role("shop-api", NS, "shop-api", "vault", "shop-api").await?;
    bed.put_ssm("/shop/stripe/key", &stripe_key).await?;
    secret_output_rbac(&bed, NS, "shop-worker").await?;
    println!("   OpenBao: KV v2 secret/shop/db; kubernetes auth role shop-api for {NS}/shop-api");
    println!("   moto: SSM SecureString /shop/stripe/key; web identity role {ROLE_ARN}");
    println!("   RBAC: manifests/examples/secret-output-rbac.yaml for {NS}/shop-worker (create, get Secrets)");

    step(4, "a mistake is refused at kubectl apply, with what to write instead");
    let bad = deployment(
        "shop-typo",
        "shop-api",
        json!({"keyhole.dev/inject": "true", "keyhole.dev/store": "aws", "keyhole.dev/role": ROLE_ARN,
               "keyhole.dev/secret-STRIPE_KEY": "shop stripe key"}),
    )?;
    match Api::<Deployment>::namespaced(bed.client.clone(), NS).create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(e)) => println!("   Error from server: {}", e.message),
        Err(e) => return Err(e.into()),
        Ok(_) => bail!("the bad Deployment was admitted"),
    }

    step(5, "shop-api: files from OpenBao on a tmpfs volume");
    let api_annotations = json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "shop-api",
        "keyhole.dev/refresh-interval": "10s",
        "keyhole.dev/secret-db_password": "secret/shop/db#password",
        "keyhole.dev/template-db.ini": "[db]\nhost = shop-db\npassword = {{ secrets[\"db_password\"] }}"});
    app::deploy(&bed, NS, "shop-api", "shop-api", 2, api_annotations, "DB_PASSWORD").await?;
    app::rollout(&bed, NS, "shop-api", ROLLOUT).await?;
    let pods =
        Api::<Pod>::namespaced(bed.client.clone(), NS).list(&ListParams::default().labels("app=shop-api")).await?;
    describe(&pods.items[0])?;
    print_indented(&bed.kubectl(&["-n", NS, "get", "pods", "-l", "app=shop-api"]).await?);
    for (pod, report) in app::reports(&bed, NS, "shop-api").await? {
        let file = field(&report, "db_password")?;
        let (digest, mode_owner) = file.split_once(':').unwrap_or_default();
        println!(
            "   {pod}: the app reads /keyhole/secrets/db_password ({}, mode:uid {mode_owner}): OpenBao's value: {}",
            field(&report, "fs")?,
            yes(digest == sha256(&db_password))
        );
    }

    step(6, "shop-worker: one immutable Secret per revision, from SSM, as env vars");
    let worker_annotations = json!({"keyhole.dev/inject": "true", "keyhole.dev/store": "aws",
        "keyhole.dev/role": ROLE_ARN, "keyhole.dev/output": "secret",
        "keyhole.dev/secret-STRIPE_KEY": "/shop/stripe/key"});
    app::deploy(&bed, NS, "shop-worker", "shop-worker", 3, worker_annotations, "STRIPE_KEY").await?;
    app::rollout(&bed, NS, "shop-worker", ROLLOUT).await?;
    for (pod, report) in app::reports(&bed, NS, "shop-worker").await? {
        println!(
            "   {pod}: $STRIPE_KEY in the app's env is SSM's value: {}",
            yes(field(&report, "env")? == sha256(&stripe_key))
        );
    }
    let rs = newest_rs(&bed, NS, "shop-worker", 1).await?;
    show_secret(&bed, &rs, &stripe_key).await?;

    step(7, "a pod whose secret does not exist: Init:Error, the reason in kubectl describe");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "shop-broken", "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/role": "shop-api",
                     "keyhole.dev/secret-db_password": "secret/shop/no-such-thing#password"}},
        "spec": {"serviceAccountName": "shop-api", "automountServiceAccountToken": false, "restartPolicy": "Never",
                 "securityContext": {"runAsUser": 1000},
                 "containers": [{"name": "app", "image": image::APP_IMAGE, "imagePullPolicy": "Never", "command": ["true"]}]}
    }))?;
    Api::<Pod>::namespaced(bed.client.clone(), NS).create(&PostParams::default(), &pod).await?;
    bed.wait_pod(NS, "shop-broken", "fail", Duration::from_secs(60), |p| {
        app::terminated(p, "keyhole-injector", true).is_some()
    })
    .await?;
    print_indented(&bed.kubectl(&["-n", NS, "get", "pod", "shop-broken"]).await?);
    let describe = bed.kubectl(&["-n", NS, "describe", "pod", "shop-broken"]).await?;
    crate::leaks::scan("kubectl describe", &describe)?;
    println!("   kubectl describe pod shop-broken (the injector's part):");
    let lines: Vec<&str> = describe.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.trim_start().starts_with("keyhole-injector:")) {
        for l in lines[i..].iter().take_while(|l| !l.trim_start().starts_with("Ready:")) {
            if ["keyhole-injector:", "State:", "Reason:", "Message:", "Exit Code:"]
                .iter()
                .any(|k| l.trim_start().starts_with(k))
            {
                println!("     {}", l.trim_end());
            }
        }
    }

    step(8, "rotation: a new value in OpenBao rolls shop-api to completion, and its new pods read it");
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), NS);
    crate::proc::wait_until("the controller's first look at the versions", Duration::from_secs(60), || async {
        deployments
            .get("shop-api")
            .await
            .ok()
            .and_then(|d| d.metadata.annotations)
            .is_some_and(|a| a.contains_key(keyhole_contract::annotations::OBSERVED_VERSIONS))
    })
    .await?;
    println!("   keyhole-rotation (the installed Deployment; metadata-only Vault policy) recorded the versions");
    let new_password = demo_value("db-rotated");
    bed.vault("POST", "secret/data/shop/db", Some(json!({"data": {"password": new_password}}))).await?;
    let changed = Instant::now();
    let rs2 = newest_rs(&bed, NS, "shop-api", 2).await?;
    println!(
        "   OpenBao secret/shop/db is at version 2: new ReplicaSet {} {:.1}s later",
        rs2.metadata.name.as_deref().unwrap_or_default(),
        changed.elapsed().as_secs_f64()
    );
    app::rollout(&bed, NS, "shop-api", ROLLOUT).await?;
    println!(
        "   kubectl rollout status deployment/shop-api: complete {:.1}s after the change",
        changed.elapsed().as_secs_f64()
    );
    for (pod, report) in app::reports(&bed, NS, "shop-api").await? {
        let digest = field(&report, "db_password")?.split(':').next().unwrap_or_default();
        println!("   {pod}: db_password is the new version: {}", yes(digest == sha256(&new_password)));
        ensure!(digest == sha256(&new_password), "{pod} did not get the new version");
    }

    println!("\n== done in {:.1}s; every part stops now", t0.elapsed().as_secs_f64());
    Ok(())
}

fn print_indented(text: &str) {
    for l in text.lines() {
        println!("     {l}");
    }
}

fn step(n: u32, what: &str) {
    println!("\n== {n}. {what}");
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

fn demo_value(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("demo-{what}-{:x}", nanos as u64)
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("-")
}

fn deployment(name: &str, sa: &str, annotations: Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": sa,
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [{"name": "app", "image": format!("registry.example/{name}:1")}]
                }
            }
        }
    }))?)
}

/// What the webhook added to a pod, read back from the API server.
fn describe(pod: &Pod) -> Result<()> {
    let spec = pod.spec.as_ref().context("spec")?;
    let inits: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    println!("   pod {} as the API server stored it (mutated by keyhole):", pod_name(pod));
    println!("     init containers: {inits:?}");
    for v in spec.volumes.iter().flatten().filter(|v| v.name.starts_with("keyhole-")) {
        let what = if let Some(e) = &v.empty_dir {
            format!(
                "emptyDir medium {}, sizeLimit {}",
                e.medium.as_deref().unwrap_or(""),
                e.size_limit.as_ref().map(|q| q.0.as_str()).unwrap_or("")
            )
        } else if let Some(p) = &v.projected {
            let aud = p
                .sources
                .iter()
                .flatten()
                .find_map(|s| s.service_account_token.as_ref())
                .and_then(|t| t.audience.clone());
            format!("projected service-account token, audience {}", aud.unwrap_or_else(|| "the API server".into()))
        } else {
            "other".into()
        };
        let mounted_by: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| c.volume_mounts.iter().flatten().any(|m| m.name == v.name))
            .map(|c| c.name.as_str())
            .collect();
        println!("     volume {}: {what}; mounted by {mounted_by:?}", v.name);
    }
    Ok(())
}

async fn show_secret(bed: &Bed, rs: &ReplicaSet, want: &str) -> Result<()> {
    let name = format!("keyhole-{}", rs.metadata.name.as_deref().unwrap_or_default());
    let s = Api::<Secret>::namespaced(bed.client.clone(), NS).get(&name).await?;
    let owner = s.metadata.owner_references.iter().flatten().next().map(|o| format!("{} {}", o.kind, o.name));
    let holds = s.data.as_ref().and_then(|d| d.get("STRIPE_KEY")).is_some_and(|v| v.0 == want.as_bytes());
    println!(
        "   Secret {NS}/{name}: immutable {}, owned by {}, keys {:?}; STRIPE_KEY is SSM's /shop/stripe/key: {}",
        s.immutable.unwrap_or(false),
        owner.unwrap_or_default(),
        s.data.as_ref().map(|d| d.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
        yes(holds)
    );
    Ok(())
}
