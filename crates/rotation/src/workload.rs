//! The workloads rotation acts on (Deployments, StatefulSets, DaemonSets), the
//! one patch that rolls them, and the Event that says why.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::ObjectReference;
use keyhole_contract::annotations::{OBSERVED_VERSIONS, VERSIONS};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde_json::{Value, json};

use crate::state::{self, Move, Versions};

/// Field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "keyhole-rotation";
/// Event reasons.
pub const REASON_ROTATED: &str = "SecretRotated";
pub const REASON_TRIGGERED: &str = "RolloutTriggered";
/// Warning: the workload opts in but is not rotated (annotations, grants).
pub const REASON_REFUSED: &str = "RotationRefused";
/// Warning: a reference's version could not be looked up; nothing rolls until it can.
pub const REASON_LOOKUP_FAILED: &str = "RotationLookupFailed";
/// Warning: the workload could not be patched (to record or to roll).
pub const REASON_PATCH_FAILED: &str = "RotationPatchFailed";
/// Warning: a rollout waits for the rollout budget (`--max-rollouts` per interval).
pub const REASON_DEFERRED: &str = "RotationDeferred";

/// The kinds the controller rolls; `kind/name` targets of `roll` name one of these.
pub use keyhole_contract::WorkloadKind as Kind;

/// The dynamic API resource of a kind the controller patches.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        Kind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        Kind::ReplicaSet => ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&()),
        Kind::Job => ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&()),
        Kind::CronJob => ApiResource::erase::<k8s_openapi::api::batch::v1::CronJob>(&()),
    }
}

/// Why a `roll` target does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?}: write <kind>/<name>, like deployment/web")]
    Shape(String),
    #[error(transparent)]
    Kind(#[from] keyhole_contract::workload::UnknownKind),
    #[error("{0} is not a workload keyhole rolls: write deployment, statefulset or daemonset")]
    NotRolled(Kind),
}

/// `<kind>/<name>`, as kubectl writes it.
pub fn parse_target(s: &str) -> Result<(Kind, String), TargetError> {
    let shape = || TargetError::Shape(s.to_owned());
    let (kind, name) = s.split_once('/').ok_or_else(shape)?;
    if name.is_empty() || name.contains('/') {
        return Err(shape());
    }
    let kind: Kind = kind.parse()?;
    if !kind.rolls() {
        return Err(TargetError::NotRolled(kind));
    }
    Ok((kind, name.to_owned()))
}

/// A workload type the controller watches, reduced to what it reads.
pub trait Workload:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
    /// Drops what the controller never reads (pod spec, status, managed fields),
    /// so the cache of a large cluster stays small.
    fn strip(&mut self);
}

macro_rules! workload {
    ($t:ty, $kind:expr) => {
        impl Workload for $t {
            const KIND: Kind = $kind;
            fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
                self.spec.template.metadata.as_ref()?.annotations.as_ref()
            }
            fn strip(&mut self) {
                self.spec.template.spec = None;
                self.status = None;
                self.metadata.managed_fields = None;
            }
        }
    };
}
workload!(Deployment, Kind::Deployment);
workload!(StatefulSet, Kind::StatefulSet);
workload!(DaemonSet, Kind::DaemonSet);

/// One workload as the poll sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub observed: Option<String>,
    pub template: BTreeMap<String, String>,
    pub reference: ObjectReference,
}

