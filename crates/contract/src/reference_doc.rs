//! The annotation reference, `docs/annotations.md`, built from the constants it
//! documents: a renamed key or a changed limit changes the page.
//!
//! `tests/reference.rs` compares [`render_markdown`] with the file (and
//! `KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference` rewrites
//! it), fails when a `keyhole.dev/` constant anywhere in the crates is missing
//! here, and parses every example through [`crate::annotations::parse`].

use std::fmt::Write as _;

use crate::annotations::{self as a, Output};
use crate::names;
use crate::store::StoreKind;
use crate::workload::WorkloadKind;

/// Who writes an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The workload's author: the annotations keyhole reads.
    User,
    Webhook,
    /// The rotation controller, and `keyhole roll`.
    Rotation,
    Injector,
    /// The Helm chart (charts/keyhole), at install or upgrade.
    Chart,
}

impl Writer {
    pub fn as_str(self) -> &'static str {
        match self {
            Writer::User => "you",
            Writer::Webhook => "the webhook",
            Writer::Rotation => "the rotation controller, `keyhole roll`",
            Writer::Injector => "the injector",
            Writer::Chart => "the Helm chart",
        }
    }
}

/// An annotation's key, or a family of keys that share a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Exact(&'static str),
    /// `prefix` followed by a name the user picks: `keyhole.dev/secret-<name>`.
    Family {
        prefix: &'static str,
        placeholder: &'static str,
    },
}

impl Key {
    /// The key as the reference shows it: `keyhole.dev/secret-<name>`.
    pub fn pattern(&self) -> String {
        match self {
            Key::Exact(k) => (*k).to_owned(),
            Key::Family { prefix, placeholder } => format!("{prefix}{placeholder}"),
        }
    }

    /// Whether `key` is this annotation, or one of this family.
    pub fn covers(&self, key: &str) -> bool {
        match self {
            Key::Exact(k) => *k == key,
            Key::Family { prefix, .. } => key.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty()),
        }
    }

    /// Whether a constant of the crates' source is this key, or this family's prefix.
    pub fn is_constant(&self, value: &str) -> bool {
        match self {
            Key::Exact(k) => *k == value,
            Key::Family { prefix, .. } => *prefix == value,
        }
    }
}

/// A working example: the annotations, in the order shown.
#[derive(Clone, Debug)]
pub struct Example {
    pub caption: &'static str,
    /// The store kind its references are written for, if it has any.
    pub store: Option<StoreKind>,
    pub annotations: Vec<(String, String)>,
}

/// One annotation (or family) of the reference.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Key,
    pub writer: Writer,
    /// What it does, in one sentence.
    pub summary: String,
    pub value: String,
    pub default: String,
    /// The objects it goes on, and the outputs it matters for.
    pub applies_to: String,
    pub limits: Vec<String>,
    pub examples: Vec<Example>,
}

/// `a, b and c` (or `a, b or c`).
fn joined(items: &[&str], conjunction: &str) -> String {
    match items.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} {conjunction} {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn kind_names(filter: impl Fn(WorkloadKind) -> bool) -> Vec<&'static str> {
    WorkloadKind::ALL.into_iter().filter(|k| filter(*k)).map(WorkloadKind::as_str).collect()
}

/// `a Deployment, StatefulSet or DaemonSet`.
fn kinds(filter: impl Fn(WorkloadKind) -> bool) -> String {
    joined(&kind_names(filter), "or")
}

/// Where the annotations a user writes are read: every opted-in Pod at create
/// (`/mutate`), and at apply the templates `/validate` is registered for in
/// manifests/webhooks.yaml: every kind but ReplicaSet, whose pods come from a
/// Deployment or are checked when they are created.
fn read_on() -> String {
    format!(
        "a Pod's `metadata.annotations`, or the pod template of a {} (`spec.template.metadata.annotations`; a CronJob's is under `spec.jobTemplate.spec.template`). Checked when the workload is applied and again when each Pod is created",
        kinds(|k| k != WorkloadKind::ReplicaSet)
    )
}

fn rolled() -> String {
    kinds(WorkloadKind::rolls)
}

