//! End to end: the real keyhole-injector binary, run as the kubelet would run the
//! init container of a pod read back from the API server, against the bed's
//! OpenBao and moto, with real projected tokens.
//!
//! Every run's stdout, stderr and termination log is scanned for every secret
//! value and token used so far; a hit fails the test that made the run.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use keyhole_contract::config::Config;
use keyhole_contract::plan::{self, Plan, PodFacts};
use keyhole_contract::{Stores, annotations, names};
use keyhole_testbed::kubelet::{InitOpts, InitOutcome, run_init_container};
use keyhole_testbed::leaks::{self, secret};
use keyhole_testbed::proc::free_port;
use keyhole_testbed::proxy::Proxy;
use keyhole_testbed::{Bed, create_service_account, e2e_tests};
use keyhole_webhook::mutate::{Mutation, mutate};
use keyhole_webhook::slim::PodView;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

fn main() {
    keyhole_testbed::harness::run(e2e_tests![
        vault_kubernetes_auth_reads_kv2_versions_fields_and_templates,
        vault_jwt_auth_reads_kv1_with_mode_0444,
        vault_version_on_kv1_is_refused_and_nothing_written,
        ssm_reads_versions_labels_fields_and_templates,
        ssm_reads_25_parameters_in_concurrent_batches,
        secretsmanager_reads_fields_whole_secrets_arns_and_pinned_versions,
        secretsmanager_reads_ten_secrets_in_one_batched_call,
        secretsmanager_missing_secrets_are_named_and_nothing_is_written,
        secretsmanager_binary_secret_is_written_as_its_bytes,
        generate_two_racing_pods_make_a_missing_ssm_value_once_and_both_read_it,
        generate_two_racing_pods_make_a_missing_vault_value_once_and_both_read_it,
        generate_never_changes_an_existing_value,
        vault_unreachable_fails_with_connection_refused_and_leaves_nothing,
        ssm_unreachable_fails_with_connection_refused_and_leaves_nothing,
        wrong_vault_role_is_refused,
        a_plan_edited_after_admission_is_refused_before_any_backend_call,
        missing_parameters_are_named_in_one_error,
        token_for_the_wrong_audience_is_refused,
        ssm_throttling_is_retried_with_backoff,
        path_ssm_recursive_folder_becomes_one_file_a_parameter,
        path_vault_folder_becomes_one_file_a_secret,
        path_leaves_that_clash_or_an_empty_folder_fail_naming_them,
        bench_wall_time_and_rss,
        no_secret_value_or_token_in_any_output,
    ]);
}

const APP_UID: u32 = 1000;
const SA: &str = "app";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

// ---- leak scan -------------------------------------------------------------

/// Everything any run printed, scanned again at the end for values seen later.
static PRINTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Runs the pod's init container, scans what it printed, and keeps it.
async fn run(bed: &Bed, pod: &Pod, extra_env: &[(&str, &str)]) -> Result<InitOutcome> {
    let opts = InitOpts {
        extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let out = run_init_container(bed, pod, &opts).await?;
    leaks::remember_all(out.tokens.iter().cloned());
    let printed = out.printed();
    leaks::scan("what the injector printed", &printed)?;
    if std::env::var_os("KEYHOLE_E2E_SHOW").is_some() {
        eprintln!("--- {}\n{}", pod.metadata.name.as_deref().unwrap_or("-"), out.describe());
    }
    PRINTED.lock().unwrap().push(printed);
    Ok(out)
}

// ---- the pod, as the webhook will make it ---------------------------------

/// The stores of the webhook config the tests use; `extra` adds more.
fn stores(bed: &Bed, extra: Value) -> Result<Stores> {
    let mut stores = json!({
        "vault": {"kind": "vault", "address": bed.vault_addr, "auth": {"method": "kubernetes"}, "audience": "vault"},
        "vault-jwt": {"kind": "vault", "address": bed.vault_addr, "auth": {"method": "jwt"}, "audience": "vault"},
        "aws": {"kind": "aws-ssm", "region": "us-east-1", "endpoint": bed.moto_url, "stsEndpoint": bed.moto_url,
                "defaultRole": ROLE_ARN},
        "aws-sm": {"kind": "aws-secretsmanager", "region": "us-east-1", "endpoint": bed.moto_url,
                   "stsEndpoint": bed.moto_url, "defaultRole": ROLE_ARN},
    });
    if let (Some(s), Value::Object(more)) = (stores.as_object_mut(), extra) {
        s.extend(more);
    }
    Ok(serde_json::from_value(json!({"stores": stores}))?)
}

fn plan_for(annotations: &BTreeMap<String, String>, stores: &Stores) -> Result<Plan> {
    let spec = annotations::parse(annotations).map_err(|p| anyhow!("{p}"))?.context("the pod does not opt in")?;
    plan::build(&spec, stores, &PodFacts { uid_known: true, ..Default::default() }).map_err(|p| anyhow!("{p}"))
}

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    a.insert(annotations::INJECT.into(), "true".into());
    a
}

/// A bare pod (an app container running as `APP_UID`) patched by the webhook's
/// own `mutate`, exactly the patch `/mutate` answers with, then created through
/// the API and read back, so it has a name and a uid.
async fn injected_pod(bed: &Bed, ns: &str, annotations: &BTreeMap<String, String>, stores: &Stores) -> Result<Pod> {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "app-", "namespace": ns, "annotations": annotations},
        "spec": {
            "serviceAccountName": SA,
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID},
            }],
        }
    });
    let config = Config {
        injector: serde_json::from_value(json!({"image": "ghcr.io/keyhole/keyhole:0.1.0"}))?,
        stores: stores.clone(),
    };
    let view = PodView::deserialize(&pod)?;
    match mutate(&view, &config) {
        Ok(Mutation::Patch { patch, .. }) => json_patch::patch(&mut pod, &patch).context("the webhook's patch")?,
        Ok(Mutation::Skip(why)) => bail!("the webhook skipped the pod: {why}"),
        Err(problems) => bail!("the webhook denied the pod: {problems}"),
    }
    let pod: Pod = serde_json::from_value(pod)?;
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let created = api.create(&PostParams::default(), &pod).await.context("create the pod")?;
    let name = created.metadata.name.context("created pod has no name")?;
    Ok(api.get(&name).await?)
}

