//! Secret output: one immutable Secret per workload revision.
//!
//! The first pod of a revision fetches the values and creates the Secret; every
//! later pod of that revision finds it, checks that keyhole made it for the same
//! plan, and makes no backend call. Two pods racing to create it: the API server
//! lets one win (409 for the other), and the loser uses the winner's Secret, so
//! every replica sees the same values. A Secret of that name that keyhole did not
//! make, or made for another plan, is never touched.
//!
//! The API server is reached through kube's client, configured the way any
//! in-cluster client is: the address from `KUBERNETES_SERVICE_HOST`/`_PORT` (the
//! kubelet sets them in every container), the cluster CA and a token from
//! keyhole's own projected volume (re-read by kube as the kubelet renews it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use keyhole_backends::retry::{Class, Failure, retry, transport_reason};
use keyhole_backends::value::Payload;
use keyhole_contract::annotations::{self, MAX_PATH_LEAVES, MAX_PATHS};
use keyhole_contract::names;
use keyhole_contract::plan::SecretTarget;
use kube::api::{Api, PostParams};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroize;

/// Annotation on the Secret: the digest of the plan whose values it holds.
pub const PLAN_DIGEST_ANNOTATION: &str = "keyhole.dev/plan-digest";
/// Annotation on the Secret: the pod whose injector fetched the values.
pub const CREATED_BY_ANNOTATION: &str = "keyhole.dev/created-by";
/// Annotation on a claim: until when (Unix seconds) its pod may be fetching.
pub const CLAIM_EXPIRES_ANNOTATION: &str = "keyhole.dev/claim-expires";
/// How the API server names keyhole's policy when it refuses a request.
const PROVENANCE_POLICY: &str = "ValidatingAdmissionPolicy 'keyhole-secret-provenance'";
/// One look for the Secret while waiting on another pod's claim, retries included.
const POLL_DEADLINE: Duration = Duration::from_secs(5);
/// Suffix of the claim's name: a dot, so it cannot clash with a revision's name.
const CLAIM_SUFFIX: &str = ".claim";

/// Who fetches the values for the revision.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This pod: it created the claim, or found it expired.
    Ours,
    /// Another pod is fetching; its Secret should appear before `until`.
    Theirs { holder: String, until: Instant },
}

/// Where the Secret goes, and how to reach the API server.
pub struct Target {
    client: kube::Client,
    api: Api<Secret>,
    pub namespace: String,
    pub name: String,
    /// The plan's owner (the pod's controller, or the bare pod): in the digest.
    plan_owner: OwnerReference,
    /// The Secret's owner: the plan's, or a StatefulSet's or DaemonSet's
    /// ControllerRevision once [`Target::bind_revision`] found it.
    owner: OwnerReference,
    revision: Option<String>,
    created_by: String,
    service_account: String,
    /// The keys the Secret holds: the plan's values and templates.
    keys: BTreeSet<String>,
    /// The most keys a plan's folders may add (0: no folders): their leaves'
    /// keys are known only to the fetch that made the Secret, so up to this
    /// many other keys are taken if they are of a leaf key's shape.
    leaves: usize,
    /// Whether the API server enforces the provenance policy: asked once, the
    /// first time a Secret or claim found here is to be trusted.
    enforced: tokio::sync::OnceCell<bool>,
}

/// The pod the injector runs in (from the downward API).
pub struct PodIdentity<'a> {
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub uid: Option<&'a str>,
    pub service_account: Option<&'a str>,
}

/// What went wrong with the Secret, before the caller adds the store.
#[derive(Debug)]
pub enum SecretError {
    /// Cannot even talk to the API server: env, token or CA missing.
    Setup(String),
    /// A call failed: `doing` is e.g. "creating", `reason` the API server's.
    Api { doing: &'static str, reason: String },
    /// The name is taken by a Secret keyhole does not manage.
    Foreign,
    /// Labelled as keyhole's, but not made by this pod's service account:
    /// someone else in the namespace made it. `object` is its kind and name.
    NotOurs { object: String, made_by: Option<String>, ours: String },
    /// It passes every check, but the API server does not enforce the
    /// provenance policy, so its service account annotation proves nothing.
    Unverified { object: String },
    /// Made by this service account, but for another owner (an earlier
    /// workload of the same name, or a pod of the same name).
    OtherOwner { object: String, found: String, wanted: String },
    /// keyhole made it, but for another plan.
    OtherPlan { found: String, wanted: String },
    /// keyhole made it, but it is not what keyhole writes. `object` is its name.
    Malformed { object: String, reason: String },
}

/// What a Secret (or claim) must be for this pod to use it.
struct Expect<'a> {
    service_account: &'a str,
    owner_uid: &'a str,
    /// `None` for a claim, which holds no data and no digest.
    plan: Option<(&'a str, &'a BTreeSet<String>)>,
    /// How many keys beyond the plan's may be folders' leaves (see [`Target`]'s `leaves`).
    leaves: usize,
}

