//! The pure heart of the webhook: a pod in, a JSON patch (or the problems) out.
//!
//! Additive only: arrays are created only when missing, the injector goes first
//! among the init containers, nothing of the user's is replaced or reordered, and
//! the status marker makes a second review a no-op.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, ProjectedVolumeSource, SeccompProfile,
    SecretEnvSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keyhole_contract::annotations::{self, InjectSpec, Problem, Problems};
use keyhole_contract::names;
use keyhole_contract::plan::{self, Owner, Plan, PodFacts};
use serde_json::Value;

use keyhole_contract::config::Config;

use crate::slim::{ContainerView, PodView, SpecView};

/// Where the injector binary lives in keyhole's image.
pub const INJECTOR_COMMAND: &str = "/usr/local/bin/keyhole-injector";
/// Volume names keyhole adds; a pod may neither define nor mount them itself.
pub const RESERVED_VOLUMES: [&str; 4] =
    [names::SECRETS_VOLUME, names::TOKEN_VOLUME, names::API_TOKEN_VOLUME, names::PLAN_VOLUME];

/// What the webhook does with one pod.
#[derive(Debug)]
pub enum Mutation {
    /// Nothing to do, and why (not opted in, already injected).
    Skip(&'static str),
    /// The patch, and the plan it carries (for logs and tests: references only).
    Patch { patch: Patch, plan: Box<Plan> },
}

/// A container the values go to: an app container or an init container (native
/// sidecars included), by index in the pod as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    App(usize),
    Init(usize),
}

impl Target {
    fn container<'a>(&self, spec: &'a SpecView) -> &'a ContainerView {
        match *self {
            Target::App(i) => &spec.containers[i],
            Target::Init(i) => &spec.init_containers.as_ref().expect("init target exists")[i],
        }
    }
    fn pointer(&self, field: &str) -> Vec<String> {
        let (list, i) = match *self {
            Target::App(i) => ("containers", i),
            Target::Init(i) => ("initContainers", i),
        };
        vec!["spec".into(), list.into(), i.to_string(), field.into()]
    }
}

/// The UID and GID the injector runs as when the app runs as root: the
/// image's own non-root user (`USER 65532:65532` in the Containerfile).
pub const INJECTOR_UID: i64 = 65532;

/// Decides what to do with `pod` (as received, in `namespace`).
pub fn mutate(pod: &PodView, config: &Config) -> Result<Mutation, Problems> {
    if let Some(why) = pod.over_limits() {
        return Err(one(annotations::INJECT, &why));
    }
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_deref().unwrap_or(&empty);
    let Some(spec) = annotations::parse(annotations)? else {
        return Ok(Mutation::Skip("not opted in"));
    };
    let Some(pod_spec) = pod.spec.as_ref() else {
        return Err(one(annotations::INJECT, "the pod has no spec"));
    };
    // Only keyhole's own injector marks a pod as done: the status annotation
    // alone is something anyone can write, and would skip the injection.
    if injector_present(pod_spec) {
        return Ok(Mutation::Skip("already injected"));
    }
    if pod_spec.os.as_ref().is_some_and(|os| os.name != "linux") {
        return Err(one(
            annotations::INJECT,
            "keyhole injects Linux pods only (spec.os.name is not linux): remove keyhole.dev/inject from this pod",
        ));
    }

    let mut problems = check_reserved_names(pod_spec);
    let targets = match targets(&spec, pod_spec) {
        Ok(t) => t,
        Err(p) => {
            problems.push(p);
            Vec::new()
        }
    };
    if spec.output.files() {
        for t in &targets {
            let c = t.container(pod_spec);
            if c.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == spec.mount_path) {
                problems.push(Problem::new(
                    annotations::MOUNT_PATH,
                    format!(
                        "container {:?} already mounts something at {}: set keyhole.dev/mount-path to a free directory",
                        c.name, spec.mount_path
                    ),
                ));
            }
        }
    }

    let identity = identity(pod_spec, &targets);
    let facts = PodFacts {
        namespace: pod.metadata.namespace.clone(),
        uid_known: one_uid(pod_spec, &targets),
        controller: controller(pod),
        revision: revision(pod),
    };
    if spec.output.secret() && facts.controller.is_none() && pod.metadata.name.as_deref().unwrap_or("").is_empty() {
        problems.push(Problem::new(
            annotations::OUTPUT,
            "a bare pod with only generateName has no stable Secret name: give the pod a name, run it from a workload, or use output files",
        ));
    }
    let plan = match plan::build(&spec, &config.stores, &facts) {
        Ok(plan) => Some(plan),
        Err(Problems(more)) => {
            problems.extend(more);
            None
        }
    };
    let Some(plan) = plan.filter(|_| problems.is_empty()) else {
        return Err(Problems(problems));
    };

    let secret_name = plan.secret.as_ref().map(|s| match &s.name {
        Some(n) => n.clone(),
        None => plan::secret_name(pod.metadata.name.as_deref().unwrap_or_default()),
    });
    let patch = build_patch(pod_spec, &spec, &plan, &targets, &identity, secret_name.as_deref(), config);
    Ok(Mutation::Patch { patch, plan: Box::new(plan) })
}

