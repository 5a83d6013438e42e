//! Rotation end to end: the real controller process (`keyhole-rotation`)
//! against the real API server, controller-manager, OpenBao and moto; the real
//! webhook mutates the new pods; the kubelet is played for their injector.
//!
//! Each test has its own namespace, controller (watching that namespace only)
//! and Lease. Every controller log is scanned for every secret value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use keyhole_contract::names;
use keyhole_testbed::kubelet::{InitOpts, run_init_container};
use keyhole_testbed::leaks::{self, secret};
use keyhole_testbed::proc::wait_until;
use keyhole_testbed::proxy::Proxy;
use keyhole_testbed::rotation::{self, Controller, Opts};
use keyhole_testbed::webhook::{Webhook, config_yaml, config_yaml_at};
use keyhole_testbed::{Bed, create_service_account, e2e_tests, workspace_bin};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

fn main() {
    keyhole_testbed::harness::run(e2e_tests![
        ssm_change_rolls_the_deployment_and_the_new_pod_gets_the_new_value,
        vault_kv2_new_version_rolls_and_the_new_pod_gets_it,
        secretsmanager_new_version_rolls_and_a_pinned_reference_does_not,
        ssm_a_parameter_added_below_a_watched_folder_rolls_and_one_beside_it_does_not,
        vault_a_folders_secret_changed_or_deleted_rolls,
        ssm_change_with_secret_output_makes_a_new_immutable_secret,
        pinned_reference_never_rolls,
        opted_out_workload_never_rolls,
        controller_restart_rolls_nothing,
        only_the_lease_holder_patches,
        manual_roll_rolls_now,
        roll_takes_the_contexts_namespace_and_waits_for_the_rollout,
        a_failing_workload_at_the_reference_cap_holds_no_one_back,
        references_outside_the_namespaces_grants_are_never_looked_up,
        vault_tokens_are_revoked_after_use,
        readyz_waits_for_every_watch_to_list,
        a_deferred_rollout_gets_a_warning_and_the_one_that_rolled_none,
        a_failed_look_up_gets_a_warning_once_and_its_control_none,
    ]);
}

/// The interval every test controller polls at.
const INTERVAL: Duration = Duration::from_secs(2);
/// A new ReplicaSet appears this long after the template patch at most
/// (the controller-manager's reaction), on top of one interval.
const SLACK: Duration = Duration::from_secs(3);
const APP_SA: &str = "app";
const APP_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

static HOOK: OnceCell<Webhook> = OnceCell::const_new();

/// One mutating webhook for the run, so the workloads' pods come out injected.
async fn hook(bed: &Bed) -> Result<&'static Webhook> {
    HOOK.get_or_try_init(|| async {
        let hook = Webhook::start(&config_yaml(bed)).await?;
        hook.register(bed, "keyhole-rotation-e2e", None).await?;
        Ok(hook)
    })
    .await
}

/// A namespace with the app's service account and Vault role, and the controller's identity.
struct Env {
    ns: String,
    rotation_role: String,
}

async fn env(bed: &Bed, prefix: &str) -> Result<Env> {
    hook(bed).await?;
    let ns = bed.namespace(prefix).await?;
    create_service_account(&bed.client, &ns, APP_SA).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, APP_SA, "vault", &ns).await?;
    let rotation_role = rotation::identity(bed, &ns).await?;
    Ok(Env { ns, rotation_role })
}

impl Env {
    fn opts(&self, bed: &Bed, identity: &str) -> Opts {
        Opts {
            identity: format!("{identity}-{}", self.ns),
            interval: format!("{}s", INTERVAL.as_secs()),
            lease_duration: "4s".into(),
            max_rollouts: 10,
            namespace: Some(self.ns.clone()),
            lease_namespace: self.ns.clone(),
            config_yaml: rotation::config_yaml(bed, &self.rotation_role, &bed.moto_url),
            impersonate: None,
        }
    }

    async fn controller(&self, bed: &Bed, identity: &str) -> Result<Controller> {
        let c = Controller::start(bed, &self.ns, &self.opts(bed, identity)).await?;
        leaks::remember_all(c.tokens.iter().cloned());
        Ok(c)
    }
}

fn deployment(name: &str, annotations: Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": APP_SA,
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [{"name": "app", "image": "registry.example/app:1"}]
                }
            }
        }
    }))?)
}

/// A template reading `secret/<ns>/db#password` from the `vault` store with role `<ns>`.
fn vault_annotations(ns: &str) -> Value {
    json!({
        "keyhole.dev/inject": "true",
        "keyhole.dev/store": "vault",
        "keyhole.dev/role": ns,
        "keyhole.dev/secret-db": format!("secret/{ns}/db#password"),
    })
}

fn ssm_annotations(ns: &str, reference: &str) -> Value {
    json!({
        "keyhole.dev/inject": "true",
        "keyhole.dev/store": "aws",
        "keyhole.dev/role": APP_ROLE_ARN,
        "keyhole.dev/secret-db": reference,
        "example.com/ns": ns,
    })
}

async fn create(bed: &Bed, ns: &str, d: &Deployment) -> Result<()> {
    Api::<Deployment>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), d).await?;
    Ok(())
}

async fn get(bed: &Bed, ns: &str, name: &str) -> Result<Deployment> {
    Ok(Api::<Deployment>::namespaced(bed.client.clone(), ns).get(name).await?)
}

fn annotation(map: Option<&BTreeMap<String, String>>, key: &str) -> Option<String> {
    map.and_then(|m| m.get(key)).cloned()
}

fn observed(d: &Deployment) -> Option<String> {
    annotation(d.metadata.annotations.as_ref(), "keyhole.dev/observed-versions")
}

fn template_versions(d: &Deployment) -> Option<String> {
    annotation(d.spec.template.metadata.as_ref()?.annotations.as_ref(), "keyhole.dev/versions")
}

/// Waits for the controller's first observation on the workload.
async fn wait_observed(bed: &Bed, ns: &str, name: &str, want: &str) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);
    wait_until(&format!("{ns}/{name} observed as {want}"), Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.get(name).await.ok().and_then(|d| observed(&d)).as_deref() == Some(want) }
    })
    .await
}

async fn replica_sets(bed: &Bed, ns: &str, name: &str) -> Result<Vec<ReplicaSet>> {
    let all = Api::<ReplicaSet>::namespaced(bed.client.clone(), ns).list(&ListParams::default()).await?.items;
    Ok(all
        .into_iter()
        .filter(|rs| rs.metadata.owner_references.iter().flatten().any(|o| o.kind == "Deployment" && o.name == name))
        .collect())
}

/// Waits until the Deployment has `n` ReplicaSets; returns how long it took.
async fn wait_replica_sets(bed: &Bed, ns: &str, name: &str, n: usize, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    wait_until(&format!("{n} ReplicaSets of {ns}/{name}"), timeout, || async move {
        replica_sets(bed, ns, name).await.map(|r| r.len() >= n).unwrap_or(false)
    })
    .await?;
    Ok(t0.elapsed())
}

