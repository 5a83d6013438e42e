//! The pod as keyhole reads it: only the fields [`mutate`] looks at, with every
//! list and map bounded while it is read.
//!
//! Deserializing a whole `k8s_openapi` Pod allocates every env var, probe,
//! resource and managedFields entry of the pod, and that was most of a review's
//! CPU. These types name only what keyhole reads; serde skips the rest without
//! allocating. [`mutate`] takes this view and nothing else, for `/mutate`,
//! `/validate` and `render` alike: a check can only read a field that is here,
//! so no endpoint can see a pod differently from another.
//!
//! Mutating admission runs before the API server validates the object, so a
//! review can hold what the API server would never store (330,000 containers in
//! a 4 MB body). Every list and map here is a [`Bounded`]: past [`MAX_ENTRIES`]
//! the entries are skipped unbuilt and only counted, and [`PodView::over_limits`]
//! turns that into a refusal that names the field.
//!
//! [`mutate`]: crate::mutate::mutate

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_contract::WorkloadKind;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Entries keyhole reads of any one list or map of a pod. Real pods have a few
/// dozen containers, volumes or annotations at most; the API server's 1.5 MiB
/// object limit allows a few thousand of the smallest. 1,000 is far beyond any
/// pod that runs, and bounds what one review can make keyhole build.
pub const MAX_ENTRIES: usize = 1000;
/// The API server refuses a pod whose annotations (keys and values) exceed
/// 256 KiB (`TotalAnnotationSizeLimitB`); keyhole refuses it first, before it
/// copies any of them into a plan.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
pub struct SlimReview<O = PodView> {
    pub request: Option<SlimRequest<O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
pub struct SlimRequest<O = PodView> {
    pub uid: String,
    pub kind: Kind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "none")]
    pub object: Option<O>,
}

fn none<O>() -> Option<O> {
    None
}

#[derive(Deserialize)]
pub struct Kind {
    #[serde(default)]
    pub kind: String,
}

/// A workload as `/validate` reads it: its name and its pod template, wherever
/// its kind keeps it.
#[derive(Debug, Deserialize, Default)]
pub struct WorkloadView {
    #[serde(default)]
    pub metadata: MetaView,
    #[serde(default)]
    pub spec: Option<WorkloadSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub template: Option<PodView>,
    pub job_template: Option<JobTemplate>,
    /// A Pod's, for the `pods/ephemeralcontainers` review.
    pub ephemeral_containers: Option<Bounded<ContainerView>>,
}

#[derive(Debug, Deserialize, Default)]
pub struct JobTemplate {
    pub spec: Option<JobSpec>,
}

#[derive(Debug, Deserialize, Default)]
pub struct JobSpec {
    pub template: Option<PodView>,
}

impl WorkloadView {
    /// The pod template of a workload of `kind` (`CronJob`s keep theirs in
    /// `spec.jobTemplate.spec.template`); an empty pod when there is none.
    pub fn into_template(self, kind: WorkloadKind) -> PodView {
        let spec = self.spec.unwrap_or_default();
        let template = match kind {
            WorkloadKind::CronJob => spec.job_template.and_then(|j| j.spec).and_then(|s| s.template),
            _ => spec.template,
        };
        template.unwrap_or_default()
    }
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
    pub labels: Option<BoundedMap>,
    pub annotations: Option<BoundedMap>,
    pub owner_references: Option<Bounded<OwnerReference>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    pub volumes: Option<Bounded<Named>>,
    #[serde(default)]
    pub containers: Bounded<ContainerView>,
    pub init_containers: Option<Bounded<ContainerView>>,
    pub ephemeral_containers: Option<Bounded<ContainerView>>,
    pub security_context: Option<Ids>,
    pub os: Option<Os>,
}

