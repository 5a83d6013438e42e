//! Secret output end to end: Deployments whose pods the real controller-manager
//! creates and the real webhook mutates; each pod's injector run as the kubelet
//! would run it; OpenBao and moto behind counting proxies, so every backend
//! request is seen.
//!
//! One test at a time, in order: the last one stops OpenBao and moto for good.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_contract::names;
use keyhole_testbed::kubelet::{InitOpts, InitOutcome, run_init_container};
use keyhole_testbed::leaks;
use keyhole_testbed::proc::wait_until;
use keyhole_testbed::proxy::Proxy;
use keyhole_testbed::webhook::{Webhook, config_yaml_at};
use keyhole_testbed::workload::{client_as, newest_rs, pods_of, provenance_policy, secret_name, secret_output_rbac};
use keyhole_testbed::{Bed, create_service_account, e2e_tests};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

fn main() {
    keyhole_testbed::harness::run_in_order(e2e_tests![
        three_replicas_share_one_secret_owned_by_the_replicaset,
        a_new_revision_gets_a_new_secret_and_the_old_one_is_garbage_collected,
        pods_starting_at_once_fetch_once_and_a_lost_create_uses_the_winner,
        a_foreign_or_other_plan_secret_is_an_error_and_is_left_untouched,
        a_secret_or_claim_planted_by_another_service_account_is_refused,
        a_deployment_made_again_under_its_name_does_not_reuse_the_old_secret,
        operator_fields_changing_leave_a_revisions_secret_in_use,
        a_statefulset_revision_owns_its_secret,
        a_folder_with_secret_output_is_one_secret_that_later_pods_reuse,
        bench_backend_requests_for_a_rollout_secret_against_files,
        with_the_backends_stopped_scaling_to_5_still_starts_the_new_pods,
    ]);
}

const SA: &str = "app";
/// A second service account of the same namespace, allowed to create Secrets.
const INTRUDER: &str = "intruder";
/// The request every Vault pod's injector makes first.
const LOGIN: &str = "/v1/auth/kubernetes/login";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Vault,
    Aws,
    /// Secrets Manager, behind the same proxy as SSM (moto serves both).
    SecretsManager,
}

struct Ctx {
    /// Kept running for the whole binary.
    _hook: Webhook,
    vault: Proxy,
    aws: Proxy,
}

impl Ctx {
    fn proxy(&self, b: Backend) -> &Proxy {
        match b {
            Backend::Vault => &self.vault,
            Backend::Aws | Backend::SecretsManager => &self.aws,
        }
    }
}

static CTX: OnceCell<Ctx> = OnceCell::const_new();

/// The webhook, registered, with both stores behind counting proxies, and the
/// install's Secret provenance policy enforced.
async fn ctx(bed: &Bed) -> Result<&'static Ctx> {
    CTX.get_or_try_init(|| async {
        provenance_policy(bed, true, "default").await?;
        let vault = Proxy::start(&bed.vault_addr).await?;
        let aws = Proxy::start(&bed.moto_url).await?;
        let config = config_yaml_at(&vault.url, &aws.url, &aws.url, &[], &[("defaultRole", ROLE_ARN)]);
        let hook = Webhook::start(&config).await?;
        hook.register(bed, "keyhole-secret-e2e", None).await?;
        Ok(Ctx { _hook: hook, vault, aws })
    })
    .await
}

// ---- values and the leak scan ------------------------------------------------

fn value(what: &str) -> String {
    leaks::secret(what)
}

/// Runs the pod's injector as the kubelet would; fails if it printed a value or token.
async fn run(bed: &Bed, pod: &Pod) -> Result<InitOutcome> {
    run_with(bed, pod, &InitOpts::default()).await
}

/// [`run`] with `opts` (extra env, timeout).
async fn run_with(bed: &Bed, pod: &Pod, opts: &InitOpts) -> Result<InitOutcome> {
    let out = run_init_container(bed, pod, opts).await?;
    leaks::remember_all(out.tokens.iter().cloned());
    leaks::scan(
        &format!("what the injector of {} printed", pod.metadata.name.as_deref().unwrap_or("-")),
        &out.printed(),
    )?;
    Ok(out)
}

