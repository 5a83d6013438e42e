//! keyhole installed on the bed's node as a user installs it: `make certs`
//! (certs/make-certs.sh) writes the serving certificate and an overlay of
//! `manifests/`, and `kubectl apply -k` applies it, with one change of the bed's:
//! the `keyhole-config` ConfigMap names the bed's OpenBao and moto, reached from
//! pods at the node IP like any external Vault.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::webhook::{config_yaml_at, repo_root};
use crate::{Bed, node};

/// The namespace the manifests install into.
pub const NAMESPACE: &str = "keyhole-system";
/// The rotation controller's OpenBao role (metadata reads only), bound to its
/// service account.
pub const VAULT_ROTATION_ROLE: &str = "keyhole-rotation";

pub struct Install {
    /// The generated overlay (certs + the bed's config) that was applied.
    pub overlay: PathBuf,
    pub certs: PathBuf,
}

impl Bed {
    /// The stores as pods on the node reach them.
    pub fn node_config_yaml(&self, vault_more: &[(&str, &str)], aws_more: &[(&str, &str)]) -> Result<String> {
        ensure!(self.node.is_some(), "the bed has no node");
        let at = |url: &str| url.replace("127.0.0.1", node::NODE_IP);
        Ok(config_yaml_at(&at(&self.vault_addr), &at(&self.moto_url), &at(&self.moto_url), vault_more, aws_more))
    }

    /// `make certs` + `kubectl apply -k`, then waits until both Deployments are
    /// available: the webhook behind its Service, the rotation controller under
    /// its own RBAC.
    pub async fn install_keyhole(&self, config_yaml: &str) -> Result<Install> {
        self.rotation_backend_role().await?;
        let dir = self.dir.join("install");
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)?;
        let out = tokio::process::Command::new("bash")
            .arg(repo_root().join("certs/make-certs.sh"))
            .env("CERTS_OUT", &certs)
            .output()
            .await
            .context("certs/make-certs.sh")?;
        ensure!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));

        let overlay = dir.join("overlay");
        std::fs::create_dir_all(&overlay)?;
        std::fs::write(overlay.join("config.yaml"), config_yaml)?;
        std::fs::write(
            overlay.join("kustomization.yaml"),
            "# The bed's install: make certs's overlay, the bed's stores.\n\
             apiVersion: kustomize.config.k8s.io/v1beta1\n\
             kind: Kustomization\n\
             resources:\n- ../certs/overlay\n\
             configMapGenerator:\n\
             - name: keyhole-config\n  namespace: keyhole-system\n  behavior: replace\n  files: [config.yaml]\n\
             generatorOptions:\n  disableNameSuffixHash: true\n",
        )?;
        self.kubectl(&["apply", "-k", &overlay.display().to_string()]).await?;
        for deploy in ["keyhole-webhook", "keyhole-rotation"] {
            self.kubectl(&["-n", NAMESPACE, "rollout", "status", &format!("deployment/{deploy}"), "--timeout=120s"])
                .await
                .with_context(|| format!("{deploy} did not become available"))?;
        }
        Ok(Install { overlay, certs })
    }

    /// The rotation controller's OpenBao role (metadata reads), bound to its
    /// service account in [`NAMESPACE`].
    pub async fn rotation_backend_role(&self) -> Result<()> {
        self.vault(
            "PUT",
            &format!("sys/policies/acl/{VAULT_ROTATION_ROLE}"),
            Some(serde_json::json!({
                "policy": "path \"secret/metadata/*\" { capabilities = [\"read\"] }\n"
            })),
        )
        .await?;
        self.vault_kubernetes_role(VAULT_ROTATION_ROLE, NAMESPACE, "keyhole-rotation", "vault", VAULT_ROTATION_ROLE)
            .await
    }

    /// Writes Helm values holding `config_yaml` (the keyhole-config body) as
    /// `config`, for `helm install -f`.
    pub fn helm_values(&self, name: &str, config_yaml: &str) -> Result<PathBuf> {
        let config: serde_yaml::Value = serde_yaml::from_str(config_yaml).context("the bed's config")?;
        let dir = self.dir.join("helm");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        let mut values = serde_yaml::Mapping::new();
        values.insert("config".into(), config);
        std::fs::write(&path, serde_yaml::to_string(&values)?)?;
        Ok(path)
    }

    /// The bed's helm (tests/tools/helm) with the admin kubeconfig, from the
    /// repository root (so `charts/keyhole` is the chart); stdout on success.
    pub async fn helm(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.parts.helm)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .current_dir(repo_root())
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .output()
            .await
            .context("run helm")?;
        if !out.status.success() {
            bail!(
                "helm {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The bed's kubectl with the admin kubeconfig; stdout on success. Async: the
    /// bed's forwarders run on the same runtime.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.parts.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .await
            .context("run kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits `timeout` for `probe` on the pod `ns/name`; the error has the pod's
    /// `kubectl describe` (no values: the tests never print them).
    pub async fn wait_pod(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        probe: impl Fn(&k8s_openapi::api::core::v1::Pod) -> bool,
    ) -> Result<k8s_openapi::api::core::v1::Pod> {
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(self.client.clone(), ns);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(p)) = pods.get_opt(name).await
                && probe(&p)
            {
                return Ok(p);
            }
            if std::time::Instant::now() > deadline {
                let describe =
                    self.kubectl(&["-n", ns, "describe", "pod", name]).await.unwrap_or_else(|e| format!("{e:#}"));
                bail!("timed out after {timeout:?} waiting for pod {ns}/{name} to {what}:\n{describe}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
