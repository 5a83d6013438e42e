//! The real `keyhole-webhook` process on loopback, registered with the bed's API
//! server through the configurations in `manifests/webhooks.yaml` (a URL instead
//! of the Service, the CA from `certs/make-certs.sh`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;

use crate::proc::{Proc, free_port};
use crate::{Bed, workspace_bin};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// The webhook config for the bed: every store points at the bed's own servers.
pub fn config_yaml(bed: &Bed) -> String {
    config_yaml_at(&bed.vault_addr, &bed.moto_url, &bed.moto_url, &[], &[])
}

/// The bed's stores (`vault` with kubernetes auth, `vault-jwt`, `aws`) at the given
/// addresses (a proxy's, say); `vault_more` and `aws_more` add fields to the
/// `vault` and `aws` stores, e.g. `("rotationRole", "...")`.
pub fn config_yaml_at(
    vault: &str,
    ssm: &str,
    sts: &str,
    vault_more: &[(&str, &str)],
    aws_more: &[(&str, &str)],
) -> String {
    let more = |fields: &[(&str, &str)]| -> String { fields.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect() };
    format!(
        r#"injector:
  image: ghcr.io/keyhole/keyhole:0.1.0
defaultStore: vault
stores:
  vault:
    kind: vault
    address: {vault}
    auth: {{method: kubernetes}}
    audience: vault
{vault_more}  vault-jwt:
    kind: vault
    address: {vault}
    auth: {{method: jwt}}
    audience: vault
  aws:
    kind: aws-ssm
    region: us-east-1
    audience: sts.amazonaws.com
    endpoint: {ssm}
    stsEndpoint: {sts}
{aws_more}  aws-sm:
    kind: aws-secretsmanager
    region: us-east-1
    audience: sts.amazonaws.com
    endpoint: {ssm}
    stsEndpoint: {sts}
{aws_more}"#,
        vault_more = more(vault_more),
        aws_more = more(aws_more),
    )
}

pub struct Webhook {
    pub proc: Proc,
    pub url: String,
    pub metrics_url: String,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Webhook {
    /// Makes certificates with `make certs`' script, starts the binary, waits for /readyz.
    pub async fn start(config_yaml: &str) -> Result<Webhook> {
        let dir = tempfile::Builder::new().prefix("keyhole-webhook-").tempdir()?;
        let certs = dir.path().join("certs");
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("certs/make-certs.sh"))
            .env("CERTS_OUT", &certs)
            .env("EXTRA_SANS", "IP:127.0.0.1")
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("certs/make-certs.sh failed: {status}");
        }
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_yaml)?;
        let port = free_port(false)?;
        let metrics_port = free_port(false)?;
        let proc = Proc::spawn(
            "keyhole-webhook",
            &workspace_bin("keyhole-webhook")?,
            &[
                format!("--config={}", config.display()),
                format!("--tls-cert={}", certs.join("tls.crt").display()),
                format!("--tls-key={}", certs.join("tls.key").display()),
                format!("--listen=127.0.0.1:{port}"),
                format!("--metrics-listen=127.0.0.1:{metrics_port}"),
                "--cert-reload-seconds=1".into(),
                // Tests stop many webhooks; the grace period is tested in limits.rs.
                "--shutdown-grace=200ms".into(),
            ],
            &[("KEYHOLE_LOG", "info".into())],
            dir.path(),
        )?;
        let ca_pem = std::fs::read_to_string(certs.join("ca.crt"))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut hook = Webhook {
            proc,
            url: format!("https://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            ca_pem,
            dir,
            http,
        };
        for _ in 0..200 {
            hook.proc.check_running()?;
            if let Ok(r) = hook.http.get(format!("{}/readyz", hook.url)).send().await
                && r.status().is_success()
            {
                return Ok(hook);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("keyhole-webhook did not become ready; log: {}", crate::proc::tail(&hook.proc.log, 20))
    }

    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Registers this webhook under `name` with the configurations from
    /// `manifests/webhooks.yaml`. `only_namespace` narrows it to one namespace.
    pub async fn register(&self, bed: &Bed, name: &str, only_namespace: Option<&str>) -> Result<()> {
        let text = std::fs::read_to_string(repo_root().join("manifests/webhooks.yaml"))?;
        let ca = ByteString(self.ca_pem.clone().into_bytes());
        let selector = only_namespace.map(|ns| LabelSelector {
            match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into()),
            ..Default::default()
        });
        let docs = serde_yaml::Deserializer::from_str(&text)
            .map(serde_json::Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?;
        for value in docs {
            match value["kind"].as_str() {
                Some("MutatingWebhookConfiguration") => {
                    let mut c: MutatingWebhookConfiguration = serde_json::from_value(value)?;
                    c.metadata.name = Some(name.into());
                    for w in c.webhooks.iter_mut().flatten() {
                        self.point(&mut w.client_config, &mut w.namespace_selector, &ca, &selector)?;
                    }
                    Api::<MutatingWebhookConfiguration>::all(bed.client.clone())
                        .create(&PostParams::default(), &c)
                        .await?;
                }
                Some("ValidatingWebhookConfiguration") => {
                    let mut c: ValidatingWebhookConfiguration = serde_json::from_value(value)?;
                    c.metadata.name = Some(name.into());
                    for w in c.webhooks.iter_mut().flatten() {
                        self.point(&mut w.client_config, &mut w.namespace_selector, &ca, &selector)?;
                    }
                    Api::<ValidatingWebhookConfiguration>::all(bed.client.clone())
                        .create(&PostParams::default(), &c)
                        .await?;
                }
                other => bail!("unexpected kind {other:?} in manifests/webhooks.yaml"),
            }
        }
        // The API server picks up new configurations asynchronously.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(())
    }

    /// Sends one webhook entry to this process instead of the manifests' Service.
    fn point(
        &self,
        client: &mut WebhookClientConfig,
        namespace_selector: &mut Option<LabelSelector>,
        ca: &ByteString,
        only: &Option<LabelSelector>,
    ) -> Result<()> {
        let path = client.service.take().and_then(|s| s.path).context("service path")?;
        client.url = Some(format!("{}{path}", self.url));
        client.ca_bundle = Some(ca.clone());
        if only.is_some() {
            namespace_selector.clone_from(only);
        }
        Ok(())
    }

    pub async fn unregister(bed: &Bed, name: &str) -> Result<()> {
        let dp = DeleteParams::default();
        Api::<MutatingWebhookConfiguration>::all(bed.client.clone()).delete(name, &dp).await?;
        Api::<ValidatingWebhookConfiguration>::all(bed.client.clone()).delete(name, &dp).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(())
    }

    /// The whole /metrics text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self.http.get(format!("{}/metrics", self.metrics_url)).send().await?.error_for_status()?.text().await?)
    }

    /// Sum of all admission reviews the webhook has answered.
    pub async fn reviews(&self) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("keyhole_webhook_admission_reviews_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}