/// The `secret` field of the injector's final log line: created, reused, ...
fn outcome(out: &InitOutcome) -> String {
    out.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "done")
        .and_then(|v| v["secret"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

fn ok(out: &InitOutcome, pod: &Pod) -> Result<()> {
    ensure!(out.success(), "injector of {}: {}", pod.metadata.name.as_deref().unwrap_or("-"), out.describe());
    Ok(())
}

// ---- the namespace, the backend, the workload ---------------------------------

/// A namespace with the workload's service account, the Role and RoleBinding
/// from manifests/examples/secret-output-rbac.yaml, and a Vault role.
async fn namespace(bed: &Bed, prefix: &str) -> Result<String> {
    let ns = bed.namespace(prefix).await?;
    create_service_account(&bed.client, &ns, SA).await?;
    secret_output_rbac(bed, &ns, SA).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    Ok(ns)
}

/// Sets the value behind `DB_PASSWORD` in the backend (a new version if it exists).
async fn seed(bed: &Bed, b: Backend, ns: &str, v: &str) -> Result<()> {
    match b {
        Backend::Vault => {
            bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": v}}))).await?;
        }
        Backend::Aws => bed.put_ssm(&format!("/{ns}/db"), v).await?,
        Backend::SecretsManager => {
            bed.put_secret(&format!("{ns}/db"), &json!({"user": "app", "password": v}).to_string()).await?;
        }
    }
    Ok(())
}

fn annotations(b: Backend, ns: &str, output: &str) -> Value {
    match b {
        Backend::Vault => json!({"keyhole.dev/inject": "true", "keyhole.dev/output": output, "keyhole.dev/role": ns,
                                 "keyhole.dev/secret-DB_PASSWORD": format!("secret/{ns}/db#password")}),
        Backend::Aws => json!({"keyhole.dev/inject": "true", "keyhole.dev/output": output, "keyhole.dev/store": "aws",
                               "keyhole.dev/secret-DB_PASSWORD": format!("/{ns}/db")}),
        Backend::SecretsManager => json!({"keyhole.dev/inject": "true", "keyhole.dev/output": output,
                               "keyhole.dev/store": "aws-sm", "keyhole.dev/secret-DB_PASSWORD": format!("{ns}/db#password")}),
    }
}

/// A Deployment whose pods hold no API token of their own: keyhole mounts one
/// into the injector only. New revisions come up in full at once (maxSurge 100%).
async fn deploy(bed: &Bed, ns: &str, name: &str, replicas: i32, annotations: Value) -> Result<Deployment> {
    let app = json!({"name": "app", "image": "registry.example/app:1"});
    let d = keyhole_testbed::app::deployment(name, SA, replicas, annotations, app)?;
    Ok(Api::<Deployment>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), &d).await?)
}

/// Binds Role `role` of `ns` to its service account `sa`.
async fn bind_role(bed: &Bed, ns: &str, role: &str, sa: &str) -> Result<()> {
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{sa}-{role}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    }))?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(bed.client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// Deletes the Secret `name` through `api` and waits until it is gone.
async fn delete_secret(api: &Api<Secret>, name: &str) -> Result<()> {
    api.delete(name, &DeleteParams::default()).await?;
    wait_until(&format!("Secret {name} deleted"), Duration::from_secs(30), || async {
        matches!(api.get_opt(name).await, Ok(None))
    })
    .await
}

async fn get_secret(bed: &Bed, ns: &str, name: &str) -> Result<Option<Secret>> {
    Ok(Api::<Secret>::namespaced(bed.client.clone(), ns).get_opt(name).await?)
}

/// Checks the revision's Secret: immutable, keyhole's, owned by `rs`, holding `want`.
async fn check_secret(bed: &Bed, ns: &str, rs: &ReplicaSet, want: &str) -> Result<Secret> {
    let name = secret_name(rs);
    let s = get_secret(bed, ns, &name).await?.with_context(|| format!("no Secret {ns}/{name}"))?;
    ensure!(s.immutable == Some(true), "{name} is not immutable");
    let labels = s.metadata.labels.clone().unwrap_or_default();
    ensure!(labels.get(names::MANAGED_BY_LABEL).map(String::as_str) == Some("keyhole"), "{name} is not labelled");
    let owners = s.metadata.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.len() == 1
            && owners[0].kind == "ReplicaSet"
            && Some(&owners[0].uid) == rs.metadata.uid.as_ref()
            && owners[0].controller == Some(true),
        "{name} is not owned by its ReplicaSet: {:?}",
        owners.iter().map(|o| (&o.kind, &o.name)).collect::<Vec<_>>()
    );
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    ensure!(annotations.contains_key("keyhole.dev/plan-digest"), "{name} has no plan digest");
    ensure!(
        annotations.get(names::SERVICE_ACCOUNT_ANNOTATION).map(String::as_str) == Some(SA),
        "{name} does not name its service account: {annotations:?}"
    );
    let data = s.data.clone().unwrap_or_default();
    ensure!(data.keys().collect::<Vec<_>>() == ["DB_PASSWORD"], "{name} keys: {:?}", data.keys());
    ensure!(data["DB_PASSWORD"].0 == want.as_bytes(), "{name}: DB_PASSWORD is not the backend's current value");
    Ok(s)
}

/// The app container takes the Secret through envFrom (what the webhook adds).
fn check_env_from(pod: &Pod, secret: &str) -> Result<()> {
    let app = &pod.spec.as_ref().context("spec")?.containers[0];
    let refs: Vec<&str> =
        app.env_from.iter().flatten().filter_map(|e| e.secret_ref.as_ref().map(|r| r.name.as_str())).collect();
    ensure!(refs == [secret], "app container envFrom secrets: {refs:?}, want [{secret}]");
    Ok(())
}

fn file(out: &InitOutcome, name: &str) -> Result<String> {
    Ok(std::fs::read_to_string(out.volume(names::SECRETS_VOLUME)?.join(name))?)
}

// ---- tests -------------------------------------------------------------------