fn one(annotation: &str, message: &str) -> Problems {
    Problems(vec![Problem::new(annotation, message)])
}

/// keyhole's injector, as the webhook adds it, by its name and its command. Any
/// init container, not only the first: a webhook reinvoked after keyhole's
/// (`reinvocationPolicy: IfNeeded`) may have put its own in front.
fn injector_present(spec: &SpecView) -> bool {
    spec.init_containers.iter().flatten().any(is_injector)
}

fn is_injector(c: &ContainerView) -> bool {
    c.name == names::INJECTOR_CONTAINER
        && c.command.as_ref().and_then(|cmd| cmd.first()).is_some_and(|c| c == INJECTOR_COMMAND)
}

/// Keyhole's volume and container names must be free, and no container may
/// already mount its volumes: a container mounting `keyhole-token` would get the
/// backend token once we add it.
fn check_reserved_names(spec: &SpecView) -> Vec<Problem> {
    let mut problems = Vec::new();
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for c in containers.chain(spec.ephemeral_containers.iter().flatten()) {
        if c.name == names::INJECTOR_CONTAINER {
            problems.push(Problem::new(
                annotations::INJECT,
                format!("container name {:?} is reserved by keyhole: rename the pod's container", c.name),
            ));
        }
    }
    for v in spec.volumes.iter().flatten() {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            problems.push(Problem::new(
                annotations::INJECT,
                format!("volume name {:?} is reserved by keyhole: rename the pod's volume", v.name),
            ));
        }
    }
    let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let mounts = all
        .map(|c| (c.name.as_str(), c.volume_mounts.iter().flatten()))
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| (c.name.as_str(), c.volume_mounts.iter().flatten())));
    for (name, ms) in mounts {
        for m in ms {
            if RESERVED_VOLUMES.contains(&m.name.as_str()) {
                problems.push(Problem::new(
                    annotations::INJECT,
                    format!(
                        "container {name:?} mounts volume {:?}, which is reserved by keyhole: remove that mount",
                        m.name
                    ),
                ));
            }
        }
    }
    problems
}

fn targets(spec: &InjectSpec, pod: &SpecView) -> Result<Vec<Target>, Problem> {
    let Some(wanted) = &spec.containers else {
        return Ok((0..pod.containers.len()).map(Target::App).collect());
    };
    let inits = pod.init_containers.as_ref().map_or(&[][..], |b| b.as_slice());
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for name in wanted {
        if let Some(i) = pod.containers.iter().position(|c| &c.name == name) {
            out.push(Target::App(i));
        } else if let Some(i) = inits.iter().position(|c| &c.name == name && c.name != names::INJECTOR_CONTAINER) {
            out.push(Target::Init(i));
        } else {
            unknown.push(name.as_str());
        }
    }
    if unknown.is_empty() {
        out.dedup();
        return Ok(out);
    }
    let known: Vec<&str> = pod.containers.iter().chain(inits).map(|c| c.name.as_str()).collect();
    Err(Problem::new(
        annotations::CONTAINERS,
        format!(
            "{} names no container of this pod: write a comma-separated list of {}",
            unknown.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
            known.join(", ")
        ),
    ))
}

#[derive(Debug, Default)]
struct Identity {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
}

