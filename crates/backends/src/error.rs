//! The backends' errors: one variant per failing operation, each naming the
//! annotation a user would look at, the store, and the backend's own reason.
//!
//! No variant carries a secret value: reasons are built from typed error codes,
//! HTTP statuses, the backends' error messages and I/O error kinds, never from a
//! response body that could hold a value.

use std::fmt;

use keyhole_contract::StoreKind;
use keyhole_contract::annotations;

use crate::retry::Class;

/// The store an error happened on: `store "aws" (aws-ssm)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRef {
    pub name: String,
    pub kind: StoreKind,
}

impl fmt::Display for StoreRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {:?} ({})", self.name, self.kind.as_str())
    }
}

/// Several annotations or names, comma-separated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Joined(pub Vec<String>);

impl fmt::Display for Joined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl FromIterator<String> for Joined {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        Joined(iter.into_iter().collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{annotation}: {store}: cannot read the projected service-account token {path}: {reason}", annotation = annotations::STORE)]
    Token { store: StoreRef, path: String, reason: TokenError },

    #[error("{annotation}: {store}: AssumeRoleWithWebIdentity for role {role} failed: {reason}", annotation = annotations::ROLE)]
    AssumeRole { store: StoreRef, role: String, reason: String, class: Class },

    #[error("{annotation}: {store}: {method} login at auth/{mount} with role {role:?} failed: {reason}", annotation = annotations::ROLE)]
    VaultLogin { store: StoreRef, method: &'static str, mount: String, role: String, reason: String, class: Class },

    #[error("{annotations}: {store}: GetParameters for {names} failed: {reason}")]
    GetParameters { annotations: Joined, store: StoreRef, names: Joined, reason: String },

    #[error("{annotations}: {store}: no such parameter, version or label: {names}")]
    ParametersNotFound { annotations: Joined, store: StoreRef, names: Joined },

    #[error("{annotations}: {store}: reading secrets {ids} failed: {reason}")]
    GetSecrets { annotations: Joined, store: StoreRef, ids: Joined, reason: String },

    #[error("{annotations}: {store}: no such secret or version: {ids}")]
    SecretsNotFound { annotations: Joined, store: StoreRef, ids: Joined },

    #[error(
        "{annotation}: {store}: secret {id} holds binary data that is not UTF-8 text, so no #key can be picked out of it: drop #key to get its bytes"
    )]
    BinarySecret { annotation: String, store: StoreRef, id: String },

    #[error("{annotation}: {store}: cannot find the mount of {path}: {reason}")]
    VaultMount { annotation: String, store: StoreRef, path: String, reason: String },

    #[error("{annotation}: {store}: {path} is on a {mount_type:?} mount, not a KV secrets engine")]
    NotKv { annotation: String, store: StoreRef, path: String, mount_type: String },

    #[error("{annotation}: {store}: {reference} is on KV v1 mount {mount}, which keeps no versions: remove ?version=")]
    VersionOnKv1 { annotation: String, store: StoreRef, reference: String, mount: String },

    #[error("{annotation}: {store}: reading {reference} failed: {reason}")]
    VaultRead { annotation: String, store: StoreRef, reference: String, reason: String, class: Class },

    #[error("{annotation}: {store}: the value of {reference} is missing, and making it failed: {reason}")]
    Generate { annotation: String, store: StoreRef, reference: String, reason: String },

    #[error("{annotation}: {store}: listing {folder} failed: {reason}")]
    FolderList { annotation: String, store: StoreRef, folder: String, reason: String, class: Class },

    #[error(
        "{annotation}: {store}: nothing under {folder}: create a value below it, or correct the folder (add ?recursive=true for the tree below it)"
    )]
    FolderEmpty { annotation: String, store: StoreRef, folder: String },

    #[error(
        "{annotation}: {store}: {folder} holds more than {max} values; keyhole takes at most {max} a path: name a narrower folder"
    )]
    FolderTooBig { annotation: String, store: StoreRef, folder: String, max: usize },

    #[error(
        "{annotation}: {store}: {leaf} would be {why}; rename it in the store, or name it alone in a keyhole.dev/secret-<name>"
    )]
    LeafName {
        annotation: String,
        store: StoreRef,
        leaf: String,
        /// `the key "<key>": <why not>`
        why: String,
    },

    #[error(
        "{annotations}: {store}: {both} would both be the key {key:?}: rename one in the store, or name one in a keyhole.dev/secret-<name> of another name"
    )]
    LeafCollision {
        annotations: Joined,
        store: StoreRef,
        key: String,
        /// `<first> and <second>`
        both: String,
    },

    #[error("{annotation}: {store}: {reference}: {reason}")]
    Field { annotation: String, store: StoreRef, reference: String, reason: FieldError },

    #[error(
        "{annotation}: a {reference} reference in a plan for a {store} store: the webhook and injector differ in version"
    )]
    WrongKind { annotation: String, reference: &'static str, store: &'static str },

    /// A fetch task panicked or was cancelled (a bug, never a user mistake).
    #[error("a {backend} task failed: {reason}")]
    Task { backend: &'static str, reason: String },

    #[error("{annotation}: {store}: the Vault client cannot be built: {reason}", annotation = annotations::STORE)]
    VaultClient { store: StoreRef, reason: VaultClientError },
}

impl Error {
    /// The backend said a value does not exist (a generated one may be made).
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::ParametersNotFound { .. } | Error::VaultRead { class: Class::NotFound, .. })
    }

    /// Whether this error says `reference` (as the plan writes it) does not exist.
    pub fn says_missing(&self, reference: &str) -> bool {
        match self {
            Error::ParametersNotFound { names, .. } => names.0.iter().any(|n| n == reference),
            Error::VaultRead { reference: r, class: Class::NotFound, .. } => r == reference,
            _ => false,
        }
    }

    /// How a login failed (for the rotation controller's metrics); `None` for
    /// the errors that are not a backend's answer to a login.
    pub fn login_class(&self) -> Option<Class> {
        match self {
            Error::AssumeRole { class, .. } | Error::VaultLogin { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// Why a projected token could not be read. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("the file is empty")]
    Empty,
}

/// Why the HTTP client for a Vault store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VaultClientError {
    #[error("caBundle is not a PEM certificate bundle: {0}")]
    CaBundle(#[source] reqwest::Error),
    #[error("caBundle holds no certificate")]
    NoCertificate,
    #[error("{0}")]
    Build(#[source] reqwest::Error),
}

/// Why `#field` could not be picked out of a value. Never holds the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("the value is not JSON (line {line}, column {column}), so #{field} cannot be picked out of it")]
    NotJson { field: String, line: usize, column: usize },
    #[error("the value is JSON but not an object, so #{field} cannot be picked out of it")]
    NotObject { field: String },
    #[error("the value has no field #{field}")]
    NoField { field: String },
}