async fn three_replicas_share_one_secret_owned_by_the_replicaset(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    // Vault with output "both" (files too), SSM with output "secret", and a
    // JSON field of a Secrets Manager secret as the app's env (output "secret").
    for (b, output) in [(Backend::Vault, "both"), (Backend::Aws, "secret"), (Backend::SecretsManager, "secret")] {
        let ns = namespace(bed, "sec-three").await?;
        let v = value("three");
        seed(bed, b, &ns, &v).await?;
        deploy(bed, &ns, "web", 3, annotations(b, &ns, output)).await?;
        let rs = newest_rs(bed, &ns, "web", 1).await?;
        let pods = pods_of(bed, &ns, &rs, 3).await?;
        let proxy = c.proxy(b);
        let before = proxy.count();
        let mut per_pod = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            check_env_from(pod, &secret_name(&rs))?;
            let out = run(bed, pod).await?;
            ok(&out, pod)?;
            let want = if i == 0 { "created" } else { "reused" };
            ensure!(outcome(&out) == want, "{b:?} pod {i}: secret {}, want {want}", outcome(&out));
            if output == "both" {
                ensure!(file(&out, "DB_PASSWORD")? == v, "{b:?} pod {i}: the file is not the backend's value");
            }
            per_pod.push(proxy.count() - before - per_pod.iter().sum::<usize>());
        }
        check_secret(bed, &ns, &rs, &v).await?;
        ensure!(per_pod[0] > 0 && per_pod[1..] == [0, 0], "{b:?}: backend requests per pod {per_pod:?}");
        eprintln!("    {b:?} ({output}): backend requests per pod, in start order: {per_pod:?}");
    }
    Ok(())
}

async fn a_new_revision_gets_a_new_secret_and_the_old_one_is_garbage_collected(bed: &Bed) -> Result<()> {
    ctx(bed).await?;
    for b in [Backend::Vault, Backend::Aws] {
        let ns = namespace(bed, "sec-rev").await?;
        let v1 = value("rev1");
        seed(bed, b, &ns, &v1).await?;
        deploy(bed, &ns, "web", 1, annotations(b, &ns, "secret")).await?;
        let rs1 = newest_rs(bed, &ns, "web", 1).await?;
        let pod = pods_of(bed, &ns, &rs1, 1).await?.remove(0);
        ok(&run(bed, &pod).await?, &pod)?;

        // The value changes in the backend; the pod template changes (as the
        // rotation controller's patch does): a new revision.
        let v2 = value("rev2");
        seed(bed, b, &ns, &v2).await?;
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {"keyhole.dev/versions": "test-2"}}}}});
        Api::<Deployment>::namespaced(bed.client.clone(), &ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let rs2 = newest_rs(bed, &ns, "web", 2).await?;
        ensure!(rs2.metadata.uid != rs1.metadata.uid, "no new ReplicaSet");
        let pod2 = pods_of(bed, &ns, &rs2, 1).await?.remove(0);
        check_env_from(&pod2, &secret_name(&rs2))?;
        let out = run(bed, &pod2).await?;
        ok(&out, &pod2)?;
        ensure!(outcome(&out) == "created", "{b:?}: the new revision's first pod: {}", outcome(&out));
        check_secret(bed, &ns, &rs2, &v2).await?;
        check_secret(bed, &ns, &rs1, &v1).await.context("the old revision's Secret keeps its values")?;

        // The old ReplicaSet goes: the garbage collector takes its Secret.
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        Api::<ReplicaSet>::namespaced(bed.client.clone(), &ns)
            .delete(rs1.metadata.name.as_deref().unwrap_or_default(), &dp)
            .await?;
        let old = secret_name(&rs1);
        wait_until(&format!("{ns}/{old} garbage-collected"), Duration::from_secs(60), || async {
            matches!(get_secret(bed, &ns, &old).await, Ok(None))
        })
        .await?;
        ensure!(get_secret(bed, &ns, &secret_name(&rs2)).await?.is_some(), "the new revision's Secret went too");
    }
    Ok(())
}

