//! `make bench`, rotation: backend requests per poll for 1,000 workloads sharing
//! 200 distinct SSM parameters, and the time from a backend change to the
//! patched pod template. The real controller process, the real API server, moto
//! behind a counting proxy.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::Bed;
use crate::proc::wait_until;
use crate::proxy::Proxy;
use crate::rotation::{self, Controller, Opts};

pub const WORKLOADS: usize = 1000;
pub const PARAMETERS: usize = 200;
/// The poll interval of the benchmark (the e2e tests poll every 2 s).
pub const INTERVAL: Duration = Duration::from_secs(5);
const SAMPLES: usize = 5;

/// DescribeParameters calls per poll: requests group into bursts (one poll
/// each) separated by quiet gaps; the first and last burst may be cut off.
fn per_poll(times: &[Instant], since: Instant, gap: Duration) -> Vec<usize> {
    let mut bursts: Vec<usize> = Vec::new();
    let mut prev: Option<Instant> = None;
    for &t in times.iter().filter(|&&t| t >= since) {
        match prev {
            Some(p) if t - p < gap => *bursts.last_mut().expect("a burst") += 1,
            _ => bursts.push(1),
        }
        prev = Some(t);
    }
    if bursts.len() > 2 { bursts[1..bursts.len() - 1].to_vec() } else { Vec::new() }
}

fn param(ns: &str, i: usize) -> String {
    format!("/{ns}/shared/p{i:03}")
}

/// The two parameters workload `i` references: together the 1,000 cover all 200.
fn refs_of(i: usize) -> [usize; 2] {
    [i % PARAMETERS, (i * 7 + 3) % PARAMETERS]
}

fn deployment(ns: &str, i: usize) -> Result<Deployment> {
    let name = format!("w{i:04}");
    let [a, b] = refs_of(i);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {
                    "keyhole.dev/inject": "true",
                    "keyhole.dev/store": "aws",
                    "keyhole.dev/role": "arn:aws:iam::123456789012:role/app",
                    "keyhole.dev/secret-a": param(ns, a),
                    "keyhole.dev/secret-b": param(ns, b),
                }},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))?)
}

fn versions(d: &Deployment) -> Option<String> {
    d.spec.template.metadata.as_ref()?.annotations.as_ref()?.get("keyhole.dev/versions").cloned()
}

