//! The rotation controller (`keyhole-rotation`) as a real process on the
//! bed: its own service account, projected-token files per store audience, a
//! Vault role whose policy reads KV metadata only, and a Lease of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::proc::{Proc, free_port};
use crate::{Bed, create_service_account, workspace_bin};

/// The controller's service account in each test namespace.
pub const SA: &str = "keyhole-rotation";
/// The IAM role the controller assumes (moto checks none; real AWS: ssm:DescribeParameters only).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/keyhole-rotation";

/// The bed's stores (as the webhook has them) with the controller's `rotationRole`s;
/// SSM at `aws_endpoint` (a counting proxy, for the benchmark).
pub fn config_yaml(bed: &Bed, vault_role: &str, aws_endpoint: &str) -> String {
    crate::webhook::config_yaml_at(
        &bed.vault_addr,
        aws_endpoint,
        &bed.moto_url,
        &[("rotationRole", vault_role)],
        &[("rotationRole", ROLE_ARN)],
    )
}

/// What the controller may do in `ns`, set up once per namespace: its service
/// account, a metadata-only Vault policy over `secret/metadata/<ns>/*`, and a
/// kubernetes-auth role named `rotation-<ns>`. Returns the role's name.
pub async fn identity(bed: &Bed, ns: &str) -> Result<String> {
    create_service_account(&bed.client, ns, SA).await?;
    let role = format!("rotation-{ns}");
    let hcl = format!("path \"secret/metadata/{ns}/*\" {{ capabilities = [\"read\", \"list\"] }}\n");
    bed.vault("PUT", &format!("sys/policies/acl/{role}"), Some(serde_json::json!({"policy": hcl}))).await?;
    bed.vault_kubernetes_role(&role, ns, SA, "vault", &role).await?;
    Ok(role)
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub identity: String,
    pub interval: String,
    pub lease_duration: String,
    pub max_rollouts: usize,
    /// Watch only this namespace (tests run side by side); the Lease lives there too.
    pub namespace: Option<String>,
    pub lease_namespace: String,
    pub config_yaml: String,
    /// Talk to the API server as this user (`system:serviceaccount:<ns>:<name>`)
    /// rather than as the bed's admin, through kube-rs's impersonation override.
    pub impersonate: Option<String>,
}

pub struct Controller {
    pub proc: Proc,
    pub identity: String,
    pub metrics_url: String,
    pub token_dir: PathBuf,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
    /// The tokens written for it (for leak scans).
    pub tokens: Vec<String>,
}

impl Controller {
    /// Writes the config and the token files, starts the process, waits for /healthz.
    pub async fn start(bed: &Bed, sa_namespace: &str, opts: &Opts) -> Result<Controller> {
        let dir = tempfile::Builder::new().prefix("keyhole-rotation-").tempdir()?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, &opts.config_yaml)?;
        let token_dir = dir.path().join("tokens");
        std::fs::create_dir_all(&token_dir)?;
        let mut tokens = Vec::new();
        for audience in ["vault", "sts.amazonaws.com"] {
            let t = bed.token(sa_namespace, SA, &[audience], 3600, None).await?;
            std::fs::write(token_dir.join(audience), &t)?;
            tokens.push(t);
        }
        let metrics_port = free_port(false)?;
        let mut args = vec![
            format!("--config={}", config.display()),
            format!("--interval={}", opts.interval),
            format!("--max-rollouts={}", opts.max_rollouts),
            format!("--lease-namespace={}", opts.lease_namespace),
            format!("--lease-duration={}", opts.lease_duration),
            format!("--identity={}", opts.identity),
            format!("--token-dir={}", token_dir.display()),
            format!("--metrics-listen=127.0.0.1:{metrics_port}"),
            "--log-format=text".to_owned(),
        ];
        if let Some(ns) = &opts.namespace {
            args.push(format!("--watch-namespace={ns}"));
        }
        let mut env = vec![
            ("KUBECONFIG", bed.kubeconfig.display().to_string()),
            ("KEYHOLE_LOG", "info".into()),
            ("NO_COLOR", "1".into()),
        ];
        if let Some(user) = &opts.impersonate {
            env.push(("KUBE_RS_DEBUG_IMPERSONATE_USER", user.clone()));
        }
        let proc = Proc::spawn(&opts.identity, &workspace_bin("keyhole-rotation")?, &args, &env, dir.path())?;
        let mut c = Controller {
            proc,
            identity: opts.identity.clone(),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            token_dir,
            config,
            dir,
            tokens,
        };
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        for _ in 0..400 {
            c.proc.check_running()?;
            if let Ok(r) = http.get(format!("{}/healthz", c.metrics_url)).send().await
                && r.status().is_success()
            {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the rotation controller did not come up; log:\n{}", crate::proc::tail(&c.proc.log, 30))
    }

    pub fn log(&self) -> String {
        // Text logs without colour: strip any escape codes anyway.
        let raw = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `GET path` on the admin listener: the status and the body.
    pub async fn probe(&self, path: &str) -> Result<(u16, String)> {
        let r = reqwest::get(format!("{}{path}", self.metrics_url)).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn metrics(&self) -> Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.metrics_url)).await?.error_for_status()?.text().await?)
    }

    /// Sum of a counter family's samples whose line contains `filter`.
    pub async fn counter(&self, family: &str, filter: &str) -> Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(family) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}