#[derive(Debug, Deserialize)]
pub struct Named {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct Os {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    /// Only whether there is one and its first word: what tells keyhole's own
    /// injector from a container that only has its name.
    pub command: Option<Bounded<String>>,
    pub volume_mounts: Option<Bounded<MountView>>,
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

impl PodView {
    /// The first list or map of this pod that is over keyhole's limits, as a
    /// sentence for the refusal; `None` for every pod the API server could store.
    pub fn over_limits(&self) -> Option<String> {
        // On every review: compare counts only; build a field name for the
        // refusal alone.
        let over = |field: &dyn Fn() -> String, total: usize| {
            (total > MAX_ENTRIES)
                .then(|| format!("{} has {total} entries; keyhole reviews pods with at most {MAX_ENTRIES}", field()))
        };
        let total = |list: Option<usize>| list.unwrap_or(0);
        let m = &self.metadata;
        if let Some(a) = &m.annotations {
            if let Some(why) = over(&|| "metadata.annotations".into(), a.total) {
                return Some(why);
            }
            let bytes: usize = a.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > MAX_ANNOTATION_BYTES {
                return Some(format!(
                    "metadata.annotations hold {bytes} bytes; the API server stores at most {MAX_ANNOTATION_BYTES}"
                ));
            }
        }
        over(&|| "metadata.labels".into(), total(m.labels.as_ref().map(|l| l.total)))
            .or_else(|| {
                over(&|| "metadata.ownerReferences".into(), total(m.owner_references.as_ref().map(|o| o.total)))
            })
            .or_else(|| {
                let spec = self.spec.as_ref()?;
                if let Some(why) = over(&|| "spec.volumes".into(), total(spec.volumes.as_ref().map(|v| v.total))) {
                    return Some(why);
                }
                let groups = [
                    ("containers", Some(&spec.containers)),
                    ("initContainers", spec.init_containers.as_ref()),
                    ("ephemeralContainers", spec.ephemeral_containers.as_ref()),
                ];
                groups.into_iter().find_map(|(field, list)| {
                    let list = list?;
                    over(&|| format!("spec.{field}"), list.total).or_else(|| {
                        list.iter().find_map(|c| {
                            let mounts = total(c.volume_mounts.as_ref().map(|v| v.total));
                            over(&|| format!("spec.{field}[{:?}].volumeMounts", c.name), mounts).or_else(|| {
                                let command = total(c.command.as_ref().map(|v| v.total));
                                over(&|| format!("spec.{field}[{:?}].command", c.name), command)
                            })
                        })
                    })
                })
            })
    }
}

/// A list read up to [`MAX_ENTRIES`] entries; `total` counts them all.
#[derive(Debug)]
pub struct Bounded<T> {
    items: Vec<T>,
    pub total: usize,
}

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Bounded { items: Vec::new(), total: 0 }
    }
}

impl<T> Deref for Bounded<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.items
    }
}

impl<'a, T> IntoIterator for &'a Bounded<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

impl<T> From<Vec<T>> for Bounded<T> {
    fn from(items: Vec<T>) -> Self {
        Bounded { total: items.len(), items }
    }
}

impl<T: Serialize> Serialize for Bounded<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bounded<T>, A::Error> {
                let mut out = Bounded { items: Vec::new(), total: 0 };
                while out.total < MAX_ENTRIES {
                    match seq.next_element()? {
                        Some(item) => out.items.push(item),
                        None => return Ok(out),
                    }
                    out.total += 1;
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.total += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// A string map (labels, annotations) read up to [`MAX_ENTRIES`] entries.
#[derive(Debug, Default)]
pub struct BoundedMap {
    map: BTreeMap<String, String>,
    pub total: usize,
}

impl Deref for BoundedMap {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &BTreeMap<String, String> {
        &self.map
    }
}

impl From<BTreeMap<String, String>> for BoundedMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        BoundedMap { total: map.len(), map }
    }
}

impl<'de> Deserialize<'de> for BoundedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BoundedMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<BoundedMap, A::Error> {
                let mut out = BoundedMap::default();
                while out.total < MAX_ENTRIES {
                    match access.next_entry::<String, String>()? {
                        Some((k, v)) => {
                            out.map.insert(k, v);
                        }
                        None => return Ok(out),
                    }
                    out.total += 1;
                }
                while access.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    out.total += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_past_the_limit_are_counted_not_built() {
        let containers: Vec<String> = (0..5000).map(|_| r#"{"name":""}"#.to_owned()).collect();
        let json = format!(r#"{{"spec":{{"containers":[{}]}}}}"#, containers.join(","));
        let pod: PodView = serde_json::from_str(&json).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers.len(), MAX_ENTRIES);
        assert_eq!(spec.containers.total, 5000);
        assert!(pod.over_limits().unwrap().contains("spec.containers has 5000 entries"));
    }

    #[test]
    fn a_pod_within_the_limits_passes_and_duplicate_keys_count_once_each() {
        let pod: PodView = serde_json::from_str(
            r#"{"metadata":{"annotations":{"a":"1","b":"2"}},"spec":{"containers":[{"name":"app","volumeMounts":[{"name":"v","mountPath":"/v"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(pod.over_limits(), None);
        let big = "x".repeat(MAX_ANNOTATION_BYTES);
        let pod: PodView =
            serde_json::from_value(serde_json::json!({"metadata": {"annotations": {"a": big}}})).unwrap();
        assert!(pod.over_limits().unwrap().contains("bytes"));
    }
}
