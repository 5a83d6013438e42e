//! `make bench`: the figures the issues ask for, measured in one run.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::webhook::Webhook;

/// A typical pod of a Deployment as a chart makes it: an app container with 40
/// env vars, probes and resources, an envoy sidecar, a wait-for init container,
/// the usual labels and annotations; about 5.5 KB as a review.
pub fn typical_pod() -> Value {
    let env: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("APP_SETTING_{i:02}"), "value": format!("value-of-setting-{i:02}")}))
        .collect();
    json!({
        "metadata": {
            "generateName": "shop-api-7c9f8d6b5-",
            "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "shop-api", "app.kubernetes.io/instance": "shop-api-prod",
                "app.kubernetes.io/version": "4.2.1", "app.kubernetes.io/component": "api",
                "app.kubernetes.io/part-of": "shop", "app.kubernetes.io/managed-by": "Helm",
                "helm.sh/chart": "shop-api-4.2.1", "pod-template-hash": "7c9f8d6b5"},
            "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics",
                "checksum/config": "6f1ed002ab5595859014ebf0951522d9b9e7b0c8a2ae6e5b1e4e0b6a5c9b8d7e",
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
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "shop-api"}}}}]}},
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
            "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
            "initContainers": [
                {"name": "wait-for-db", "image": "busybox:1.36",
                 "command": ["sh", "-c", "until nc -z shop-db 5432; do sleep 1; done"],
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}
            ],
            "containers": [
                {"name": "api", "image": "ghcr.io/acme/shop-api:4.2.1", "env": env,
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                 "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "periodSeconds": 10},
                 "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "config", "mountPath": "/etc/shop"}]},
                {"name": "envoy", "image": "envoyproxy/envoy:v1.31.0", "args": ["-c", "/etc/envoy/envoy.yaml"],
                 "ports": [{"containerPort": 9901, "name": "admin"}, {"containerPort": 8443, "name": "https"}],
                 "readinessProbe": {"httpGet": {"path": "/ready", "port": "admin"}, "periodSeconds": 5},
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                 "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                     "capabilities": {"drop": ["ALL"]}},
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

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name comes field 3 (state); utime and stime are fields 14 and 15.
    let field = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(14) + field(15);
    ticks as f64 / 100.0
}

/// Closed loop with wrk: `conns` keep-alive connections on one thread. Returns
/// reviews/s and the server's CPU seconds per second over the run.
fn wrk_throughput(wrk: &Path, hook: &Webhook, body: &[u8], conns: usize, secs: u64) -> Result<(f64, f64)> {
    let dir = tempfile::Builder::new().prefix("keyhole-wrk-").tempdir()?;
    let body_file = dir.path().join("review.json");
    std::fs::write(&body_file, body)?;
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
            body_file.display()
        ),
    )?;
    let pid = hook.proc.pid().unwrap_or_default();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    // The load generator on core 1, the server (pinned by `webhook`) on core 0.
    let out = std::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(wrk)
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "-s"])
        .arg(&script)
        .arg(format!("{}/mutate", hook.url))
        .output()?;
    let server_cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    ensure!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    Ok((rate, server_cpu))
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
    // One core for the server, every thread of it: the figure is reviews/s per core.
    let pinned = std::process::Command::new("taskset").args(["-a", "-cp", "0", &pid.to_string()]).output()?;
    ensure!(pinned.status.success(), "taskset: {}", String::from_utf8_lossy(&pinned.stderr));
    let body = Arc::new(review_body(&typical_pod()));
    println!("## webhook: POST /mutate over TLS 1.3 with keep-alive; server pinned to core 0, wrk to core 1");
    println!("review size: {:.1} KB (2 containers, 1 init container, 40 env vars)", body.len() as f64 / 1024.0);
    one(&client(&hook)?, &format!("{}/mutate", hook.url), &body).await?;
    println!("RSS idle: {:.1} MB", rss_kib(pid, "VmRSS:") as f64 / 1024.0);
    // The load generator shares the 2 cores: wrk (C, one thread) takes about a
    // third of a core at 10,000/s, the Rust client below about a whole one.
    let mut best = 0.0f64;
    match which("wrk") {
        Some(wrk) => {
            for conns in [8, 32] {
                let (rate, server_cpu) = wrk_throughput(&wrk, &hook, &body, conns, 6)?;
                println!(
                    "throughput (wrk, 1 thread), {conns} connections: {rate:.0} reviews/s, server CPU {:.0} us/review",
                    server_cpu * 1e6 / rate
                );
                best = best.max(rate);
            }
        }
        None => println!("wrk is not installed (apt-get install wrk): throughput with the Rust client only"),
    }
    for conns in [8, 32] {
        let rate = throughput(&hook, body.clone(), conns, 5).await?;
        println!("throughput (Rust client, same process as this bench), {conns} connections: {rate:.0} reviews/s");
        best = best.max(rate);
    }
    let (p50, p99, p999, n) = latency_at(&hook, body.clone(), 2000, 5).await?;
    println!("latency at 2,000 reviews/s ({n} reviews): p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms");
    println!(
        "RSS under load: {:.1} MB now, peak {:.1} MB",
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!(
        "targets: >= 15,000 reviews/s on one core (best {best:.0}), p99 < 2 ms at 2,000/s ({p99:.2}), RSS < 30 MB"
    );
    Ok(())
}

