//! keyhole installed with its Helm chart (charts/keyhole) on the real node, as
//! a platform team installs it: `helm install`, a first opted-in Deployment,
//! `helm upgrade` to a changed value while opted-in pods keep coming, `helm
//! uninstall`. The chart's rendering without a cluster: chart.rs.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use keyhole_testbed::app::{AdmissionLoad, admit_dry_run, deploy, field, reports, rollout, sha256};
use keyhole_testbed::leaks::{self, secret};
use keyhole_testbed::{Bed, e2e_tests, install};
use kube::api::{Api, ListParams};
use serde_json::json;

const SA: &str = "default";

fn main() {
    keyhole_testbed::harness::run_on_node(e2e_tests![
        helm_install_runs_keyhole_and_a_first_deployment_gets_its_values,
        helm_upgrade_to_a_new_store_rolls_the_webhook_and_admits_every_pod_meanwhile,
        helm_upgrade_renewing_the_certificate_keeps_the_ca_and_fails_no_admission,
        helm_uninstall_removes_keyhole_and_nothing_is_blocked_after,
    ]);
}

fn config(bed: &Bed, extra_store: bool) -> Result<String> {
    let yaml = bed.node_config_yaml(
        &[("rotationRole", install::VAULT_ROTATION_ROLE)],
        &[("rotationRole", "arn:aws:iam::123456789012:role/keyhole-rotation")],
    )?;
    if !extra_store {
        return Ok(yaml);
    }
    // A second name for the same OpenBao: what an operator adds for a new team.
    let mut config: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
    let vault = config["stores"]["vault"].clone();
    config["stores"].as_mapping_mut().context("stores")?.insert("vault-b".into(), vault);
    Ok(serde_yaml::to_string(&config)?)
}

async fn webhook_pods(bed: &Bed) -> Result<Vec<String>> {
    let sys: Api<Pod> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    let pods = sys.list(&ListParams::default().labels("app.kubernetes.io/component=webhook")).await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect())
}

/// The serving Secret's `(ca.crt, tls.crt)` and the caBundle of the pod webhook.
async fn tls_state(bed: &Bed) -> Result<(String, String, String)> {
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), install::NAMESPACE);
    let s = secrets.get("keyhole-webhook-tls").await?;
    let data = s.data.unwrap_or_default();
    let b64 = |k: &str| data.get(k).map(|v| base64::engine::general_purpose::STANDARD.encode(&v.0)).unwrap_or_default();
    let hook = Api::<MutatingWebhookConfiguration>::all(bed.client.clone()).get("keyhole").await?;
    let bundle = hook.webhooks.unwrap_or_default()[0]
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| base64::engine::general_purpose::STANDARD.encode(&b.0))
        .unwrap_or_default();
    Ok((b64("ca.crt"), b64("tls.crt"), bundle))
}

async fn helm_install_runs_keyhole_and_a_first_deployment_gets_its_values(bed: &Bed) -> Result<()> {
    bed.rotation_backend_role().await?;
    let values = bed.helm_values("values.yaml", &config(bed, false)?)?;
    let t0 = std::time::Instant::now();
    let out = bed
        .helm(&[
            "install",
            "keyhole",
            "charts/keyhole",
            "--namespace",
            install::NAMESPACE,
            "--create-namespace",
            "--values",
            &values.display().to_string(),
            "--wait",
            "--timeout",
            "180s",
        ])
        .await?;
    leaks::scan("helm install's output", &out)?;
    eprintln!("    helm install in {:.1}s:\n{}", t0.elapsed().as_secs_f64(), out.trim_end().replace('\n', "\n      "));
    ensure!(out.contains("STATUS: deployed"), "helm install: {out}");
    ensure!(webhook_pods(bed).await?.len() == 2, "two webhook pods");

    // A first Deployment, as NOTES.txt tells it: files from OpenBao on tmpfs.
    let ns = bed.namespace("chart-first").await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*")]).await?;
    bed.vault_kubernetes_role(&ns, &ns, SA, "vault", &ns).await?;
    let pw = secret("chart-first-pw");
    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": pw}}))).await?;
    let annotations = json!({"keyhole.dev/inject": "true", "keyhole.dev/role": ns,
        "keyhole.dev/secret-DB_PASSWORD": format!("secret/{ns}/db#password")});
    deploy(bed, &ns, "web", SA, 1, annotations, "DB_PASSWORD").await?;
    rollout(bed, &ns, "web", Duration::from_secs(90)).await?;
    let got = reports(bed, &ns, "web").await?;
    ensure!(got.len() == 1, "Running pods: {got:?}");
    let want = format!("{}:400:1000", sha256(&pw));
    ensure!(field(&got[0].1, "DB_PASSWORD")? == want, "the app's file: {}", got[0].1);
    Ok(())
}