async fn pods_starting_at_once_fetch_once_and_a_lost_create_uses_the_winner(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let b = Backend::Vault;
    let proxy = c.proxy(b);
    let logins = || proxy.count_of(LOGIN);

    // Two pods at once: the first to claim the revision fetches; the other waits
    // for its Secret and never calls the backend. The backend is held until the
    // second pod is surely waiting.
    let ns = namespace(bed, "sec-race").await?;
    let v = value("race");
    seed(bed, b, &ns, &v).await?;
    deploy(bed, &ns, "web", 2, annotations(b, &ns, "both")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pods = pods_of(bed, &ns, &rs, 2).await?;
    let before = logins();
    let (a, b2) = run_two_held(bed, proxy, &pods, 1, Duration::from_secs(1)).await?;
    let mut outcomes = [outcome(&a), outcome(&b2)];
    outcomes.sort();
    ensure!(outcomes == ["created", "reused"], "outcomes {outcomes:?}");
    ensure!(logins() - before == 1, "{} logins for two pods starting at once", logins() - before);
    let waiter = if outcome(&a) == "reused" { &a } else { &b2 };
    ensure!(
        waiter.stderr.contains("another pod of this revision is fetching"),
        "the waiter did not wait:\n{}",
        waiter.stderr
    );
    for out in [&a, &b2] {
        ensure!(file(out, "DB_PASSWORD")? == v, "a pod's file is not the revision's value");
    }
    check_secret(bed, &ns, &rs, &v).await?;

    // A claim that lapsed (its pod died): both pods fetch, both create, one
    // create wins and the other takes the winner's Secret (409).
    let ns = namespace(bed, "sec-409").await?;
    seed(bed, b, &ns, &v).await?;
    deploy(bed, &ns, "web", 2, annotations(b, &ns, "both")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pods = pods_of(bed, &ns, &rs, 2).await?;
    let claim = claim_of(&rs, SA, "1")?;
    Api::<Secret>::namespaced(client_as(bed, &ns, SA).await?, &ns).create(&PostParams::default(), &claim).await?;
    let (a, b2) = run_two_held(bed, proxy, &pods, 2, Duration::ZERO).await?;
    let mut outcomes = [outcome(&a), outcome(&b2)];
    outcomes.sort();
    ensure!(outcomes == ["created", "created-by-another-pod"], "outcomes {outcomes:?}");
    check_secret(bed, &ns, &rs, &v).await?;
    Ok(())
}

/// Runs two pods' injectors at once, holding the backend at `proxy` until
/// `lined_up` of their logins have arrived there (and `settle` after that);
/// both must succeed.
async fn run_two_held(
    bed: &Bed,
    proxy: &Proxy,
    pods: &[Pod],
    lined_up: usize,
    settle: Duration,
) -> Result<(InitOutcome, InitOutcome)> {
    let logins = || proxy.count_of(LOGIN);
    let before = logins();
    proxy.hold();
    let release = async {
        let what = format!("{lined_up} logins held at the proxy");
        let arrived = wait_until(&what, Duration::from_secs(30), || async { logins() >= before + lined_up }).await;
        tokio::time::sleep(settle).await;
        proxy.release();
        arrived
    };
    let ((a, b), arrived) = tokio::join!(async { tokio::join!(run(bed, &pods[0]), run(bed, &pods[1])) }, release);
    arrived?;
    let (a, b) = (a?, b?);
    ok(&a, &pods[0])?;
    ok(&b, &pods[1])?;
    Ok((a, b))
}

async fn a_foreign_or_other_plan_secret_is_an_error_and_is_left_untouched(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let b = Backend::Aws;
    let ns = namespace(bed, "sec-foreign").await?;
    seed(bed, b, &ns, &value("foreign")).await?;
    deploy(bed, &ns, "web", 1, annotations(b, &ns, "both")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pod = pods_of(bed, &ns, &rs, 1).await?.remove(0);
    let name = secret_name(&rs);
    let api: Api<Secret> = Api::namespaced(bed.client.clone(), &ns);
    let cases = [
        (json!({}), json!({}), "exists and keyhole does not manage it"),
        (
            json!({names::MANAGED_BY_LABEL: "keyhole"}),
            json!({"keyhole.dev/plan-digest": "0123456789abcdef", names::SERVICE_ACCOUNT_ANNOTATION: SA}),
            "was made by keyhole for another plan (digest 0123456789ab",
        ),
    ];
    // keyhole's label passes the provenance policy only from the account it names.
    let own: Api<Secret> = Api::namespaced(client_as(bed, &ns, SA).await?, &ns);
    for (labels, annotations, message) in cases {
        let theirs: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations,
                         "ownerReferences": owner_of(&rs)},
            "immutable": true,
            "data": {"DB_PASSWORD": ByteString(b"not-from-keyhole".to_vec())}
        }))?;
        let created = own.create(&PostParams::default(), &theirs).await?;
        let before = c.proxy(b).count();
        let out = run(bed, &pod).await?;
        ensure!(!out.success(), "the injector succeeded over someone else's Secret");
        ensure!(out.termination_log.contains(message), "termination log: {}", out.termination_log);
        ensure!(
            out.termination_log.contains(&format!("Secret {ns}/{name}")),
            "no Secret named: {}",
            out.termination_log
        );
        ensure!(c.proxy(b).count() == before, "the backend was called");
        let after = api.get(&name).await?;
        ensure!(
            after.metadata.resource_version == created.metadata.resource_version && after.data == created.data,
            "the Secret was touched"
        );
        let written = std::fs::read_dir(out.volume(names::SECRETS_VOLUME)?)?.count();
        ensure!(written == 0, "{written} entries written to the volume on failure");
        delete_secret(&api, &name).await?;
    }
    Ok(())
}

/// The ownerReferences keyhole writes on a ReplicaSet's Secret.
fn owner_of(rs: &ReplicaSet) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.metadata.name, "uid": rs.metadata.uid,
            "controller": true}])
}

/// A claim on `rs`'s revision as keyhole writes one, naming `sa`, expiring at `expires`.
fn claim_of(rs: &ReplicaSet, sa: &str, expires: &str) -> Result<Secret> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("{}.claim", secret_name(rs)),
                     "labels": {names::MANAGED_BY_LABEL: "keyhole"},
                     "annotations": {"keyhole.dev/claim-expires": expires, "keyhole.dev/created-by": "gone/pod",
                                     names::SERVICE_ACCOUNT_ANNOTATION: sa},
                     "ownerReferences": owner_of(rs)},
        "immutable": true
    }))?)
}

/// The plan the webhook gave `pod`'s injector.
fn plan_of(pod: &Pod) -> Result<keyhole_contract::Plan> {
    let plan = pod.metadata.annotations.as_ref().and_then(|a| a.get(names::PLAN_ANNOTATION));
    Ok(keyhole_contract::Plan::from_json(plan.context("no plan annotation")?)?)
}