pub async fn rotation(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("bench-rot").await?;
    let role = rotation::identity(bed, &ns).await?;
    let ssm = bed.ssm_admin().await;
    for i in 0..PARAMETERS {
        ssm.put_parameter()
            .name(param(&ns, i))
            .value("v1")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await?;
    }
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns);
    let t0 = Instant::now();
    let created: Vec<Result<()>> = futures::stream::iter(0..WORKLOADS)
        .map(|i| {
            let api = api.clone();
            let ns = ns.clone();
            async move {
                api.create(&PostParams::default(), &deployment(&ns, i)?).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    eprintln!("rotation bench: {WORKLOADS} Deployments created in {:.1}s", t0.elapsed().as_secs_f64());

    let proxy = Proxy::start(&bed.moto_url).await?;
    let opts = Opts {
        identity: "bench".into(),
        interval: format!("{}s", INTERVAL.as_secs()),
        lease_duration: "15s".into(),
        max_rollouts: 10,
        namespace: Some(ns.clone()),
        lease_namespace: ns.clone(),
        config_yaml: rotation::config_yaml(bed, &role, &proxy.url),
        impersonate: None,
    };
    let ctrl = Controller::start(bed, &ns, &opts).await?;
    let t0 = Instant::now();
    wait_until("every workload's first observation", Duration::from_secs(300), || async {
        ctrl.counter("keyhole_rotation_workload_polls_total", "recorded").await.unwrap_or(0.0) >= WORKLOADS as f64
    })
    .await?;
    eprintln!("rotation bench: first observation of all {WORKLOADS} recorded in {:.1}s", t0.elapsed().as_secs_f64());

    // Steady state: polls of all 1,000 workloads, counted at the proxy.
    let since = Instant::now();
    tokio::time::sleep(INTERVAL * 5 + INTERVAL / 2).await;
    let mut per_poll = per_poll(&proxy.times_of("AmazonSSM.DescribeParameters"), since, INTERVAL / 3);
    anyhow::ensure!(!per_poll.is_empty(), "no whole poll seen in {:?}", since.elapsed());
    per_poll.sort_unstable();
    // GetParameter, GetParameters, GetParameterHistory, GetParametersByPath: all read values.
    let value_reads = proxy.count_of("AmazonSSM.GetParameter");
    anyhow::ensure!(value_reads == 0, "the controller read {value_reads} values");
    let text = ctrl.metrics().await?;
    let poll_seconds = histogram_mean(&text, "keyhole_rotation_poll_duration_seconds");

    // Latency: one parameter changes; each of its ~10 workloads gets a new template digest.
    let mut firsts = Vec::new();
    let mut alls = Vec::new();
    for s in 0..SAMPLES {
        let p = (s * 37 + 11) % PARAMETERS;
        let users: Vec<String> =
            (0..WORKLOADS).filter(|&i| refs_of(i).contains(&p)).map(|i| format!("w{i:04}")).collect();
        let mut before = BTreeMap::new();
        for u in &users {
            before.insert(u.clone(), versions(&api.get(u).await?));
        }
        // Change at a random point of the poll cycle.
        tokio::time::sleep(Duration::from_millis(fastrand_ms(s))).await;
        let t0 = Instant::now();
        ssm.put_parameter()
            .name(param(&ns, p))
            .value(format!("v{}", s + 2))
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await?;
        let mut first = None;
        let deadline = t0 + INTERVAL * 4;
        loop {
            let mut done = 0;
            for u in &users {
                if versions(&api.get(u).await?) != before[u] {
                    done += 1;
                }
            }
            if done > 0 && first.is_none() {
                first = Some(t0.elapsed());
            }
            if done == users.len() {
                alls.push(t0.elapsed());
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "sample {s}: only {done} of {} patched", users.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        firsts.push(first.context("first")?);
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2].as_secs_f64(), v[v.len() - 1].as_secs_f64())
    };
    let (first_med, first_max) = stats(&mut firsts);
    let (all_med, all_max) = stats(&mut alls);
    println!("rotation controller ({WORKLOADS} Deployments, {PARAMETERS} distinct SSM parameters, 2 references each):");
    println!(
        "  backend requests per poll: {} DescribeParameters (median of {} whole polls seen at moto's proxy: {per_poll:?})",
        per_poll[per_poll.len() / 2],
        per_poll.len()
    );
    println!("  value reads by the controller: {value_reads}");
    println!(
        "    (200 names in 4 calls of 50, one page each on AWS; moto pages by 10 whatever MaxResults says and ends with an empty page, so 6 per call there; credentials are cached: AssumeRoleWithWebIdentity {} in all)",
        text_counter(&text, "AssumeRoleWithWebIdentity")
    );
    println!("  poll duration (look-ups + patches), mean: {:.0} ms", poll_seconds * 1e3);
    println!(
        "  backend change -> patched template, interval {}s, {SAMPLES} samples: first workload median {first_med:.2}s max {first_max:.2}s; all ~10 workloads of the parameter median {all_med:.2}s max {all_max:.2}s",
        INTERVAL.as_secs()
    );
    drop(ctrl);
    Ok(())
}

fn fastrand_ms(s: usize) -> u64 {
    // Spread over the interval without a random crate: 0, 1.3 s, 2.6 s, ...
    (s as u64 * 1300) % INTERVAL.as_millis() as u64
}

fn text_counter(text: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("keyhole_rotation_backend_requests_total") && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn histogram_mean(text: &str, family: &str) -> f64 {
    let value = |suffix: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{family}_{suffix}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (sum, count) = (value("sum"), value("count"));
    if count > 0.0 { sum / count } else { 0.0 }
}
