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

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use keyhole_backends::retry::{Class, Failure, retry, transport_reason};
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
    api: Api<Secret>,
    pub namespace: String,
    pub name: String,
    owner: OwnerReference,
    created_by: String,
}

/// The pod the injector runs in (from the downward API).
pub struct PodIdentity<'a> {
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub uid: Option<&'a str>,
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
    /// keyhole made it, but for another plan.
    OtherPlan { found: String, wanted: String },
    /// keyhole made it, but its data is not what keyhole writes.
    Malformed(String),
}

impl Target {
    /// Reads the API token and CA from `target.api_token_path`'s directory.
    pub fn new(target: &SecretTarget, pod: &PodIdentity<'_>) -> Result<Target, SecretError> {
        let setup = SecretError::Setup;
        let namespace = pod.namespace.filter(|s| !s.is_empty()).ok_or_else(|| {
            setup(format!(
                "{} is not set: the injector needs the pod's namespace for a Secret",
                names::POD_NAMESPACE_ENV
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
        let api = Api::namespaced(client(Path::new(&target.api_token_path))?, namespace);
        let created_by = format!("{namespace}/{}", pod.name.unwrap_or("-"));
        Ok(Target { api, namespace: namespace.to_owned(), name, owner, created_by })
    }

    /// `namespace/name`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn claim_name(&self) -> String {
        let mut base = self.name.clone();
        base.truncate(253 - CLAIM_SUFFIX.len());
        base + CLAIM_SUFFIX
    }

    /// One fetch per revision, however many pods start at once: the first pod to
    /// create the revision's claim (an empty, immutable Secret owned like the
    /// real one) fetches; the others wait for its Secret. A claim lapses at its
    /// pod's deadline, so a pod that died holding it delays the others, never
    /// blocks them. Needs no RBAC beyond the Secret's own create and get.
    pub async fn claim(&self, deadline: Instant) -> Result<Claim, SecretError> {
        let now_unix = unix_now();
        let expires = now_unix + deadline.saturating_duration_since(Instant::now()).as_secs();
        let claim = Secret {
            metadata: ObjectMeta {
                name: Some(self.claim_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(names::MANAGED_BY_LABEL.into(), names::MANAGED_BY_VALUE.into())])),
                annotations: Some(BTreeMap::from([
                    (CREATED_BY_ANNOTATION.into(), self.created_by.clone()),
                    (CLAIM_EXPIRES_ANNOTATION.into(), expires.to_string()),
                ])),
                owner_references: Some(vec![self.owner.clone()]),
                ..ObjectMeta::default()
            },
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
        let annotations = found.metadata.annotations.unwrap_or_default();
        let until_unix: u64 = annotations.get(CLAIM_EXPIRES_ANNOTATION).and_then(|v| v.parse().ok()).unwrap_or(0);
        let holder = annotations.get(CREATED_BY_ANNOTATION).cloned().unwrap_or_else(|| "another pod".into());
        match until_unix.checked_sub(unix_now()).filter(|s| *s > 0) {
            Some(left) => Ok(Claim::Theirs { holder, until: Instant::now() + Duration::from_secs(left) }),
            None => Ok(Claim::Ours),
        }
    }

    /// Polls for the revision's Secret until `until`; `None` if it did not appear.
    pub async fn wait(
        &self,
        digest: &str,
        until: Instant,
        deadline: Instant,
    ) -> Result<Option<Vec<(String, SecretString)>>, SecretError> {
        let until = until.min(deadline);
        loop {
            tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(0..150))).await;
            if let Some(found) = self.find(digest, deadline).await? {
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

    /// The revision's values if its Secret exists and was made for `digest`.
    pub async fn find(
        &self,
        digest: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<(String, SecretString)>>, SecretError> {
        match self.get(&self.name, deadline, "reading").await? {
            None => Ok(None),
            Some(secret) => check(secret, digest).map(Some),
        }
    }

    /// Creates the Secret holding `data`. If another pod of the revision created
    /// it first, returns that pod's values instead, after the same checks as
    /// [`Target::find`]. Either way: the values every pod of the revision uses.
    pub async fn create(
        &self,
        digest: &str,
        data: Vec<(String, SecretString)>,
        deadline: Instant,
    ) -> Result<(Vec<(String, SecretString)>, bool), SecretError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(names::MANAGED_BY_LABEL.into(), names::MANAGED_BY_VALUE.into())])),
                annotations: Some(BTreeMap::from([
                    (PLAN_DIGEST_ANNOTATION.into(), digest.to_owned()),
                    (CREATED_BY_ANNOTATION.into(), self.created_by.clone()),
                ])),
                owner_references: Some(vec![self.owner.clone()]),
                ..ObjectMeta::default()
            },
            immutable: Some(true),
            type_: Some("Opaque".into()),
            data: Some(
                data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose_secret().as_bytes().to_vec()))).collect(),
            ),
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

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Checks an existing Secret is keyhole's and was made for `digest`; its values.
fn check(secret: Secret, digest: &str) -> Result<Vec<(String, SecretString)>, SecretError> {
    let labels = secret.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(names::MANAGED_BY_LABEL)).map(String::as_str) != Some(names::MANAGED_BY_VALUE) {
        return Err(SecretError::Foreign);
    }
    let found = secret.metadata.annotations.as_ref().and_then(|a| a.get(PLAN_DIGEST_ANNOTATION)).cloned();
    if found.as_deref() != Some(digest) {
        return Err(SecretError::OtherPlan {
            found: found.unwrap_or_else(|| "none".into()),
            wanted: digest.to_owned(),
        });
    }
    let mut out = Vec::new();
    for (k, v) in secret.data.iter().flatten() {
        let s = std::str::from_utf8(&v.0)
            .map_err(|_| SecretError::Malformed(format!("key {k:?} is not UTF-8, which keyhole never writes")))?;
        out.push((k.clone(), SecretString::from(s.to_owned())));
    }
    secret.data.into_iter().flatten().for_each(|(_, mut v)| v.0.zeroize());
    Ok(out)
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

    fn secret(labels: &[(&str, &str)], digest: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                annotations: digest.map(|d| BTreeMap::from([(PLAN_DIGEST_ANNOTATION.to_owned(), d.to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("PW".to_owned(), ByteString(b"x".to_vec()))])),
            ..Secret::default()
        }
    }

    #[test]
    fn only_keyholes_secret_for_the_same_plan_is_used() {
        let ours = [(names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE)];
        let values = check(secret(&ours, Some("d1")), "d1").unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].1.expose_secret(), "x");
        assert!(matches!(check(secret(&[], Some("d1")), "d1"), Err(SecretError::Foreign)));
        assert!(matches!(check(secret(&[(names::MANAGED_BY_LABEL, "helm")], None), "d1"), Err(SecretError::Foreign)));
        match check(secret(&ours, Some("d0")), "d1") {
            Err(SecretError::OtherPlan { found, wanted }) => {
                assert_eq!((found.as_str(), wanted.as_str()), ("d0", "d1"))
            }
            _ => panic!("another plan's Secret must be refused"),
        }
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