/// What the attack of issue 12 plants, from another service account of the
/// namespace: the victim revision's Secret with the right name, label, owner,
/// keys and digest, and a claim from the far future. Forged (naming the
/// victim's account), both are refused at create by the provenance policy;
/// honest (naming the intruder), the injector refuses them; and with the
/// policy lifted, the injector trusts no Secret at all, since the annotation
/// then proves nothing. Each refusal names the object, comes before any
/// backend call, and leaves nothing written.
async fn a_secret_or_claim_planted_by_another_service_account_is_refused(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let b = Backend::Aws;
    let ns = namespace(bed, "sec-plant").await?;
    create_service_account(&bed.client, &ns, INTRUDER).await?;
    bind_role(bed, &ns, "keyhole-secret-output", INTRUDER).await?;
    let v = value("plant");
    seed(bed, b, &ns, &v).await?;
    deploy(bed, &ns, "web", 1, annotations(b, &ns, "both")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pod = pods_of(bed, &ns, &rs, 1).await?.remove(0);
    let name = secret_name(&rs);
    let digest = plan_of(&pod)?.digest(&ns, rs.metadata.uid.as_deref().unwrap_or_default());
    let planted = |sa: &str| -> Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {names::MANAGED_BY_LABEL: "keyhole"},
                         "annotations": {"keyhole.dev/plan-digest": digest, names::SERVICE_ACCOUNT_ANNOTATION: sa,
                                         "keyhole.dev/created-by": format!("{ns}/web-planted")},
                         "ownerReferences": owner_of(&rs)},
            "immutable": true,
            "data": {"DB_PASSWORD": ByteString(b"planted-by-the-intruder".to_vec())}
        }))?)
    };
    let far = "99999999999999999";
    let intruder: Api<Secret> = Api::namespaced(client_as(bed, &ns, INTRUDER).await?, &ns);
    let victim: Api<Secret> = Api::namespaced(client_as(bed, &ns, SA).await?, &ns);
    let admin: Api<Secret> = Api::namespaced(bed.client.clone(), &ns);

    // Forged: refused at create; the same object from the account it names passes (control).
    for (what, object) in [("Secret", planted(SA)?), ("claim", claim_of(&rs, SA, far)?)] {
        match intruder.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(s)) if s.message.contains("may be created only by the service account") => {}
            Err(e) => anyhow::bail!("the forged {what} was refused, but not by the provenance policy: {e}"),
            Ok(_) => anyhow::bail!("the provenance policy let {INTRUDER} create a {what} naming {SA}"),
        }
        let dry = PostParams { dry_run: true, ..Default::default() };
        victim.create(&dry, &object).await.with_context(|| format!("the {what} from {SA} itself was refused"))?;
    }

    // Each plant in turn; the injector must refuse it with `message`.
    let refused = |object: Secret, message: &'static str| {
        let (intruder, admin, pod, ns) = (&intruder, &admin, &pod, &ns);
        async move {
            let object_name = object.metadata.name.clone().unwrap_or_default();
            intruder.create(&PostParams::default(), &object).await?;
            let before = c.proxy(b).count();
            let out = run(bed, pod).await?;
            ensure!(!out.success(), "the injector took the planted {object_name}");
            ensure!(
                out.termination_log.contains(&format!("Secret {ns}/{object_name} {message}")),
                "planted {object_name}: termination log: {}",
                out.termination_log
            );
            ensure!(c.proxy(b).count() == before, "the backend was called past a planted {object_name}");
            let written = std::fs::read_dir(out.volume(names::SECRETS_VOLUME)?)?.count();
            ensure!(written == 0, "{written} entries written to the volume past a planted {object_name}");
            delete_secret(admin, &object_name).await
        }
    };
    let not_ours = "carries keyhole's label but was not made by this pod's service account";
    refused(planted(INTRUDER)?, not_ours).await?;
    refused(claim_of(&rs, INTRUDER, far)?, not_ours).await?;

    provenance_policy(bed, false, &ns).await?;
    let without = async {
        let unverified = "looks like keyhole's, but this cluster does not enforce keyhole's Secret provenance policy";
        refused(planted(SA)?, unverified).await?;
        refused(claim_of(&rs, SA, far)?, unverified).await
    }
    .await;
    provenance_policy(bed, true, &ns).await?;
    without?;

    // The account's own claim from the far future holds a pod for its own
    // deadline at most; then it fetches with a fresh one.
    victim.create(&PostParams::default(), &claim_of(&rs, SA, far)?).await?;
    let opts = InitOpts { extra_env: vec![("KEYHOLE_DEADLINE".into(), "3".into())], ..InitOpts::default() };
    let started = std::time::Instant::now();
    let out = run_with(bed, &pod, &opts).await?;
    ok(&out, &pod)?;
    ensure!(outcome(&out) == "created", "after the lapsed wait: {}", outcome(&out));
    ensure!(out.stderr.contains("its claim lapsed without a Secret"), "no lapsed wait:\n{}", out.stderr);
    ensure!(started.elapsed() < Duration::from_secs(30), "the far-future claim held the pod {:?}", started.elapsed());
    ensure!(file(&out, "DB_PASSWORD")? == v, "the pod's file is not the backend's value");
    check_secret(bed, &ns, &rs, &v).await?;

    // Nor can the intruder, even allowed to delete and patch Secrets, clear the
    // name for one of its own: deleting the real Secret and dropping its
    // owners (so the garbage collector would) are refused.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "intruder-more"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete", "patch"]}]
    }))?;
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(bed.client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    bind_role(bed, &ns, "intruder-more", INTRUDER).await?;
    let deleted = intruder.delete(&name, &DeleteParams::default()).await;
    ensure!(
        matches!(&deleted, Err(kube::Error::Api(s)) if s.message.contains("may not delete it")),
        "the intruder's delete of {name}: {:?}",
        deleted.map(|_| ())
    );
    let patch = json!({"metadata": {"ownerReferences": null}});
    let patched = intruder.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
    ensure!(
        matches!(&patched, Err(kube::Error::Api(s)) if s.message.contains("may change its owners")),
        "the intruder's patch of {name}'s owners: {:?}",
        patched.map(|_| ())
    );
    // Control: an unrelated change by the intruder passes.
    let label = json!({"metadata": {"labels": {"team": "x"}}});
    intruder.patch(&name, &PatchParams::default(), &Patch::Merge(&label)).await.context("an ordinary label patch")?;
    check_secret(bed, &ns, &rs, &v).await?;
    Ok(())
}