/// Issue 11's attack: an opted-in pod of 330,000 containers `{"name":""}`
/// (about 4 MB), its `request.kind` a placeholder of [`KIND_SLOT`] bytes that
/// each request overwrites with a value of its own.
fn hostile_review() -> (Vec<u8>, usize) {
    let containers: Vec<Value> = (0..330_000).map(|_| json!({"name": ""})).collect();
    let pod = json!({
        "metadata": {"name": "flood", "namespace": "shop",
                     "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/secret-x": "secret/shop/x#y"}},
        "spec": {"containers": containers}
    });
    let mut review: Value = serde_json::from_slice(&review_body(&pod)).expect("a review");
    review["request"]["kind"]["kind"] = json!("K".repeat(KIND_SLOT));
    let body = serde_json::to_vec(&review).expect("serializes");
    let at = body.windows(KIND_SLOT).position(|w| w.iter().all(|b| *b == b'K')).expect("the slot");
    (body, at)
}

const KIND_SLOT: usize = 16;

/// The hostile-load run: 32 connections send the 4 MB review back to back
/// (each with a `request.kind` never seen before) for `secs`, while another
/// client sends ordinary reviews at 200/s. A fresh server, pinned to core 0,
/// so its peak RSS is this run's.
pub async fn hostile(config_yaml: &str, secs: u64) -> Result<()> {
    let hook = Webhook::start(config_yaml).await?;
    let pid = hook.proc.pid().unwrap_or_default();
    let pinned = std::process::Command::new("taskset").args(["-a", "-cp", "0", &pid.to_string()]).output()?;
    ensure!(pinned.status.success(), "taskset: {}", String::from_utf8_lossy(&pinned.stderr));
    // The load generator (this process) on core 1.
    let me = std::process::id().to_string();
    let _ = std::process::Command::new("taskset").args(["-a", "-cp", "1", &me]).output();
    let (flood, slot) = hostile_review();
    println!(
        "## hostile load: 32 connections of {:.1} MB reviews (330,000 containers, unique request.kind) for {secs} s, ordinary reviews at 200/s beside them",
        flood.len() as f64 / 1e6
    );
    let flood = Arc::new(flood);
    let url = format!("{}/mutate", hook.url);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut floods = Vec::new();
    for c in 0..32u64 {
        let client = client(&hook)?;
        let (flood, url, stop, sent, answered) =
            (flood.clone(), url.clone(), stop.clone(), sent.clone(), answered.clone());
        floods.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut body = flood.as_ref().clone();
                body[slot..slot + KIND_SLOT].copy_from_slice(format!("K{c:03}{n:012}").as_bytes());
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                // Refused (200 with allowed: false), or timed out waiting: both are
                // the server holding on; only the ordinary reviews must not fail.
                if let Ok(r) = client.post(&url).header("content-type", "application/json").body(body).send().await
                    && r.bytes().await.is_ok()
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let normal = Arc::new(review_body(&typical_pod()));
    let client = client(&hook)?;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let (client, url, body) = (client.clone(), url.clone(), normal.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            one(&client, &url, &body).await.map(|()| t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(d) => lat.push(d.as_secs_f64() * 1000.0),
            Err(_) => errors += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.abort();
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    let peak = rss_kib(pid, "VmHWM:") as f64 / 1024.0;
    let metrics = hook.metrics().await?;
    let series = metrics.lines().filter(|l| l.starts_with("keyhole_webhook_admission_reviews_total{")).count();
    println!(
        "flood: {} reviews sent, {} answered; ordinary reviews: {} ok, {errors} errors, p50 {:.2} ms, p99 {:.2} ms",
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
        lat.len(),
        pct(0.5),
        pct(0.99)
    );
    println!("webhook peak RSS {peak:.1} MB; review counter series after the flood: {series}");
    println!(
        "targets: peak RSS < 100 MB ({peak:.1}), ordinary p99 < 50 ms ({:.2}), 0 errors ({errors}), series bounded ({series})",
        pct(0.99)
    );
    Ok(())
}
