//! The plan: everything the injector needs, resolved by the webhook from the pod's
//! annotations and the operator's stores, handed over as JSON in [`PLAN_ENV`].
//! It carries references, never values.
//!
//! [`PLAN_ENV`]: crate::names::PLAN_ENV

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::annotations::{self, InjectSpec, Problem, Problems};
use crate::names;
use crate::reference::Reference;
use crate::store::{Store, Stores};

/// Bumped when the plan's shape changes incompatibly; the injector refuses others.
pub const PLAN_VERSION: u32 = 1;
/// Default total deadline for the injector's work, retries included.
pub const DEFAULT_DEADLINE_SECONDS: u64 = 60;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub version: u32,
    pub store_name: String,
    pub store: Store,
    /// aws-ssm: role ARN; vault: auth role.
    pub role: String,
    /// The projected token for the store's audience.
    pub token_path: String,
    /// Where the files go (the tmpfs); `None` when output is `secret` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretTarget>,
    pub file_mode: u32,
    pub items: Vec<PlanItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PlanTemplate>,
    pub deadline_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub name: String,
    pub reference: Reference,
}

impl PlanItem {
    pub fn annotation(&self) -> String {
        InjectSpec::secret_annotation(&self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTemplate {
    pub name: String,
    pub source: String,
}

/// Where the native Secret goes and who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretTarget {
    /// Projected token for the API server.
    pub api_token_path: String,
    /// The Secret's name; `None` for a bare pod, named after the pod at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pod's controller; `None` for a bare pod, which owns its own Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// What the plan needs to know about the pod beyond its annotations.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    /// The app containers' UID is set in the pod spec.
    pub uid_known: bool,
    /// The pod's controller (its `controller: true` owner reference).
    pub controller: Option<Owner>,
    /// `pod-template-hash` or `controller-revision-hash`.
    pub revision: Option<String>,
}

/// Resolves a spec against the operator's stores. Every problem names its annotation.
pub fn build(spec: &InjectSpec, stores: &Stores, pod: &PodFacts) -> Result<Plan, Problems> {
    let mut problems = Vec::new();
    let (store_name, store) = match stores.resolve(spec.store.as_deref()) {
        Ok(found) => found,
        Err(e) => {
            let key = if spec.store.is_some() { annotations::STORE } else { annotations::INJECT };
            let fix = if spec.store.is_some() { "name one of them" } else { "add keyhole.dev/store naming one" };
            return Err(Problems(vec![Problem::new(key, format!("{e}: {fix}"))]));
        }
    };

    let role = match spec.role.as_deref().or(store.default_role()) {
        Some(r) => r.to_owned(),
        None => {
            let example = match store.kind() {
                crate::StoreKind::AwsSsm => "arn:aws:iam::<account>:role/<name>",
                crate::StoreKind::Vault => "the auth role bound to this service account",
            };
            problems.push(Problem::new(
                annotations::ROLE,
                format!("store {store_name:?} has no defaultRole: write keyhole.dev/role: {example}"),
            ));
            String::new()
        }
    };

    let mut items = Vec::with_capacity(spec.secrets.len());
    for s in &spec.secrets {
        match Reference::parse(store.kind(), &s.reference) {
            Ok(reference) => items.push(PlanItem { name: s.name.clone(), reference }),
            Err(e) => problems.push(Problem::new(
                InjectSpec::secret_annotation(&s.name),
                format!("bad {} reference for store {store_name:?}: {e}", store.kind().as_str()),
            )),
        }
    }

    if !problems.is_empty() {
        return Err(Problems(problems));
    }

    let secret = spec.output.secret().then(|| SecretTarget {
        api_token_path: format!("{}/{}", names::API_TOKEN_DIR, names::TOKEN_FILE),
        name: pod.controller.as_ref().map(|owner| secret_name(&revision_base(&owner.name, pod.revision.as_deref()))),
        owner: pod.controller.clone(),
    });

    Ok(Plan {
        version: PLAN_VERSION,
        store_name: store_name.to_owned(),
        store: store.clone(),
        role,
        token_path: format!("{}/{}", names::TOKEN_DIR, names::TOKEN_FILE),
        output_dir: spec.output.files().then(|| names::INJECTOR_OUTPUT_DIR.to_owned()),
        secret,
        file_mode: spec.file_mode.unwrap_or(if pod.uid_known { 0o400 } else { 0o444 }),
        items,
        templates: spec
            .templates
            .iter()
            .map(|t| PlanTemplate { name: t.name.clone(), source: t.source.clone() })
            .collect(),
        deadline_seconds: DEFAULT_DEADLINE_SECONDS,
    })
}

/// One name per controller and revision. A ReplicaSet's name already carries its
/// `pod-template-hash`, a `controller-revision-hash` carries its controller's name;
/// the hash alone could collide between two workloads with equal templates.
fn revision_base(owner: &str, revision: Option<&str>) -> String {
    match revision {
        None => owner.to_owned(),
        Some(rev) if owner.ends_with(rev) => owner.to_owned(),
        Some(rev) if rev.starts_with(owner) => rev.to_owned(),
        Some(rev) => format!("{owner}-{rev}"),
    }
}

/// Name of the Secret of one workload revision (or of a bare pod).
pub fn secret_name(base: &str) -> String {
    let name = format!("keyhole-{base}");
    if name.len() <= 253 {
        return name;
    }
    let digest = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    format!("{}-{digest}", &name[..253 - 17])
}

impl Plan {
    /// Digest of what the values depend on (store, role, references, templates):
    /// two pods whose plans digest alike would fetch the same values.
    pub fn digest(&self) -> String {
        #[derive(Serialize)]
        struct What<'a> {
            store_name: &'a str,
            store: &'a Store,
            role: &'a str,
            items: &'a [PlanItem],
            templates: &'a [PlanTemplate],
        }
        let what = What {
            store_name: &self.store_name,
            store: &self.store,
            role: &self.role,
            items: &self.items,
            templates: &self.templates,
        };
        let bytes = serde_json::to_vec(&what).expect("plan serializes");
        hex::encode(Sha256::digest(bytes))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plan serializes")
    }

    pub fn from_json(s: &str) -> Result<Self, PlanError> {
        let plan: Plan = serde_json::from_str(s).map_err(PlanError::Json)?;
        if plan.version != PLAN_VERSION {
            return Err(PlanError::Version { found: plan.version });
        }
        Ok(plan)
    }
}

/// Why a plan could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the plan is not valid JSON of keyhole's plan: {0}")]
    Json(#[source] serde_json::Error),
    #[error("plan version {found} is not {PLAN_VERSION}: the injector image and the webhook differ in version")]
    Version { found: u32 },
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stores() -> Stores {
        serde_json::from_str(
            r#"{"defaultStore": "vault", "stores": {
                "vault": {"kind": "vault", "address": "https://vault:8200", "auth": {"method": "kubernetes"}, "defaultRole": "app"},
                "aws": {"kind": "aws-ssm", "region": "eu-west-1"}}}"#,
        )
        .unwrap()
    }

    fn spec(pairs: &[(&str, &str)]) -> InjectSpec {
        let a: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        annotations::parse(&a).unwrap().unwrap()
    }

    #[test]
    fn builds_a_plan_that_round_trips() {
        let s = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/app/db#password")]);
        let plan = build(&s, &stores(), &PodFacts { uid_known: true, ..Default::default() }).unwrap();
        assert_eq!(plan.role, "app");
        assert_eq!(plan.file_mode, 0o400);
        assert_eq!(plan.output_dir.as_deref(), Some(names::INJECTOR_OUTPUT_DIR));
        assert_eq!(plan.secret, None);
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan);
        let unknown_uid = build(&s, &stores(), &PodFacts::default()).unwrap();
        assert_eq!(unknown_uid.file_mode, 0o444);
        assert_eq!(plan.digest(), unknown_uid.digest(), "file mode does not change the values");
    }

    #[test]
    fn problems_name_the_annotation_and_store() {
        let s = spec(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/store", "aws"),
            ("keyhole.dev/secret-pw", "no spaces allowed"),
        ]);
        let text = build(&s, &stores(), &PodFacts::default()).unwrap_err().to_string();
        assert!(text.contains("keyhole.dev/role: store \"aws\" has no defaultRole"), "{text}");
        assert!(text.contains("keyhole.dev/secret-pw: bad aws-ssm reference for store \"aws\""), "{text}");
        let s = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/store", "gcp"), ("keyhole.dev/secret-pw", "/x")]);
        let text = build(&s, &stores(), &PodFacts::default()).unwrap_err().to_string();
        assert!(text.starts_with("keyhole.dev/store: unknown store \"gcp\" (known stores: aws, vault)"), "{text}");
    }

    #[test]
    fn secret_target_is_named_by_revision() {
        let s = spec(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/output", "secret"),
            ("keyhole.dev/secret-pw", "secret/a#b"),
        ]);
        let owner = Owner {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-5d8f".into(),
            uid: "u".into(),
        };
        let facts = PodFacts { uid_known: false, controller: Some(owner.clone()), revision: Some("5d8f".into()) };
        let plan = build(&s, &stores(), &facts).unwrap();
        let t = plan.secret.unwrap();
        assert_eq!(t.name.as_deref(), Some("keyhole-web-5d8f"));
        assert_eq!(revision_base("web", Some("web-6c5d")), "web-6c5d");
        assert_eq!(revision_base("job", Some("abc")), "job-abc");
        assert_eq!(t.owner, Some(owner));
        assert_eq!(plan.output_dir, None);
        assert!(secret_name(&"x".repeat(300)).len() <= 253);
    }

    #[test]
    fn refuses_foreign_plan_versions() {
        let s = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/a#b")]);
        let mut plan = build(&s, &stores(), &PodFacts::default()).unwrap();
        plan.version = 9;
        assert!(Plan::from_json(&plan.to_json()).unwrap_err().to_string().contains("differ in version"));
    }
}