/// Deleted (orphaning, so its ReplicaSet's Secret outlives it) and made again
/// under the same name: the new ReplicaSet has the old one's name but not its
/// uid, and its pods get a Secret of their own with the backend's new value.
/// Secret output of a folder: the first pod makes the revision's Secret with
/// one key a leaf, the second reuses it without a backend request (its keys
/// are not in the plan, and are taken as a folder's). A leaf whose key is no
/// env name fails the pod, naming it; the control beside it started.
async fn a_folder_with_secret_output_is_one_secret_that_later_pods_reuse(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let ns = namespace(bed, "sec-path").await?;
    let (pw, key) = (value("path-pw"), value("path-key"));
    bed.put_ssm(&format!("/{ns}/env/DB_PASSWORD"), &pw).await?;
    bed.put_ssm(&format!("/{ns}/env/API_KEY"), &key).await?;
    bed.put_ssm(&format!("/{ns}/bad/db-url"), &value("path-bad")).await?;
    let folder = |f: &str| {
        json!({"keyhole.dev/inject": "true", "keyhole.dev/output": "secret", "keyhole.dev/store": "aws",
               "keyhole.dev/path-env": format!("/{ns}/{f}/")})
    };
    deploy(bed, &ns, "web", 2, folder("env")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pods = pods_of(bed, &ns, &rs, 2).await?;
    let proxy = c.proxy(Backend::Aws);
    let out = run(bed, &pods[0]).await?;
    ok(&out, &pods[0])?;
    ensure!(outcome(&out) == "created", "the first pod: {}", outcome(&out));
    let before = proxy.count();
    let out = run(bed, &pods[1]).await?;
    ok(&out, &pods[1])?;
    ensure!(outcome(&out) == "reused", "the second pod: {}", outcome(&out));
    ensure!(proxy.count() == before, "the second pod called the backend");
    let s = get_secret(bed, &ns, &secret_name(&rs)).await?.context("no Secret")?;
    let data = s.data.unwrap_or_default();
    ensure!(data.keys().collect::<Vec<_>>() == ["API_KEY", "DB_PASSWORD"], "keys: {:?}", data.keys());
    ensure!(data["DB_PASSWORD"].0 == pw.as_bytes() && data["API_KEY"].0 == key.as_bytes(), "the values differ");

    deploy(bed, &ns, "bad", 1, folder("bad")).await?;
    let rs = newest_rs(bed, &ns, "bad", 1).await?;
    let pod = pods_of(bed, &ns, &rs, 1).await?.remove(0);
    let out = run(bed, &pod).await?;
    ensure!(!out.success(), "a leaf that is no env name was taken");
    let want = format!(
        "keyhole.dev/path-env: store \"aws\" (aws-ssm): /{ns}/bad/db-url would be the key \"db-url\": not an environment variable name"
    );
    ensure!(out.termination_log.contains(&want), "termination log: {}", out.termination_log);
    ensure!(get_secret(bed, &ns, &secret_name(&rs)).await?.is_none(), "a Secret was made");
    Ok(())
}

async fn a_deployment_made_again_under_its_name_does_not_reuse_the_old_secret(bed: &Bed) -> Result<()> {
    ctx(bed).await?;
    let b = Backend::Vault;
    let ns = namespace(bed, "sec-again").await?;
    let v1 = value("again1");
    seed(bed, b, &ns, &v1).await?;
    deploy(bed, &ns, "web", 1, annotations(b, &ns, "secret")).await?;
    let rs1 = newest_rs(bed, &ns, "web", 1).await?;
    let pod = pods_of(bed, &ns, &rs1, 1).await?.remove(0);
    ok(&run(bed, &pod).await?, &pod)?;
    let old = secret_name(&rs1);
    let before = check_secret(bed, &ns, &rs1, &v1).await?;

    let v2 = value("again2");
    seed(bed, b, &ns, &v2).await?;
    let orphan = DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..Default::default() };
    Api::<Deployment>::namespaced(bed.client.clone(), &ns).delete("web", &orphan).await?;
    let rs_api = Api::<ReplicaSet>::namespaced(bed.client.clone(), &ns);
    let rs1_name = rs1.metadata.name.clone().unwrap_or_default();
    wait_until("the Deployment gone", Duration::from_secs(30), || async {
        matches!(Api::<Deployment>::namespaced(bed.client.clone(), &ns).get_opt("web").await, Ok(None))
    })
    .await?;
    rs_api.delete(&rs1_name, &orphan).await?;
    wait_until("the old ReplicaSet gone", Duration::from_secs(30), || async {
        matches!(rs_api.get_opt(&rs1_name).await, Ok(None))
    })
    .await?;
    // Its orphaned pod goes too, or the new ReplicaSet would adopt it.
    let pod_api = Api::<Pod>::namespaced(bed.client.clone(), &ns);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    pod_api.delete(&pod_name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await?;
    wait_until("the old pod gone", Duration::from_secs(30), || async {
        matches!(pod_api.get_opt(&pod_name).await, Ok(None))
    })
    .await?;
    // The garbage collector drops the gone owner from the Secret: an update
    // the provenance policy lets through.
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &ns);
    wait_until("the old Secret orphaned", Duration::from_secs(30), || async {
        matches!(secrets.get_opt(&old).await, Ok(Some(s)) if s.metadata.owner_references.as_ref().is_none_or(Vec::is_empty))
    })
    .await?;

    deploy(bed, &ns, "web", 1, annotations(b, &ns, "secret")).await?;
    let rs2 = newest_rs(bed, &ns, "web", 1).await?;
    ensure!(rs2.metadata.uid != rs1.metadata.uid, "the old ReplicaSet came back");
    let new = secret_name(&rs2);
    ensure!(new != old, "the new ReplicaSet's Secret has the old one's name {old}");
    let pod2 = pods_of(bed, &ns, &rs2, 1).await?.remove(0);
    check_env_from(&pod2, &new)?;
    let out = run(bed, &pod2).await?;
    ok(&out, &pod2)?;
    ensure!(outcome(&out) == "created", "the re-made Deployment's pod: {}", outcome(&out));
    check_secret(bed, &ns, &rs2, &v2).await?;
    let after = secrets.get(&old).await?;
    ensure!(after.data == before.data, "the old Secret changed");
    eprintln!("    ReplicaSet {rs1_name} made again: Secret {old} left alone, {new} created");
    Ok(())
}