/// The `keyhole.dev/versions` of a ReplicaSet's pod template.
fn rs_versions(rs: &ReplicaSet) -> Option<&str> {
    rs.spec.template.as_ref()?.metadata.as_ref()?.annotations.as_ref()?.get("keyhole.dev/versions").map(String::as_str)
}

/// The pod of the ReplicaSet whose template carries `versions`, read back from the API.
async fn pod_of_revision(bed: &Bed, ns: &str, name: &str, versions: &str) -> Result<Pod> {
    let rs = replica_sets(bed, ns, name)
        .await?
        .into_iter()
        .find(|rs| rs_versions(rs) == Some(versions))
        .context("no ReplicaSet carries the new versions")?;
    let hash = rs.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned().context("hash")?;
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("pod-template-hash={hash}"));
    wait_until("the new revision's pod", Duration::from_secs(30), || {
        let (api, lp) = (api.clone(), lp.clone());
        async move { api.list(&lp).await.map(|l| !l.items.is_empty()).unwrap_or(false) }
    })
    .await?;
    let pod = api.list(&lp).await?.items.into_iter().next().context("pod")?;
    Ok(api.get(pod.metadata.name.as_deref().context("name")?).await?)
}

/// Plays the kubelet for the pod's injector; returns the file `db` it wrote.
async fn injected_value(bed: &Bed, pod: &Pod) -> Result<String> {
    injected_file(bed, pod, "db").await
}

/// Plays the kubelet for the pod's injector; returns the file `name` it wrote.
async fn injected_file(bed: &Bed, pod: &Pod, name: &str) -> Result<String> {
    let out = run_init_container(bed, pod, &InitOpts::default()).await?;
    leaks::remember_all(out.tokens.iter().cloned());
    leaks::scan("the injector's output", &out.printed())?;
    ensure!(out.success(), "the injector failed:\n{}", out.describe());
    Ok(std::fs::read_to_string(out.volume(names::SECRETS_VOLUME)?.join(name))?)
}

/// Waits until the workload's observed versions hold `needle`; returns them.
async fn wait_observed_with(bed: &Bed, ns: &str, name: &str, needle: &str) -> Result<String> {
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);
    wait_until(&format!("{ns}/{name} observed with {needle}"), Duration::from_secs(30), || {
        let api = api.clone();
        async move { api.get(name).await.ok().and_then(|d| observed(&d)).is_some_and(|o| o.contains(needle)) }
    })
    .await?;
    observed(&get(bed, ns, name).await?).context("observed")
}

async fn events(bed: &Bed, ns: &str, name: &str, reason: &str) -> Result<Vec<Event>> {
    let all = Api::<Event>::namespaced(bed.client.clone(), ns).list(&ListParams::default()).await?.items;
    Ok(all
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason) && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect())
}

async fn check_rotated_event(bed: &Bed, ns: &str, name: &str, needle: &str) -> Result<()> {
    let evs = events(bed, ns, name, "SecretRotated").await?;
    ensure!(evs.len() == 1, "{} SecretRotated events for {name}", evs.len());
    let note = evs[0].note.clone().unwrap_or_default();
    ensure!(note.contains(needle), "event note {note:?} lacks {needle:?}");
    leaks::scan("the Event", &note)?;
    Ok(())
}

fn finish(controllers: &[&Controller]) -> Result<()> {
    for c in controllers {
        leaks::scan(&format!("the log of {}", c.identity), &c.log())?;
    }
    Ok(())
}

// ---- tests -----------------------------------------------------------------

async fn ssm_change_rolls_the_deployment_and_the_new_pod_gets_the_new_value(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-ssm").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    let (v1, v2) = (secret("ssm1"), secret("ssm2"));
    bed.put_ssm(&param, &v1).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    ensure!(template_versions(&get(bed, ns, "web").await?).is_none(), "the first observation touched the template");
    wait_replica_sets(bed, ns, "web", 1, Duration::from_secs(30)).await?;
    tokio::time::sleep(INTERVAL * 2).await;
    ensure!(replica_sets(bed, ns, "web").await?.len() == 1, "a rollout without a change");

    bed.put_ssm(&param, &v2).await?;
    let took = wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    eprintln!("rot-ssm: new ReplicaSet {:.2}s after the change (interval {}s)", took.as_secs_f64(), INTERVAL.as_secs());
    let d = get(bed, ns, "web").await?;
    ensure!(observed(&d) == Some(format!("{{\"{param}\":2}}")), "observed: {:?}", observed(&d));
    let versions = template_versions(&d).context("no keyhole.dev/versions on the template")?;
    let pod = pod_of_revision(bed, ns, "web", &versions).await?;
    ensure!(injected_value(bed, &pod).await? == v2, "the new pod's injector did not write the new value");
    check_rotated_event(bed, ns, "web", &format!("keyhole.dev/secret-db ({param}) moved from version 1 to 2")).await?;
    finish(&[&ctrl])
}

/// Secrets Manager: versions are ids, looked up with DescribeSecret (never a
/// value). A new current version rolls the workload; one pinned to the first
/// version's id, beside it, never rolls.
async fn secretsmanager_new_version_rolls_and_a_pinned_reference_does_not(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-sm").await?;
    let ns = &env.ns;
    let name = format!("{ns}/db");
    let (v1, v2) = (secret("sm1"), secret("sm2"));
    let first = bed.put_secret(&name, &v1).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    let annotations = |reference: &str| {
        let mut a = ssm_annotations(ns, reference);
        a["keyhole.dev/store"] = json!("aws-sm");
        a
    };
    create(bed, ns, &deployment("web", annotations(&name))?).await?;
    create(bed, ns, &deployment("pinned", annotations(&format!("{name}?version-id={first}")))?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{name}\":\"{first}\"}}")).await?;
    wait_replica_sets(bed, ns, "web", 1, Duration::from_secs(30)).await?;
    wait_replica_sets(bed, ns, "pinned", 1, Duration::from_secs(30)).await?;

    let second = bed.put_secret(&name, &v2).await?;
    let took = wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    eprintln!("rot-sm: new ReplicaSet {:.2}s after the change (interval {}s)", took.as_secs_f64(), INTERVAL.as_secs());
    let d = get(bed, ns, "web").await?;
    ensure!(observed(&d) == Some(format!("{{\"{name}\":\"{second}\"}}")), "observed: {:?}", observed(&d));
    let versions = template_versions(&d).context("no keyhole.dev/versions on the template")?;
    let pod = pod_of_revision(bed, ns, "web", &versions).await?;
    ensure!(injected_value(bed, &pod).await? == v2, "the new pod's injector did not write the new value");
    check_rotated_event(bed, ns, "web", &format!("({name}) moved from version {first} to {second}")).await?;
    tokio::time::sleep(INTERVAL * 2).await;
    ensure!(replica_sets(bed, ns, "pinned").await?.len() == 1, "the pinned workload rolled");
    let requests = |op: &'static str| ctrl.counter("keyhole_rotation_backend_requests_total", op);
    ensure!(requests("operation=\"DescribeSecret\"").await? > 0.0, "no DescribeSecret was counted");
    ensure!(requests("SecretValue").await? == 0.0, "the controller read a value");
    finish(&[&ctrl])
}