// ---- set-up and checks -----------------------------------------------------

/// A namespace with the `app` service account, a Vault policy over its paths and
/// kubernetes and jwt roles named after it.
async fn vault_namespace(bed: &Bed, prefix: &str) -> Result<String> {
    let ns = bed.namespace(prefix).await?;
    create_service_account(&bed.client, &ns, SA).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*"), &format!("kv1/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    bed.vault_jwt_role(&ns, &ns, SA, "vault", &ns).await?;
    Ok(ns)
}

async fn aws_namespace(bed: &Bed, prefix: &str) -> Result<String> {
    let ns = bed.namespace(prefix).await?;
    create_service_account(&bed.client, &ns, SA).await?;
    Ok(ns)
}

/// Reads `path` as `uid` (through `setpriv`, like the app would).
fn read_as(uid: u32, path: &Path) -> Result<Option<String>> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "cat"])
        .arg(path)
        .output()?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The file's content, mode and owner as the app sees them. Never prints a value.
fn check_file(out: &InitOutcome, name: &str, want: &str, mode: u32) -> Result<()> {
    let dir = out.volume(names::SECRETS_VOLUME)?;
    let path = dir.join(name);
    let link = std::fs::read_link(&path).with_context(|| format!("{name} is not a symlink into ..data"))?;
    ensure!(link == Path::new("..data").join(name), "{name} links to {}", link.display());
    let meta = std::fs::metadata(&path)?;
    ensure!(meta.mode() & 0o777 == mode, "{name}: mode {:o}, want {mode:o}", meta.mode() & 0o777);
    ensure!(meta.uid() == out.uid, "{name}: owner {} is not the container's {}", meta.uid(), out.uid);
    let got = read_as(APP_UID, &path)?.with_context(|| format!("uid {APP_UID} cannot read {name}"))?;
    ensure!(got == want, "{name}: {} bytes, not the expected value ({} bytes)", got.len(), want.len());
    let other_can_read = read_as(APP_UID + 1000, &path)?.is_some();
    ensure!(other_can_read == (mode & 0o004 != 0), "{name}: another uid can read: {other_can_read} with mode {mode:o}");
    Ok(())
}

/// The output dir holds exactly `names`, `..data` and one timestamped dir.
fn check_listing(out: &InitOutcome, names: &[&str]) -> Result<()> {
    let dir = out.volume(names::SECRETS_VOLUME)?;
    let mut entries: Vec<String> =
        std::fs::read_dir(dir)?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<Result<_>>()?;
    entries.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.push("..data".into());
    want.sort();
    let ts: Vec<&String> = entries.iter().filter(|e| e.starts_with("..") && *e != "..data").collect();
    ensure!(ts.len() == 1, "expected one timestamped dir: {entries:?}");
    let rest: Vec<String> = entries.iter().filter(|e| !ts.contains(e)).cloned().collect();
    ensure!(rest == want, "output dir holds {entries:?}, want {want:?} and one ..<ts>");
    Ok(())
}

fn check_failed_cleanly(out: &InitOutcome, needles: &[&str]) -> Result<()> {
    ensure!(!out.success(), "the injector succeeded:\n{}", out.describe());
    let dir = out.volume(names::SECRETS_VOLUME)?;
    let left: Vec<_> = std::fs::read_dir(dir)?.collect();
    ensure!(left.is_empty(), "the failed run left {} entries behind", left.len());
    let log = &out.termination_log;
    ensure!(log.lines().count() == 1 && log.ends_with('\n'), "termination log is not one line: {log:?}");
    for n in needles {
        ensure!(log.contains(n), "termination log lacks {n:?}: {log}");
    }
    ensure!(out.stderr.contains("\"failed\""), "the failure is not logged:\n{}", out.describe());
    Ok(())
}

fn closed_port_url() -> Result<String> {
    Ok(format!("http://127.0.0.1:{}", free_port(false)?))
}

// ---- tests -----------------------------------------------------------------

async fn vault_kubernetes_auth_reads_kv2_versions_fields_and_templates(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-vkv2").await?;
    let (user, pw1, pw2) = (secret("user"), secret("pw1"), secret("pw2"));
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"user": user, "password": pw1}}))).await?;
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"user": user, "password": pw2}}))).await?;
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-password", &format!("secret/{ns}/db#password")),
        ("keyhole.dev/secret-old", &format!("secret/{ns}/db?version=1#password")),
        ("keyhole.dev/secret-user", &format!("secret/{ns}/db#user")),
        ("keyhole.dev/secret-whole", &format!("secret/{ns}/db")),
        ("keyhole.dev/template-dsn", "postgres://{{ secrets[\"user\"] }}:{{ secrets[\"password\"] }}@db/app"),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    ensure!(out.termination_log.is_empty(), "termination log written on success");
    check_listing(&out, &["dsn", "old", "password", "user", "whole"])?;
    check_file(&out, "password", &pw2, 0o400)?;
    check_file(&out, "old", &pw1, 0o400)?;
    check_file(&out, "user", &user, 0o400)?;
    check_file(&out, "dsn", &format!("postgres://{user}:{pw2}@db/app"), 0o400)?;
    let whole = read_as(APP_UID, &out.volume(names::SECRETS_VOLUME)?.join("whole"))?.context("read whole")?;
    let whole: Value = serde_json::from_str(&whole).map_err(|_| anyhow!("the whole secret is not JSON"))?;
    ensure!(whole == json!({"user": user, "password": pw2}), "the whole secret is not the latest version's object");
    ensure!(out.stderr.contains(&format!("\"pod\":\"{ns}/")), "the log span names no pod:\n{}", out.stderr);
    Ok(())
}

