//! Workloads on the bed: the RBAC of Secret output, a Deployment's newest
//! ReplicaSet, and its pods as the controller-manager made them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;

use crate::Bed;
use crate::webhook::repo_root;

/// Applies manifests/examples/secret-output-rbac.yaml for service account `sa` of `ns`.
pub async fn secret_output_rbac(bed: &Bed, ns: &str, sa: &str) -> Result<()> {
    let text = std::fs::read_to_string(repo_root().join("manifests/examples/secret-output-rbac.yaml"))?
        .replace("namespace: shop", &format!("namespace: {ns}"))
        .replace("name: shop-api\n", &format!("name: {sa}\n"));
    let docs: Vec<Value> =
        serde_yaml::Deserializer::from_str(&text).map(serde::Deserialize::deserialize).collect::<Result<_, _>>()?;
    for v in docs {
        match v["kind"].as_str() {
            Some("Role") => {
                let role: Role = serde_json::from_value(v)?;
                Api::<Role>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), &role).await?;
            }
            Some("RoleBinding") => {
                let rb: RoleBinding = serde_json::from_value(v)?;
                Api::<RoleBinding>::namespaced(bed.client.clone(), ns).create(&PostParams::default(), &rb).await?;
            }
            other => bail!("unexpected {other:?} in secret-output-rbac.yaml"),
        }
    }
    Ok(())
}

/// The revision of a Deployment's ReplicaSet.
pub fn revision(rs: &ReplicaSet) -> u32 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The newest ReplicaSet of the Deployment whose pods carry `app=<app>`, once its
/// revision is at least `min_revision`.
pub async fn newest_rs(bed: &Bed, ns: &str, app: &str, min_revision: u32) -> Result<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(bed.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app={app}"));
    for _ in 0..300 {
        if let Some(rs) = api.list(&lp).await?.items.into_iter().max_by_key(revision)
            && revision(&rs) >= min_revision
        {
            return Ok(rs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no ReplicaSet of revision {min_revision} for {ns}/{app}")
}

/// At least `n` pods of one ReplicaSet, read back from the API, oldest first.
pub async fn pods_of(bed: &Bed, ns: &str, rs: &ReplicaSet, n: usize) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let uid = rs.metadata.uid.clone().context("the ReplicaSet has no uid")?;
    let mine = move |p: &Pod| p.metadata.owner_references.iter().flatten().any(|o| o.uid == uid);
    let name = rs.metadata.name.clone().unwrap_or_default();
    let mut found = Vec::new();
    for _ in 0..600 {
        found = api.list(&ListParams::default()).await?.items.into_iter().filter(&mine).collect();
        if found.len() >= n {
            found.sort_by(|a, b| {
                (&a.metadata.creation_timestamp, &a.metadata.name)
                    .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
            });
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} pods of {ns}/{name}, wanted {n}", found.len())
}

/// The name keyhole gives the Secret of a ReplicaSet's revision: its name and
/// the first 8 characters of its uid (contract's `plan::build`).
pub fn secret_name(rs: &ReplicaSet) -> String {
    let uid: String =
        rs.metadata.uid.as_deref().unwrap_or_default().chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("keyhole-{}-{}", rs.metadata.name.as_deref().unwrap_or_default(), uid.to_ascii_lowercase())
}

/// A client that acts as service account `sa` of `ns` (the admin impersonates
/// it): what a workload running as that account could do.
pub async fn client_as(bed: &Bed, ns: &str, sa: &str) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(&bed.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{sa}"));
    Ok(kube::Client::try_from(config)?)
}

/// manifests/secret-provenance.yaml: `on` applies it and waits until the API
/// server enforces it (a keyhole-labelled Secret made by the admin is refused
/// in `probe_ns`, as a dry run); `!on` deletes its binding and waits until such
/// a Secret passes.
pub async fn provenance_policy(bed: &Bed, on: bool, probe_ns: &str) -> Result<()> {
    let path = repo_root().join("manifests/secret-provenance.yaml");
    if on {
        bed.kubectl(&["apply", "-f", &path.display().to_string()]).await?;
    } else {
        bed.kubectl(&["delete", "validatingadmissionpolicybinding", "keyhole-secret-provenance", "--ignore-not-found"])
            .await?;
    }
    let probe: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"generateName": "provenance-probe-", "labels": {"app.kubernetes.io/managed-by": "keyhole"},
                     "annotations": {"keyhole.dev/service-account": "nobody"}}
    }))?;
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), probe_ns);
    let pp = PostParams { dry_run: true, ..Default::default() };
    let state = if on { "enforced" } else { "lifted" };
    crate::proc::wait_until(&format!("the provenance policy {state}"), Duration::from_secs(30), || async {
        let refused =
            matches!(api.create(&pp, &probe).await, Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422);
        refused == on
    })
    .await
}
