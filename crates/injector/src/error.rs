//! The injector's errors: one variant per failing operation, each naming the
//! annotation a user would look at, the store, and the backend's own reason.
//!
//! No variant carries a secret value: reasons are built from typed error codes,
//! HTTP statuses, the backends' error messages and I/O error kinds, never from a
//! response body that could hold a value.

use keyhole_contract::plan::PlanError;
use keyhole_contract::{annotations, names};

pub use keyhole_backends::{Joined, StoreRef};

use crate::secret::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Plan(#[from] LoadError),

    /// Boxed: it is the largest variant, and errors travel by value.
    #[error(transparent)]
    Backend(Box<keyhole_backends::Error>),

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

    #[error(
        "{annotation}: {store}: {object} carries keyhole's label but was not made by this pod's service account {ours:?} (it names {made_by}): keyhole uses only Secrets and claims its own service account made, so someone else in the namespace may have planted it; find out who, delete it, and install manifests/secret-provenance.yaml, which refuses such Secrets at create",
        annotation = annotations::OUTPUT,
        made_by = made_by.as_deref().map(|m| format!("{:?}", m.chars().take(100).collect::<String>())).unwrap_or_else(|| "none".into())
    )]
    SecretNotOurs { store: StoreRef, object: String, made_by: Option<String>, ours: String },

    #[error(
        "{annotation}: {store}: {object} looks like keyhole's, but this cluster does not enforce keyhole's Secret provenance policy, so anyone in the namespace who may create Secrets could have made it: keyhole uses no existing Secret until the policy is installed (kubectl apply -f manifests/secret-provenance.yaml); once it is, delete the keyhole Secrets made before it, which it did not vet",
        annotation = annotations::OUTPUT
    )]
    SecretUnverified { store: StoreRef, object: String },

    #[error(
        "{annotation}: {store}: {object} belongs to {found}, not to this pod's owner (uid {wanted}): it was made for an earlier workload or pod of the same name; the garbage collector removes it once its owner is gone, or delete it",
        annotation = annotations::OUTPUT
    )]
    SecretOtherOwner { store: StoreRef, object: String, found: String, wanted: String },

    #[error("{annotation}: {store}: {object} is keyhole's but {reason}: delete it and the next pod makes it anew", annotation = annotations::OUTPUT)]
    SecretMalformed { store: StoreRef, object: String, reason: String },

    #[error("{annotation}: {store}: the template does not render: {reason}")]
    Template { annotation: String, store: StoreRef, reason: String },

    #[error("{annotations}: {store}: writing the files to {dir} failed: {reason}")]
    Write { annotations: Joined, store: StoreRef, dir: String, reason: String },

    #[error("{store}: the {seconds}s deadline passed while {doing}")]
    Deadline { store: StoreRef, seconds: u64, doing: &'static str },
}

impl From<keyhole_backends::Error> for Error {
    fn from(e: keyhole_backends::Error) -> Self {
        Error::Backend(Box::new(e))
    }
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
            SecretError::NotOurs { object, made_by, ours } => Error::SecretNotOurs { store, object, made_by, ours },
            SecretError::Unverified { object } => Error::SecretUnverified { store, object },
            SecretError::OtherOwner { object, found, wanted } => {
                Error::SecretOtherOwner { store, object, found, wanted }
            }
            SecretError::Malformed { object, reason } => Error::SecretMalformed { store, object, reason },
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

/// Why the plan could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "no plan: in a pod the webhook mounts its {annotation} annotation and sets {file}; outside one, pass --plan FILE or set {env}",
        annotation = names::PLAN_ANNOTATION, file = names::PLAN_FILE_ENV, env = names::PLAN_ENV
    )]
    Missing,
    #[error(
        "the pod's {annotation} changed after admission (its SHA-256 is {found}, the webhook wrote {expected}): \
         someone edited the pod's annotations; delete the pod so that its controller makes a new one",
        annotation = names::PLAN_ANNOTATION
    )]
    Changed { expected: String, found: String },
    #[error("cannot read the plan file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] PlanError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_message_is_one_bounded_line() {
        let store = StoreRef { name: "aws".into(), kind: keyhole_contract::StoreKind::AwsSsm };
        let e = Error::from(keyhole_backends::Error::AssumeRole {
            store,
            role: "arn:x".into(),
            reason: "a\nb".into(),
            class: keyhole_backends::retry::Class::Auth,
        });
        let line = e.termination_message();
        assert_eq!(
            line,
            "keyhole.dev/role: store \"aws\" (aws-ssm): AssumeRoleWithWebIdentity for role arn:x failed: a b\n"
        );
        let long = Error::Deadline {
            store: StoreRef { name: "é".repeat(5000), kind: keyhole_contract::StoreKind::Vault },
            seconds: 1,
            doing: "x",
        };
        let line = long.termination_message();
        assert!(line.len() <= 4004 && line.ends_with("...\n"));
    }
}