async fn helm_upgrade_to_a_new_store_rolls_the_webhook_and_admits_every_pod_meanwhile(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("chart-upgrade").await?;
    // Control: before the upgrade the store does not exist, and the webhook says so.
    let before = admit_dry_run(bed, &ns, "vault-b").await?;
    ensure!(
        before.as_ref().is_err_and(|e| e.contains("unknown store \"vault-b\"")),
        "before the upgrade, a pod naming vault-b: {before:?}"
    );
    let old = webhook_pods(bed).await?;
    let tls = tls_state(bed).await?;
    let values = bed.helm_values("values-b.yaml", &config(bed, true)?)?;

    let load = AdmissionLoad::start(bed, &ns)?;
    let t0 = std::time::Instant::now();
    let upgraded = bed
        .helm(&[
            "upgrade",
            "keyhole",
            "charts/keyhole",
            "--namespace",
            install::NAMESPACE,
            "--values",
            &values.display().to_string(),
            "--wait",
            "--timeout",
            "180s",
        ])
        .await;
    let took = t0.elapsed();
    // A moment on the new pods alone, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok = load.finish("helm upgrade", 20).await;
    let out = upgraded?;
    let ok = ok?;
    ensure!(out.contains("STATUS: deployed") && out.contains("REVISION: 2"), "helm upgrade: {out}");

    // The config checksum rolled the webhook: none of the old pods is left.
    let new = webhook_pods(bed).await?;
    ensure!(new.len() == 2 && new.iter().all(|p| !old.contains(p)), "webhook pods {old:?} -> {new:?}");
    let after = admit_dry_run(bed, &ns, "vault-b").await?;
    ensure!(after.is_ok(), "after the upgrade, a pod naming vault-b: {after:?}");
    // The certificate made at install is kept: same CA, same serving certificate.
    ensure!(tls_state(bed).await? == tls, "helm upgrade replaced the serving certificate or its CA");
    eprintln!("    helm upgrade in {:.1}s: {ok} opted-in pods admitted meanwhile, none failed", took.as_secs_f64());
    Ok(())
}

async fn helm_upgrade_renewing_the_certificate_keeps_the_ca_and_fails_no_admission(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("chart-renew").await?;
    let (ca, leaf, bundle) = tls_state(bed).await?;
    ensure!(ca == bundle, "the caBundle is not the Secret's CA");
    let load = AdmissionLoad::start(bed, &ns)?;
    // renewDays above the certificate's lifetime: this upgrade must sign a new one.
    let upgraded = bed
        .helm(&[
            "upgrade",
            "keyhole",
            "charts/keyhole",
            "--namespace",
            install::NAMESPACE,
            "--reuse-values",
            "--set",
            "tls.helm.renewDays=400",
            "--wait",
            "--timeout",
            "180s",
        ])
        .await;
    // The webhook pods read the new files as the kubelet updates the Secret's volume.
    let (new_ca, new_leaf, new_bundle) = tls_state(bed).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ok = load.finish("a certificate renewal by helm upgrade", 20).await;
    upgraded?;
    let ok = ok?;
    ensure!(new_leaf != leaf, "helm upgrade did not sign a new serving certificate");
    ensure!(new_ca == ca && new_bundle == bundle, "the CA or the caBundle changed with the serving certificate");
    eprintln!("    certificate renewed by helm upgrade: same CA and caBundle, {ok} admissions meanwhile, none failed");
    Ok(())
}

async fn helm_uninstall_removes_keyhole_and_nothing_is_blocked_after(bed: &Bed) -> Result<()> {
    let out = bed.helm(&["uninstall", "keyhole", "--namespace", install::NAMESPACE, "--wait"]).await?;
    ensure!(out.contains("uninstalled"), "helm uninstall: {out}");
    let c = bed.client.clone();
    ensure!(Api::<MutatingWebhookConfiguration>::all(c.clone()).get_opt("keyhole").await?.is_none());
    ensure!(Api::<ValidatingWebhookConfiguration>::all(c.clone()).get_opt("keyhole").await?.is_none());
    ensure!(Api::<ValidatingAdmissionPolicy>::all(c.clone()).get_opt("keyhole-secret-provenance").await?.is_none());
    ensure!(webhook_pods(bed).await?.is_empty(), "webhook pods left");
    // An opted-in pod is no longer sent anywhere: created as written.
    let ns = bed.namespace("chart-gone").await?;
    let got = admit_dry_run(bed, &ns, "vault").await?;
    ensure!(got.as_ref().is_err_and(|e| e == "admitted without the injector"), "after uninstall: {got:?}");
    Ok(())
}