impl Target {
    /// Reads the API token and CA from `target.api_token_path`'s directory.
    /// `keys`: the names of the plan's values and templates; `folders`: how
    /// many folders the plan has, whose leaves add keys.
    pub fn new(
        target: &SecretTarget,
        pod: &PodIdentity<'_>,
        keys: BTreeSet<String>,
        folders: usize,
    ) -> Result<Target, SecretError> {
        let leaves = folders.min(MAX_PATHS) * MAX_PATH_LEAVES;
        let setup = SecretError::Setup;
        let namespace = pod.namespace.filter(|s| !s.is_empty()).ok_or_else(|| {
            setup(format!(
                "{} is not set: the injector needs the pod's namespace for a Secret",
                names::POD_NAMESPACE_ENV
            ))
        })?;
        let service_account = pod.service_account.filter(|s| !s.is_empty()).ok_or_else(|| {
            setup(format!(
                "{} is not set: the webhook sets it from spec.serviceAccountName; a pod injected by an older webhook needs a new rollout",
                names::POD_SERVICE_ACCOUNT_ENV
            ))
        })?;
        let (name, owner) = match (&target.name, &target.owner) {
            (Some(name), Some(owner)) => (
                name.clone(),
                OwnerReference {
                    api_version: owner.api_version.clone(),
                    kind: owner.kind.clone(),
                    name: owner.name.clone(),
                    uid: owner.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                },
            ),
            _ => {
                // A bare pod owns its own Secret: it goes when the pod does.
                let (Some(pod_name), Some(uid)) =
                    (pod.name.filter(|s| !s.is_empty()), pod.uid.filter(|s| !s.is_empty()))
                else {
                    return Err(setup(format!(
                        "{} and {} must be set for a bare pod's Secret",
                        names::POD_NAME_ENV,
                        names::POD_UID_ENV
                    )));
                };
                let owner = OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: pod_name.to_owned(),
                    uid: uid.to_owned(),
                    controller: Some(true),
                    block_owner_deletion: None,
                };
                (keyhole_contract::plan::secret_name(pod_name), owner)
            }
        };
        let client = client(Path::new(&target.api_token_path))?;
        let api = Api::namespaced(client.clone(), namespace);
        let created_by = format!("{namespace}/{}", pod.name.unwrap_or("-"));
        Ok(Target {
            client,
            api,
            namespace: namespace.to_owned(),
            name,
            plan_owner: owner.clone(),
            owner,
            revision: target.revision.clone(),
            created_by,
            service_account: service_account.to_owned(),
            keys,
            leaves,
            enforced: tokio::sync::OnceCell::new(),
        })
    }

    /// `namespace/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The uid the plan digest names: the pod's controller's, or the bare pod's.
    pub fn owner_uid(&self) -> &str {
        &self.plan_owner.uid
    }

    /// A StatefulSet's or DaemonSet's pod: its Secret is owned by the
    /// ControllerRevision of the pod's revision, which must be controlled by the
    /// pod's own controller, so that pruning the revision from the history
    /// collects its Secret. Needs `get` on `controllerrevisions`.
    pub async fn bind_revision(&mut self, deadline: Instant) -> Result<(), SecretError> {
        let Some(name) = self.revision.clone() else {
            return Ok(());
        };
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), &self.namespace);
        let doing = "reading the ControllerRevision for";
        let found = retry(deadline, doing, || async { api.get_opt(&name).await.map_err(|e| failure(&e)) })
            .await
            .map_err(|f| SecretError::Api { doing, reason: f.reason })?;
        let Some(revision) = found else {
            return Err(SecretError::Api {
                doing,
                reason: format!("ControllerRevision {}/{name} does not exist", self.namespace),
            });
        };
        let controller = controller_of(&revision.metadata);
        if controller.map(|o| o.uid.as_str()) != Some(self.plan_owner.uid.as_str()) {
            return Err(SecretError::OtherOwner {
                object: format!("ControllerRevision {}/{name}", self.namespace),
                found: controller
                    .map(|o| format!("{} {} ({})", o.kind, o.name, o.uid))
                    .unwrap_or_else(|| "none".into()),
                wanted: format!("{} {} ({})", self.plan_owner.kind, self.plan_owner.name, self.plan_owner.uid),
            });
        }
        self.owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ControllerRevision".into(),
            name,
            uid: revision.metadata.uid.unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        Ok(())
    }

    /// Whether the API server enforces manifests/secret-provenance.yaml: a
    /// dry-run create of a keyhole-labelled Secret naming an account that
    /// cannot exist (a name with a slash) must be refused. Without the policy
    /// anyone in the namespace may write keyhole's label and any account's
    /// name, so a found Secret proves nothing and is not used. One call, the
    /// first time something found is to be trusted; nothing is stored.
    async fn provenance_enforced(&self, deadline: Instant) -> Result<bool, SecretError> {
        let doing = "checking the provenance policy with a dry run for";
        self.enforced
            .get_or_try_init(|| async {
                let probe = Secret {
                    metadata: ObjectMeta {
                        generate_name: Some("keyhole-provenance-probe-".into()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            names::MANAGED_BY_LABEL.into(),
                            names::MANAGED_BY_VALUE.into(),
                        )])),
                        annotations: Some(BTreeMap::from([(
                            names::SERVICE_ACCOUNT_ANNOTATION.into(),
                            "keyhole.dev/no-such-account".into(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    immutable: Some(true),
                    ..Secret::default()
                };
                let dry = PostParams { dry_run: true, ..PostParams::default() };
                retry(deadline, doing, || async {
                    match self.api.create(&dry, &probe).await {
                        Ok(_) => Ok(false),
                        // Only keyhole's own policy counts: another engine's
                        // refusal says nothing about who may write the label.
                        Err(kube::Error::Api(status))
                            if status.code == 403 && status.message.contains(PROVENANCE_POLICY) =>
                        {
                            Ok(true)
                        }
                        Err(kube::Error::Api(status)) if status.code == 400 && status.message.contains("dry") => {
                            Err(Failure::new(
                                Class::Permanent,
                                format!(
                                    "the API server refused a dry run ({}): a webhook on Secrets without sideEffects: None? keyhole checks its provenance policy with one",
                                    status.message
                                ),
                            ))
                        }
                        Err(e) => Err(failure(&e)),
                    }
                })
                .await
                .map_err(|f| SecretError::Api { doing, reason: f.reason })
            })
            .await
            .copied()
    }

    /// [`check`], then the provenance policy's say that the check means something.
    async fn trusted(
        &self,
        secret: Secret,
        expect: &Expect<'_>,
        deadline: Instant,
    ) -> Result<Vec<(String, Payload)>, SecretError> {
        let object = format!("Secret {}/{}", self.namespace, secret.metadata.name.as_deref().unwrap_or("-"));
        let values = check(&self.namespace, secret, expect)?;
        if self.provenance_enforced(deadline).await? { Ok(values) } else { Err(SecretError::Unverified { object }) }
    }

    fn claim_name(&self) -> String {
        let mut base = self.name.clone();
        base.truncate(253 - CLAIM_SUFFIX.len());
        base + CLAIM_SUFFIX
    }

    fn metadata(&self, name: String, annotations: BTreeMap<String, String>) -> ObjectMeta {
        let mut annotations = annotations;
        annotations.insert(CREATED_BY_ANNOTATION.into(), self.created_by.clone());
        annotations.insert(names::SERVICE_ACCOUNT_ANNOTATION.into(), self.service_account.clone());
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(BTreeMap::from([(names::MANAGED_BY_LABEL.into(), names::MANAGED_BY_VALUE.into())])),
            annotations: Some(annotations),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// One fetch per revision, however many pods start at once: the first pod to
    /// create the revision's claim (an empty, immutable Secret owned like the
    /// real one) fetches; the others wait for its Secret. A claim lapses at its
    /// pod's deadline, so a pod that died holding it delays the others, never
    /// blocks them; and a claim's expiry counts for at most `budget` (the
    /// waiter's own deadline), so a claim from the far future cannot hold a
    /// revision. A claim that this pod's service account did not make, for this
    /// owner, is refused like such a Secret. Needs no RBAC beyond the Secret's
    /// own create and get.
    pub async fn claim(&self, deadline: Instant, budget: Duration) -> Result<Claim, SecretError> {
        let expires = unix_now().saturating_add(deadline.saturating_duration_since(Instant::now()).as_secs());
        let claim = Secret {
            metadata: self
                .metadata(self.claim_name(), BTreeMap::from([(CLAIM_EXPIRES_ANNOTATION.into(), expires.to_string())])),
            immutable: Some(true),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        if self.post(&claim, deadline, "claiming").await? {
            return Ok(Claim::Ours);
        }
        let Some(found) = self.get(&self.claim_name(), deadline, "reading the claim of").await? else {
            return Ok(Claim::Ours);
        };
        let expect =
            Expect { service_account: &self.service_account, owner_uid: &self.owner.uid, plan: None, leaves: 0 };
        let annotations = found.metadata.annotations.clone().unwrap_or_default();
        self.trusted(found, &expect, deadline).await?;
        let until_unix: u64 = annotations.get(CLAIM_EXPIRES_ANNOTATION).and_then(|v| v.parse().ok()).unwrap_or(0);
        let holder = annotations.get(CREATED_BY_ANNOTATION).cloned().unwrap_or_else(|| "another pod".into());
        match until_unix.checked_sub(unix_now()).filter(|s| *s > 0) {
            Some(left) => Ok(Claim::Theirs { holder, until: Instant::now() + Duration::from_secs(left).min(budget) }),
            None => Ok(Claim::Ours),
        }
    }

    /// Polls for the revision's Secret until `until`; `None` if it did not appear.
    pub async fn wait(&self, digest: &str, until: Instant) -> Result<Option<Vec<(String, Payload)>>, SecretError> {
        loop {
            tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(0..150))).await;
            // Each look has time of its own: `until` ends the wait, not a look.
            if let Some(found) = self.find(digest, Instant::now() + POLL_DEADLINE).await? {
                return Ok(Some(found));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
        }
    }

    /// GET a Secret of the namespace; `None` if there is none.
    async fn get(&self, name: &str, deadline: Instant, doing: &'static str) -> Result<Option<Secret>, SecretError> {
        retry(deadline, doing, || async { self.api.get_opt(name).await.map_err(|e| failure(&e)) })
            .await
            .map_err(|f| SecretError::Api { doing, reason: f.reason })
    }

    /// Creates a Secret; `false` if one of that name exists (AlreadyExists).
    async fn post(&self, secret: &Secret, deadline: Instant, doing: &'static str) -> Result<bool, SecretError> {
        retry(deadline, doing, || async {
            match self.api.create(&PostParams::default(), secret).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(e) => Err(failure(&e)),
            }
        })
        .await
        .map_err(|f| SecretError::Api { doing, reason: f.reason })
    }

    /// The revision's values if its Secret exists, was made by this pod's
    /// service account for this owner and `digest`, is immutable, and holds
    /// exactly the plan's keys.
    pub async fn find(&self, digest: &str, deadline: Instant) -> Result<Option<Vec<(String, Payload)>>, SecretError> {
        let expect = Expect {
            service_account: &self.service_account,
            owner_uid: &self.owner.uid,
            plan: Some((digest, &self.keys)),
            leaves: self.leaves,
        };
        match self.get(&self.name, deadline, "reading").await? {
            None => Ok(None),
            Some(secret) => self.trusted(secret, &expect, deadline).await.map(Some),
        }
    }

    /// Creates the Secret holding `data`. If another pod of the revision created
    /// it first, returns that pod's values instead, after the same checks as
    /// [`Target::find`]. Either way: the values every pod of the revision uses.
    pub async fn create(
        &self,
        digest: &str,
        data: Vec<(String, Payload)>,
        deadline: Instant,
    ) -> Result<(Vec<(String, Payload)>, bool), SecretError> {
        let secret = Secret {
            metadata: self
                .metadata(self.name.clone(), BTreeMap::from([(PLAN_DIGEST_ANNOTATION.into(), digest.to_owned())])),
            immutable: Some(true),
            type_: Some("Opaque".into()),
            data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose_secret().to_vec()))).collect()),
            ..Secret::default()
        };
        let created = self.post(&secret, deadline, "creating").await;
        if let Some(d) = secret.data {
            d.into_values().for_each(|mut b| b.0.zeroize());
        }
        match created? {
            true => Ok((data, true)),
            false => match self.find(digest, deadline).await? {
                Some(theirs) => Ok((theirs, false)),
                None => Err(SecretError::Api {
                    doing: "creating",
                    reason: "409 AlreadyExists, yet it cannot be read back: is another controller deleting it?".into(),
                }),
            },
        }
    }
}

fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks that a Secret (or claim) found under keyhole's name is one this pod
/// may use, provenance first: keyhole's label, made by this pod's service
/// account (which the install's ValidatingAdmissionPolicy vouches for), owned
/// by this pod's owner, immutable; then, for a Secret, exactly the plan's keys
/// and its digest. Returns its values (none for a claim); the bytes read are
/// wiped either way.
fn check(namespace: &str, mut secret: Secret, expect: &Expect<'_>) -> Result<Vec<(String, Payload)>, SecretError> {
    let result = verify(namespace, &secret, expect);
    if let Some(data) = secret.data.take() {
        data.into_values().for_each(|mut b| b.0.zeroize());
    }
    result
}

fn verify(namespace: &str, secret: &Secret, expect: &Expect<'_>) -> Result<Vec<(String, Payload)>, SecretError> {
    let meta = &secret.metadata;
    let object = format!("Secret {namespace}/{}", meta.name.as_deref().unwrap_or("-"));
    if meta.labels.as_ref().and_then(|l| l.get(names::MANAGED_BY_LABEL)).map(String::as_str)
        != Some(names::MANAGED_BY_VALUE)
    {
        return Err(SecretError::Foreign);
    }
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    let made_by = annotation(names::SERVICE_ACCOUNT_ANNOTATION);
    if made_by.as_deref() != Some(expect.service_account) {
        return Err(SecretError::NotOurs { object, made_by, ours: expect.service_account.to_owned() });
    }
    let owner = controller_of(meta);
    if owner.map(|o| o.uid.as_str()) != Some(expect.owner_uid) {
        return Err(SecretError::OtherOwner {
            object,
            found: owner.map(|o| format!("{} {} ({})", o.kind, o.name, o.uid)).unwrap_or_else(|| "none".into()),
            wanted: expect.owner_uid.to_owned(),
        });
    }
    if secret.immutable != Some(true) {
        return Err(SecretError::Malformed {
            object,
            reason: "it is not immutable, which keyhole's always are".into(),
        });
    }
    let Some((digest, keys)) = expect.plan else {
        if secret.data.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(SecretError::Malformed {
                object,
                reason: "the claim holds data, which keyhole's never do".into(),
            });
        }
        return Ok(Vec::new());
    };
    let found: BTreeSet<&String> = secret.data.iter().flatten().map(|(k, _)| k).collect();
    let missing: Vec<&str> = keys.iter().filter(|k| !found.contains(k)).map(String::as_str).collect();
    let mut extra: Vec<&str> = found.iter().filter(|k| !keys.contains(k.as_str())).map(|k| k.as_str()).collect();
    if extra.len() <= expect.leaves {
        // A folder's leaf: a key the injector could have written for one.
        extra.retain(|k| annotations::check_item_name(k).is_err() || !annotations::is_env_name(k));
    }
    if !missing.is_empty() || !extra.is_empty() {
        return Err(SecretError::Malformed {
            object,
            reason: format!(
                "its keys are not the plan's (missing: {}; not in the plan: {})",
                listed(&missing),
                listed(&extra)
            ),
        });
    }
    let found = annotation(PLAN_DIGEST_ANNOTATION);
    if found.as_deref() != Some(digest) {
        return Err(SecretError::OtherPlan {
            found: found.unwrap_or_else(|| "none".into()),
            wanted: digest.to_owned(),
        });
    }
    let mut out = Vec::new();
    for (k, v) in secret.data.iter().flatten() {
        // Text, or the bytes of a binary secret.
        let value = match std::str::from_utf8(&v.0) {
            Ok(s) => Payload::Text(SecretString::from(s.to_owned())),
            Err(_) => Payload::Bytes(zeroize::Zeroizing::new(v.0.clone())),
        };
        out.push((k.clone(), value));
    }
    Ok(out)
}

