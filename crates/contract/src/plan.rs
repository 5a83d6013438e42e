//! The plan: everything the injector needs, resolved by the webhook from the pod's
//! annotations and the operator's stores, handed over as JSON in the pod's
//! [`PLAN_ANNOTATION`], bound to the injector by its SHA-256 in [`PLAN_SHA256_ENV`].
//! It carries references, never values.
//!
//! [`PLAN_ANNOTATION`]: crate::names::PLAN_ANNOTATION
//! [`PLAN_SHA256_ENV`]: crate::names::PLAN_SHA256_ENV

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::{AccessError, Scope};
use crate::annotations::{self, InjectSpec, Problem, Problems};
use crate::names;
use crate::reference::{FolderRef, Reference};
use crate::store::{Store, Stores};

/// The newest plan shape; the injector refuses newer ones. A plan says the
/// oldest version that can carry it: 1 without paths (what every plan was
/// before them), 2 with, so an older injector refuses a plan it would read
/// only in part rather than leave the folders' files out.
pub const PLAN_VERSION: u32 = 2;
/// The shape before `path-<name>`.
const PLAN_VERSION_WITHOUT_PATHS: u32 = 1;
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
    pub paths: Vec<PlanPath>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<PlanTemplate>,
    pub deadline_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub name: String,
    pub reference: Reference,
    /// Made and stored when missing (the store allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<crate::generate::Recipe>,
}

impl PlanItem {
    pub fn annotation(&self) -> String {
        InjectSpec::secret_annotation(&self.name)
    }
}

/// A `path-<name>`: every leaf of the folder is a value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPath {
    pub name: String,
    pub folder: FolderRef,
}

impl PlanPath {
    pub fn annotation(&self) -> String {
        InjectSpec::path_annotation(&self.name)
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
    /// The ControllerRevision of a StatefulSet's or DaemonSet's pod: it owns
    /// the Secret, so the Secret goes when the revision is pruned from history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
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
    /// The pod's namespace, for the stores' `allow`.
    pub namespace: Option<String>,
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
                crate::StoreKind::AwsSsm | crate::StoreKind::AwsSecretsManager => "arn:aws:iam::<account>:role/<name>",
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
            Ok(reference) => {
                if s.generate.is_some()
                    && let Err(why) = can_generate(store_name, store, &reference)
                {
                    problems.push(Problem::new(format!("{}{}", annotations::GENERATE_PREFIX, s.name), why));
                }
                items.push(PlanItem { name: s.name.clone(), reference, generate: s.generate.clone() });
            }
            Err(e) => problems.push(Problem::new(
                InjectSpec::secret_annotation(&s.name),
                format!("bad {} reference for store {store_name:?}: {e}", store.kind().as_str()),
            )),
        }
    }
    let mut paths = Vec::with_capacity(spec.paths.len());
    for p in &spec.paths {
        match FolderRef::parse(store.kind(), &p.folder) {
            Ok(folder) => paths.push(PlanPath { name: p.name.clone(), folder }),
            Err(e) => problems.push(Problem::new(
                InjectSpec::path_annotation(&p.name),
                format!("bad {} folder for store {store_name:?}: {e}", store.kind().as_str()),
            )),
        }
    }
    // One cas-0 write makes a Vault secret: a second generated field of the
    // same secret could never be added.
    let mut generated_paths: Vec<&str> = Vec::new();
    for item in items.iter().filter(|i| i.generate.is_some()) {
        if let Reference::Vault(r) = &item.reference {
            if generated_paths.contains(&r.path.as_str()) {
                problems.push(Problem::new(
                    format!("{}{}", annotations::GENERATE_PREFIX, item.name),
                    format!("another generated value is a field of {} already: keyhole makes one field per Vault secret; use another path", r.path),
                ));
            }
            generated_paths.push(&r.path);
        }
    }
    if !role.is_empty() {
        let namespace = pod.namespace.as_deref().unwrap_or_default();
        match Scope::of(store_name, store.allow(), namespace, &role) {
            Ok(scope) => {
                for item in &items {
                    if let Err(e) = scope.check(store_name, namespace, &item.reference) {
                        problems.push(Problem::new(item.annotation(), e.to_string()));
                    }
                }
                for path in &paths {
                    if let Err(e) = scope.check_path(store_name, namespace, &path.folder.folder()) {
                        problems.push(Problem::new(path.annotation(), e.to_string()));
                    }
                }
            }
            Err(e) => {
                let key = match &e {
                    AccessError::Role { .. } => annotations::ROLE,
                    _ if spec.store.is_some() => annotations::STORE,
                    _ => annotations::INJECT,
                };
                problems.push(Problem::new(key, e.to_string()));
            }
        }
    }

    if !problems.is_empty() {
        return Err(Problems(problems));
    }

    let secret = spec.output.secret().then(|| SecretTarget {
        api_token_path: format!("{}/{}", names::API_TOKEN_DIR, names::TOKEN_FILE),
        name: pod.controller.as_ref().map(|owner| {
            let base = revision_base(&owner.name, pod.revision.as_deref());
            match short_uid(&owner.uid) {
                uid if uid.is_empty() => secret_name(&base),
                uid => secret_name(&format!("{base}-{uid}")),
            }
        }),
        owner: pod.controller.clone(),
        revision: pod
            .controller
            .as_ref()
            .filter(|o| o.api_version == "apps/v1" && matches!(o.kind.as_str(), "StatefulSet" | "DaemonSet"))
            .and_then(|o| pod.revision.as_deref().map(|rev| revision_base(&o.name, Some(rev)))),
    });

    Ok(Plan {
        version: if paths.is_empty() { PLAN_VERSION_WITHOUT_PATHS } else { PLAN_VERSION },
        store_name: store_name.to_owned(),
        store: store.for_plan(),
        role,
        token_path: format!("{}/{}", names::TOKEN_DIR, names::TOKEN_FILE),
        output_dir: spec.output.files().then(|| names::INJECTOR_OUTPUT_DIR.to_owned()),
        secret,
        file_mode: spec.file_mode.unwrap_or(if pod.uid_known { 0o400 } else { 0o444 }),
        items,
        paths,
        templates: spec
            .templates
            .iter()
            .map(|t| PlanTemplate { name: t.name.clone(), source: t.source.clone() })
            .collect(),
        deadline_seconds: DEFAULT_DEADLINE_SECONDS,
    })
}