async fn vault_kv2_new_version_rolls_and_the_new_pod_gets_it(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-vault").await?;
    let ns = &env.ns;
    let (p1, p2) = (secret("vault1"), secret("vault2"));
    let path = format!("secret/data/{ns}/db");
    bed.vault("POST", &path, Some(json!({"data": {"password": p1}}))).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    let ann = vault_annotations(ns);
    create(bed, ns, &deployment("api", ann)?).await?;
    let reference = format!("secret/{ns}/db");
    wait_observed(bed, ns, "api", &format!("{{\"{reference}\":1}}")).await?;
    wait_replica_sets(bed, ns, "api", 1, Duration::from_secs(30)).await?;

    bed.vault("POST", &path, Some(json!({"data": {"password": p2}}))).await?;
    let took = wait_replica_sets(bed, ns, "api", 2, INTERVAL + SLACK).await?;
    eprintln!(
        "rot-vault: new ReplicaSet {:.2}s after the change (interval {}s)",
        took.as_secs_f64(),
        INTERVAL.as_secs()
    );
    let d = get(bed, ns, "api").await?;
    let versions = template_versions(&d).context("no keyhole.dev/versions")?;
    let pod = pod_of_revision(bed, ns, "api", &versions).await?;
    ensure!(injected_value(bed, &pod).await? == p2, "the new pod's injector did not write the new version");
    check_rotated_event(bed, ns, "api", &format!("({reference}) moved from version 1 to 2")).await?;
    finish(&[&ctrl])
}

/// A folder is watched as a set (DescribeParameters with a Path filter, never
/// a value): a parameter changed beside it rolls nothing; one added below it
/// rolls the workload within an interval, and the new pod gets its file.
async fn ssm_a_parameter_added_below_a_watched_folder_rolls_and_one_beside_it_does_not(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-path").await?;
    let ns = &env.ns;
    for i in 0..25 {
        let name = if i < 20 { format!("/{ns}/app/k{i}") } else { format!("/{ns}/app/db/k{i}") };
        bed.put_ssm(&name, &secret(&format!("rpath{i}"))).await?;
    }
    let sibling = format!("/{ns}/application/x");
    bed.put_ssm(&sibling, &secret("rpath-sibling1")).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    let folder = format!("/{ns}/app/**");
    let annotations = json!({
        "keyhole.dev/inject": "true",
        "keyhole.dev/store": "aws",
        "keyhole.dev/role": APP_ROLE_ARN,
        "keyhole.dev/path-app": format!("/{ns}/app/?recursive=true"),
    });
    create(bed, ns, &deployment("web", annotations)?).await?;
    let first = wait_observed_with(bed, ns, "web", &format!("\"{folder}\":\"25@")).await?;
    wait_replica_sets(bed, ns, "web", 1, Duration::from_secs(30)).await?;
    bed.put_ssm(&sibling, &secret("rpath-sibling2")).await?;
    tokio::time::sleep(INTERVAL * 2).await;
    ensure!(replica_sets(bed, ns, "web").await?.len() == 1, "a change outside the folder rolled it");
    ensure!(observed(&get(bed, ns, "web").await?) == Some(first.clone()), "the set moved without a change");

    let added = secret("rpath-added");
    bed.put_ssm(&format!("/{ns}/app/new/key"), &added).await?;
    let took = wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    eprintln!(
        "rot-path: new ReplicaSet {:.2}s after a parameter was added (interval {}s)",
        took.as_secs_f64(),
        INTERVAL.as_secs()
    );
    let d = get(bed, ns, "web").await?;
    ensure!(observed(&d).is_some_and(|o| o.contains(&format!("\"{folder}\":\"26@"))), "observed: {:?}", observed(&d));
    let versions = template_versions(&d).context("no keyhole.dev/versions on the template")?;
    let pod = pod_of_revision(bed, ns, "web", &versions).await?;
    ensure!(injected_file(bed, &pod, "new_key").await? == added, "the new pod lacks the added parameter");
    check_rotated_event(bed, ns, "web", &format!("keyhole.dev/path-app ({folder}) moved from version 25@")).await?;
    let requests = |op: &'static str| ctrl.counter("keyhole_rotation_backend_requests_total", op);
    ensure!(requests("GetParameter").await? == 0.0, "the controller read a value");
    finish(&[&ctrl])
}

/// A Vault folder, one level: a new version of one of its secrets rolls the
/// workload, and so does a secret deleted from it (metadata and all).
async fn vault_a_folders_secret_changed_or_deleted_rolls(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-vpath").await?;
    let ns = &env.ns;
    let hcl = format!(
        "path \"secret/metadata/{ns}/app\" {{ capabilities = [\"list\"] }}\npath \"secret/metadata/{ns}/app/*\" {{ capabilities = [\"list\"] }}\npath \"secret/data/{ns}/app/*\" {{ capabilities = [\"read\"] }}\n"
    );
    bed.vault("PUT", &format!("sys/policies/acl/{ns}"), Some(json!({"policy": hcl}))).await?;
    for i in 0..3 {
        bed.vault(
            "POST",
            &format!("secret/data/{ns}/app/s{i}"),
            Some(json!({"data": {"v": secret(&format!("rvp{i}"))}})),
        )
        .await?;
    }
    let ctrl = env.controller(bed, "ctrl").await?;
    let annotations = json!({
        "keyhole.dev/inject": "true",
        "keyhole.dev/store": "vault",
        "keyhole.dev/role": ns,
        "keyhole.dev/path-app": format!("secret/{ns}/app/"),
    });
    create(bed, ns, &deployment("api", annotations)?).await?;
    let folder = format!("secret/{ns}/app/*");
    wait_observed_with(bed, ns, "api", &format!("\"{folder}\":\"3@")).await?;
    wait_replica_sets(bed, ns, "api", 1, Duration::from_secs(30)).await?;

    let changed = secret("rvp-changed");
    bed.vault("POST", &format!("secret/data/{ns}/app/s1"), Some(json!({"data": {"v": changed}}))).await?;
    let took = wait_replica_sets(bed, ns, "api", 2, INTERVAL + SLACK).await?;
    eprintln!(
        "rot-vpath: new ReplicaSet {:.2}s after a secret changed (interval {}s)",
        took.as_secs_f64(),
        INTERVAL.as_secs()
    );
    let d = get(bed, ns, "api").await?;
    let versions = template_versions(&d).context("no keyhole.dev/versions")?;
    let pod = pod_of_revision(bed, ns, "api", &versions).await?;
    let got: Value = serde_json::from_str(&injected_file(bed, &pod, "s1").await?)?;
    ensure!(got == json!({"v": changed}), "the new pod lacks the changed secret");

    bed.vault("DELETE", &format!("secret/metadata/{ns}/app/s2"), None).await?;
    wait_replica_sets(bed, ns, "api", 3, INTERVAL + SLACK).await?;
    wait_observed_with(bed, ns, "api", &format!("\"{folder}\":\"2@")).await?;
    let requests = |op: &'static str| ctrl.counter("keyhole_rotation_backend_requests_total", op);
    ensure!(requests("operation=\"list\"").await? > 0.0, "no list was counted");
    finish(&[&ctrl])
}