/// At most five names, then how many more; `none` for none.
fn listed(names: &[&str]) -> String {
    match names.len() {
        0 => "none".into(),
        n if n <= 5 => names.join(", "),
        n => format!("{} and {} more", names[..5].join(", "), n - 5),
    }
}

/// kube's client for `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
/// as every in-cluster client finds the API server, trusting the CA beside the
/// token. Its own retries are off: every call goes through keyhole's, inside the
/// pod's deadline.
fn client(token_path: &Path) -> Result<kube::Client, SecretError> {
    let setup = SecretError::Setup;
    let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_default();
    if host.is_empty() || port.is_empty() {
        return Err(setup(
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (the kubelet sets them in every container)"
                .into(),
        ));
    }
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let url = format!("https://{host}:{port}")
        .parse()
        .map_err(|e| setup(format!("the API server address https://{host}:{port} is not a URL: {e}")))?;
    keyhole_backends::read_token(token_path)
        .map_err(|e| setup(format!("cannot read the API token {}: {e}", token_path.display())))?;
    let ca_path = token_path.with_file_name(names::CA_FILE);
    let roots = CertificateDer::pem_file_iter(&ca_path)
        .and_then(|certs| certs.map(|c| c.map(|c| c.to_vec())).collect::<Result<Vec<_>, _>>())
        .map_err(|e| setup(format!("cannot read the CA bundle {}: {e}", ca_path.display())))?;
    if roots.is_empty() {
        return Err(setup(format!("{} holds no certificate", ca_path.display())));
    }
    let mut config = kube::Config::new(url);
    config.root_cert = Some(roots);
    config.auth_info.token_file = Some(token_path.display().to_string());
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(10));
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| setup(format!("cannot build the API client: {e}")))
}

