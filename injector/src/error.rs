//! The injector's errors: one variant per failing operation, each naming the
//! annotation a user would look at, the store, and the backend's own reason.
//!
//! No variant carries a secret value: reasons are built from typed error codes,
//! HTTP statuses, the backends' error messages and I/O error kinds, never from a
//! response body that could hold a value.

use std::fmt;

use keyhole_contract::StoreKind;
use keyhole_contract::{annotations, names};

use crate::secret::SecretError;

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
    #[error("{0}")]
    Plan(String),

    #[error("{annotation}: {store}: cannot reach the API server for the Secret: {reason}", annotation = annotations::OUTPUT)]
    SecretSetup { store: StoreRef, reason: String },

    #[error("{annotation}: {store}: {doing} Secret {secret} failed: {reason}", annotation = annotations::OUTPUT)]
    SecretApi { store: StoreRef, secret: String, doing: &'static str, reason: String },

    #[error(
        "{annotation}: {store}: Secret {secret} exists and keyhole does not manage it (no label {label}={value}): keyhole never overwrites it; rename or delete that Secret, or write {annotation}: files",
        annotation = annotations::OUTPUT,
        label = names::MANAGED_BY_LABEL,
        value = names::MANAGED_BY_VALUE
    )]
    SecretForeign { store: StoreRef, secret: String },

    #[error(
        "{annotation}: {store}: Secret {secret} was made by keyhole for another plan (digest {found:.12}, this pod's {wanted:.12}): the store configuration changed during this revision; roll the workload out (kubectl rollout restart) for a new revision and a new Secret",
        annotation = annotations::OUTPUT
    )]
    SecretOtherPlan { store: StoreRef, secret: String, found: String, wanted: String },

    #[error("{annotation}: {store}: Secret {secret} is keyhole's but {reason}: delete it and the next pod makes it anew", annotation = annotations::OUTPUT)]
    SecretMalformed { store: StoreRef, secret: String, reason: String },

    #[error("{annotation}: {store}: cannot read the projected service-account token {path}: {reason}", annotation = annotations::STORE)]
    Token { store: StoreRef, path: String, reason: String },

    #[error("{annotation}: {store}: AssumeRoleWithWebIdentity for role {role} failed: {reason}", annotation = annotations::ROLE)]
    AssumeRole { store: StoreRef, role: String, reason: String },

    #[error("{annotation}: {store}: {method} login at auth/{mount} with role {role:?} failed: {reason}", annotation = annotations::ROLE)]
    VaultLogin { store: StoreRef, method: &'static str, mount: String, role: String, reason: String },

    #[error("{annotations}: {store}: GetParameters for {names} failed: {reason}")]
    GetParameters { annotations: Joined, store: StoreRef, names: Joined, reason: String },

    #[error("{annotations}: {store}: no such parameter, version or label: {names}")]
    ParametersNotFound { annotations: Joined, store: StoreRef, names: Joined },

    #[error("{annotation}: {store}: cannot find the mount of {path}: {reason}")]
    VaultMount { annotation: String, store: StoreRef, path: String, reason: String },

    #[error("{annotation}: {store}: {path} is on a {mount_type:?} mount, not a KV secrets engine")]
    NotKv { annotation: String, store: StoreRef, path: String, mount_type: String },

    #[error("{annotation}: {store}: {reference} is on KV v1 mount {mount}, which keeps no versions: remove ?version=")]
    VersionOnKv1 { annotation: String, store: StoreRef, reference: String, mount: String },

    #[error("{annotation}: {store}: reading {reference} failed: {reason}")]
    VaultRead { annotation: String, store: StoreRef, reference: String, reason: String },

    #[error("{annotation}: {store}: {reference}: {reason}")]
    Field { annotation: String, store: StoreRef, reference: String, reason: FieldError },

    #[error("{annotation}: {store}: the template does not render: {reason}")]
    Template { annotation: String, store: StoreRef, reason: String },

    #[error("{annotations}: {store}: writing the files to {dir} failed: {reason}")]
    Write { annotations: Joined, store: StoreRef, dir: String, reason: String },

    #[error("{store}: the {seconds}s deadline passed while {doing}")]
    Deadline { store: StoreRef, seconds: u64, doing: &'static str },
}

impl Error {
    /// Adds the store and the Secret's `namespace/name` to a Secret output error.
    pub fn secret(store: &StoreRef, target: Option<&crate::secret::Target>, e: SecretError) -> Error {
        let store = store.clone();
        let secret = target.map(|t| t.id()).unwrap_or_default();
        match e {
            SecretError::Setup(reason) => Error::SecretSetup { store, reason },
            SecretError::Api { doing, reason } => Error::SecretApi { store, secret, doing, reason },
            SecretError::Foreign => Error::SecretForeign { store, secret },
            SecretError::OtherPlan { found, wanted } => Error::SecretOtherPlan { store, secret, found, wanted },
            SecretError::Malformed(reason) => Error::SecretMalformed { store, secret, reason },
        }
    }

    /// The one line the kubelet shows in `kubectl describe pod`: no line breaks,
    /// and short enough for the termination log's 4 KiB.
    pub fn termination_message(&self) -> String {
        let mut line: String = self.to_string().chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        const MAX: usize = 4000;
        if line.len() > MAX {
            let mut cut = MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("...");
        }
        line.push('\n');
        line
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_is_one_bounded_line() {
        let store = StoreRef { name: "aws".into(), kind: StoreKind::AwsSsm };
        let e = Error::AssumeRole { store, role: "arn:x".into(), reason: "a\nb".into() };
        let line = e.termination_message();
        assert_eq!(
            line,
            "keyhole.dev/role: store \"aws\" (aws-ssm): AssumeRoleWithWebIdentity for role arn:x failed: a b\n"
        );
        let long = Error::Plan("é".repeat(5000));
        let line = long.termination_message();
        assert!(line.len() <= 4004 && line.ends_with("...\n"));
    }
}
