//! `make demo`: keyhole's main job on the local control plane, end to end.
//!
//! The bed's real API server and controller-manager create the pods; keyhole's
//! webhook (a process, registered with `manifests/webhooks.yaml`) mutates them;
//! no kubelet runs, so the demo plays it for each pod's `keyhole-injector` init
//! container (`kubelet.rs`), with a real token from TokenRequest. No secret value
//! is printed: the demo says whether what a pod got is what the backend holds.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_contract::names;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::kubelet::{InitOpts, run_init_container};
use crate::webhook::{Webhook, config_yaml};
use crate::workload::{newest_rs, pods_of, secret_output_rbac};
use crate::{Bed, create_namespace, create_service_account};

const NS: &str = "shop";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/shop-worker";

pub async fn run() -> Result<()> {
    let t0 = Instant::now();
    let bed = Bed::start().await?;
    step(1, "the local control plane");
    println!(
        "   Kubernetes {} (kube-apiserver, kube-controller-manager, etcd), OpenBao and moto up in {:.1}s",
        bed.k8s_version,
        bed.started_in.as_secs_f64()
    );

    step(2, "keyhole's webhook, registered with manifests/webhooks.yaml");
    let hook = Webhook::start(&config_yaml(&bed)).await?;
    hook.register(&bed, "keyhole", None).await?;
    println!("   keyhole-webhook serving {} with a CA and certificate from certs/make-certs.sh", hook.url);

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
        1,
        json!({"keyhole.dev/inject": "true", "keyhole.dev/store": "aws", "keyhole.dev/role": ROLE_ARN,
               "keyhole.dev/secret-STRIPE_KEY": "shop stripe key"}),
    )?;
    match Api::<Deployment>::namespaced(bed.client.clone(), NS).create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(e)) => println!("   Error from server: {}", e.message),
        Err(e) => return Err(e.into()),
        Ok(_) => bail!("the bad Deployment was admitted"),
    }

    step(5, "shop-api: files from OpenBao on a tmpfs volume");
    let api = deployment(
        "shop-api",
        "shop-api",
        2,
        json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "shop-api",
               "keyhole.dev/secret-db_password": "secret/shop/db#password",
               "keyhole.dev/template-db.ini": "[db]\nhost = shop-db\npassword = {{ secrets[\"db_password\"] }}\n"}),
    )?;
    Api::<Deployment>::namespaced(bed.client.clone(), NS).create(&PostParams::default(), &api).await?;
    let rs = newest_rs(&bed, NS, "shop-api", 1).await?;
    let pods = pods_of(&bed, NS, &rs, 2).await?;
    describe(&pods[0])?;
    for pod in &pods {
        let out = run_init_container(&bed, pod, &InitOpts::default()).await?;
        ensure!(out.success(), "{}", out.describe());
        let dir = out.volume(names::SECRETS_VOLUME)?;
        let mut files = Vec::new();
        for name in ["db_password", "db.ini"] {
            let meta = std::fs::metadata(dir.join(name))?;
            files.push(format!("{name} ({:o}, uid {})", meta.mode() & 0o777, meta.uid()));
        }
        let same = std::fs::read_to_string(dir.join("db_password"))? == db_password;
        let ini = std::fs::read_to_string(dir.join("db.ini"))?.contains(&db_password);
        println!(
            "   (kubelet played) {}: keyhole-injector exit 0 in {} ms, wrote {}",
            pod_name(pod),
            out.elapsed.as_millis(),
            files.join(", ")
        );
        println!(
            "     db_password is OpenBao's secret/shop/db#password: {}; db.ini renders it: {}",
            yes(same),
            yes(ini)
        );
    }

    step(6, "shop-worker: one immutable Secret per revision, from SSM, as env vars");
    let worker = deployment(
        "shop-worker",
        "shop-worker",
        3,
        json!({"keyhole.dev/inject": "true", "keyhole.dev/store": "aws", "keyhole.dev/role": ROLE_ARN,
               "keyhole.dev/output": "secret", "keyhole.dev/secret-STRIPE_KEY": "/shop/stripe/key"}),
    )?;
    Api::<Deployment>::namespaced(bed.client.clone(), NS).create(&PostParams::default(), &worker).await?;
    let rs = newest_rs(&bed, NS, "shop-worker", 1).await?;
    let pods = pods_of(&bed, NS, &rs, 3).await?;
    let env_from: Vec<String> = pods[0].spec.as_ref().context("spec")?.containers[0]
        .env_from
        .iter()
        .flatten()
        .filter_map(|e| e.secret_ref.as_ref().map(|r| r.name.clone()))
        .collect();
    println!("   the app container's envFrom: {env_from:?} (the pod sets automountServiceAccountToken: false)");
    for pod in &pods {
        let out = run_init_container(&bed, pod, &InitOpts::default()).await?;
        ensure!(out.success(), "{}", out.describe());
        println!("   (kubelet played) {}: the revision's Secret {}", pod_name(pod), secret_outcome(&out.stderr));
    }
    show_secret(&bed, &rs, &stripe_key).await?;

    step(7, "rotation: a new value in OpenBao rolls shop-api, and its new pod gets it");
    let role = crate::rotation::identity(&bed, NS).await?;
    let opts = crate::rotation::Opts {
        identity: "demo".into(),
        interval: "2s".into(),
        lease_duration: "4s".into(),
        max_rollouts: 10,
        namespace: Some(NS.into()),
        lease_namespace: NS.into(),
        config_yaml: crate::rotation::config_yaml(&bed, &role, &bed.moto_url),
    };
    let ctrl = crate::rotation::Controller::start(&bed, NS, &opts).await?;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), NS);
    crate::proc::wait_until("the controller's first look at the versions", Duration::from_secs(30), || async {
        deployments
            .get("shop-api")
            .await
            .ok()
            .and_then(|d| d.metadata.annotations)
            .is_some_and(|a| a.contains_key(keyhole_contract::annotations::OBSERVED_VERSIONS))
    })
    .await?;
    println!("   keyhole-rotation (interval 2s, metadata-only Vault policy) recorded the versions; no rollout");
    let new_password = demo_value("db-rotated");
    bed.vault("POST", "secret/data/shop/db", Some(json!({"data": {"password": new_password}}))).await?;
    let changed = Instant::now();
    let rs2 = newest_rs(&bed, NS, "shop-api", 2).await?;
    println!(
        "   OpenBao secret/shop/db is at version 2: new ReplicaSet {} {:.1}s later",
        rs2.metadata.name.as_deref().unwrap_or_default(),
        changed.elapsed().as_secs_f64()
    );
    let pod = pods_of(&bed, NS, &rs2, 1).await?.remove(0);
    let out = run_init_container(&bed, &pod, &InitOpts::default()).await?;
    ensure!(out.success(), "{}", out.describe());
    let got = std::fs::read_to_string(out.volume(names::SECRETS_VOLUME)?.join("db_password"))?;
    println!("   (kubelet played) {}: db_password is the new version: {}", pod_name(&pod), yes(got == new_password));
    drop(ctrl);

    println!("\n== done in {:.1}s; every part stops now", t0.elapsed().as_secs_f64());
    Ok(())
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

fn deployment(name: &str, sa: &str, replicas: i32, annotations: Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
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

/// The `secret` field of the injector's last log line, in words.
fn secret_outcome(stderr: &str) -> String {
    let outcome = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "done")
        .and_then(|v| v["secret"].as_str().map(str::to_owned))
        .unwrap_or_default();
    match outcome.as_str() {
        "created" => "was created by this pod (it fetched from SSM)".into(),
        "reused" => "was there: no backend call".into(),
        other => other.into(),
    }
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