/// A container's effective UID and GID: its own security context, else the pod's.
fn effective_ids(pod: &SpecView, c: Option<&ContainerView>) -> (Option<i64>, Option<i64>) {
    let container_sc = c.and_then(|c| c.security_context.as_ref());
    let pod_sc = pod.security_context.as_ref();
    let user = container_sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user));
    let group = container_sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|s| s.run_as_group));
    (user, group)
}

/// The injector writes as the app does: the first target's UID/GID, else the pod's.
/// Root is never inherited: the injector then runs as its image's non-root user,
/// set explicitly, since a pod-level `runAsUser: 0` would otherwise reach it and
/// the kubelet refuses a root container that says `runAsNonRoot`.
fn identity(pod: &SpecView, targets: &[Target]) -> Identity {
    let (user, group) = effective_ids(pod, targets.first().map(|t| t.container(pod)));
    let group = group.filter(|g| *g != 0);
    match user {
        None => Identity::default(),
        Some(0) => Identity { run_as_user: Some(INJECTOR_UID), run_as_group: Some(INJECTOR_UID) },
        Some(uid) => Identity { run_as_user: Some(uid), run_as_group: group },
    }
}

/// Whether every target container runs as one known, non-root UID: only then
/// can the files be `0400` (owner-only) and still readable by all of them.
fn one_uid(pod: &SpecView, targets: &[Target]) -> bool {
    let mut uids = targets.iter().map(|t| effective_ids(pod, Some(t.container(pod))).0);
    match uids.next() {
        Some(Some(first)) if first != 0 => uids.all(|u| u == Some(first)),
        _ => false,
    }
}

fn controller(pod: &PodView) -> Option<Owner> {
    pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| Owner {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
    })
}

fn revision(pod: &PodView) -> Option<String> {
    let labels = pod.metadata.labels.as_ref()?;
    labels.get("pod-template-hash").or_else(|| labels.get("controller-revision-hash")).cloned()
}

fn build_patch(
    pod: &SpecView,
    spec: &InjectSpec,
    plan: &Plan,
    targets: &[Target],
    identity: &Identity,
    secret_name: Option<&str>,
    config: &Config,
) -> Patch {
    let mut ops = Vec::new();
    add(&mut ops, &["metadata", "annotations", annotations::STATUS], Value::from(annotations::STATUS_INJECTED));
    // The plan rides in an annotation (shortened by `kubectl describe`), read
    // through a downward-API file; its digest in the env makes it tamper-evident.
    let plan_json = plan.to_json();
    add(&mut ops, &["metadata", "annotations", names::PLAN_ANNOTATION], Value::from(plan_json.as_str()));

    let mut volumes = vec![token_volume(names::TOKEN_VOLUME, Some(plan.store.audience())), plan_volume()];
    if spec.output.files() {
        volumes.insert(
            0,
            Volume {
                name: names::SECRETS_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(names::SECRETS_VOLUME_SIZE_LIMIT.into())),
                    // `mode` (alpha in 1.37, EmptyDirVolumeMode) would tighten the
                    // directory; it is left unset until it is GA.
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    if spec.output.secret() {
        // No audience: the API server's own, for creating the Secret; with the
        // cluster CA, as kube-api-access has it, so this works with
        // automountServiceAccountToken: false too.
        let mut api = token_volume(names::API_TOKEN_VOLUME, None);
        if let Some(sources) = api.projected.as_mut().and_then(|p| p.sources.as_mut()) {
            sources.push(VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "kube-root-ca.crt".into(),
                    items: Some(vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: names::CA_FILE.into(),
                        ..Default::default()
                    }]),
                    optional: None,
                }),
                ..Default::default()
            });
        }
        volumes.push(api);
    }
    append_all(&mut ops, &["spec", "volumes"], pod.volumes.is_none(), volumes.iter().map(to_value));

    // Per-target mounts first, while the user's init containers keep their indices.
    for t in targets {
        let c = t.container(pod);
        if spec.output.files() {
            let mount = VolumeMount {
                name: names::SECRETS_VOLUME.into(),
                mount_path: spec.mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            };
            append(&mut ops, &t.pointer("volumeMounts"), c.volume_mounts.is_none(), to_value(&mount));
        }
        if let Some(name) = secret_name {
            let from = EnvFromSource {
                secret_ref: Some(SecretEnvSource { name: name.into(), optional: Some(false) }),
                ..Default::default()
            };
            append(&mut ops, &t.pointer("envFrom"), c.env_from.is_none(), to_value(&from));
        }
    }

    let injector = to_value(&injector_container(spec, plan, &plan_json, identity, config));
    if pod.init_containers.is_none() {
        add(&mut ops, &["spec", "initContainers"], Value::Array(vec![injector]));
    } else {
        add(&mut ops, &["spec", "initContainers", "0"], injector);
    }
    Patch(ops)
}

