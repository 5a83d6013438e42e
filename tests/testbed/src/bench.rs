//! `make bench`: the figures the issues ask for, measured in one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::webhook::Webhook;

/// A typical pod of a Deployment: two containers, 30 env vars, probes, volumes.
pub fn typical_pod() -> Value {
    let env: Vec<Value> = (0..30)
        .map(|i| json!({"name": format!("APP_SETTING_{i:02}"), "value": format!("value-of-setting-{i:02}")}))
        .collect();
    json!({
        "metadata": {
            "generateName": "shop-api-7c9f8d6b5-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "shop-api", "pod-template-hash": "7c9f8d6b5"},
            "annotations": {
                "keyhole.dev/inject": "true",
                "keyhole.dev/role": "shop-api",
                "keyhole.dev/containers": "api",
                "keyhole.dev/secret-db_password": "secret/shop/db#password",
                "keyhole.dev/secret-stripe_key": "secret/shop/stripe#key",
                "keyhole.dev/template-db.ini": "[db]\npassword={{ secrets[\"db_password\"] }}\n"
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-api-7c9f8d6b5",
                "uid": "0d1c2b3a-0000-4000-8000-00000000000a", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "shop-api",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "containers": [
                {"name": "api", "image": "ghcr.io/acme/shop-api:4.2.1", "env": env,
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "periodSeconds": 10},
                 "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "config", "mountPath": "/etc/shop"}]},
                {"name": "envoy", "image": "envoyproxy/envoy:v1.31.0", "args": ["-c", "/etc/envoy/envoy.yaml"],
                 "volumeMounts": [{"name": "envoy", "mountPath": "/etc/envoy"}]}
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "shop-api"}},
                {"name": "envoy", "configMap": {"name": "shop-api-envoy"}},
                {"name": "kube-api-access-x1y2z", "projected": {"sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
            ]
        }
    })
}

pub fn review_body(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "b8f7c1d2-5a6e-4f3b-9c8d-7e6f5a4b3c2d",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "dryRun": false
        }
    }))
    .expect("serializes")
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn client(hook: &Webhook) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(hook.ca_pem.as_bytes())?)
        .http1_only()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(5))
        .build()?)
}

async fn one(client: &reqwest::Client, url: &str, body: &Arc<Vec<u8>>) -> Result<()> {
    let resp = client.post(url).header("content-type", "application/json").body(body.as_ref().clone()).send().await?;
    ensure!(resp.status().is_success(), "status {}", resp.status());
    let bytes = resp.bytes().await?;
    ensure!(bytes.windows(7).any(|w| w == b"\"patch\""), "no patch in the answer");
    Ok(())
}

/// Closed loop: `conns` keep-alive connections, each sending back to back.
async fn throughput(hook: &Webhook, body: Arc<Vec<u8>>, conns: usize, secs: u64) -> Result<f64> {
    let client = client(hook)?;
    let url = format!("{}/mutate", hook.url);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, url, body, done, stop) = (client.clone(), url.clone(), body.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                one(&client, &url, &body).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    // Warm up the connections before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(rate)
}

/// Open loop: requests start at `rate`/s whatever the answers do; latency per request.
async fn latency_at(hook: &Webhook, body: Arc<Vec<u8>>, rate: u64, secs: u64) -> Result<(f64, f64, f64, usize)> {
    let client = client(hook)?;
    let url = format!("{}/mutate", hook.url);
    // Open the connections first: a cold handshake is not a review's latency.
    let warm: Vec<_> = (0..32).map(|_| one(&client, &url, &body)).collect();
    for w in warm {
        w.await?;
    }
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate * secs) as usize;
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            one(&client, &url, &body).await.map(|()| t.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.push(t.await??.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok((pct(0.50), pct(0.99), pct(0.999), lat.len()))
}

/// Issue 3's figures: reviews/s, p50/p99 at 2,000/s, RSS idle and under load.
pub async fn webhook(config_yaml: &str) -> Result<()> {
    let hook = Webhook::start(config_yaml).await?;
    let pid = hook.proc.pid().unwrap_or_default();
    let body = Arc::new(review_body(&typical_pod()));
    println!("## webhook: POST /mutate over TLS 1.3 with keep-alive, client and server on this machine");
    println!("review size: {:.1} KB (a {}-container pod with 30 env vars)", body.len() as f64 / 1024.0, 2);
    one(&client(&hook)?, &format!("{}/mutate", hook.url), &body).await?;
    println!("RSS idle: {:.1} MB", rss_kib(pid, "VmRSS:") as f64 / 1024.0);
    let mut best = 0.0f64;
    for conns in [8, 32] {
        let rate = throughput(&hook, body.clone(), conns, 5).await?;
        println!("throughput, {conns} connections: {rate:.0} reviews/s");
        best = best.max(rate);
    }
    let (p50, p99, p999, n) = latency_at(&hook, body.clone(), 2000, 5).await?;
    println!("latency at 2,000 reviews/s ({n} reviews): p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms");
    println!(
        "RSS under load: {:.1} MB now, peak {:.1} MB",
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!("targets: >= 10,000 reviews/s (best {best:.0}), p99 < 2 ms at 2,000/s ({p99:.2}), RSS < 30 MB");
    Ok(())
}