/// The operator changes rotationRole and caBundle and the webhook restarts:
/// a new pod of an existing revision still starts from its Secret, without a
/// backend call (the digest covers only what the values depend on).
async fn operator_fields_changing_leave_a_revisions_secret_in_use(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let b = Backend::Vault;
    let ns = namespace(bed, "sec-operator").await?;
    let v = value("operator");
    seed(bed, b, &ns, &v).await?;
    deploy(bed, &ns, "web", 1, annotations(b, &ns, "secret")).await?;
    let rs = newest_rs(bed, &ns, "web", 1).await?;
    let pod = pods_of(bed, &ns, &rs, 1).await?.remove(0);
    let out = run(bed, &pod).await?;
    ok(&out, &pod)?;
    ensure!(outcome(&out) == "created", "first pod: {}", outcome(&out));

    // The restarted webhook, with the new config, is asked first (mutating
    // webhooks run in name order); the first one then sees the injector in place.
    let ca = serde_json::to_string(&c._hook.ca_pem)?;
    let config = config_yaml_at(
        &c.vault.url,
        &c.aws.url,
        &c.aws.url,
        &[("rotationRole", "keyhole-rotation-2"), ("caBundle", &ca)],
        &[("defaultRole", ROLE_ARN), ("rotationRole", "arn:aws:iam::123456789012:role/rotation-2")],
    );
    let restarted = Webhook::start(&config).await?;
    let hook_name = "a-keyhole-secret-e2e-restarted";
    restarted.register(bed, hook_name, Some(&ns)).await?;
    let result = async {
        let patch = json!({"spec": {"replicas": 2}});
        Api::<Deployment>::namespaced(bed.client.clone(), &ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let pods = pods_of(bed, &ns, &rs, 2).await?;
        let new = pods.iter().find(|p| p.metadata.uid != pod.metadata.uid).context("no second pod")?;
        let plan = plan_of(new)?.to_json();
        ensure!(plan.contains("caBundle"), "the new pod's plan is the old config's");
        ensure!(!plan.contains("keyhole-rotation-2"), "the rotation role reached the pod's plan");
        let before = c.proxy(b).count();
        let out = run(bed, new).await?;
        ok(&out, new)?;
        ensure!(outcome(&out) == "reused", "a new pod after the config change: {}", outcome(&out));
        ensure!(c.proxy(b).count() == before, "the new pod called the backend");
        Ok(())
    }
    .await;
    Webhook::unregister(bed, hook_name).await?;
    result
}

/// A StatefulSet's revision owns its Secret through its ControllerRevision, so
/// revisions pruned from the history take their Secrets with them.
async fn a_statefulset_revision_owns_its_secret(bed: &Bed) -> Result<()> {
    ctx(bed).await?;
    let b = Backend::Vault;
    let ns = namespace(bed, "sec-sts").await?;
    let v = value("sts");
    seed(bed, b, &ns, &v).await?;
    let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}, "annotations": annotations(b, &ns, "secret")},
                              "spec": {"serviceAccountName": SA, "automountServiceAccountToken": false,
                                       "containers": [{"name": "app", "image": "registry.example/app:1"}]}}}
    }))?;
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(bed.client.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await?;
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    wait_until("the StatefulSet's pod", Duration::from_secs(60), || async {
        matches!(pods.get_opt("db-0").await, Ok(Some(_)))
    })
    .await?;
    let pod = pods.get("db-0").await?;
    let revision = pod.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash")).cloned();
    let revision = revision.context("db-0 has no controller-revision-hash")?;
    let out = run(bed, &pod).await?;
    ok(&out, &pod)?;
    let crs: Api<k8s_openapi::api::apps::v1::ControllerRevision> = Api::namespaced(bed.client.clone(), &ns);
    let cr = crs.get(&revision).await?;
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &ns);
    let list = secrets.list(&kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=keyhole")).await?;
    let secret = list
        .items
        .into_iter()
        .find(|s| s.metadata.name.as_deref().is_some_and(|n| !n.ends_with(".claim")))
        .context("no Secret made")?;
    let name = secret.metadata.name.clone().unwrap_or_default();
    let owners = secret.metadata.owner_references.unwrap_or_default();
    ensure!(
        owners.len() == 1 && owners[0].kind == "ControllerRevision" && Some(&owners[0].uid) == cr.metadata.uid.as_ref(),
        "{name} is not owned by ControllerRevision {revision}: {:?}",
        owners.iter().map(|o| (&o.kind, &o.name)).collect::<Vec<_>>()
    );
    // The revision leaves the history: its Secret goes with it.
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    crs.delete(&revision, &dp).await?;
    wait_until(&format!("{ns}/{name} garbage-collected"), Duration::from_secs(60), || async {
        matches!(secrets.get_opt(&name).await, Ok(None))
    })
    .await?;
    Ok(())
}