/// With Secret output a rollout is a new revision, hence a new immutable Secret
/// with the new value; the old revision's Secret keeps the old one.
async fn ssm_change_with_secret_output_makes_a_new_immutable_secret(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-secret").await?;
    let ns = &env.ns;
    keyhole_testbed::workload::secret_output_rbac(bed, ns, APP_SA).await?;
    let param = format!("/{ns}/db");
    let (v1, v2) = (secret("sec1"), secret("sec2"));
    bed.put_ssm(&param, &v1).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    let mut ann = ssm_annotations(ns, &param);
    ann["keyhole.dev/output"] = json!("both");
    create(bed, ns, &deployment("web", ann)?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    let first = replica_sets(bed, ns, "web").await?.into_iter().next().context("no ReplicaSet")?;
    let first_pod = keyhole_testbed::workload::pods_of(bed, ns, &first, 1).await?.remove(0);
    ensure!(injected_value(bed, &first_pod).await? == v1, "the first revision's pod did not get the first value");

    bed.put_ssm(&param, &v2).await?;
    wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    let versions = template_versions(&get(bed, ns, "web").await?).context("no keyhole.dev/versions")?;
    let pod = pod_of_revision(bed, ns, "web", &versions).await?;
    ensure!(injected_value(bed, &pod).await? == v2, "the new revision's pod did not get the new value");

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), ns);
    let owner = pod.metadata.owner_references.iter().flatten().next().context("the pod has no owner")?;
    for (rs_name, rs_uid, want) in [
        (owner.name.clone(), owner.uid.clone(), &v2),
        (first.metadata.name.clone().unwrap_or_default(), first.metadata.uid.clone().unwrap_or_default(), &v1),
    ] {
        // `keyhole-<ReplicaSet>`, with a suffix of the owner's uid.
        let name = format!("keyhole-{rs_name}");
        let s = secrets
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|s| {
                s.metadata.name.as_deref().is_some_and(|n| n.starts_with(&name))
                    && s.metadata.owner_references.iter().flatten().any(|o| o.uid == rs_uid)
            })
            .with_context(|| format!("no Secret {ns}/{name}* owned by its ReplicaSet"))?;
        ensure!(s.immutable == Some(true), "{name} is not immutable");
        let held = s.data.as_ref().and_then(|d| d.get("db")).map(|b| b.0.clone()).unwrap_or_default();
        ensure!(held == want.as_bytes(), "{name} does not hold its revision's value");
    }
    finish(&[&ctrl])
}

/// A control workload rolls on the same change, proving the controller saw it.
async fn no_roll_beside_a_control(
    bed: &Bed,
    prefix: &str,
    quiet_annotations: impl Fn(&str, &str) -> Value,
) -> Result<()> {
    let env = env(bed, prefix).await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("c1")).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    create(bed, ns, &deployment("control", ssm_annotations(ns, &param))?).await?;
    create(bed, ns, &deployment("quiet", quiet_annotations(ns, &param))?).await?;
    wait_observed(bed, ns, "control", &format!("{{\"{param}\":1}}")).await?;
    wait_replica_sets(bed, ns, "quiet", 1, Duration::from_secs(30)).await?;
    bed.put_ssm(&param, &secret("c2")).await?;
    wait_replica_sets(bed, ns, "control", 2, INTERVAL + SLACK).await?;
    tokio::time::sleep(INTERVAL * 2).await;
    let quiet = get(bed, ns, "quiet").await?;
    ensure!(replica_sets(bed, ns, "quiet").await?.len() == 1, "the quiet workload rolled");
    ensure!(template_versions(&quiet).is_none() && observed(&quiet).is_none(), "the quiet workload was patched");
    finish(&[&ctrl])
}

async fn pinned_reference_never_rolls(bed: &Bed) -> Result<()> {
    no_roll_beside_a_control(bed, "rot-pinned", |ns, param| ssm_annotations(ns, &format!("{param}:1"))).await
}

async fn opted_out_workload_never_rolls(bed: &Bed) -> Result<()> {
    no_roll_beside_a_control(bed, "rot-optout", |ns, param| {
        let mut a = ssm_annotations(ns, param);
        a["keyhole.dev/rotate"] = json!("false");
        a
    })
    .await
}

async fn controller_restart_rolls_nothing(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-restart").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("r1")).await?;
    let mut first = env.controller(bed, "first").await?;
    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    // A first rollout, so the template carries a digest the restart could disturb.
    bed.put_ssm(&param, &secret("r2")).await?;
    wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    let before = get(bed, ns, "web").await?;
    finish(&[&first])?;
    first.proc.stop(Duration::from_secs(5));

    let second = env.controller(bed, "second").await?;
    // It polls the workload (a look-up per interval) and rolls nothing.
    wait_until("the restarted controller to poll three times", Duration::from_secs(30), || async {
        second.counter("keyhole_rotation_workload_polls_total", "up_to_date").await.unwrap_or(0.0) >= 3.0
    })
    .await?;
    let after = get(bed, ns, "web").await?;
    ensure!(replica_sets(bed, ns, "web").await?.len() == 2, "the restart rolled the workload");
    ensure!(template_versions(&after) == template_versions(&before), "the restart changed the template");
    ensure!(
        after.metadata.generation == before.metadata.generation,
        "generation moved {:?} -> {:?}",
        before.metadata.generation,
        after.metadata.generation
    );
    // State lives on the workload: a change made while no controller ran still rolls.
    bed.put_ssm(&param, &secret("r3")).await?;
    wait_replica_sets(bed, ns, "web", 3, INTERVAL + SLACK).await?;
    finish(&[&second])
}