/// Transient for throttling, 5xx and transport errors; the API server's Status
/// says why, without data: its messages name objects, verbs and fields, never a
/// Secret's values.
fn failure(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => status_failure(status.code, &status.message),
        other => match transport_reason(other) {
            Some(reason) => Failure::new(Class::Transient, format!("API server: {reason}")),
            None => Failure::new(Class::Transient, "API server: the request failed"),
        },
    }
}

fn status_failure(code: u16, message: &str) -> Failure {
    let class = if code == 429 || code >= 500 { Class::Transient } else { Class::Permanent };
    let hint = match code {
        401 => ": the API token was refused",
        403 => {
            ": the pod's service account needs create and get on secrets in its namespace (manifests/examples/secret-output-rbac.yaml)"
        }
        _ => "",
    };
    match message {
        "" => Failure::new(class, format!("HTTP {code}{hint}")),
        m => Failure::new(class, format!("HTTP {code}: {m}{hint}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: &str = "app";
    const OWNER: &str = "rs-uid";

    /// A Secret exactly as this pod's injector would have made it.
    fn ours() -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("keyhole-web-1".into()),
                labels: Some(BTreeMap::from([(names::MANAGED_BY_LABEL.into(), names::MANAGED_BY_VALUE.into())])),
                annotations: Some(BTreeMap::from([
                    (PLAN_DIGEST_ANNOTATION.to_owned(), "d1".to_owned()),
                    (names::SERVICE_ACCOUNT_ANNOTATION.to_owned(), SA.to_owned()),
                ])),
                owner_references: Some(vec![OwnerReference {
                    uid: OWNER.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            immutable: Some(true),
            data: Some(BTreeMap::from([("PW".to_owned(), ByteString(b"x".to_vec()))])),
            ..Secret::default()
        }
    }

    fn keys() -> BTreeSet<String> {
        BTreeSet::from(["PW".to_owned()])
    }

    fn checked(secret: Secret) -> Result<Vec<(String, Payload)>, SecretError> {
        let keys = keys();
        check("ns", secret, &Expect { service_account: SA, owner_uid: OWNER, plan: Some(("d1", &keys)), leaves: 0 })
    }

    fn annotate(mut s: Secret, key: &str, value: Option<&str>) -> Secret {
        let a = s.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => a.insert(key.to_owned(), v.to_owned()),
            None => a.remove(key),
        };
        s
    }

    #[test]
    fn only_a_secret_this_service_account_made_for_this_owner_and_plan_is_used() {
        let values = checked(ours()).unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1.expose_secret(), b"x");

        let mut unlabelled = ours();
        unlabelled.metadata.labels = None;
        assert!(matches!(checked(unlabelled), Err(SecretError::Foreign)));
        let planted = annotate(ours(), names::SERVICE_ACCOUNT_ANNOTATION, Some("intruder"));
        match checked(planted) {
            Err(SecretError::NotOurs { object, made_by, ours }) => {
                assert_eq!(
                    (object.as_str(), made_by.as_deref(), ours.as_str()),
                    ("Secret ns/keyhole-web-1", Some("intruder"), SA)
                )
            }
            other => panic!("a Secret of another service account must be refused: {:?}", other.map(|v| v.len())),
        }
        let unsigned = annotate(ours(), names::SERVICE_ACCOUNT_ANNOTATION, None);
        assert!(matches!(checked(unsigned), Err(SecretError::NotOurs { made_by: None, .. })));
        let mut old_owner = ours();
        old_owner.metadata.owner_references.as_mut().unwrap()[0].uid = "earlier-rs".into();
        assert!(matches!(checked(old_owner), Err(SecretError::OtherOwner { .. })));
        let mut orphan = ours();
        orphan.metadata.owner_references = None;
        assert!(matches!(checked(orphan), Err(SecretError::OtherOwner { found, .. }) if found == "none"));
        let mut mutable = ours();
        mutable.immutable = None;
        assert!(
            matches!(checked(mutable), Err(SecretError::Malformed { reason, .. }) if reason.contains("not immutable"))
        );
        let mut extra = ours();
        extra.data.as_mut().unwrap().insert("LD_PRELOAD".into(), ByteString(b"/tmp/x.so".to_vec()));
        match checked(extra) {
            Err(SecretError::Malformed { reason, .. }) => {
                assert_eq!(reason, "its keys are not the plan's (missing: none; not in the plan: LD_PRELOAD)")
            }
            _ => panic!("a key the plan does not have must be refused"),
        }
        match checked(annotate(ours(), PLAN_DIGEST_ANNOTATION, Some("d0"))) {
            Err(SecretError::OtherPlan { found, wanted }) => {
                assert_eq!((found.as_str(), wanted.as_str()), ("d0", "d1"))
            }
            _ => panic!("another plan's Secret must be refused"),
        }
    }

    #[test]
    fn a_plan_with_folders_takes_extra_keys_only_of_the_shape_a_leaf_has() {
        let keys = keys();
        let with_leaves = |s: Secret| {
            check(
                "ns",
                s,
                &Expect { service_account: SA, owner_uid: OWNER, plan: Some(("d1", &keys)), leaves: MAX_PATH_LEAVES },
            )
        };
        let mut leaf = ours();
        leaf.data.as_mut().unwrap().insert("db_user".into(), ByteString(b"app".to_vec()));
        assert_eq!(with_leaves(leaf.clone()).unwrap().len(), 2, "a leaf's key is taken");
        assert!(checked(leaf).is_err(), "the control: without folders it is refused");
        let mut odd = ours();
        odd.data.as_mut().unwrap().insert("not-env".into(), ByteString(b"x".to_vec()));
        assert!(matches!(with_leaves(odd), Err(SecretError::Malformed { reason, .. }) if reason.contains("not-env")));
        let mut short = ours();
        short.data = Some(BTreeMap::from([("db_user".to_owned(), ByteString(b"x".to_vec()))]));
        assert!(
            matches!(with_leaves(short), Err(SecretError::Malformed { reason, .. }) if reason.contains("missing: PW")),
            "the plan's own keys stay required"
        );
    }

    #[test]
    fn a_claim_gets_the_same_provenance_checks_and_holds_no_data() {
        let claim =
            |s: Secret| check("ns", s, &Expect { service_account: SA, owner_uid: OWNER, plan: None, leaves: 0 });
        let mut empty = ours();
        empty.data = None;
        assert!(claim(empty.clone()).unwrap().is_empty());
        assert!(matches!(claim(ours()), Err(SecretError::Malformed { reason, .. }) if reason.contains("holds data")));
        let planted = annotate(empty, names::SERVICE_ACCOUNT_ANNOTATION, Some("intruder"));
        assert!(matches!(claim(planted), Err(SecretError::NotOurs { .. })));
    }

    #[test]
    fn api_status_is_reported_with_what_to_do() {
        let message = r#"secrets is forbidden: User "system:serviceaccount:a:b" cannot create resource "secrets""#;
        let f = status_failure(403, message);
        assert_eq!(f.class, Class::Permanent);
        assert!(f.reason.starts_with("HTTP 403: secrets is forbidden"), "{}", f.reason);
        assert!(f.reason.contains("secret-output-rbac.yaml"), "{}", f.reason);
        assert_eq!(status_failure(503, "").class, Class::Transient);
        assert_eq!(status_failure(500, "").reason, "HTTP 500");
    }
}
