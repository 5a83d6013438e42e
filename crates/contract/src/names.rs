//! Names and paths of what the webhook injects. The injector and the tests read
//! them from here, never from string literals of their own.

/// The init container that runs `keyhole-injector`.
pub const INJECTOR_CONTAINER: &str = "keyhole-injector";
/// The memory-backed emptyDir that holds the fetched values.
pub const SECRETS_VOLUME: &str = "keyhole-secrets";
/// The projected service-account token for the backend's audience.
pub const TOKEN_VOLUME: &str = "keyhole-token";
/// The projected service-account token for the API server (Secret output only).
pub const API_TOKEN_VOLUME: &str = "keyhole-api-token";

/// Where the injector sees the tmpfs volume (apps see it at the `mount-path`).
pub const INJECTOR_OUTPUT_DIR: &str = "/keyhole/out";
/// Directory of the backend token in the injector; the file inside is [`TOKEN_FILE`].
pub const TOKEN_DIR: &str = "/var/run/secrets/keyhole.dev/backend";
/// Directory of the API-server token in the injector (Secret output only).
pub const API_TOKEN_DIR: &str = "/var/run/secrets/keyhole.dev/api";
/// The cluster CA next to the API-server token (from the `kube-root-ca.crt` ConfigMap).
pub const CA_FILE: &str = "ca.crt";
/// File name of a projected token inside its directory.
pub const TOKEN_FILE: &str = "token";
/// Lifetime asked for the projected tokens. The injector uses them within seconds;
/// 600 s is the minimum the API server accepts.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;
/// Size limit of the tmpfs volume: secrets are small, and tmpfs counts against
/// the pod's memory.
pub const SECRETS_VOLUME_SIZE_LIMIT: &str = "8Mi";

/// Env var that can carry the plan (JSON) into the injector when it runs outside
/// a pod; in a pod the plan comes from [`PLAN_ANNOTATION`] through [`PLAN_VOLUME`].
pub const PLAN_ENV: &str = "KEYHOLE_PLAN";
/// Annotation the webhook writes on the pod: the plan, one line of JSON. It is
/// the injector's input (through a downward-API volume), kept out of the
/// container's env so that `kubectl describe pod` shows one shortened line.
pub const PLAN_ANNOTATION: &str = "keyhole.dev/plan";
/// The downward-API volume, mounted into the injector only, holding
/// [`PLAN_ANNOTATION`] as the file [`PLAN_FILE`] in [`PLAN_DIR`].
pub const PLAN_VOLUME: &str = "keyhole-plan";
pub const PLAN_DIR: &str = "/var/run/secrets/keyhole.dev/plan";
pub const PLAN_FILE: &str = "plan.json";
/// Env var with the plan file's path (the injector's `--plan`).
pub const PLAN_FILE_ENV: &str = "KEYHOLE_PLAN_FILE";
/// Env var with the SHA-256 of the plan the webhook wrote. Annotations can be
/// edited after admission, a container's env cannot: the injector refuses a
/// plan file that does not hash to it.
pub const PLAN_SHA256_ENV: &str = "KEYHOLE_PLAN_SHA256";
/// Downward-API env vars the injector reads for the pod's identity.
pub const POD_NAME_ENV: &str = "KEYHOLE_POD_NAME";
pub const POD_NAMESPACE_ENV: &str = "KEYHOLE_POD_NAMESPACE";
pub const POD_UID_ENV: &str = "KEYHOLE_POD_UID";
/// The pod's `spec.serviceAccountName`: Secret output trusts only Secrets and
/// claims that this service account made.
pub const POD_SERVICE_ACCOUNT_ENV: &str = "KEYHOLE_POD_SERVICE_ACCOUNT";
/// Annotation on keyhole's Secrets and claims: the service account that made
/// them. The install's ValidatingAdmissionPolicy (manifests/secret-provenance.yaml)
/// lets only that service account create such a Secret.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "keyhole.dev/service-account";
/// Annotation on keyhole's Secrets: the digest of the plan whose values it holds
/// ([`crate::Plan::digest`]). The injector writes it (its own constant of the
/// same value, `keyhole_injector::secret::PLAN_DIGEST_ANNOTATION`, is checked
/// against this one by the reference test).
pub const PLAN_DIGEST_ANNOTATION: &str = "keyhole.dev/plan-digest";
/// Annotation on keyhole's Secrets and claims: the pod (`namespace/name`) whose
/// injector made them.
pub const CREATED_BY_ANNOTATION: &str = "keyhole.dev/created-by";
/// Annotation on a claim: until when (Unix seconds) its pod may be fetching.
pub const CLAIM_EXPIRES_ANNOTATION: &str = "keyhole.dev/claim-expires";
/// Annotation the Helm chart writes on the serving certificate's Secret it makes
/// (`tls.source: helm`): the certificate's notAfter, Unix seconds. No binary
/// reads it; it is here so that the annotation reference covers it.
pub const TLS_NOT_AFTER_ANNOTATION: &str = "keyhole.dev/not-after";
/// Where the kubelet reads a failed container's one-line reason.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Label on every object keyhole creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "keyhole";