async fn lease_holder(bed: &Bed, ns: &str, name: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(bed.client.clone(), ns).get_opt(name).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn only_the_lease_holder_patches(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-lease").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("l1")).await?;
    let a = env.controller(bed, "a").await?;
    let b = env.controller(bed, "b").await?;
    wait_until("a lease holder", Duration::from_secs(20), || async {
        lease_holder(bed, ns, "keyhole-rotation").await.is_some()
    })
    .await?;
    let holder = lease_holder(bed, ns, "keyhole-rotation").await.context("holder")?;
    let (mut leader, standby) = if holder == a.identity { (a, b) } else { (b, a) };
    ensure!(holder == leader.identity, "the lease is held by {holder:?}, neither instance");

    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    bed.put_ssm(&param, &secret("l2")).await?;
    wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    tokio::time::sleep(INTERVAL).await;

    let (leader_log, standby_log) = (leader.log(), standby.log());
    ensure!(
        leader_log.contains("recorded the versions") && leader_log.contains("rolled out"),
        "leader log:\n{leader_log}"
    );
    for word in ["recorded the versions", "rolled out", "polled"] {
        ensure!(!standby_log.contains(word), "the standby {word}:\n{standby_log}");
    }
    ensure!(
        standby.counter("keyhole_rotation_backend_requests_total", "").await? == 0.0,
        "the standby asked a backend"
    );
    ensure!(standby.counter("keyhole_rotation_leader", "").await? == 0.0);
    ensure!(leader.counter("keyhole_rotation_leader", "").await? == 1.0);
    let patches: Vec<String> = get(bed, ns, "web")
        .await?
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .filter(|m| m.starts_with("keyhole"))
        .collect();
    ensure!(patches == ["keyhole-rotation"], "field managers: {patches:?}");
    finish(&[&leader, &standby])?;

    // The holder dies without releasing: the standby takes over once the lease lapses.
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader.proc.pid().context("pid")? as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let _ = leader.proc.wait_exit(Duration::from_secs(5));
    wait_until("the standby to take the lease", Duration::from_secs(20), || async {
        lease_holder(bed, ns, "keyhole-rotation").await.as_deref() == Some(standby.identity.as_str())
    })
    .await?;
    eprintln!("rot-lease: failover in {:.2}s (lease duration 4s)", t0.elapsed().as_secs_f64());
    bed.put_ssm(&param, &secret("l3")).await?;
    wait_replica_sets(bed, ns, "web", 3, INTERVAL + SLACK * 2).await?;
    ensure!(standby.log().contains("rolled out"), "the new holder did not roll");
    finish(&[&standby])
}

/// `keyhole roll` as it runs where the controller's tokens are: the
/// controller's config and its STS token, in a temp dir.
struct Roller {
    dir: tempfile::TempDir,
    config: PathBuf,
    tokens: PathBuf,
}

impl Roller {
    async fn new(bed: &Bed, env: &Env) -> Result<Roller> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, &env.opts(bed, "roll").config_yaml)?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens)?;
        let t = bed.token(&env.ns, rotation::SA, &["sts.amazonaws.com"], 3600, None).await?;
        leaks::remember(t.clone());
        std::fs::write(tokens.join("sts.amazonaws.com"), t)?;
        Ok(Roller { dir, config, tokens })
    }

    /// `keyhole roll <args>` with `kubeconfig`: whether it succeeded, and what
    /// it printed (checked for secret values).
    async fn run(&self, kubeconfig: &Path, args: &[&str]) -> Result<(bool, String)> {
        let out = tokio::process::Command::new(workspace_bin("keyhole")?)
            .arg("roll")
            .args(args)
            .arg(format!("--config={}", self.config.display()))
            .arg(format!("--token-dir={}", self.tokens.display()))
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KEYHOLE_NAMESPACE")
            .env("NO_COLOR", "1")
            .output()
            .await?;
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        leaks::scan("the roll command's output", &printed)?;
        Ok((out.status.success(), printed))
    }

    /// A copy of the bed's kubeconfig whose current context has namespace `ns`.
    async fn kubeconfig_in(&self, bed: &Bed, ns: &str) -> Result<PathBuf> {
        let path = self.dir.path().join("context.kubeconfig");
        std::fs::copy(&bed.kubeconfig, &path)?;
        let out = tokio::process::Command::new(&bed.parts.kubectl)
            .args(["config", "set-context", "--current", &format!("--namespace={ns}")])
            .arg(format!("--kubeconfig={}", path.display()))
            .output()
            .await?;
        ensure!(out.status.success(), "kubectl config set-context: {}", String::from_utf8_lossy(&out.stderr));
        Ok(path)
    }
}

/// Plays the kubelet's readiness reports, as this bed has no node: each pod of
/// `ns` is marked Ready on the next pass (one a second), so rollouts complete
/// and take a few seconds. Stops when dropped.
struct Readiness(tokio::task::JoinHandle<()>);

impl Drop for Readiness {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn mark_pods_ready(bed: &Bed, ns: &str) -> Readiness {
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    Readiness(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(pods) = api.list(&ListParams::default()).await else { continue };
            for pod in pods.items {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let (Some(name), false) = (pod.metadata.name.as_deref(), ready) else { continue };
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let status = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                let _ = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await;
            }
        }
    }))
}

async fn manual_roll_rolls_now(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-manual").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    let v1 = secret("m1");
    bed.put_ssm(&param, &v1).await?;
    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    wait_replica_sets(bed, ns, "web", 1, Duration::from_secs(30)).await?;
    // No controller runs: the trigger alone rolls, with the controller's credentials.
    let roller = Roller::new(bed, &env).await?;
    let (ok, printed) = roller.run(&bed.kubeconfig, &["deployment/web", "-n", ns]).await?;
    ensure!(ok, "keyhole roll failed:\n{printed}");
    ensure!(printed.contains("deployment/web in"), "{printed}");
    wait_replica_sets(bed, ns, "web", 2, SLACK).await?;
    let d = get(bed, ns, "web").await?;
    ensure!(observed(&d) == Some(format!("{{\"{param}\":1}}")), "the trigger did not record the versions it looked up");
    let versions = template_versions(&d).context("no keyhole.dev/versions")?;
    let pod = pod_of_revision(bed, ns, "web", &versions).await?;
    ensure!(injected_value(bed, &pod).await? == v1);
    ensure!(events(bed, ns, "web", "RolloutTriggered").await?.len() == 1, "no RolloutTriggered event");

    // A controller started afterwards sees the versions recorded: it rolls nothing.
    let ctrl = env.controller(bed, "after").await?;
    wait_until("the controller to poll twice", Duration::from_secs(30), || async {
        ctrl.counter("keyhole_rotation_workload_polls_total", "up_to_date").await.unwrap_or(0.0) >= 2.0
    })
    .await?;
    ensure!(replica_sets(bed, ns, "web").await?.len() == 2, "the controller rolled again after the trigger");
    // A second trigger rolls again even though no version moved.
    let (ok, printed) = roller.run(&bed.kubeconfig, &["deploy/web", "-n", ns]).await?;
    ensure!(ok, "{printed}");
    wait_replica_sets(bed, ns, "web", 3, SLACK).await?;
    finish(&[&ctrl])
}