/// Whether `reference` of `store` may be made when missing: the store opts in,
/// and the reference names one whole current value the backend can create
/// without overwriting (SSM: a parameter, no version, label or #key; Vault: a
/// KV v2 secret with one #field, no version).
fn can_generate(store_name: &str, store: &Store, reference: &Reference) -> Result<(), String> {
    if !store.allow_generate() {
        return Err(format!(
            "store {store_name:?} does not allow generated values: its operator sets allowGenerate: true on it (the injector's role then needs write access), or remove this annotation and create the value in the store"
        ));
    }
    match reference {
        Reference::AwsSsm(r) if r.selector.is_none() && r.key.is_none() => Ok(()),
        Reference::AwsSsm(_) => {
            Err("a generated SSM parameter is referenced by its name alone: no :version, :label or #key".into())
        }
        Reference::Vault(r) if r.version.is_none() && r.field.is_some() => Ok(()),
        Reference::Vault(_) => Err(
            "a generated Vault value is one field of a KV v2 secret: write <mount>/<path>#<field>, without ?version="
                .into(),
        ),
        Reference::AwsSecretsManager(_) => Err("aws-secretsmanager stores cannot generate values yet".into()),
    }
}

/// One name per controller and revision. A ReplicaSet's name already carries its
/// `pod-template-hash`, a `controller-revision-hash` carries its controller's name;
/// the hash alone could collide between two workloads with equal templates.
fn revision_base(owner: &str, revision: Option<&str>) -> String {
    match revision {
        None => owner.to_owned(),
        Some(rev) if owner.ends_with(&format!("-{rev}")) => owner.to_owned(),
        Some(rev) if rev.starts_with(&format!("{owner}-")) => rev.to_owned(),
        Some(rev) => format!("{owner}-{rev}"),
    }
}