fn not_rolled() -> String {
    let mut never = kind_names(|k| !k.rolls() && k != WorkloadKind::ReplicaSet);
    never.push("bare Pod");
    let plural: Vec<String> = never.iter().map(|k| format!("{k}s")).collect();
    format!("{} are never rolled", joined(&plural.iter().map(String::as_str).collect::<Vec<_>>(), "and"))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn secret(name: &str) -> String {
    format!("{}{name}", a::SECRET_PREFIX)
}

fn template(name: &str) -> String {
    format!("{}{name}", a::TEMPLATE_PREFIX)
}

fn outputs() -> String {
    [Output::Files, Output::Secret, Output::Both].map(|o| format!("`{}`", o.as_str())).join(", ")
}

/// Every annotation keyhole reads or writes, users' first.
pub fn entries() -> Vec<Entry> {
    let files = Output::Files.as_str();
    let secret_out = Output::Secret.as_str();
    let both = Output::Both.as_str();
    let secret_family = format!("`{}<name>`", a::SECRET_PREFIX);
    let template_family = format!("`{}<name>`", a::TEMPLATE_PREFIX);
    vec![
        Entry {
            key: Key::Exact(a::INJECT),
            writer: Writer::User,
            summary: "Opts the pod in: the webhook adds keyhole's init container.".into(),
            value: "`\"true\"` to opt in; `\"false\"`, or no annotation, to stay out. Any other value is refused with a hint, so a typo such as `\"yes\"` does not silently skip injection.".into(),
            default: "absent: the pod is left alone".into(),
            applies_to: read_on(),
            limits: vec![
                format!("The pod must declare at least one {secret_family}, `{}<name>` or {template_family}.", a::PATH_PREFIX),
                "Linux pods only: `spec.os.name: windows` is refused.".into(),
                format!(
                    "A container named `{}`, a volume named `{}`, `{}` or `{}`, or a mount of one, is refused: those names are keyhole's.",
                    names::INJECTOR_CONTAINER,
                    names::SECRETS_VOLUME,
                    names::TOKEN_VOLUME,
                    names::API_TOKEN_VOLUME
                ),
                "Namespaces the webhook registration excludes (`kube-system` and keyhole's own) are never sent to the webhook.".into(),
            ],
            examples: vec![Example {
                caption: "",
                store: Some(StoreKind::Vault),
                annotations: vec![(a::INJECT.into(), "true".into()), (secret("db_password"), "secret/shop/db#password".into())],
            }],
        },
        Entry {
            key: Key::Exact(a::STORE),
            writer: Writer::User,
            summary: "Which of the operator's stores the values come from.".into(),
            value: "the name of a store under `stores:` in keyhole's config (the `keyhole-config` ConfigMap, or the chart's `config`). A pod names a store, never an address: the address, CA bundle and auth mount are the operator's.".into(),
            default: "the config's `defaultStore`; without one, this annotation is required".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec![
                "An unknown name is refused, with the names the config knows.".into(),
                "A store with `allow` refuses namespaces none of its grants names.".into(),
            ],
            examples: vec![Example {
                caption: "",
                store: Some(StoreKind::AwsSsm),
                annotations: vec![(a::STORE.into(), "aws".into())],
            }],
        },
        Entry {
            key: Key::Exact(a::ROLE),
            writer: Writer::User,
            summary: "The identity keyhole logs in to the store as, with the pod's own service-account token.".into(),
            value: "aws-ssm and aws-secretsmanager: the ARN of an IAM role whose trust policy accepts this pod's service account (`arn:aws:iam::<account>:role/<name>`); vault: the name of a kubernetes or jwt auth role bound to this pod's service account.".into(),
            default: "the store's `defaultRole`; with neither, the pod is refused".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec!["A store with `allow` may limit the roles a namespace may name (`allow[].roles`); the store's `defaultRole` is checked the same way.".into()],
            examples: vec![
                Example { caption: "vault", store: Some(StoreKind::Vault), annotations: vec![(a::ROLE.into(), "shop-api".into())] },
                Example {
                    caption: "aws-ssm",
                    store: Some(StoreKind::AwsSsm),
                    annotations: vec![(a::ROLE.into(), "arn:aws:iam::123456789012:role/shop-api".into())],
                },
            ],
        },
        Entry {
            key: Key::Family { prefix: a::SECRET_PREFIX, placeholder: "<name>" },
            writer: Writer::User,
            summary: "One value from the store. `<name>` is the file name, and the key in the Secret.".into(),
            value: "a reference, in the grammar of the store's kind:\n  - aws-ssm: `<parameter>[:<version>|:<label>][#<key>]`: `/shop/db/password`, `/shop/db/password:3` (a version: pinned), `/shop/db/password:stable` (a label), `/shop/db#password` (one field of a JSON value). SecureString parameters are always decrypted.\n  - vault: `<mount>/<path>[?version=<n>][#<field>]`: `secret/shop/db#password` (one field); `secret/shop/db` (the whole secret, as a JSON object); `secret/shop/db?version=3#password` (a KV v2 version: pinned). The path is the logical one, without KV v2's `data/`; KV v1 and v2 are both read (the injector asks the server which one a path is on).\n  - aws-secretsmanager: `<name or ARN>[?version-stage=<label>|?version-id=<id>][#<key>]`: `shop/db#password` (one field of a JSON secret), `shop/db` (the whole secret string), `shop/db?version-stage=AWSPREVIOUS#password` (a staging label other than AWSCURRENT: pinned), `arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop/db-AbCdEf`. The current versions are read twenty a call (BatchGetSecretValue); a binary secret is written as its bytes (text when it is UTF-8); one that is not UTF-8 has no `#key` and no place in a template.".into(),
            default: "none".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec![
                format!("At most {} per pod: keep related values in one JSON secret and pick fields with `#` (a field of one secret is one look-up).", a::MAX_REFERENCES),
                "`<name>`: at most 200 characters: letters, digits, `-`, `_` and `.`, not starting with `.`.".into(),
                format!("With output `{secret_out}` or `{both}`, `<name>` must also be an environment variable name: letters, digits and `_`, not starting with a digit (`DB_PASSWORD`, not `db-password`)."),
                "A store with `allow` refuses paths (Vault), parameter names (SSM) or secret names and ARNs as written (Secrets Manager) outside its grants for the namespace.".into(),
                "Pinned references (a version, a Secrets Manager staging label or version id) and SSM labels are never rotated; KV v1 keeps no versions, so its paths are not rotated either.".into(),
            ],
            examples: vec![
                Example {
                    caption: "vault",
                    store: Some(StoreKind::Vault),
                    annotations: pairs(&[(&secret("db_password"), "secret/shop/db#password"), (&secret("db.json"), "secret/shop/db")]),
                },
                Example {
                    caption: "aws-ssm",
                    store: Some(StoreKind::AwsSsm),
                    annotations: pairs(&[(&secret("api_key"), "/shop/api/key"), (&secret("db_user"), "/shop/db:3#user")]),
                },
                Example {
                    caption: "aws-secretsmanager",
                    store: Some(StoreKind::AwsSecretsManager),
                    annotations: pairs(&[
                        (&secret("db_password"), "shop/db#password"),
                        (&secret("old_password"), "shop/db?version-stage=AWSPREVIOUS#password"),
                    ]),
                },
            ],
        },
        Entry {
            key: Key::Family { prefix: a::TEMPLATE_PREFIX, placeholder: "<name>" },
            writer: Writer::User,
            summary: "A file (or Secret key) `<name>` rendered from a minijinja template over the fetched values.".into(),
            value: format!("a minijinja template. `secrets[\"<name>\"]` is the value of {secret_family}. Nothing is HTML-escaped."),
            default: "none".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec![
                format!("`<name>` follows the rules of {secret_family}, and may not be the name of one (both would write the same file)."),
                "It must parse when the workload is applied. A name it uses without a matching `secret-<name>` fails the pod at start (undefined values are errors).".into(),
                "The rendered file loses one trailing newline (minijinja's default).".into(),
            ],
            examples: vec![Example {
                caption: "",
                store: Some(StoreKind::Vault),
                annotations: pairs(&[
                    (&secret("db_password"), "secret/shop/db#password"),
                    (&template("db.ini"), "[db]\nuser = shop\npassword = {{ secrets[\"db_password\"] }}\n"),
                ]),
            }],
        },
        Entry {
            key: Key::Family { prefix: a::GENERATE_PREFIX, placeholder: "<name>" },
            writer: Writer::User,
            summary: "Makes the value of `secret-<name>` when the store has none: the first pod that finds it missing writes it, and every pod reads it.".into(),
            value: format!(
                "a recipe: `length=<n>` (letters and digits), `length=<n>,alphabet=hex|alnum|symbols`, or `bytes=<n>` (random bytes, written in base64); n from {} to {}.",
                crate::generate::MIN_LENGTH,
                crate::generate::MAX_LENGTH
            ),
            default: "none: a missing value fails the pod".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec![
                "Needs `secret-<name>` beside it, on a store whose operator set `allowGenerate: true`; the pod's role then needs write access to those values (`ssm:PutParameter`; Vault `create` on `<mount>/data/<path>`).".into(),
                "aws-ssm: the reference is a parameter name alone (no version, label or `#key`); it is made as a SecureString. vault: one field of a KV v2 secret (`<mount>/<path>#<field>`, no `?version=`), one generated field per secret; the secret is made holding that field only. aws-secretsmanager: not yet.".into(),
                "The write never overwrites (SSM `Overwrite=false`, Vault check-and-set 0): two pods starting at once make it once and read the same value. An existing value is never changed, and the recipe is not checked against it.".into(),
                "Values come from the system's CSPRNG; characters are drawn without bias.".into(),
            ],
            examples: vec![Example {
                caption: "",
                store: Some(StoreKind::AwsSsm),
                annotations: pairs(&[(&secret("session_key"), "/shop/session-key"), (&format!("{}session_key", a::GENERATE_PREFIX), "length=48,alphabet=hex")]),
            }],
        },
        Entry {
            key: Key::Family { prefix: a::PATH_PREFIX, placeholder: "<name>" },
            writer: Writer::User,
            summary: "Every value in a folder: each leaf below it becomes a file (or Secret key) of its own.".into(),
            value: "a folder: an SSM path (`/shop/`), or a Vault KV folder (`secret/shop/`, or a whole mount, `secret/`); `?recursive=true` takes the whole tree below it, else one level. The trailing `/` may be left out.".into(),
            default: "none".into(),
            applies_to: "every opted-in pod on an aws-ssm or vault store; all outputs".into(),
            limits: vec![
                "A leaf's key is its name below the folder with each `/` written as `_`: `/shop/db/password` under `/shop/` (recursive) is `db_password`. `<name>` names the set in messages only.".into(),
                format!("The pod fails at start, naming the leaf, when a key cannot be a file name (the rules of {secret_family}), or an environment variable with Secret output; or when two leaves, or a leaf and a `secret-<name>` or `template-<name>`, have one key."),
                format!("At most {} paths a pod and {} leaves a path; an empty folder fails the pod at start. Templates may use the leaves as `secrets[\"<key>\"]`; `keyhole render` knows no leaf, so it cannot render those.", a::MAX_PATHS, a::MAX_PATH_LEAVES),
                "aws-ssm: GetParametersByPath, decrypted (the role needs `ssm:GetParametersByPath` on the path). vault: a `LIST` of the folder, then each secret read whole as a JSON object (the policy needs `list` on `<mount>/metadata/<folder>` and `read` on `<mount>/data/<folder>*`). aws-secretsmanager: no folders.".into(),
                "Rotation watches the set: a leaf added, removed or changed rolls the workload (SSM: DescribeParameters with a Path filter; vault: the list and each secret's metadata). The folder must lie inside what the store's grants give the namespace, all of it.".into(),
            ],
            examples: vec![
                Example {
                    caption: "aws-ssm",
                    store: Some(StoreKind::AwsSsm),
                    annotations: pairs(&[(&format!("{}shop", a::PATH_PREFIX), "/shop/?recursive=true")]),
                },
                Example {
                    caption: "vault",
                    store: Some(StoreKind::Vault),
                    annotations: pairs(&[(&format!("{}shop", a::PATH_PREFIX), "secret/shop/")]),
                },
            ],
        },
        Entry {
            key: Key::Exact(a::OUTPUT),
            writer: Writer::User,
            summary: "Where the values go.".into(),
            value: format!(
                "one of {}. `{files}`: files on a memory-backed volume, mounted read-only in the target containers at the directory `{}` names. `{secret_out}`: one immutable Secret per workload revision, given to the target containers through `envFrom`. `{both}`: both.",
                outputs(),
                a::MOUNT_PATH
            ),
            default: format!("`{}`", Output::default().as_str()),
            applies_to: "every opted-in pod".into(),
            limits: vec![
                format!("`{secret_out}` and `{both}`: every `<name>` must be an environment variable name."),
                format!("`{secret_out}` and `{both}`: the pod's service account needs `create` and `get` on Secrets in its namespace, and `get` on `controllerrevisions` for a StatefulSet or DaemonSet (`manifests/examples/secret-output-rbac.yaml`)."),
                format!("`{secret_out}` and `{both}`: existing Secrets are reused only while the API server enforces keyhole's provenance policy (`manifests/secret-provenance.yaml`, installed with keyhole)."),
                format!("`{secret_out}` and `{both}`: a bare Pod with only `generateName` is refused (its Secret would have no stable name)."),
            ],
            examples: vec![Example {
                caption: "",
                store: Some(StoreKind::AwsSsm),
                annotations: pairs(&[(a::OUTPUT, secret_out), (&secret("DB_PASSWORD"), "/shop/db/password")]),
            }],
        },
        Entry {
            key: Key::Exact(a::MOUNT_PATH),
            writer: Writer::User,
            summary: "Where the files appear in the target containers.".into(),
            value: "an absolute directory other than `/`, without `.` or `..` segments, `:` or white space. A trailing `/` is dropped.".into(),
            default: format!("`{}`", a::DEFAULT_MOUNT_PATH),
            applies_to: format!("output `{files}` or `{both}`; the containers `{}` names", a::CONTAINERS),
            limits: vec!["A target container that already mounts something at that directory is refused.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::MOUNT_PATH, "/etc/shop/secrets")]) }],
        },
        Entry {
            key: Key::Exact(a::CONTAINERS),
            writer: Writer::User,
            summary: "Which containers get the values (the mount, or `envFrom`).".into(),
            value: "a comma-separated list of container names; spaces around the names are ignored. App containers and init containers (native sidecars included) may be named.".into(),
            default: "every container in `spec.containers`; init containers only when named".into(),
            applies_to: "every opted-in pod; all outputs".into(),
            limits: vec![
                format!("At most {} names; each must name a container of the pod.", a::MAX_CONTAINER_NAMES),
                format!("`{}` itself cannot be named.", names::INJECTOR_CONTAINER),
            ],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::CONTAINERS, "app, worker")]) }],
        },
        Entry {
            key: Key::Exact(a::FILE_MODE),
            writer: Writer::User,
            summary: "The mode of the written files.".into(),
            value: "a read-only octal mode: the owner can read, nobody can write or execute: `0400`, `0440`, `0444` (the leading `0` may be left out). Quote it in YAML (`\"0440\"`), or it is read as a number.".into(),
            default: "`0400` when every target container runs as the same known non-root UID (its own or the pod's `securityContext.runAsUser`); else `0444`".into(),
            applies_to: format!("output `{files}` or `{both}`"),
            limits: vec!["The files belong to the UID and GID the injector runs as: the first target container's, else the pod's; never root.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::FILE_MODE, "0440")]) }],
        },
        Entry {
            key: Key::Exact(a::ROTATE),
            writer: Writer::User,
            summary: "Whether a new version in the store rolls the workload out.".into(),
            value: "`\"true\"` or `\"false\"`. With `\"false\"` new versions are not rolled out; pods still fetch the current value whenever they start.".into(),
            default: "`\"true\"`".into(),
            applies_to: format!("the pod template of a {}; {}", rolled(), not_rolled()),
            limits: vec![],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::ROTATE, "false")]) }],
        },
        Entry {
            key: Key::Exact(a::REFRESH_INTERVAL),
            writer: Writer::User,
            summary: "How often the rotation controller asks the store for this workload's versions.".into(),
            value: "a duration: `30s`, `5m`, `1h30m`, `1500ms`, or ISO 8601 `PT30S`. A bare number is refused.".into(),
            default: "the rotation controller's `--interval` (`60s` in the manifests and the chart)".into(),
            applies_to: format!("the pod template of a {}; {}", rolled(), not_rolled()),
            limits: vec![
                format!("At least {}s.", a::MIN_REFRESH_INTERVAL.as_secs()),
                "A poll may come early: workloads past half their interval join a poll that runs, so they share look-ups.".into(),
            ],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::REFRESH_INTERVAL, "5m")]) }],
        },
        Entry {
            key: Key::Exact(a::STATUS),
            writer: Writer::Webhook,
            summary: "Marks a pod the webhook injected.".into(),
            value: format!("`{}`", a::STATUS_INJECTED),
            default: "none".into(),
            applies_to: "Pods".into(),
            limits: vec![format!(
                "Written by keyhole; accepted, never required. A review skips a pod only when keyhole's own init container (`{}`, by name and command) is there too, so writing it yourself skips nothing.",
                names::INJECTOR_CONTAINER
            )],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::STATUS, a::STATUS_INJECTED)]) }],
        },
        Entry {
            key: Key::Exact(names::PLAN_ANNOTATION),
            writer: Writer::Webhook,
            summary: "The plan: what the pod's injector fetches, from which store, with which role, and where it writes.".into(),
            value: "one line of JSON: the store's connection (address or region, auth, `caBundle`), the role, the references and templates, the output, the file mode and the deadline. No value, no grant, no rotation role.".into(),
            default: "none".into(),
            applies_to: "Pods".into(),
            limits: vec![format!(
                "The injector reads it through a downward-API volume (`{}`, in the init container only) and refuses it unless it hashes to `{}` in its env, which no one can change after admission: editing it on a pod makes that pod fail with a message that says so. `kubectl describe pod` shows its first 140 characters; `kubectl get pod <name> -o jsonpath='{{.metadata.annotations.keyhole\\.dev/plan}}'` prints it whole.",
                names::PLAN_VOLUME,
                names::PLAN_SHA256_ENV
            )],
            examples: vec![Example {
                caption: "",
                store: None,
                annotations: pairs(&[(
                    names::PLAN_ANNOTATION,
                    r#"{"version":1,"storeName":"vault","store":{"kind":"vault","address":"https://vault.vault.svc:8200","auth":{"method":"kubernetes"},"audience":"vault"},"role":"app","tokenPath":"/var/run/secrets/keyhole.dev/backend/token","outputDir":"/keyhole/out","fileMode":256,"items":[{"name":"db_password","reference":{"kind":"vault","path":"secret/shop/db","field":"password"}}],"deadlineSeconds":60}"#,
                )]),
            }],
        },
        Entry {
            key: Key::Exact(a::VERSIONS),
            writer: Writer::Rotation,
            summary: "A digest of the versions the workload's pods were rolled out for; when it changes, the workload rolls.".into(),
            value: "16 hex digits (SHA-256 of the observed versions).".into(),
            default: "none".into(),
            applies_to: format!("the pod template of a {}", rolled()),
            limits: vec!["Do not edit it. `keyhole roll <kind>/<name>` writes a new one (a timestamp is hashed in) to roll now; `kubectl rollout restart` works too.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(a::VERSIONS, "9f86d081884c7d65")]) }],
        },
        Entry {
            key: Key::Exact(a::OBSERVED_VERSIONS),
            writer: Writer::Rotation,
            summary: "The versions the rotation controller last saw for the workload's references.".into(),
            value: "a JSON object: reference (an SSM parameter name, a Vault path) to version.".into(),
            default: "none".into(),
            applies_to: format!("the workload's own `metadata.annotations` (a {}), not its pod template", rolled()),
            limits: vec!["Do not edit it. Its first write is the baseline and rolls nothing; a later change of a version rolls the workload.".into()],
            examples: vec![Example {
                caption: "",
                store: None,
                annotations: pairs(&[(a::OBSERVED_VERSIONS, r#"{"/shop/db/password":3,"secret/shop/db":7}"#)]),
            }],
        },
        Entry {
            key: Key::Exact(names::SERVICE_ACCOUNT_ANNOTATION),
            writer: Writer::Injector,
            summary: "The service account that made a keyhole Secret or claim.".into(),
            value: "the pod's `spec.serviceAccountName`.".into(),
            default: "none".into(),
            applies_to: secret_objects(),
            limits: vec!["The provenance policy (`manifests/secret-provenance.yaml`) lets only that service account create such a Secret, and nobody change it; a pod uses only Secrets and claims its own service account made.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(names::SERVICE_ACCOUNT_ANNOTATION, "shop-api")]) }],
        },
        Entry {
            key: Key::Exact(names::PLAN_DIGEST_ANNOTATION),
            writer: Writer::Injector,
            summary: "What the values in a keyhole Secret depend on.".into(),
            value: "64 hex digits: SHA-256 of the store's name and kind, the role, the references, the templates, the namespace and the owner's uid. The store's address, `caBundle`, `rotationRole` and `allow` are not in it.".into(),
            default: "none".into(),
            applies_to: format!("keyhole's Secrets (output `{secret_out}` or `{both}`), not claims"),
            limits: vec!["A Secret whose digest is not the pod's is refused, never replaced: roll the workload out for a new revision and a new Secret.".into()],
            examples: vec![Example {
                caption: "",
                store: None,
                annotations: pairs(&[(names::PLAN_DIGEST_ANNOTATION, "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae")]),
            }],
        },
        Entry {
            key: Key::Exact(names::CREATED_BY_ANNOTATION),
            writer: Writer::Injector,
            summary: "The pod whose injector made a keyhole Secret or claim.".into(),
            value: "`<namespace>/<pod>`.".into(),
            default: "none".into(),
            applies_to: secret_objects(),
            limits: vec!["For people and logs: a pod waiting on another pod's claim names this one.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(names::CREATED_BY_ANNOTATION, "shop/web-7d9c6b8f5d-x2x4q")]) }],
        },
        Entry {
            key: Key::Exact(names::CLAIM_EXPIRES_ANNOTATION),
            writer: Writer::Injector,
            summary: "Until when the pod that made a claim may be fetching the revision's values.".into(),
            value: "a Unix time, in seconds.".into(),
            default: "none".into(),
            applies_to: "claims: an empty immutable Secret named `<secret>.claim`, made by the first pod of a revision".into(),
            limits: vec!["Until then, other pods of the revision wait for that pod's Secret instead of fetching; after it, they fetch themselves.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(names::CLAIM_EXPIRES_ANNOTATION, "1767225600")]) }],
        },
        Entry {
            key: Key::Exact(names::TLS_NOT_AFTER_ANNOTATION),
            writer: Writer::Chart,
            summary: "When the serving certificate the chart made expires.".into(),
            value: "a Unix time, in seconds.".into(),
            default: "none".into(),
            applies_to: "the webhook's TLS Secret (`tls.secretName`) when `tls.source` is `helm`".into(),
            limits: vec!["`helm upgrade` keeps the certificate until fewer than `tls.helm.renewDays` days are left, then signs a new one with the same CA (kept in the Secret `<tls.secretName>-ca`), so the `caBundle` stays.".into()],
            examples: vec![Example { caption: "", store: None, annotations: pairs(&[(names::TLS_NOT_AFTER_ANNOTATION, "1798761600")]) }],
        },
    ]
}

fn secret_objects() -> String {
    format!("keyhole's Secrets and claims (labelled `{}: {}`)", names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE)
}

/// The anchor GitHub gives a heading: lower case; letters, digits, `-` and `_`
/// kept; spaces made `-`; everything else dropped.
pub fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn heading(entry: &Entry) -> String {
    format!("`{}`", entry.key.pattern())
}

/// The example's annotations as YAML, as they would appear under `annotations:`.
fn example_yaml(example: &Example) -> String {
    let mut map = serde_yaml::Mapping::new();
    for (k, v) in &example.annotations {
        map.insert(k.clone().into(), v.clone().into());
    }
    let mut wrapped = serde_yaml::Mapping::new();
    wrapped.insert("annotations".into(), map.into());
    serde_yaml::to_string(&wrapped).expect("a map of strings serializes")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `docs/annotations.md`.
pub fn render_markdown() -> String {
    let entries = entries();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Annotation reference");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "<!-- Generated from crates/contract/src/reference_doc.rs. Do not edit by hand: change that file, then run\n     KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference -->"
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "Every annotation keyhole reads or writes. All are under `{}`; on an opted-in pod, keyhole refuses one it does not know there and names the closest one it knows. Put yours on the **pod template**, not on the Deployment's own `metadata`. Quote values YAML would read as something else: `\"true\"`, `\"0440\"`.",
        a::PREFIX
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "Usage and examples: [usage.md](usage.md). A first install: [quickstart.md](quickstart.md).");
    let _ = writeln!(w);
    let _ = writeln!(w, "| annotation | written by | what | default |");
    let _ = writeln!(w, "|---|---|---|---|");
    for e in &entries {
        let _ = writeln!(
            w,
            "| [{}](#{}) | {} | {} | {} |",
            heading(e),
            github_anchor(&heading(e)),
            e.writer.as_str(),
            cell(&e.summary),
            cell(&e.default)
        );
    }
    for (title, users) in [("Annotations you write", true), ("Annotations keyhole writes", false)] {
        let _ = writeln!(w);
        let _ = writeln!(w, "## {title}");
        if !users {
            let _ = writeln!(w);
            let _ = writeln!(
                w,
                "You will see these on your objects. They are keyhole's: do not write or change them (the webhook accepts `{}`, `{}`, `{}` and `{}` on a pod, and replaces or ignores them).",
                a::STATUS,
                names::PLAN_ANNOTATION,
                a::VERSIONS,
                a::OBSERVED_VERSIONS
            );
        }
        for e in entries.iter().filter(|e| (e.writer == Writer::User) == users) {
            let _ = writeln!(w);
            let _ = writeln!(w, "### {}", heading(e));
            let _ = writeln!(w);
            let _ = writeln!(w, "{}", e.summary);
            let _ = writeln!(w);
            if !users {
                let _ = writeln!(w, "- **Written by**: {}", e.writer.as_str());
            }
            let _ = writeln!(w, "- **Value**: {}", e.value);
            if users {
                let _ = writeln!(w, "- **Default**: {}", e.default);
                let _ = writeln!(w, "- **Applies to**: {}", e.applies_to);
            } else {
                let _ = writeln!(w, "- **On**: {}", e.applies_to);
            }
            match e.limits.as_slice() {
                [] => {}
                [one] => {
                    let _ = writeln!(w, "- **Limits**: {one}");
                }
                many => {
                    let _ = writeln!(w, "- **Limits**:");
                    for l in many {
                        let _ = writeln!(w, "  - {l}");
                    }
                }
            }
            for ex in &e.examples {
                let _ = writeln!(w);
                let caption =
                    if ex.caption.is_empty() { "Example".to_owned() } else { format!("Example ({})", ex.caption) };
                let _ = writeln!(w, "{caption}:");
                let _ = writeln!(w);
                let _ = writeln!(w, "```yaml");
                let _ = write!(w, "{}", example_yaml(ex));
                let _ = writeln!(w, "```");
            }
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "## Label");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "`{}: {}` is on every Secret and claim the injector creates. List them with `kubectl get secrets -A -l {}={}`.",
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY_VALUE,
        names::MANAGED_BY_LABEL,
        names::MANAGED_BY_VALUE
    );
    out
}