/// Without `-n`, `keyhole roll` takes the namespace of the kubeconfig's current
/// context (control: the bed's own context has none, so `default`, where there
/// is no `web`); `--wait` returns once the rollout is complete, and fails
/// naming the workload when it does not complete within `--timeout`.
async fn roll_takes_the_contexts_namespace_and_waits_for_the_rollout(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-wait").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("w1")).await?;
    let mut d = deployment("web", ssm_annotations(ns, &param))?;
    d.spec.replicas = Some(2);
    create(bed, ns, &d).await?;
    let readiness = mark_pods_ready(bed, ns);
    let complete = |d: &Deployment| {
        let s = d.status.clone().unwrap_or_default();
        let want = d.spec.replicas.unwrap_or(1);
        s.observed_generation >= d.metadata.generation
            && s.replicas == Some(want)
            && s.updated_replicas == Some(want)
            && s.available_replicas == Some(want)
    };
    wait_until("the first rollout", Duration::from_secs(60), || async {
        get(bed, ns, "web").await.is_ok_and(|d| complete(&d))
    })
    .await?;
    let roller = Roller::new(bed, &env).await?;

    // Control: the bed's context names no namespace.
    let (ok, printed) = roller.run(&bed.kubeconfig, &["deployment/web", "--wait"]).await?;
    ensure!(!ok, "keyhole roll found a web in namespace default:\n{printed}");
    ensure!(
        printed.contains("Deployment/web in namespace default") && printed.contains("\"web\" not found"),
        "{printed}"
    );

    let kubeconfig = roller.kubeconfig_in(bed, ns).await?;
    let (ok, printed) = roller.run(&kubeconfig, &["deployment/web", "--wait", "--timeout=2m"]).await?;
    let d = get(bed, ns, "web").await?;
    ensure!(ok, "keyhole roll --wait failed:\n{printed}");
    let target = format!("deployment/web in {ns}: ");
    let lines: Vec<&str> = printed.lines().filter_map(|l| l.strip_prefix(&target)).collect();
    ensure!(lines.first().is_some_and(|l| l.starts_with("rolling out")), "{printed}");
    ensure!(lines.last() == Some(&"successfully rolled out"), "{printed}");
    ensure!(lines.len() >= 3, "no progress reported:\n{printed}");
    // Complete the moment it returned, on the new ReplicaSet.
    ensure!(complete(&d), "keyhole roll --wait returned before the rollout completed: {:?}", d.status);
    let versions = template_versions(&d).context("no keyhole.dev/versions")?;
    let rss = replica_sets(bed, ns, "web").await?;
    ensure!(rss.len() == 2, "{} ReplicaSets after one roll", rss.len());
    for rs in &rss {
        let s = rs.status.clone().unwrap_or_default();
        let (replicas, available) = (s.replicas, s.available_replicas.unwrap_or(0));
        match rs_versions(rs) == Some(versions.as_str()) {
            true => ensure!(
                replicas == 2 && available == 2,
                "the new ReplicaSet: {replicas} replicas, {available} available"
            ),
            false => ensure!(replicas == 0, "the old ReplicaSet still has {replicas} replicas"),
        }
    }

    // Nothing marks the new pods Ready any more: the rollout cannot complete in time.
    drop(readiness);
    let (ok, printed) = roller.run(&kubeconfig, &["deployment/web", "--wait", "--timeout=1s"]).await?;
    ensure!(!ok, "keyhole roll --wait returned while the new pods are not Ready:\n{printed}");
    ensure!(
        printed.contains(&format!("Deployment/web in namespace {ns} did not finish rolling out within 1s")),
        "{printed}"
    );
    Ok(())
}

/// One workload at the cap of 100 references, every one missing, polled every
/// 10 s: its neighbour's change still rolls within one interval; its missing
/// parameters are not asked again and its failures keep the session; one
/// reference more is refused at apply.
async fn a_failing_workload_at_the_reference_cap_holds_no_one_back(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-cap").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("cap1")).await?;
    let ctrl = env.controller(bed, "ctrl").await?;
    let missing = |n: usize| {
        let mut a = json!({
            "keyhole.dev/inject": "true",
            "keyhole.dev/store": "aws",
            "keyhole.dev/role": APP_ROLE_ARN,
            "keyhole.dev/refresh-interval": "10s",
        });
        for i in 0..n {
            a[format!("keyhole.dev/secret-p{i:03}")] = json!(format!("/{ns}/missing/p{i:03}"));
        }
        a
    };
    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    let mut bad = deployment("bad", missing(keyhole_contract::annotations::MAX_REFERENCES))?;
    bad.spec.replicas = Some(0);
    create(bed, ns, &bad).await?;

    let over = Api::<Deployment>::namespaced(bed.client.clone(), ns)
        .create(&PostParams::default(), &deployment("over", missing(101))?)
        .await;
    match over {
        Err(kube::Error::Api(e)) => {
            ensure!(e.message.contains("101 references; keyhole takes at most 100"), "refused, but: {}", e.message)
        }
        Err(e) => anyhow::bail!("101 references: {e}"),
        Ok(_) => anyhow::bail!("a workload with 101 references was admitted"),
    }

    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    let failed =
        || async { ctrl.counter("keyhole_rotation_workload_polls_total", "lookup_failed").await.unwrap_or(0.0) };
    wait_until("the capped workload to fail twice", Duration::from_secs(30), || async { failed().await >= 2.0 })
        .await?;
    let (describes, polls) = ("keyhole_rotation_backend_requests_total", "keyhole_rotation_polls_total");
    let (failed0, d0, p0) =
        (failed().await, ctrl.counter(describes, "DescribeParameters").await?, ctrl.counter(polls, "").await?);

    bed.put_ssm(&param, &secret("cap2")).await?;
    let took = wait_replica_sets(bed, ns, "web", 2, INTERVAL + SLACK).await?;
    eprintln!("rot-cap: new ReplicaSet {:.2}s after the change beside 100 failing references", took.as_secs_f64());
    wait_until("the capped workload to be polled again", Duration::from_secs(30), || async {
        failed().await > failed0
    })
    .await?;
    let (d1, p1) = (ctrl.counter(describes, "DescribeParameters").await?, ctrl.counter(polls, "").await?);
    // One call a poll, the neighbour's: the 100 missing names (two more calls) are remembered.
    ensure!(d1 - d0 <= p1 - p0 + 1.0, "{} DescribeParameters in {} polls", d1 - d0, p1 - p0);
    let logins = ctrl.counter("keyhole_rotation_backend_requests_total", "AssumeRoleWithWebIdentity").await?;
    ensure!(logins == 1.0, "{logins} logins: \"no such parameter\" dropped the session");
    let log = ctrl.log();
    ensure!(log.contains(&format!("no such parameter: /{ns}/missing/p000")), "log:\n{log}");
    ensure!(log.contains("(an earlier answer"), "the failures were asked again:\n{log}");
    finish(&[&ctrl])
}

