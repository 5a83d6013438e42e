//! keyhole-backends: what the injector and the rotation controller both need of
//! the secret managers. An AWS session by web identity (AssumeRoleWithWebIdentity
//! with the pod's projected token, on any cluster), SSM value fetches and version
//! look-ups, Secrets Manager fetches in batches, Vault/OpenBao logins (kubernetes or jwt auth), KV reads and KV v2
//! metadata, and the one retry policy every call goes through.
//!
//! Values live in `SecretString` from arrival; no error or log line carries one,
//! nor a token.
#![forbid(unsafe_code)]

pub mod error;
pub mod generate;
pub mod retry;
pub mod secretsmanager;
pub mod ssm;
pub mod value;
pub mod vault;

use std::path::Path;

use secrecy::SecretString;
use tokio::time::Instant;
use zeroize::Zeroizing;

pub use crate::error::{Error, FieldError, Joined, StoreRef, TokenError};
pub use crate::value::Values;

/// What every backend call needs: who logs in, with what, until when.
#[derive(Clone)]
pub struct Ctx {
    pub store: StoreRef,
    pub role: String,
    pub token: SecretString,
    pub deadline: Instant,
    /// The STS session name (see [`session_name`]); Vault ignores it.
    pub session: String,
}

/// An STS session name: `keyhole-<who>`, in STS's alphabet, at most 64 characters.
/// The injector passes its pod's name, the rotation controller its own identity.
pub fn session_name(who: &str) -> String {
    let mut s: String = format!("keyhole-{who}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) { c } else { '-' })
        .collect();
    s.truncate(64);
    s
}

/// Reads a projected token; it never leaves a `SecretString` after this.
pub fn read_token(path: &Path) -> Result<SecretString, TokenError> {
    let raw = Zeroizing::new(std::fs::read_to_string(path)?);
    let token = raw.trim();
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    Ok(SecretString::from(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(session_name("injector"), "keyhole-injector");
        assert_eq!(session_name("web-5d8f-x"), "keyhole-web-5d8f-x");
        assert_eq!(session_name("rotation/a b"), "keyhole-rotation-a-b");
        assert_eq!(session_name(&"a".repeat(100)).len(), 64);
    }
}
