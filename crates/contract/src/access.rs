//! Tenancy: which namespaces may use a store, and with which roles and paths.
//!
//! A store without `allow` is open to every namespace (as before this existed);
//! with it, a namespace gets only what the grants naming it give. The webhook
//! checks a pod's references here at admission, the validating webhook at
//! apply, and the rotation controller before any look-up, so that no namespace
//! learns, through keyhole's own rights, anything about a path it may not name.
//!
//! A path ending in `/` grants everything under it; any other path grants
//! exactly itself. So `secret/team-a` can never be read as `secret/team-ab`.

use serde::{Deserialize, Serialize};

use crate::reference::Reference;

/// One entry of a store's `allow`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    /// Namespace names; a trailing `*` matches by prefix (`team-a-*`).
    pub namespaces: Vec<String>,
    /// Roles these namespaces may name (or get as the store's defaultRole); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Vault paths (`mount/path`) or SSM parameter names; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

impl Grant {
    fn names(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => namespace.starts_with(prefix),
            None => pattern == namespace,
        })
    }

    fn lets_role(&self, role: &str) -> bool {
        self.roles.as_ref().is_none_or(|roles| roles.iter().any(|r| r == role))
    }

    fn lets_path(&self, path: &str) -> bool {
        self.paths.as_ref().is_none_or(|paths| paths.iter().any(|p| covers(p, path)))
    }
}

fn covers(granted: &str, path: &str) -> bool {
    if granted.ends_with('/') { path.starts_with(granted) } else { path == granted }
}

/// The path a reference reads, as grants name it: the Vault path, the SSM name,
/// the Secrets Manager name or ARN as written.
pub fn path_of(reference: &Reference) -> &str {
    match reference {
        Reference::AwsSsm(r) => &r.name,
        Reference::Vault(r) => &r.path,
        Reference::AwsSecretsManager(r) => &r.id,
    }
}

/// What a namespace may do with one store and one role.
#[derive(Debug)]
pub struct Scope<'a> {
    /// `None`: the store is open.
    grants: Option<Vec<&'a Grant>>,
}

/// Why a namespace may not use a store, a role or a path. The caller adds the
/// annotation; the text names the store and what is allowed instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "store {store:?} is not open to namespace {namespace:?}: its operator lists the namespaces that may use it (stores.{store}.allow)"
    )]
    Namespace { store: String, namespace: String },
    #[error("store {store:?} lets namespace {namespace:?} use roles {allowed}, not {role:?}")]
    Role { store: String, namespace: String, role: String, allowed: String },
    #[error("store {store:?} lets namespace {namespace:?} read {allowed} only; {path:?} is outside")]
    Path { store: String, namespace: String, path: String, allowed: String },
}