/// The controller checks a workload's references against what its store
/// grants the namespace before any look-up. The webhook here grants all (the
/// workloads are admitted); the controller's config grants `secret/<ns>/app/`.
async fn references_outside_the_namespaces_grants_are_never_looked_up(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-scope").await?;
    let ns = &env.ns;
    for (path, value) in [("app/db", "in1"), ("other/db", "out1")] {
        bed.vault("POST", &format!("secret/data/{ns}/{path}"), Some(json!({"data": {"password": secret(value)}})))
            .await?;
    }
    let vault = Proxy::start(&bed.vault_addr).await?;
    let allow = format!(r#"[{{namespaces: ["{ns}"], paths: ["secret/{ns}/app/"]}}]"#);
    let mut opts = env.opts(bed, "ctrl");
    opts.config_yaml = config_yaml_at(
        &vault.url,
        &bed.moto_url,
        &bed.moto_url,
        &[("rotationRole", &env.rotation_role), ("allow", &allow)],
        &[("rotationRole", rotation::ROLE_ARN)],
    );
    let ctrl = Controller::start(bed, ns, &opts).await?;
    leaks::remember_all(ctrl.tokens.iter().cloned());
    let ann = |path: &str| {
        json!({
            "keyhole.dev/inject": "true",
            "keyhole.dev/store": "vault",
            "keyhole.dev/role": ns,
            "keyhole.dev/secret-db": format!("secret/{ns}/{path}#password"),
        })
    };
    create(bed, ns, &deployment("inside", ann("app/db"))?).await?;
    create(bed, ns, &deployment("outside", ann("other/db"))?).await?;
    wait_observed(bed, ns, "inside", &format!("{{\"secret/{ns}/app/db\":1}}")).await?;
    let polls = ctrl.counter("keyhole_rotation_polls_total", "").await?;
    wait_until("two more polls", Duration::from_secs(30), || async {
        ctrl.counter("keyhole_rotation_polls_total", "").await.unwrap_or(0.0) >= polls + 2.0
    })
    .await?;

    let asked = vault.requests();
    ensure!(
        asked.iter().any(|r| r.contains(&format!("/v1/secret/metadata/{ns}/app/db"))),
        "the control was not looked up: {asked:?}"
    );
    let outside: Vec<&String> = asked.iter().filter(|r| r.contains(&format!("{ns}/other"))).collect();
    ensure!(outside.is_empty(), "requests for the path outside the grant: {outside:?}");
    ensure!(observed(&get(bed, ns, "outside").await?).is_none(), "the workload outside was recorded");
    let log = ctrl.log();
    for needle in [
        format!("Deployment/{ns}/outside"),
        format!("keyhole.dev/secret-db: store \"vault\" lets namespace \"{ns}\" read secret/{ns}/app/ only"),
        format!("\"secret/{ns}/other/db\" is outside"),
    ] {
        ensure!(log.contains(&needle), "the log lacks {needle:?}:\n{log}");
    }
    wait_until("a RotationRefused event", Duration::from_secs(30), || async {
        events(bed, ns, "outside", "RotationRefused").await.is_ok_and(|e| !e.is_empty())
    })
    .await?;
    let warned = events(bed, ns, "outside", "RotationRefused").await?;
    let note = warned[0].note.clone().unwrap_or_default();
    ensure!(warned[0].type_.as_deref() == Some("Warning"), "RotationRefused is not a Warning");
    ensure!(note.contains(&format!("\"secret/{ns}/other/db\" is outside")), "event note {note:?}");
    ensure!(events(bed, ns, "inside", "RotationRefused").await?.is_empty(), "the control was refused too");
    finish(&[&ctrl])
}

/// OpenBao tokens alive from a kubernetes-auth login with `role` in namespace `ns`.
async fn live_tokens(bed: &Bed, ns: &str, role: &str) -> Result<usize> {
    let list = bed.vault("LIST", "auth/token/accessors", None).await?;
    let mut n = 0;
    for accessor in list["data"]["keys"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        // Tokens of other tests come and go meanwhile.
        let Ok(t) = bed.vault("POST", "auth/token/lookup-accessor", Some(json!({"accessor": accessor}))).await else {
            continue;
        };
        let meta = &t["data"]["meta"];
        if meta["role"] == role && meta["service_account_namespace"] == ns {
            n += 1;
        }
    }
    Ok(n)
}

/// The injector revokes its token once it has read the values; the controller
/// keeps its own while it runs and revokes it when it stops.
async fn vault_tokens_are_revoked_after_use(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-revoke").await?;
    let ns = &env.ns;
    let value = secret("rev1");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": value}}))).await?;
    let mut ctrl = env.controller(bed, "ctrl").await?;
    let ann = vault_annotations(ns);
    create(bed, ns, &deployment("api", ann)?).await?;
    wait_observed(bed, ns, "api", &format!("{{\"secret/{ns}/db\":1}}")).await?;
    // The control: the look-up below sees a live token.
    let held = live_tokens(bed, ns, &env.rotation_role).await?;
    ensure!(held == 1, "{held} live tokens of the running controller, not 1");

    wait_replica_sets(bed, ns, "api", 1, Duration::from_secs(30)).await?;
    let rs = replica_sets(bed, ns, "api").await?.into_iter().next().context("no ReplicaSet")?;
    let pod = keyhole_testbed::workload::pods_of(bed, ns, &rs, 1).await?.remove(0);
    ensure!(injected_value(bed, &pod).await? == value, "the injector did not write the value");
    let left = live_tokens(bed, ns, ns).await?;
    ensure!(left == 0, "{left} tokens of the injector's login still live after it fetched");

    finish(&[&ctrl])?;
    ctrl.proc.stop(Duration::from_secs(10));
    let left = live_tokens(bed, ns, &env.rotation_role).await?;
    ensure!(left == 0, "{left} tokens of the stopped controller still live");
    Ok(())
}

/// What the controller needs in its namespace, as a Role; `daemonsets: false`
/// leaves DaemonSets out, so their watch cannot list.
fn controller_role(daemonsets: bool) -> Result<Role> {
    let mut workloads = vec!["deployments", "statefulsets"];
    if daemonsets {
        workloads.push("daemonsets");
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "keyhole-rotation"},
        "rules": [
            {"apiGroups": ["apps"], "resources": workloads, "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]
    }))?)
}

/// Readiness waits for the first list of every watched kind (and a lease
/// round); liveness does not. The controller runs as its own service account,
/// which at first may not list DaemonSets: not ready, live; once the Role
/// grants them, ready.
async fn readyz_waits_for_every_watch_to_list(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-ready").await?;
    let ns = &env.ns;
    let roles: Api<Role> = Api::namespaced(bed.client.clone(), ns);
    roles.create(&PostParams::default(), &controller_role(false)?).await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "keyhole-rotation"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keyhole-rotation"},
        "subjects": [{"kind": "ServiceAccount", "name": rotation::SA, "namespace": ns}]
    }))?;
    Api::<RoleBinding>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), &binding).await?;
    let mut opts = env.opts(bed, "ctrl");
    opts.impersonate = Some(format!("system:serviceaccount:{ns}:{}", rotation::SA));
    let ctrl = Controller::start(bed, ns, &opts).await?;
    leaks::remember_all(ctrl.tokens.iter().cloned());

    // The lease loop runs and the other watches list meanwhile: only the DaemonSets hold readiness back.
    wait_until("a lease holder", Duration::from_secs(20), || async {
        lease_holder(bed, ns, "keyhole-rotation").await.is_some()
    })
    .await?;
    let unlisted = (503, "the DaemonSets have not been listed yet".to_owned());
    wait_until("/readyz to wait for the DaemonSets only", Duration::from_secs(20), || async {
        ctrl.probe("/readyz").await.is_ok_and(|r| r == unlisted)
    })
    .await?;
    for _ in 0..6 {
        let ready = ctrl.probe("/readyz").await?;
        ensure!(ready.0 == 503, "/readyz before the DaemonSets are listed: {ready:?}");
        let live = ctrl.probe("/healthz").await?;
        ensure!(live == (200, "ok".to_owned()), "/healthz while listing: {live:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut granted = controller_role(true)?;
    granted.metadata.resource_version = roles.get("keyhole-rotation").await?.metadata.resource_version;
    roles.replace("keyhole-rotation", &PostParams::default(), &granted).await?;
    let t0 = Instant::now();
    // The watcher retries with a backoff of up to 30 s.
    wait_until("/readyz to answer 200", Duration::from_secs(60), || async {
        ctrl.probe("/readyz").await.is_ok_and(|(status, _)| status == 200)
    })
    .await?;
    eprintln!("rot-ready: ready {:.1}s after the grant", t0.elapsed().as_secs_f64());
    ensure!(ctrl.probe("/healthz").await? == (200, "ok".to_owned()));
    // Ready means working: it records a new workload's versions as that service account.
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("ready1")).await?;
    create(bed, ns, &deployment("web", ssm_annotations(ns, &param))?).await?;
    wait_observed(bed, ns, "web", &format!("{{\"{param}\":1}}")).await?;
    finish(&[&ctrl])
}