impl Candidate {
    pub fn of<K: Workload>(obj: &K) -> Option<Candidate> {
        let meta = obj.meta();
        Some(Candidate {
            kind: K::KIND,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            resource_version: meta.resource_version.clone(),
            observed: meta.annotations.as_ref().and_then(|a| a.get(OBSERVED_VERSIONS)).cloned(),
            template: obj.template_annotations().cloned().unwrap_or_default(),
            reference: obj.object_ref(&()),
        })
    }

    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Records `observed` on the workload; the pod template is left alone.
pub fn record_patch(observed: &Versions) -> Value {
    json!({"metadata": {"annotations": {OBSERVED_VERSIONS: state::encode(observed)}}})
}

/// Records `observed` and sets the template's digest: the workload rolls.
pub fn roll_patch(observed: &Versions, digest: &str) -> Value {
    json!({
        "metadata": {"annotations": {OBSERVED_VERSIONS: state::encode(observed)}},
        "spec": {"template": {"metadata": {"annotations": {VERSIONS: digest}}}},
    })
}

/// The Event's note: which reference moved from which version to which. Names
/// and versions only; at most 1 kB as the Events API asks.
pub fn rotated_note(moves: &[Move], refs: &BTreeMap<String, Vec<String>>, digest: &str) -> String {
    truncate(format!("{}; set {VERSIONS}={digest} to roll out", moved(moves, refs)), MAX_NOTE)
}

/// The Warning's note for a rollout the budget defers.
pub fn deferred_note(
    moves: &[Move],
    refs: &BTreeMap<String, Vec<String>>,
    max_rollouts: usize,
    interval: std::time::Duration,
) -> String {
    truncate(
        format!(
            "{}; the rollout waits: {max_rollouts} rollouts per {interval:?} have started already (--max-rollouts), \
             it starts in a later poll",
            moved(moves, refs)
        ),
        MAX_NOTE,
    )
}

fn moved(moves: &[Move], refs: &BTreeMap<String, Vec<String>>) -> String {
    let parts: Vec<String> = moves
        .iter()
        .map(|m| {
            let annotations = refs.get(&m.reference).map(|a| a.join(", ")).unwrap_or_default();
            format!("{annotations} ({}) moved from version {} to {}", m.reference, m.from, m.to)
        })
        .collect();
    parts.join("; ")
}

/// The Warning a workload was last given, by uid: each is said once per
/// change of state, and again only after the workload was fine in between.
#[derive(Debug)]
pub struct Warned<S> {
    last: std::collections::HashMap<String, S>,
}

impl<S> Default for Warned<S> {
    fn default() -> Self {
        Warned { last: std::collections::HashMap::new() }
    }
}

impl<S: PartialEq> Warned<S> {
    /// Whether `uid` is to be told `state` now (it was told something else, or nothing).
    pub fn first(&mut self, uid: &str, state: S) -> bool {
        if self.last.get(uid) == Some(&state) {
            return false;
        }
        self.last.insert(uid.to_owned(), state);
        true
    }