impl<'a> Scope<'a> {
    /// The grants of `allow` (a store's) for `namespace` and `role`.
    pub fn of(store: &str, allow: Option<&'a [Grant]>, namespace: &str, role: &str) -> Result<Scope<'a>, AccessError> {
        let Some(allow) = allow else {
            return Ok(Scope { grants: None });
        };
        let named: Vec<&Grant> = allow.iter().filter(|g| g.names(namespace)).collect();
        if named.is_empty() {
            return Err(AccessError::Namespace { store: store.to_owned(), namespace: namespace.to_owned() });
        }
        let grants: Vec<&Grant> = named.iter().copied().filter(|g| g.lets_role(role)).collect();
        if grants.is_empty() {
            let allowed = named.iter().flat_map(|g| g.roles.iter().flatten()).map(String::as_str);
            return Err(AccessError::Role {
                store: store.to_owned(),
                namespace: namespace.to_owned(),
                role: role.to_owned(),
                allowed: listed(allowed),
            });
        }
        Ok(Scope { grants: Some(grants) })
    }

    /// Whether the scope lets `reference` be read; the error lists what it lets.
    pub fn check(&self, store: &str, namespace: &str, reference: &Reference) -> Result<(), AccessError> {
        self.check_path(store, namespace, path_of(reference))
    }

    /// Whether the scope lets `path` be read: a reference's path, or a folder
    /// with its trailing `/` (then only a grant of a folder at or above it
    /// covers it, as it covers every leaf below).
    pub fn check_path(&self, store: &str, namespace: &str, path: &str) -> Result<(), AccessError> {
        let Some(grants) = &self.grants else {
            return Ok(());
        };
        if grants.iter().any(|g| g.lets_path(path)) {
            return Ok(());
        }
        let allowed = grants.iter().flat_map(|g| g.paths.iter().flatten()).map(String::as_str);
        Err(AccessError::Path {
            store: store.to_owned(),
            namespace: namespace.to_owned(),
            path: path.to_owned(),
            allowed: listed(allowed),
        })
    }
}

/// `a, b, c`, without repeats, at most ten shown.
fn listed<'s>(items: impl Iterator<Item = &'s str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    let more = seen.len().saturating_sub(10);
    let mut text = seen.into_iter().take(10).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Checks what serde cannot: every grant names a namespace; no empty entries.
pub fn validate(allow: &[Grant]) -> Result<(), &'static str> {
    for g in allow {
        if g.namespaces.is_empty() || g.namespaces.iter().any(String::is_empty) {
            return Err("every allow entry names at least one namespace (a trailing * matches a prefix)");
        }
        if g.roles.as_ref().is_some_and(|r| r.is_empty() || r.iter().any(String::is_empty)) {
            return Err("allow roles, when given, list at least one non-empty role");
        }
        if g.paths.as_ref().is_some_and(|p| p.is_empty() || p.iter().any(String::is_empty)) {
            return Err("allow paths, when given, list at least one non-empty path");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreKind;

    fn grants() -> Vec<Grant> {
        serde_json::from_str(
            r#"[
                {"namespaces": ["team-a", "team-a-*"], "roles": ["team-a"], "paths": ["secret/team-a/", "secret/shared/db"]},
                {"namespaces": ["team-a"], "roles": ["team-a-ro"], "paths": ["secret/ro/"]},
                {"namespaces": ["ops"]}
            ]"#,
        )
        .unwrap()
    }

    fn vault(raw: &str) -> Reference {
        Reference::parse(StoreKind::Vault, raw).unwrap()
    }

    #[test]
    fn a_namespace_reads_only_under_its_grants() {
        let g = grants();
        let scope = Scope::of("vault", Some(&g), "team-a-dev", "team-a").unwrap();
        scope.check("vault", "team-a-dev", &vault("secret/team-a/db#pw")).unwrap();
        scope.check("vault", "team-a-dev", &vault("secret/shared/db#pw")).unwrap();
        let e = scope.check("vault", "team-a-dev", &vault("secret/team-ab/db")).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"store "vault" lets namespace "team-a-dev" read secret/team-a/, secret/shared/db only; "secret/team-ab/db" is outside"#
        );
        assert!(scope.check("vault", "team-a-dev", &vault("secret/shared/db2")).is_err(), "an exact path is exact");
        assert!(scope.check("vault", "team-a", &vault("secret/ro/x")).is_err(), "paths go with their grant's roles");
        let ro = Scope::of("vault", Some(&g), "team-a", "team-a-ro").unwrap();
        ro.check("vault", "team-a", &vault("secret/ro/x")).unwrap();
        let ops = Scope::of("vault", Some(&g), "ops", "anything").unwrap();
        ops.check("vault", "ops", &vault("any/path")).unwrap();
    }

    #[test]
    fn namespaces_and_roles_outside_the_grants_are_refused_by_name() {
        let g = grants();
        let e = Scope::of("vault", Some(&g), "team-b", "team-a").unwrap_err();
        assert!(matches!(e, AccessError::Namespace { .. }), "{e}");
        assert!(e.to_string().contains("stores.vault.allow"), "{e}");
        let e = Scope::of("vault", Some(&g), "team-a", "admin").unwrap_err();
        assert_eq!(e.to_string(), r#"store "vault" lets namespace "team-a" use roles team-a, team-a-ro, not "admin""#);
        assert!(Scope::of("vault", Some(&g), "team-ax", "team-a").is_err(), "no * means the exact name");
        Scope::of("vault", None, "anyone", "any").unwrap().check("vault", "anyone", &vault("a/b")).unwrap();
        let ssm = Reference::parse(StoreKind::AwsSsm, "/team-a/db").unwrap();
        assert_eq!(path_of(&ssm), "/team-a/db");
    }

    #[test]
    fn empty_grants_are_refused() {
        let bad: Vec<Grant> = serde_json::from_str(r#"[{"namespaces": []}]"#).unwrap();
        assert!(validate(&bad).is_err());
        let bad: Vec<Grant> = serde_json::from_str(r#"[{"namespaces": ["a"], "paths": []}]"#).unwrap();
        assert!(validate(&bad).is_err());
        validate(&grants()).unwrap();
    }
}