/// The one Warning of `reason` on `name`, once it is there; said once (no series).
async fn one_warning(bed: &Bed, ns: &str, name: &str, reason: &str) -> Result<String> {
    wait_until(&format!("a {reason} event on {name}"), Duration::from_secs(30), || async {
        events(bed, ns, name, reason).await.is_ok_and(|e| !e.is_empty())
    })
    .await?;
    let evs = events(bed, ns, name, reason).await?;
    ensure!(evs.len() == 1, "{} {reason} events on {name}", evs.len());
    ensure!(evs[0].type_.as_deref() == Some("Warning"), "{reason} is a {:?} event", evs[0].type_);
    ensure!(evs[0].series.is_none(), "{reason} was said again: {:?}", evs[0].series);
    let note = evs[0].note.clone().unwrap_or_default();
    leaks::scan(&format!("the {reason} event"), &note)?;
    Ok(note)
}

/// With one rollout per interval, of two workloads whose value changed the
/// first (by name) rolls and the second waits, with a RotationDeferred Warning,
/// said once though a new workload makes it wait through a second poll; then it rolls.
async fn a_deferred_rollout_gets_a_warning_and_the_one_that_rolled_none(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-defer").await?;
    let ns = &env.ns;
    let param = format!("/{ns}/db");
    bed.put_ssm(&param, &secret("d1")).await?;
    // Both exist before the controller starts: one poll records both, so both are due together.
    create(bed, ns, &deployment("a-rolls", ssm_annotations(ns, &param))?).await?;
    create(bed, ns, &deployment("b-waits", ssm_annotations(ns, &param))?).await?;
    let mut opts = env.opts(bed, "ctrl");
    opts.max_rollouts = 1;
    opts.interval = "4s".into();
    let ctrl = Controller::start(bed, ns, &opts).await?;
    leaks::remember_all(ctrl.tokens.iter().cloned());
    for name in ["a-rolls", "b-waits"] {
        wait_observed(bed, ns, name, &format!("{{\"{param}\":1}}")).await?;
        wait_replica_sets(bed, ns, name, 1, Duration::from_secs(30)).await?;
    }

    bed.put_ssm(&param, &secret("d2")).await?;
    let note = one_warning(bed, ns, "b-waits", "RotationDeferred").await?;
    // A new workload wakes the loop within the budget's window: the waiting one is deferred again.
    create(bed, ns, &deployment("c-new", ssm_annotations(ns, &param))?).await?;
    let deferred =
        || async { ctrl.counter("keyhole_rotation_workload_polls_total", "outcome=\"deferred\"").await.unwrap_or(0.0) };
    wait_until("a second deferral", Duration::from_secs(10), || async { deferred().await >= 2.0 }).await?;
    wait_replica_sets(bed, ns, "a-rolls", 2, SLACK).await?;
    for needle in [format!("keyhole.dev/secret-db ({param}) moved from version 1 to 2"), "--max-rollouts".to_owned()] {
        ensure!(note.contains(&needle), "RotationDeferred note {note:?} lacks {needle:?}");
    }
    wait_replica_sets(bed, ns, "b-waits", 2, Duration::from_secs(20)).await?;
    let d = get(bed, ns, "b-waits").await?;
    ensure!(observed(&d) == Some(format!("{{\"{param}\":2}}")), "the deferred workload did not record the new version");
    one_warning(bed, ns, "b-waits", "RotationDeferred").await?;
    ensure!(
        events(bed, ns, "a-rolls", "RotationDeferred").await?.is_empty(),
        "the workload that rolled was deferred too"
    );
    check_rotated_event(bed, ns, "a-rolls", "moved from version 1 to 2").await?;
    check_rotated_event(bed, ns, "b-waits", "moved from version 1 to 2").await?;
    finish(&[&ctrl])
}

/// A reference the controller's Vault policy does not cover (a 403) fails its
/// look-up at every poll: one RotationLookupFailed Warning names the store, the
/// reference and the backend's answer; the control beside it records, with no Warning.
async fn a_failed_look_up_gets_a_warning_once_and_its_control_none(bed: &Bed) -> Result<()> {
    let env = env(bed, "rot-lookup").await?;
    let ns = &env.ns;
    let elsewhere = format!("{ns}-elsewhere");
    for path in [format!("secret/data/{ns}/db"), format!("secret/data/{elsewhere}/db")] {
        bed.vault("POST", &path, Some(json!({"data": {"password": secret("lk1")}}))).await?;
    }
    let ctrl = env.controller(bed, "ctrl").await?;
    create(bed, ns, &deployment("control", vault_annotations(ns))?).await?;
    let mut outside = vault_annotations(ns);
    outside["keyhole.dev/secret-db"] = json!(format!("secret/{elsewhere}/db#password"));
    let mut broken = deployment("broken", outside)?;
    broken.spec.replicas = Some(0);
    create(bed, ns, &broken).await?;
    wait_observed(bed, ns, "control", &format!("{{\"secret/{ns}/db\":1}}")).await?;

    let note = one_warning(bed, ns, "broken", "RotationLookupFailed").await?;
    for needle in ["store \"vault\"", &format!("secret/{elsewhere}/db"), "HTTP 403"] {
        ensure!(note.contains(needle), "RotationLookupFailed note {note:?} lacks {needle:?}");
    }
    let polls = ctrl.counter("keyhole_rotation_polls_total", "").await?;
    wait_until("three more polls", Duration::from_secs(30), || async {
        ctrl.counter("keyhole_rotation_polls_total", "").await.unwrap_or(0.0) >= polls + 3.0
    })
    .await?;
    ensure!(
        ctrl.counter("keyhole_rotation_workload_polls_total", "lookup_failed").await? >= 3.0,
        "the look-up did not fail at every poll"
    );
    one_warning(bed, ns, "broken", "RotationLookupFailed").await?;
    ensure!(observed(&get(bed, ns, "broken").await?).is_none(), "the broken workload was recorded");
    ensure!(events(bed, ns, "control", "RotationLookupFailed").await?.is_empty(), "the control got a Warning");
    let denied = ctrl.counter("keyhole_rotation_backend_requests_total", "outcome=\"denied\"").await?;
    let ok = ctrl.counter("keyhole_rotation_backend_requests_total", "outcome=\"ok\"").await?;
    ensure!(denied >= 1.0 && ok >= 1.0, "backend requests: {denied} denied, {ok} ok");
    finish(&[&ctrl])
}