async fn vault_jwt_auth_reads_kv1_with_mode_0444(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-vkv1").await?;
    let (token, url) = (secret("api-token"), secret("url"));
    bed.vault("POST", &format!("kv1/{ns}/api"), Some(json!({"token": token, "url": url}))).await?;
    let a = ann(&[
        ("keyhole.dev/store", "vault-jwt"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/file-mode", "0444"),
        ("keyhole.dev/secret-token", &format!("kv1/{ns}/api#token")),
        ("keyhole.dev/secret-api.json", &format!("kv1/{ns}/api")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &["api.json", "token"])?;
    check_file(&out, "token", &token, 0o444)?;
    let whole = read_as(APP_UID, &out.volume(names::SECRETS_VOLUME)?.join("api.json"))?.context("read")?;
    let whole: Value = serde_json::from_str(&whole).map_err(|_| anyhow!("not JSON"))?;
    ensure!(whole == json!({"token": token, "url": url}), "the whole KV v1 secret differs");
    Ok(())
}

async fn vault_version_on_kv1_is_refused_and_nothing_written(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-kv1ver").await?;
    bed.vault("POST", &format!("kv1/{ns}/api"), Some(json!({"token": secret("t")}))).await?;
    bed.vault("POST", &format!("secret/data/{ns}/ok"), Some(json!({"data": {"v": secret("ok")}}))).await?;
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-fine", &format!("secret/{ns}/ok#v")),
        ("keyhole.dev/secret-token", &format!("kv1/{ns}/api?version=2#token")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(&out, &["keyhole.dev/secret-token", "store \"vault\" (vault)", "KV v1", "remove ?version="])
}

async fn ssm_reads_versions_labels_fields_and_templates(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-ssm").await?;
    let ssm = bed.ssm_admin().await;
    let (v1, v2, user, pw) = (secret("ssm-v1"), secret("ssm-v2"), secret("ssm-user"), secret("ssm-pw"));
    let p = format!("/{ns}/db/password");
    let j = format!("/{ns}/db/json");
    bed.put_ssm(&p, &v1).await?;
    bed.put_ssm(&p, &v2).await?;
    ssm.label_parameter_version().name(&p).parameter_version(1).labels("stable").send().await?;
    bed.put_ssm(&j, &json!({"user": user, "pw": pw}).to_string()).await?;
    let a = ann(&[
        ("keyhole.dev/store", "aws"),
        ("keyhole.dev/secret-latest", &p),
        ("keyhole.dev/secret-first", &format!("{p}:1")),
        ("keyhole.dev/secret-stable", &format!("{p}:stable")),
        ("keyhole.dev/secret-user", &format!("{j}#user")),
        ("keyhole.dev/secret-pw", &format!("{j}#pw")),
        ("keyhole.dev/template-conf", "user={{ secrets[\"user\"] }}\npass={{ secrets[\"latest\"] }}"),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &["conf", "first", "latest", "pw", "stable", "user"])?;
    check_file(&out, "latest", &v2, 0o400)?;
    check_file(&out, "first", &v1, 0o400)?;
    check_file(&out, "stable", &v1, 0o400)?;
    check_file(&out, "user", &user, 0o400)?;
    check_file(&out, "pw", &pw, 0o400)?;
    check_file(&out, "conf", &format!("user={user}\npass={v2}"), 0o400)?;
    Ok(())
}

async fn ssm_reads_25_parameters_in_concurrent_batches(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-ssm25").await?;
    let mut pairs = Vec::new();
    for i in 0..25 {
        let v = secret(&format!("p{i}"));
        bed.put_ssm(&format!("/{ns}/p/{i}"), &v).await?;
        pairs.push((format!("keyhole.dev/secret-p{i}"), format!("/{ns}/p/{i}"), v));
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, r, _)| (k.as_str(), r.as_str())).collect();
    let mut a = ann(&refs);
    a.insert("keyhole.dev/store".into(), "aws".into());
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    for (i, (_, _, v)) in pairs.iter().enumerate() {
        check_file(&out, &format!("p{i}"), v, 0o400)?;
    }
    Ok(())
}

/// Secrets Manager on moto: a JSON secret's field (current), the same field
/// at AWSPREVIOUS and at the first version's id (both pinned), a whole plain
/// secret, and a secret named by its ARN.
async fn secretsmanager_reads_fields_whole_secrets_arns_and_pinned_versions(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-sm").await?;
    let (user, pw1, pw2, token) = (secret("sm-user"), secret("sm-pw1"), secret("sm-pw2"), secret("sm-token"));
    let db = format!("{ns}/db");
    let first = bed.put_secret(&db, &json!({"user": user, "pw": pw1}).to_string()).await?;
    bed.put_secret(&db, &json!({"user": user, "pw": pw2}).to_string()).await?;
    bed.put_secret(&format!("{ns}/token"), &token).await?;
    let arn = bed.secrets_admin().await.describe_secret().secret_id(&db).send().await?.arn.context("no ARN")?;
    let a = ann(&[
        ("keyhole.dev/store", "aws-sm"),
        ("keyhole.dev/secret-pw", &format!("{db}#pw")),
        ("keyhole.dev/secret-previous", &format!("{db}?version-stage=AWSPREVIOUS#pw")),
        ("keyhole.dev/secret-first", &format!("{db}?version-id={first}#pw")),
        ("keyhole.dev/secret-token", &format!("{ns}/token")),
        ("keyhole.dev/secret-user", &format!("{arn}#user")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &["first", "previous", "pw", "token", "user"])?;
    check_file(&out, "pw", &pw2, 0o400)?;
    check_file(&out, "previous", &pw1, 0o400)?;
    check_file(&out, "first", &pw1, 0o400)?;
    check_file(&out, "token", &token, 0o400)?;
    check_file(&out, "user", &user, 0o400)?;
    Ok(())
}

/// Ten current secrets: one BatchGetSecretValue, no GetSecretValue (counted
/// at a proxy in front of Secrets Manager).
async fn secretsmanager_reads_ten_secrets_in_one_batched_call(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-sm10").await?;
    let proxy = Proxy::start(&bed.moto_url).await?;
    let mut pairs = Vec::new();
    for i in 0..10 {
        let v = secret(&format!("sm{i}"));
        bed.put_secret(&format!("{ns}/s{i}"), &v).await?;
        pairs.push((format!("keyhole.dev/secret-s{i}"), format!("{ns}/s{i}"), v));
    }
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, r, _)| (k.as_str(), r.as_str())).collect();
    let mut a = ann(&refs);
    a.insert("keyhole.dev/store".into(), "aws-sm".into());
    let counted = json!({"aws-sm": {"kind": "aws-secretsmanager", "region": "us-east-1", "endpoint": proxy.url,
                                    "stsEndpoint": bed.moto_url, "defaultRole": ROLE_ARN}});
    let pod = injected_pod(bed, &ns, &a, &stores(bed, counted)?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    for (i, (_, _, v)) in pairs.iter().enumerate() {
        check_file(&out, &format!("s{i}"), v, 0o400)?;
    }
    let requests = proxy.requests();
    ensure!(
        proxy.count_of("secretsmanager.BatchGetSecretValue") == 1 && requests.len() == 1,
        "not one batched call: {requests:?}"
    );
    Ok(())
}

/// A binary secret that is not UTF-8 (a DER key, say) is written as its
/// bytes, beside a text one; asking for a #key of it fails, saying why.
async fn secretsmanager_binary_secret_is_written_as_its_bytes(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-smbin").await?;
    let mut bytes = vec![0xff, 0xfe, 0x00];
    bytes.extend_from_slice(secret("sm-binary").as_bytes());
    bytes.extend_from_slice(&[0x80, 0x00, 0xc3]);
    ensure!(std::str::from_utf8(&bytes).is_err(), "the test value must not be UTF-8");
    let id = format!("{ns}/key.der");
    bed.secrets_admin()
        .await
        .create_secret()
        .name(&id)
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(bytes.clone()))
        .send()
        .await
        .context("create the binary secret")?;
    let text = secret("sm-text");
    bed.put_secret(&format!("{ns}/text"), &text).await?;
    let a = ann(&[
        ("keyhole.dev/store", "aws-sm"),
        ("keyhole.dev/secret-key.der", &id),
        ("keyhole.dev/secret-text", &format!("{ns}/text")),
    ]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &["key.der", "text"])?;
    check_file(&out, "text", &text, 0o400)?;
    let path = out.volume(names::SECRETS_VOLUME)?.join("key.der");
    let meta = std::fs::metadata(&path)?;
    ensure!(
        meta.mode() & 0o777 == 0o400 && meta.uid() == out.uid,
        "key.der: mode {:o}, owner {}",
        meta.mode() & 0o777,
        meta.uid()
    );
    ensure!(std::fs::read(&path)? == bytes, "key.der is not the secret's bytes");

    let a = ann(&[("keyhole.dev/store", "aws-sm"), ("keyhole.dev/secret-k", &format!("{id}#k"))]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?, &[]).await?;
    check_failed_cleanly(
        &out,
        &["keyhole.dev/secret-k", "holds binary data that is not UTF-8 text, so no #key can be picked out of it"],
    )
}

/// Missing secrets (and a missing version of one that exists) are named in
/// one error with their annotations; nothing is written.
async fn secretsmanager_missing_secrets_are_named_and_nothing_is_written(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-sm-missing").await?;
    bed.put_secret(&format!("{ns}/there"), &secret("sm-there")).await?;
    let a = ann(&[
        ("keyhole.dev/store", "aws-sm"),
        ("keyhole.dev/secret-there", &format!("{ns}/there")),
        ("keyhole.dev/secret-gone", &format!("{ns}/gone")),
        ("keyhole.dev/secret-old", &format!("{ns}/there?version-stage=AWSPREVIOUS")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(
        &out,
        &[
            "keyhole.dev/secret-gone",
            "keyhole.dev/secret-old",
            "store \"aws-sm\" (aws-secretsmanager)",
            "no such secret or version",
            &format!("{ns}/gone"),
            &format!("{ns}/there?version-stage=AWSPREVIOUS"),
        ],
    )?;
    ensure!(!out.termination_log.contains("secret-there"), "the one that exists is named: {}", out.termination_log);
    Ok(())
}

/// The stores with `allowGenerate: true`, at `ssm_at` and `vault_at` (counting proxies).
fn generating_stores(bed: &Bed, ssm_at: &str, vault_at: &str) -> Result<Stores> {
    stores(
        bed,
        json!({
            "aws-gen": {"kind": "aws-ssm", "region": "us-east-1", "endpoint": ssm_at, "stsEndpoint": bed.moto_url,
                        "defaultRole": ROLE_ARN, "allowGenerate": true},
            "vault-gen": {"kind": "vault", "address": vault_at, "auth": {"method": "kubernetes"},
                          "audience": "vault", "allowGenerate": true},
        }),
    )
}

/// Two injected pods of one plan, run at once, the backend at `proxy` held
/// until both have sent a `first` request (so both find the value missing);
/// both must succeed. Their values.
async fn two_at_once(
    bed: &Bed,
    ns: &str,
    a: &BTreeMap<String, String>,
    stores: &Stores,
    (proxy, first): (&Proxy, &str),
) -> Result<(String, String)> {
    let (p1, p2) = (injected_pod(bed, ns, a, stores).await?, injected_pod(bed, ns, a, stores).await?);
    let before = proxy.count_of(first);
    proxy.hold();
    let release = async {
        let lined_up = keyhole_testbed::proc::wait_until("both pods at the proxy", Duration::from_secs(30), || async {
            proxy.count_of(first) >= before + 2
        })
        .await;
        proxy.release();
        lined_up
    };
    let ((o1, o2), lined_up) = tokio::join!(async { tokio::join!(run(bed, &p1, &[]), run(bed, &p2, &[])) }, release);
    lined_up?;
    let (o1, o2) = (o1?, o2?);
    ensure!(o1.success() && o2.success(), "{}\n{}", o1.describe(), o2.describe());
    let read = |o: &InitOutcome| read_as(APP_UID, &o.volume(names::SECRETS_VOLUME)?.join("key"))?.context("no file");
    Ok((read(&o1)?, read(&o2)?))
}

/// SSM: the parameter does not exist; two pods start at once. It is made
/// once (version 1: a second write would be version 2) with the recipe's
/// shape, and both pods have its value.
async fn generate_two_racing_pods_make_a_missing_ssm_value_once_and_both_read_it(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-gen-ssm").await?;
    let name = format!("/{ns}/session-key");
    let a = ann(&[
        ("keyhole.dev/store", "aws-gen"),
        ("keyhole.dev/secret-key", &name),
        ("keyhole.dev/generate-key", "length=48,alphabet=hex"),
    ]);
    let proxy = Proxy::start(&bed.moto_url).await?;
    let stores = generating_stores(bed, &proxy.url, &bed.vault_addr)?;
    let (v1, v2) = two_at_once(bed, &ns, &a, &stores, (&proxy, "AmazonSSM.GetParameters")).await?;
    leaks::remember(v1.clone());
    ensure!(v1 == v2, "the two pods read different values");
    ensure!(proxy.count_of("AmazonSSM.PutParameter") == 2, "not both pods raced to write: {:?}", proxy.requests());
    ensure!(v1.len() == 48 && v1.bytes().all(|c| c.is_ascii_hexdigit()), "the value is not 48 hex digits");
    let got = bed.ssm_admin().await.get_parameter().name(&name).with_decryption(true).send().await?;
    let p = got.parameter.context("no parameter")?;
    ensure!(p.version == 1, "the parameter was written {} times", p.version);
    ensure!(p.value.as_deref() == Some(v1.as_str()), "the pods' value is not the store's");
    ensure!(p.r#type == Some(aws_sdk_ssm::types::ParameterType::SecureString), "not a SecureString");
    Ok(())
}

/// Vault KV v2: the same race, made with check-and-set 0 (version 1).
async fn generate_two_racing_pods_make_a_missing_vault_value_once_and_both_read_it(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-gen-vault").await?;
    // The role may create under its paths (and read), nothing else.
    let hcl = format!("path \"secret/data/{ns}/*\" {{ capabilities = [\"read\", \"create\"] }}\n");
    bed.vault("PUT", &format!("sys/policies/acl/{ns}"), Some(json!({"policy": hcl}))).await?;
    let a = ann(&[
        ("keyhole.dev/store", "vault-gen"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-key", &format!("secret/{ns}/session#key")),
        ("keyhole.dev/generate-key", "bytes=32"),
    ]);
    let proxy = Proxy::start(&bed.vault_addr).await?;
    let stores = generating_stores(bed, &bed.moto_url, &proxy.url)?;
    let (v1, v2) = two_at_once(bed, &ns, &a, &stores, (&proxy, "POST /v1/auth/kubernetes/login")).await?;
    leaks::remember(v1.clone());
    ensure!(v1 == v2, "the two pods read different values");
    let writes = proxy.count_of(&format!("POST /v1/secret/data/{ns}/session"));
    eprintln!("    {writes} check-and-set writes for one made value");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(&v1).map_err(|_| anyhow!("not base64"))?;
    ensure!(raw.len() == 32, "{} bytes, not 32", raw.len());
    let meta = bed.vault("GET", &format!("secret/metadata/{ns}/session"), None).await?;
    ensure!(meta["data"]["current_version"] == 1, "the secret was written {} times", meta["data"]["current_version"]);
    Ok(())
}

/// A value that exists is read, never written: no PutParameter at all
/// (counted at a proxy), and the parameter keeps its one version.
async fn generate_never_changes_an_existing_value(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-gen-keep").await?;
    let name = format!("/{ns}/session-key");
    let existing = secret("gen-existing");
    bed.put_ssm(&name, &existing).await?;
    let proxy = Proxy::start(&bed.moto_url).await?;
    let a = ann(&[
        ("keyhole.dev/store", "aws-gen"),
        ("keyhole.dev/secret-key", &name),
        ("keyhole.dev/generate-key", "length=32"),
    ]);
    let pod = injected_pod(bed, &ns, &a, &generating_stores(bed, &proxy.url, &bed.vault_addr)?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_file(&out, "key", &existing, 0o400)?;
    ensure!(proxy.count_of("AmazonSSM.PutParameter") == 0, "a write reached SSM: {:?}", proxy.requests());
    ensure!(proxy.count_of("AmazonSSM.GetParameters") == 1, "the control: no read was counted: {:?}", proxy.requests());

    // Beside it, a missing value without a recipe: the pod fails naming that
    // one, and the existing value (with a recipe) is not written either.
    let mut b = a.clone();
    b.insert("keyhole.dev/secret-other".into(), format!("/{ns}/not-there"));
    let pod = injected_pod(bed, &ns, &b, &generating_stores(bed, &proxy.url, &bed.vault_addr)?).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(&out, &["keyhole.dev/secret-other", "no such parameter", &format!("/{ns}/not-there")])?;
    ensure!(
        !out.termination_log.contains("making it failed"),
        "blamed on the generated value: {}",
        out.termination_log
    );
    ensure!(proxy.count_of("AmazonSSM.PutParameter") == 0, "a write reached SSM: {:?}", proxy.requests());
    Ok(())
}

async fn vault_unreachable_fails_with_connection_refused_and_leaves_nothing(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-vdown").await?;
    let extra =
        json!({"vault-down": {"kind": "vault", "address": closed_port_url()?, "auth": {"method": "kubernetes"}}});
    let a = ann(&[
        ("keyhole.dev/store", "vault-down"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-pw", &format!("secret/{ns}/db#password")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, extra)?).await?;
    let out = run(bed, &pod, &[("KEYHOLE_DEADLINE", "3")]).await?;
    check_failed_cleanly(&out, &["store \"vault-down\" (vault)", "connection refused", "keyhole.dev/role"])?;
    ensure!(out.elapsed < Duration::from_secs(10), "the 3 s deadline did not hold: {:?}", out.elapsed);
    ensure!(out.stderr.contains("retrying"), "connection refused was not retried:\n{}", out.stderr);
    Ok(())
}

async fn ssm_unreachable_fails_with_connection_refused_and_leaves_nothing(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-adown").await?;
    let dead = closed_port_url()?;
    let extra = json!({"aws-down": {"kind": "aws-ssm", "region": "us-east-1", "endpoint": dead, "stsEndpoint": dead}});
    let a = ann(&[
        ("keyhole.dev/store", "aws-down"),
        ("keyhole.dev/role", ROLE_ARN),
        ("keyhole.dev/secret-pw", &format!("/{ns}/pw")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, extra)?).await?;
    let out = run(bed, &pod, &[("KEYHOLE_DEADLINE", "3")]).await?;
    check_failed_cleanly(&out, &["store \"aws-down\" (aws-ssm)", "connection refused", "AssumeRoleWithWebIdentity"])?;
    ensure!(out.elapsed < Duration::from_secs(10), "the 3 s deadline did not hold: {:?}", out.elapsed);
    Ok(())
}

async fn wrong_vault_role_is_refused(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-role").await?;
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": secret("r")}}))).await?;
    // A role that exists but is bound to another service account.
    bed.vault_kubernetes_role(&format!("{ns}-other"), &ns, "someone-else", "vault", &ns).await?;
    for (role, needle) in [(format!("{ns}-other"), "HTTP 403"), ("no-such-role".to_owned(), "no-such-role")] {
        let a = ann(&[
            ("keyhole.dev/store", "vault"),
            ("keyhole.dev/role", &role),
            ("keyhole.dev/secret-pw", &format!("secret/{ns}/db#password")),
        ]);
        let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
        let out = run(bed, &pod, &[]).await?;
        check_failed_cleanly(&out, &["keyhole.dev/role", "store \"vault\" (vault)", "kubernetes login", needle])?;
        ensure!(
            out.termination_log.contains("after 2 attempts"),
            "auth retried other than once: {}",
            out.termination_log
        );
    }
    Ok(())
}

/// Annotations can be edited after admission, the injector's env cannot: a
/// plan annotation pointed at another server (here a counting proxy in front
/// of OpenBao) is refused by its digest before any request, and nothing is
/// written. Control: the same pod unedited goes through the proxy and succeeds.
async fn a_plan_edited_after_admission_is_refused_before_any_backend_call(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-plan").await?;
    let pw = secret("plan-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    let proxy = Proxy::start(&bed.vault_addr).await?;
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-pw", &format!("secret/{ns}/db#password")),
    ]);
    let stores = stores(bed, json!({}))?;
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    let redirect = |pod: &Pod| -> Result<String> {
        let plan = pod.metadata.annotations.as_ref().and_then(|a| a.get(names::PLAN_ANNOTATION)).context("no plan")?;
        let mut plan: Value = serde_json::from_str(plan)?;
        plan["store"]["address"] = json!(proxy.url);
        Ok(serde_json::to_string(&plan)?)
    };

    // Control: the plan as the webhook wrote it, pointed at the proxy at admission.
    let mut honest = stores.clone();
    if let Some(keyhole_contract::Store::Vault(v)) = honest.stores.get_mut("vault") {
        v.address = proxy.url.clone();
    }
    let pod = injected_pod(bed, &ns, &a, &honest).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "the control failed:\n{}", out.describe());
    check_file(&out, "pw", &pw, 0o400)?;
    ensure!(proxy.count() > 0, "the control did not go through the proxy");

    let before = proxy.count();
    let pod = injected_pod(bed, &ns, &a, &stores).await?;
    let name = pod.metadata.name.clone().context("name")?;
    let edited = json!({"metadata": {"annotations": {names::PLAN_ANNOTATION: redirect(&pod)?}}});
    let pod = api.patch(&name, &PatchParams::default(), &Patch::Merge(&edited)).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(&out, &["keyhole.dev/plan changed after admission", "delete the pod"])?;
    ensure!(proxy.count() == before, "the edited plan reached the server it names");
    Ok(())
}

async fn missing_parameters_are_named_in_one_error(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-missing").await?;
    bed.put_ssm(&format!("/{ns}/present"), &secret("present")).await?;
    let a = ann(&[
        ("keyhole.dev/store", "aws"),
        ("keyhole.dev/secret-ok", &format!("/{ns}/present")),
        ("keyhole.dev/secret-gone", &format!("/{ns}/gone")),
        ("keyhole.dev/secret-old", &format!("/{ns}/present:99")),
        ("keyhole.dev/secret-beta", &format!("/{ns}/present:beta")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, json!({}))?).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(
        &out,
        &[
            "store \"aws\" (aws-ssm)",
            "no such parameter",
            "keyhole.dev/secret-gone",
            "keyhole.dev/secret-old",
            "keyhole.dev/secret-beta",
            &format!("/{ns}/gone"),
            &format!("/{ns}/present:99"),
            &format!("/{ns}/present:beta"),
        ],
    )?;
    ensure!(
        !out.termination_log.contains("keyhole.dev/secret-ok"),
        "the present one is named: {}",
        out.termination_log
    );
    Ok(())
}

async fn token_for_the_wrong_audience_is_refused(bed: &Bed) -> Result<()> {
    let ns = vault_namespace(bed, "inj-aud").await?;
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": secret("aud")}}))).await?;
    let extra = json!({"vault-other-aud": {"kind": "vault", "address": bed.vault_addr,
                                            "auth": {"method": "jwt"}, "audience": "not-vault"}});
    let a = ann(&[
        ("keyhole.dev/store", "vault-other-aud"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-pw", &format!("secret/{ns}/db#password")),
    ]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, extra)?).await?;
    let out = run(bed, &pod, &[]).await?;
    check_failed_cleanly(&out, &["store \"vault-other-aud\" (vault)", "jwt login", "invalid audience"])
}

async fn ssm_throttling_is_retried_with_backoff(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-throttle").await?;
    let v = secret("throttled");
    bed.put_ssm(&format!("/{ns}/pw"), &v).await?;
    let proxy = Proxy::throttling(&bed.moto_url, 3).await?;
    let extra = json!({"aws-throttled": {"kind": "aws-ssm", "region": "us-east-1", "endpoint": proxy.url,
                                          "stsEndpoint": bed.moto_url, "defaultRole": ROLE_ARN}});
    let a = ann(&[("keyhole.dev/store", "aws-throttled"), ("keyhole.dev/secret-pw", &format!("/{ns}/pw"))]);
    let pod = injected_pod(bed, &ns, &a, &stores(bed, extra)?).await?;
    let out = run(bed, &pod, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_file(&out, "pw", &v, 0o400)?;
    let (calls, throttled) = (proxy.count_of("AmazonSSM.GetParameters"), proxy.throttled());
    // The SDK's standard retry did it (keyhole no longer lists AWS's throttling codes).
    ensure!(throttled == 3 && calls == 4, "proxy saw {calls} GetParameters, throttled {throttled}");
    Ok(())
}

/// Twenty-five parameters below `/<ns>/app/` (twenty on top, five a level
/// down) beside a sibling folder whose name starts alike: recursive, 25 files
/// named below the folder, read in three GetParametersByPath pages (counted
/// at a proxy) and no GetParameters; one level, the twenty only.
async fn path_ssm_recursive_folder_becomes_one_file_a_parameter(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-path").await?;
    let mut want = BTreeMap::new();
    for i in 0..20 {
        let v = secret(&format!("path-top{i}"));
        bed.put_ssm(&format!("/{ns}/app/k{i:02}"), &v).await?;
        want.insert(format!("k{i:02}"), v);
    }
    for i in 0..5 {
        let v = secret(&format!("path-db{i}"));
        bed.put_ssm(&format!("/{ns}/app/db/k{i}"), &v).await?;
        want.insert(format!("db_k{i}"), v);
    }
    bed.put_ssm(&format!("/{ns}/application/other"), &secret("path-sibling")).await?;
    let proxy = Proxy::start(&bed.moto_url).await?;
    let counted = json!({"aws-count": {"kind": "aws-ssm", "region": "us-east-1", "endpoint": proxy.url,
                                       "stsEndpoint": bed.moto_url, "defaultRole": ROLE_ARN}});
    let all = stores(bed, counted)?;
    let a = ann(&[("keyhole.dev/store", "aws-count"), ("keyhole.dev/path-app", &format!("/{ns}/app/?recursive=true"))]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &all).await?, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &want.keys().map(String::as_str).collect::<Vec<_>>())?;
    for (key, value) in &want {
        check_file(&out, key, value, 0o400)?;
    }
    let pages = proxy.count_of("AmazonSSM.GetParametersByPath");
    ensure!(pages == 3 && proxy.requests().len() == 3, "not three pages of ten: {:?}", proxy.requests());

    let a = ann(&[("keyhole.dev/store", "aws"), ("keyhole.dev/path-app", &format!("/{ns}/app"))]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &all).await?, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    let top: Vec<&str> = want.keys().map(String::as_str).filter(|k| !k.starts_with("db_")).collect();
    ensure!(top.len() == 20, "the control set is wrong");
    check_listing(&out, &top)
}

/// A Vault KV v2 folder: twenty secrets on top and five in a sub-folder, each
/// written whole as its JSON object; recursive gives 25, one level 20. The
/// role may list the folder's metadata and read its data, nothing else.
async fn path_vault_folder_becomes_one_file_a_secret(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("inj-vpath").await?;
    create_service_account(&bed.client, &ns, SA).await?;
    let hcl = format!(
        "path \"secret/metadata/{ns}/app/*\" {{ capabilities = [\"list\"] }}\npath \"secret/metadata/{ns}/app\" {{ capabilities = [\"list\"] }}\npath \"secret/data/{ns}/app/*\" {{ capabilities = [\"read\"] }}\n"
    );
    bed.vault("PUT", &format!("sys/policies/acl/{ns}"), Some(json!({"policy": hcl}))).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    let mut want = BTreeMap::new();
    for i in 0..25 {
        let (key, rel) =
            if i < 20 { (format!("s{i:02}"), format!("s{i:02}")) } else { (format!("sub_s{i}"), format!("sub/s{i}")) };
        let v = secret(&format!("vpath{i}"));
        bed.vault("POST", &format!("secret/data/{ns}/app/{rel}"), Some(json!({"data": {"v": v}}))).await?;
        want.insert(key, v);
    }
    let all = stores(bed, json!({}))?;
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/path-app", &format!("secret/{ns}/app/?recursive=true")),
    ]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &all).await?, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    check_listing(&out, &want.keys().map(String::as_str).collect::<Vec<_>>())?;
    for (key, value) in &want {
        check_file(&out, key, &json!({"v": value}).to_string(), 0o400)?;
    }
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/path-app", &format!("secret/{ns}/app")),
    ]);
    // One level; a secret whose current version is deleted is left out.
    bed.vault("DELETE", &format!("secret/data/{ns}/app/s00"), None).await?;
    let out = run(bed, &injected_pod(bed, &ns, &a, &all).await?, &[]).await?;
    ensure!(out.success(), "{}", out.describe());
    let top: Vec<&str> = want.keys().map(String::as_str).filter(|k| !k.starts_with("sub_") && *k != "s00").collect();
    ensure!(top.len() == 19, "the control set is wrong");
    check_listing(&out, &top)?;
    // Named alone, the deleted secret is missing, said as such.
    let a = ann(&[
        ("keyhole.dev/store", "vault"),
        ("keyhole.dev/role", &ns),
        ("keyhole.dev/secret-gone", &format!("secret/{ns}/app/s00#v")),
    ]);
    let out = run(bed, &injected_pod(bed, &ns, &a, &all).await?, &[]).await?;
    check_failed_cleanly(
        &out,
        &["keyhole.dev/secret-gone", &format!("reading secret/{ns}/app/s00#v failed: not found (HTTP 404)")],
    )
}

/// `/app/a_b` and `/app/a/b` would be one file: the pod fails naming both
/// and writes nothing; so does a folder with nothing in it. The control (the
/// same folder one level deep, where only `a_b` is) succeeds.
async fn path_leaves_that_clash_or_an_empty_folder_fail_naming_them(bed: &Bed) -> Result<()> {
    let ns = aws_namespace(bed, "inj-pathbad").await?;
    bed.put_ssm(&format!("/{ns}/app/a_b"), &secret("clash1")).await?;
    bed.put_ssm(&format!("/{ns}/app/a/b"), &secret("clash2")).await?;
    let all = stores(bed, json!({}))?;
    let folder = |f: &str| ann(&[("keyhole.dev/store", "aws"), ("keyhole.dev/path-app", f)]);
    let out =
        run(bed, &injected_pod(bed, &ns, &folder(&format!("/{ns}/app/?recursive=true")), &all).await?, &[]).await?;
    check_failed_cleanly(
        &out,
        &[
            "keyhole.dev/path-app",
            "store \"aws\" (aws-ssm)",
            &format!("/{ns}/app/a/b and /{ns}/app/a_b would both be the key \"a_b\""),
        ],
    )?;
    let out = run(bed, &injected_pod(bed, &ns, &folder(&format!("/{ns}/app/")), &all).await?, &[]).await?;
    ensure!(out.success(), "the control (one level) failed: {}", out.describe());
    check_listing(&out, &["a_b"])?;
    let out = run(bed, &injected_pod(bed, &ns, &folder(&format!("/{ns}/none/")), &all).await?, &[]).await?;
    check_failed_cleanly(&out, &["keyhole.dev/path-app", &format!("nothing under /{ns}/none/")])
}

async fn bench_wall_time_and_rss(bed: &Bed) -> Result<()> {
    let binary = match std::env::var_os("KEYHOLE_BENCH_BIN") {
        Some(p) => p.into(),
        None => keyhole_testbed::workspace_bin("keyhole-injector")?,
    };
    let ns = vault_namespace(bed, "inj-bench").await?;
    // The folder row lists secret/<ns>/ as well as reading it.
    let hcl = format!(
        "path \"secret/data/{ns}/*\" {{ capabilities = [\"read\"] }}\npath \"secret/metadata/{ns}/*\" {{ capabilities = [\"list\"] }}\n"
    );
    bed.vault("PUT", &format!("sys/policies/acl/{ns}"), Some(json!({"policy": hcl}))).await?;
    for i in 0..100 {
        bed.put_ssm(&format!("/{ns}/b/{i}"), &secret("bench")).await?;
        bed.vault("POST", &format!("secret/data/{ns}/b{i}"), Some(json!({"data": {"v": secret("bench")}}))).await?;
        bed.put_secret(&format!("{ns}/b/{i}"), &secret("bench")).await?;
    }
    let all = stores(bed, json!({}))?;
    let mut rows = Vec::new();
    for store in ["vault", "aws", "aws-sm"] {
        let audience = if store == "vault" { "vault" } else { "sts.amazonaws.com" };
        let token = bed.token(&ns, SA, &[audience], 3600, None).await?;
        leaks::remember(token.clone());
        for n in [1usize, 10, 100] {
            let mut pairs: Vec<(String, String)> = vec![("keyhole.dev/store".into(), store.into())];
            if store == "vault" {
                pairs.push(("keyhole.dev/role".into(), ns.clone()));
            }
            for i in 0..n {
                let r = match store {
                    "vault" => format!("secret/{ns}/b{i}#v"),
                    "aws" => format!("/{ns}/b/{i}"),
                    _ => format!("{ns}/b/{i}"),
                };
                pairs.push((format!("keyhole.dev/secret-s{i}"), r));
            }
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let plan = plan_for(&ann(&refs), &all)?;
            rows.push(keyhole_testbed::kubelet::bench(&binary, &plan, &token, 5, n).await?);
        }
        if store != "aws-sm" {
            // The same hundred values as one folder: one level below it.
            let folder = if store == "vault" { format!("secret/{ns}/") } else { format!("/{ns}/b/") };
            let mut pairs = vec![("keyhole.dev/store", store), ("keyhole.dev/path-b", folder.as_str())];
            if store == "vault" {
                pairs.push(("keyhole.dev/role", &ns));
            }
            let plan = plan_for(&ann(&pairs), &all)?;
            let mut row = keyhole_testbed::kubelet::bench(&binary, &plan, &token, 5, 100).await?;
            row.store = format!("{store} path");
            rows.push(row);
        }
    }
    eprintln!("keyhole-injector bench ({}):", binary.display());
    for r in &rows {
        eprintln!(
            "  {:>10} {:>3} secrets: median {:>6.1} ms, min {:>6.1} ms, peak RSS {:>6.1} MB",
            r.store,
            r.secrets,
            r.wall.as_secs_f64() * 1e3,
            r.min_wall.as_secs_f64() * 1e3,
            r.max_rss_kb as f64 / 1024.0
        );
    }
    Ok(())
}

async fn no_secret_value_or_token_in_any_output(_bed: &Bed) -> Result<()> {
    // The scanner catches a value, wherever in the text it is (its own unit test
    // says so too); then everything printed so far, against every value seen.
    let planted = secret("planted");
    ensure!(leaks::leaked(&format!("{{\"msg\":\"x {planted} y\"}}")).is_some(), "the scanner misses a planted value");
    let printed = PRINTED.lock().unwrap().clone();
    for p in &printed {
        leaks::scan("what the injector printed", p)?;
    }
    Ok(())
}
