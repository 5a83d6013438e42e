//! The pod as `/mutate` reads it: only the fields [`mutate`] looks at.
//!
//! Deserializing a whole `k8s_openapi` Pod allocates every env var, probe,
//! resource and managedFields entry of the pod, and that was most of a review's
//! CPU. These types name only what keyhole reads; serde skips the rest without
//! allocating. [`SlimPod::into_pod`] builds a `Pod` holding just those fields,
//! so `mutate` stays one function for `/mutate`, `/validate` and `render`, and
//! the golden tests (which go through `/mutate`) hold the two readings equal.
//!
//! [`mutate`]: crate::mutate::mutate

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EphemeralContainer, Pod, PodSecurityContext, PodSpec, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
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
    pub object: Option<SlimPod>,
}

#[derive(Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub kind: String,
}

#[derive(Deserialize, Default)]
pub struct SlimPod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<Spec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    volumes: Option<Vec<Named>>,
    #[serde(default)]
    containers: Vec<SlimContainer>,
    init_containers: Option<Vec<SlimContainer>>,
    ephemeral_containers: Option<Vec<SlimContainer>>,
    security_context: Option<Ids>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimContainer {
    name: String,
    volume_mounts: Option<Vec<Mount>>,
    /// Only whether there is one: keyhole appends to it or creates it.
    env_from: Option<IgnoredAny>,
    security_context: Option<Ids>,
    restart_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mount {
    name: String,
    mount_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ids {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
}

impl SlimPod {
    /// A `Pod` with just the fields read, everything else left empty.
    pub fn into_pod(self) -> Pod {
        let Meta { name, generate_name, namespace, labels, annotations, owner_references } = self.metadata;
        Pod {
            metadata: ObjectMeta {
                name,
                generate_name,
                namespace,
                labels,
                annotations,
                owner_references,
                ..ObjectMeta::default()
            },
            spec: self.spec.map(Spec::into_spec),
            status: None,
        }
    }
}

impl Spec {
    fn into_spec(self) -> PodSpec {
        PodSpec {
            volumes: self
                .volumes
                .map(|vs| vs.into_iter().map(|v| Volume { name: v.name, ..Volume::default() }).collect()),
            containers: self.containers.into_iter().map(SlimContainer::into_container).collect(),
            init_containers: self.init_containers.map(|cs| cs.into_iter().map(SlimContainer::into_container).collect()),
            ephemeral_containers: self.ephemeral_containers.map(|cs| {
                cs.into_iter()
                    .map(|c| {
                        let c = c.into_container();
                        EphemeralContainer { name: c.name, volume_mounts: c.volume_mounts, ..Default::default() }
                    })
                    .collect()
            }),
            security_context: self.security_context.map(|s| PodSecurityContext {
                run_as_user: s.run_as_user,
                run_as_group: s.run_as_group,
                ..Default::default()
            }),
            ..PodSpec::default()
        }
    }
}

impl SlimContainer {
    fn into_container(self) -> Container {
        Container {
            name: self.name,
            volume_mounts: self.volume_mounts.map(|ms| {
                ms.into_iter()
                    .map(|m| VolumeMount { name: m.name, mount_path: m.mount_path, ..VolumeMount::default() })
                    .collect()
            }),
            env_from: self.env_from.map(|_| vec![EnvFromSource::default()]),
            security_context: self.security_context.map(|s| SecurityContext {
                run_as_user: s.run_as_user,
                run_as_group: s.run_as_group,
                ..Default::default()
            }),
            restart_policy: self.restart_policy,
            ..Container::default()
        }
    }
}