fn injector_container(
    spec: &InjectSpec,
    plan: &Plan,
    plan_json: &str,
    identity: &Identity,
    config: &Config,
) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
        ..Default::default()
    };
    let mut mounts = Vec::new();
    if spec.output.files() {
        mounts.push(VolumeMount {
            name: names::SECRETS_VOLUME.into(),
            mount_path: names::INJECTOR_OUTPUT_DIR.into(),
            ..Default::default()
        });
    }
    mounts.push(VolumeMount {
        name: names::TOKEN_VOLUME.into(),
        mount_path: names::TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: names::PLAN_VOLUME.into(),
        mount_path: names::PLAN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    if spec.output.secret() {
        mounts.push(VolumeMount {
            name: names::API_TOKEN_VOLUME.into(),
            mount_path: names::API_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: names::INJECTOR_CONTAINER.into(),
        image: Some(config.injector.image.clone()),
        image_pull_policy: Some(config.injector.image_pull_policy.clone().unwrap_or_else(|| "IfNotPresent".into())),
        command: Some(vec![INJECTOR_COMMAND.into()]),
        env: Some(
            vec![
                EnvVar {
                    name: names::PLAN_FILE_ENV.into(),
                    value: Some(format!("{}/{}", names::PLAN_DIR, names::PLAN_FILE)),
                    value_from: None,
                },
                EnvVar {
                    name: names::PLAN_SHA256_ENV.into(),
                    value: Some(Plan::json_sha256(plan_json)),
                    value_from: None,
                },
                EnvVar { name: names::POD_NAME_ENV.into(), value: None, value_from: Some(field("metadata.name")) },
                EnvVar {
                    name: names::POD_NAMESPACE_ENV.into(),
                    value: None,
                    value_from: Some(field("metadata.namespace")),
                },
                EnvVar { name: names::POD_UID_ENV.into(), value: None, value_from: Some(field("metadata.uid")) },
            ]
            .into_iter()
            .chain(plan.secret.is_some().then(|| EnvVar {
                name: names::POD_SERVICE_ACCOUNT_ENV.into(),
                value: None,
                value_from: Some(field("spec.serviceAccountName")),
            }))
            .collect(),
        ),
        resources: Some(config.injector.resources.clone()),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: identity.run_as_user,
            run_as_group: identity.run_as_group,
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The plan annotation as a file, for the injector only.
fn plan_volume() -> Volume {
    Volume {
        name: names::PLAN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: names::PLAN_FILE.into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: format!("metadata.annotations['{}']", names::PLAN_ANNOTATION),
                            api_version: None,
                        }),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn token_volume(name: &str, audience: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: audience.map(str::to_owned),
                    expiration_seconds: Some(names::TOKEN_EXPIRATION_SECONDS),
                    path: names::TOKEN_FILE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("k8s-openapi types serialize")
}

fn pointer<S: AsRef<str>>(tokens: &[S]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().map(|t| t.as_ref()))
}

fn add<S: AsRef<str>>(ops: &mut Vec<PatchOperation>, path: &[S], value: Value) {
    ops.push(PatchOperation::Add(AddOperation { path: pointer(path), value }));
}

/// Appends to an array, creating it when the object patched so far has none.
fn append<S: AsRef<str>>(ops: &mut Vec<PatchOperation>, path: &[S], missing: bool, value: Value) {
    append_all(ops, path, missing, std::iter::once(value));
}

fn append_all<S: AsRef<str>>(
    ops: &mut Vec<PatchOperation>,
    path: &[S],
    missing: bool,
    values: impl Iterator<Item = Value>,
) {
    if missing {
        add(ops, path, Value::Array(values.collect()));
        return;
    }
    let mut end: Vec<&str> = path.iter().map(|s| s.as_ref()).collect();
    end.push("-");
    for v in values {
        add(ops, &end, v);
    }
}