/// The first 8 name-safe characters of an owner's uid: a workload deleted and
/// made again under its name gets Secrets of new names, never its old ones.
fn short_uid(uid: &str) -> String {
    uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>().to_ascii_lowercase()
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
    /// Digest of what the values depend on, and of whose they are: the store's
    /// name and kind, the role, references and templates, the namespace and
    /// the owner's uid. Operator-only fields (address, caBundle, rotationRole,
    /// allow) are left out: changing them must not turn every revision's
    /// Secret into one "made for another plan".
    pub fn digest(&self, namespace: &str, owner_uid: &str) -> String {
        #[derive(Serialize)]
        struct What<'a> {
            store_name: &'a str,
            kind: &'a str,
            role: &'a str,
            items: &'a [PlanItem],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            paths: &'a [PlanPath],
            templates: &'a [PlanTemplate],
            namespace: &'a str,
            owner_uid: &'a str,
        }
        let what = What {
            store_name: &self.store_name,
            kind: self.store.kind().as_str(),
            role: &self.role,
            items: &self.items,
            paths: &self.paths,
            templates: &self.templates,
            namespace,
            owner_uid,
        };
        let bytes = serde_json::to_vec(&what).expect("plan serializes");
        hex::encode(Sha256::digest(bytes))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plan serializes")
    }

    /// SHA-256 (hex) of the plan's JSON text exactly as written.
    pub fn json_sha256(json: &str) -> String {
        hex::encode(Sha256::digest(json.as_bytes()))
    }

    pub fn from_json(s: &str) -> Result<Self, PlanError> {
        let plan: Plan = serde_json::from_str(s).map_err(PlanError::Json)?;
        if plan.version > PLAN_VERSION || plan.version == 0 {
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
    #[error(
        "plan version {found} is not one this injector reads (1 to {PLAN_VERSION}): the injector image and the webhook differ in version"
    )]
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
        assert_eq!(plan.digest("ns", "u"), unknown_uid.digest("ns", "u"), "file mode does not change the values");
    }

    #[test]
    fn a_plan_with_paths_says_version_2_and_one_without_stays_1() {
        let without = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/app/db#password")]);
        let plain = build(&without, &stores(), &PodFacts::default()).unwrap();
        assert_eq!(plain.version, 1);
        assert!(!plain.to_json().contains("paths"), "{}", plain.to_json());
        let with = spec(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/store", "aws"),
            ("keyhole.dev/role", "arn:aws:iam::1:role/app"),
            ("keyhole.dev/path-app", "/app/?recursive=true"),
        ]);
        let plan = build(&with, &stores(), &PodFacts::default()).unwrap();
        assert_eq!(plan.version, 2);
        assert_eq!(
            plan.paths,
            vec![PlanPath { name: "app".into(), folder: FolderRef { path: "/app".into(), recursive: true } }]
        );
        assert_eq!(Plan::from_json(&plan.to_json()).unwrap(), plan);
        let mut other = plan.clone();
        other.paths[0].folder.recursive = false;
        assert_ne!(other.digest("ns", "u"), plan.digest("ns", "u"), "the folders are in the digest");
        let newer = plan.to_json().replace(r#""version":2"#, r#""version":3"#);
        assert!(
            Plan::from_json(&newer).unwrap_err().to_string().contains("plan version 3 is not one this injector reads")
        );
        let bad = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/path-app", "secret/app#pw")]);
        let text = build(&bad, &stores(), &PodFacts::default()).unwrap_err().to_string();
        assert!(text.starts_with("keyhole.dev/path-app: bad vault folder for store \"vault\""), "{text}");
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
            uid: "3F2A9C1D-77b0-4e5e-9a4b-0c9d1e2f3a4b".into(),
        };
        let facts = PodFacts {
            uid_known: false,
            controller: Some(owner.clone()),
            revision: Some("5d8f".into()),
            ..Default::default()
        };
        let plan = build(&s, &stores(), &facts).unwrap();
        let t = plan.secret.clone().unwrap();
        assert_eq!(
            t.name.as_deref(),
            Some("keyhole-web-5d8f-3f2a9c1d"),
            "the owner's uid keeps a re-made workload apart"
        );
        assert_eq!(t.revision, None, "a ReplicaSet is its own revision");
        assert_eq!(revision_base("web", Some("web-6c5d")), "web-6c5d");
        assert_eq!(revision_base("job", Some("abc")), "job-abc");
        assert_eq!(revision_base("b", Some("b7c9f")), "b-b7c9f", "a hash that starts like its owner is still a hash");
        assert_eq!(t.owner.as_ref(), Some(&owner));
        assert_eq!(plan.output_dir, None);
        assert!(secret_name(&"x".repeat(300)).len() <= 253);

        let sts = Owner { kind: "StatefulSet".into(), name: "db".into(), ..owner };
        let facts = PodFacts { controller: Some(sts), revision: Some("db-7c9f".into()), ..Default::default() };
        let t = build(&s, &stores(), &facts).unwrap().secret.unwrap();
        assert_eq!(t.revision.as_deref(), Some("db-7c9f"), "the ControllerRevision owns a StatefulSet's Secret");
        assert_eq!(t.name.as_deref(), Some("keyhole-db-7c9f-3f2a9c1d"));
    }

    #[test]
    fn the_digest_covers_what_the_values_depend_on_and_nothing_else() {
        let s = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/app/db#password")]);
        let plan = build(&s, &stores(), &PodFacts::default()).unwrap();
        let d = plan.digest("ns", "u1");
        let mut operator = plan.clone();
        let Store::Vault(v) = &mut operator.store else { panic!("vault") };
        v.address = "https://elsewhere:8200".into();
        v.ca_bundle = Some("PEM".into());
        v.rotation_role = Some("rot".into());
        assert_eq!(operator.digest("ns", "u1"), d, "operator-only fields leave the digest alone");
        assert_ne!(plan.digest("other", "u1"), d, "the namespace is in it");
        assert_ne!(plan.digest("ns", "u2"), d, "the owner is in it");
        let mut role = plan.clone();
        role.role = "admin".into();
        assert_ne!(role.digest("ns", "u1"), d, "the role is in it");
    }

    #[test]
    fn a_scoped_store_refuses_what_the_namespace_may_not_read() {
        let stores: Stores = serde_json::from_str(
            r#"{"defaultStore": "vault", "stores": {"vault": {"kind": "vault", "address": "https://v",
                "auth": {"method": "kubernetes"}, "defaultRole": "team-a",
                "allow": [{"namespaces": ["team-a"], "roles": ["team-a"], "paths": ["secret/team-a/"]}]}}}"#,
        )
        .unwrap();
        stores.validate().unwrap();
        let facts = |ns: &str| PodFacts { namespace: Some(ns.into()), ..Default::default() };
        let ok = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/team-a/db#pw")]);
        let plan = build(&ok, &stores, &facts("team-a")).unwrap();
        assert!(!plan.to_json().contains("allow"), "the grants stay with the webhook: {}", plan.to_json());
        let text = build(&ok, &stores, &facts("team-b")).unwrap_err().to_string();
        assert!(text.starts_with(r#"keyhole.dev/inject: store "vault" is not open to namespace "team-b""#), "{text}");
        let outside = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/team-b/db#pw")]);
        let text = build(&outside, &stores, &facts("team-a")).unwrap_err().to_string();
        assert_eq!(
            text,
            r#"keyhole.dev/secret-pw: store "vault" lets namespace "team-a" read secret/team-a/ only; "secret/team-b/db" is outside"#
        );
        // A folder is inside only if a granted folder covers all of it.
        let folder = |f: &str| spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/path-all", f)]);
        assert!(build(&folder("secret/team-a/app/?recursive=true"), &stores, &facts("team-a")).is_ok());
        assert!(build(&folder("secret/team-a/"), &stores, &facts("team-a")).is_ok());
        let text = build(&folder("secret/?recursive=true"), &stores, &facts("team-a")).unwrap_err().to_string();
        assert_eq!(
            text,
            r#"keyhole.dev/path-all: store "vault" lets namespace "team-a" read secret/team-a/ only; "secret/" is outside"#
        );
        let admin = spec(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/role", "admin"),
            ("keyhole.dev/secret-pw", "secret/team-a/db#pw"),
        ]);
        let text = build(&admin, &stores, &facts("team-a")).unwrap_err().to_string();
        assert!(
            text.starts_with(r#"keyhole.dev/role: store "vault" lets namespace "team-a" use roles team-a"#),
            "{text}"
        );
    }

    #[test]
    fn a_generated_value_needs_a_store_that_allows_it_and_a_whole_current_value() {
        let stores: Stores = serde_json::from_str(
            r#"{"stores": {
                "aws": {"kind": "aws-ssm", "region": "eu-west-1", "defaultRole": "r"},
                "aws-gen": {"kind": "aws-ssm", "region": "eu-west-1", "defaultRole": "r", "allowGenerate": true},
                "vault-gen": {"kind": "vault", "address": "https://v", "auth": {"method": "kubernetes"},
                              "defaultRole": "r", "allowGenerate": true}}}"#,
        )
        .unwrap();
        let plan = |store: &str, reference: &str| {
            let s = spec(&[
                ("keyhole.dev/inject", "true"),
                ("keyhole.dev/store", store),
                ("keyhole.dev/secret-k", reference),
                ("keyhole.dev/generate-k", "length=32"),
            ]);
            build(&s, &stores, &PodFacts::default()).map_err(|p| p.to_string())
        };
        let ok = plan("aws-gen", "/app/session").unwrap();
        assert_eq!(ok.items[0].generate.as_ref().map(ToString::to_string).as_deref(), Some("length=32"));
        assert!(Plan::from_json(&ok.to_json()).unwrap() == ok, "the recipe round-trips through the plan");
        assert!(plan("vault-gen", "secret/app/session#key").is_ok());
        for (store, reference, hint) in [
            ("aws", "/app/session", "does not allow generated values: its operator sets allowGenerate: true"),
            ("aws-gen", "/app/session:2", "by its name alone"),
            ("aws-gen", "/app/session#k", "by its name alone"),
            ("vault-gen", "secret/app/session", "one field of a KV v2 secret"),
            ("vault-gen", "secret/app/session?version=1#key", "one field of a KV v2 secret"),
        ] {
            let err = plan(store, reference).unwrap_err();
            assert!(err.starts_with("keyhole.dev/generate-k: ") && err.contains(hint), "{store} {reference}: {err}");
        }
        let two = spec(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/store", "vault-gen"),
            ("keyhole.dev/secret-a", "secret/app/s#a"),
            ("keyhole.dev/generate-a", "length=32"),
            ("keyhole.dev/secret-b", "secret/app/s#b"),
            ("keyhole.dev/generate-b", "length=32"),
        ]);
        let err = build(&two, &stores, &PodFacts::default()).unwrap_err().to_string();
        assert!(err.contains("keyhole.dev/generate-b: another generated value is a field of secret/app/s"), "{err}");
        let without = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-a", "/x")]);
        let mut a: BTreeMap<String, String> = [("keyhole.dev/generate-b".to_owned(), "length=32".to_owned())].into();
        a.extend([("keyhole.dev/inject".into(), "true".into()), ("keyhole.dev/secret-a".into(), "/x".into())]);
        let err = annotations::parse(&a).unwrap_err().to_string();
        assert!(err.contains("keyhole.dev/generate-b: there is no keyhole.dev/secret-b"), "{err}");
        assert!(without.secrets[0].generate.is_none());
    }

    #[test]
    fn refuses_foreign_plan_versions() {
        let s = spec(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-pw", "secret/a#b")]);
        let mut plan = build(&s, &stores(), &PodFacts::default()).unwrap();
        plan.version = 9;
        assert!(Plan::from_json(&plan.to_json()).unwrap_err().to_string().contains("differ in version"));
    }
}