    /// The workload is fine: a later failure is news again.
    pub fn clear(&mut self, uid: &str) {
        self.last.remove(uid);
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.last.retain(|uid, _| keep(uid));
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

pub fn api(client: &kube::Client, kind: Kind, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &api_resource(kind))
}

/// A JSON merge patch: annotations are merged, nothing else is touched.
pub async fn patch(client: &kube::Client, c: &Candidate, body: &Value) -> Result<DynamicObject, kube::Error> {
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
    api(client, c.kind, &c.namespace).patch(&c.name, &pp, &Patch::Merge(body)).await
}

/// Publishes a Normal event on the workload; a failure is only logged.
pub async fn event(recorder: &Recorder, c: &Candidate, reason: &str, note: String) {
    publish(recorder, c, EventType::Normal, reason, note).await
}

/// [`event`], of type Warning.
pub async fn warning(recorder: &Recorder, c: &Candidate, reason: &str, note: String) {
    publish(recorder, c, EventType::Warning, reason, note).await
}

/// An Event's note may hold 1 KiB: longer ones are cut at a character boundary.
const MAX_NOTE: usize = 1000;

async fn publish(recorder: &Recorder, c: &Candidate, type_: EventType, reason: &str, note: String) {
    let note = Some(truncate(note, MAX_NOTE));
    let ev = Event { type_, reason: reason.to_owned(), note, action: "Rollout".to_owned(), secondary: None };
    if let Err(e) = recorder.publish(&ev, &c.reference).await {
        tracing::warn!(workload = %c.key(), error = %e, "could not publish the event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_kubectl() {
        assert_eq!(parse_target("deployment/web").unwrap(), (Kind::Deployment, "web".into()));
        assert_eq!(parse_target("sts/db").unwrap(), (Kind::StatefulSet, "db".into()));
        assert_eq!(parse_target("DaemonSet/agent").unwrap(), (Kind::DaemonSet, "agent".into()));
        assert!(parse_target("web").unwrap_err().to_string().contains("<kind>/<name>"));
        assert!(parse_target("job/x").unwrap_err().to_string().contains("not a workload keyhole rolls"));
        assert!(parse_target("pod/x").unwrap_err().to_string().contains("not a workload kind"));
        assert!(parse_target("deployment/").is_err());
    }

    #[test]
    fn patches_touch_only_keyholes_annotations() {
        let v: Versions = [("/a".to_owned(), 4.into())].into();
        assert_eq!(
            record_patch(&v),
            json!({"metadata": {"annotations": {"keyhole.dev/observed-versions": "{\"/a\":4}"}}})
        );
        let p = roll_patch(&v, "0123456789abcdef");
        assert_eq!(p["spec"]["template"]["metadata"]["annotations"]["keyhole.dev/versions"], "0123456789abcdef");
        assert_eq!(p["metadata"]["annotations"]["keyhole.dev/observed-versions"], "{\"/a\":4}");
        assert_eq!(p.as_object().unwrap().len(), 2);
    }

    #[test]
    fn the_note_names_annotation_reference_and_versions() {
        let refs: BTreeMap<String, Vec<String>> =
            [("/app/db".to_owned(), vec!["keyhole.dev/secret-pw".to_owned(), "keyhole.dev/secret-user".to_owned()])]
                .into();
        let note = rotated_note(&[Move { reference: "/app/db".into(), from: 3.into(), to: 4.into() }], &refs, "abc");
        assert_eq!(
            note,
            "keyhole.dev/secret-pw, keyhole.dev/secret-user (/app/db) moved from version 3 to 4; set keyhole.dev/versions=abc to roll out"
        );
        let many: Vec<Move> =
            (0..100).map(|i| Move { reference: format!("/p/{i}"), from: 1.into(), to: 2.into() }).collect();
        let long = rotated_note(&many, &refs, "abc");
        assert!(long.len() <= 1000 && long.ends_with("..."));
    }

    #[test]
    fn the_deferred_note_says_what_moved_and_why_it_waits() {
        let refs: BTreeMap<String, Vec<String>> =
            [("/app/db".to_owned(), vec!["keyhole.dev/secret-pw".to_owned()])].into();
        let note = deferred_note(
            &[Move { reference: "/app/db".into(), from: 1.into(), to: 2.into() }],
            &refs,
            10,
            std::time::Duration::from_secs(60),
        );
        assert_eq!(
            note,
            "keyhole.dev/secret-pw (/app/db) moved from version 1 to 2; the rollout waits: 10 rollouts per 60s have \
             started already (--max-rollouts), it starts in a later poll"
        );
    }

    #[test]
    fn a_warning_is_said_once_per_state_and_again_after_a_recovery() {
        let mut w = Warned::default();
        assert!(w.first("u1", "lookup:/a"));
        assert!(!w.first("u1", "lookup:/a"), "the same state again");
        assert!(w.first("u2", "lookup:/a"), "another workload");
        assert!(w.first("u1", "patch"), "a new state");
        assert!(w.first("u1", "lookup:/a"), "back to the first one: a change too");
        w.clear("u1");
        assert!(w.first("u1", "lookup:/a"), "failing again after a good poll");
        w.retain(|uid| uid != "u2");
        assert!(w.first("u2", "lookup:/a"), "a workload gone and back");
    }

    #[test]
    fn stripping_keeps_the_template_annotations() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "n", "uid": "u", "annotations": {"keyhole.dev/observed-versions": "{}"}},
            "spec": {"selector": {}, "template": {
                "metadata": {"annotations": {"keyhole.dev/inject": "true"}},
                "spec": {"containers": [{"name": "app", "image": "x"}]}}},
            "status": {"replicas": 1}
        }))
        .unwrap();
        d.strip();
        assert!(d.spec.template.spec.is_none() && d.status.is_none());
        let c = Candidate::of(&d).unwrap();
        assert_eq!(c.template["keyhole.dev/inject"], "true");
        assert_eq!(c.observed.as_deref(), Some("{}"));
        assert_eq!(c.key(), "Deployment/n/w");
        assert_eq!(c.reference.kind.as_deref(), Some("Deployment"));
    }
}
