//! The pod as keyhole reads it: only the fields [`mutate`] looks at.
//!
//! Deserializing a whole `k8s_openapi` Pod allocates every env var, probe,
//! resource and managedFields entry of the pod, and that was most of a review's
//! CPU. These types name only what keyhole reads; serde skips the rest without
//! allocating. [`mutate`] takes this view and nothing else, for `/mutate`,
//! `/validate` and `render` alike: a check can only read a field that is here,
//! so no endpoint can see a pod differently from another.
//!
//! [`mutate`]: crate::mutate::mutate

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
pub struct SlimReview {
    pub request: Option<SlimRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimRequest {
    pub uid: String,
    pub kind: Kind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub object: Option<PodView>,
}

#[derive(Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub kind: String,
}

/// A pod (or a workload's pod template) as keyhole reads it.
#[derive(Debug, Deserialize, Default)]
pub struct PodView {
    #[serde(default)]
    pub metadata: MetaView,
    #[serde(default)]
    pub spec: Option<SpecView>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetaView {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    pub volumes: Option<Vec<Named>>,
    #[serde(default)]
    pub containers: Vec<ContainerView>,
    pub init_containers: Option<Vec<ContainerView>>,
    pub ephemeral_containers: Option<Vec<ContainerView>>,
    pub security_context: Option<Ids>,
}

#[derive(Debug, Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    pub volume_mounts: Option<Vec<MountView>>,
    /// Only whether there is one: keyhole appends to it or creates it.
    pub env_from: Option<IgnoredAny>,
    pub security_context: Option<Ids>,
    pub restart_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountView {
    pub name: String,
    pub mount_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ids {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
}
