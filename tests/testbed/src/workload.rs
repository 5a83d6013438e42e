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