/// Backend requests during a rollout of N replicas (KEYHOLE_ROLLOUT_REPLICAS,
/// 10 by default, 50 in `make bench`), with Secret output against files output.
async fn bench_backend_requests_for_a_rollout_secret_against_files(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let n: usize = std::env::var("KEYHOLE_ROLLOUT_REPLICAS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    // Pods start a few at a time, as a kubelet on each node would start them.
    let parallel = 4;
    let mut rows = Vec::new();
    for b in [Backend::Vault, Backend::Aws] {
        let mut row = Vec::new();
        for output in ["secret", "files"] {
            let ns = namespace(bed, "sec-bench").await?;
            seed(bed, b, &ns, &value("bench")).await?;
            deploy(bed, &ns, "web", n as i32, annotations(b, &ns, output)).await?;
            let rs = newest_rs(bed, &ns, "web", 1).await?;
            let pods = pods_of(bed, &ns, &rs, n).await?;
            let before = c.proxy(b).count();
            let t0 = std::time::Instant::now();
            for chunk in pods.chunks(parallel) {
                let outs = futures_join(bed, chunk).await?;
                for (out, pod) in outs.iter().zip(chunk) {
                    ok(out, pod)?;
                }
            }
            row.push((c.proxy(b).count() - before, t0.elapsed()));
        }
        rows.push((b, row));
    }
    eprintln!("\n  backend requests during a {n}-replica rollout ({parallel} pods starting at a time):");
    eprintln!("  {:<8} {:>16} {:>16} {:>8}", "backend", "secret output", "files output", "ratio");
    for (b, row) in &rows {
        let (s, f) = (row[0].0, row[1].0);
        eprintln!(
            "  {:<8} {:>16} {:>16} {:>7.1}x   (wall {:.1}s vs {:.1}s)",
            format!("{b:?}"),
            s,
            f,
            f as f64 / s.max(1) as f64,
            row[0].1.as_secs_f64(),
            row[1].1.as_secs_f64()
        );
        ensure!(s < f, "{b:?}: Secret output made {s} backend requests, files {f}");
    }
    Ok(())
}

async fn futures_join(bed: &Bed, pods: &[Pod]) -> Result<Vec<InitOutcome>> {
    futures::future::join_all(pods.iter().map(|pod| run(bed, pod))).await.into_iter().collect()
}

/// Last: stops OpenBao and moto for good.
async fn with_the_backends_stopped_scaling_to_5_still_starts_the_new_pods(bed: &Bed) -> Result<()> {
    let c = ctx(bed).await?;
    let mut workloads = Vec::new();
    for b in [Backend::Vault, Backend::Aws] {
        let ns = namespace(bed, "sec-down").await?;
        let v = value("down");
        seed(bed, b, &ns, &v).await?;
        deploy(bed, &ns, "web", 3, annotations(b, &ns, "both")).await?;
        let rs = newest_rs(bed, &ns, "web", 1).await?;
        for pod in pods_of(bed, &ns, &rs, 3).await? {
            ok(&run(bed, &pod).await?, &pod)?;
        }
        workloads.push((b, ns, rs, v));
    }
    ensure!(bed.stop_part("openbao") && bed.stop_part("moto"), "OpenBao or moto was not running");
    ensure!(bed.http.get(format!("{}/v1/sys/health", bed.vault_addr)).send().await.is_err(), "OpenBao still answers");
    ensure!(bed.http.get(&bed.moto_url).send().await.is_err(), "moto still answers");

    for (b, ns, rs, v) in &workloads {
        let before = c.proxy(*b).count();
        let patch = json!({"spec": {"replicas": 5}});
        Api::<Deployment>::namespaced(bed.client.clone(), ns)
            .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let pods = pods_of(bed, ns, rs, 5).await?;
        let started: Vec<&Pod> = pods[3..].iter().collect();
        for pod in started {
            let out = run(bed, pod).await?;
            ok(&out, pod)?;
            ensure!(outcome(&out) == "reused", "{b:?}: {}", outcome(&out));
            ensure!(file(&out, "DB_PASSWORD")? == *v, "{b:?}: the new pod's file is not the revision's value");
        }
        ensure!(c.proxy(*b).count() == before, "{b:?}: a new pod tried the stopped backend");
    }
    Ok(())
}
