//! Which backend values a workload's pod template depends on, as the rotation
//! controller sees them: parsed by the same contract as the webhook, checked
//! against the store's grants for the workload's namespace as admission checks
//! them (so the controller never reads metadata the namespace could not read
//! itself), pinned and label references set aside.

use std::collections::BTreeMap;
use std::time::Duration;

use keyhole_contract::access::{AccessError, Scope};
use keyhole_contract::annotations::{self, InjectSpec};
use keyhole_contract::reference::{FolderRef, Reference, SsmSelector};
use keyhole_contract::{StoreKind, Stores};

/// A reference that never rotates, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    pub annotation: String,
    pub why: &'static str,
}

/// What one workload asks the controller to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub store: String,
    pub kind: StoreKind,
    /// Reference identity (SSM parameter name, Vault path, secret name, or a
    /// folder's [`FolderRef::identity`]) -> the annotations using it.
    pub refs: BTreeMap<String, Vec<String>>,
    pub fixed: Vec<Fixed>,
    /// `keyhole.dev/refresh-interval`; `None`: the controller's interval.
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// No `keyhole.dev/inject: "true"` on the template.
    NotOptedIn,
    /// `keyhole.dev/rotate: "false"`.
    OptedOut,
    /// The annotations do not parse (admission would refuse them too).
    Unreadable(String),
    /// The store, role or a reference lies outside what the store grants the
    /// workload's namespace (admission would refuse it too): nothing is looked up.
    Denied(String),
    /// Opted in, but every reference is pinned or follows a label.
    NothingToWatch(Vec<Fixed>),
    Watch(Watched),
}

pub const PINNED: &str = "pinned to a version";
pub const LABEL: &str = "follows an SSM label, which only a value read can resolve";

/// What the template's annotations, in a workload of `namespace`, ask for.
pub fn interest(template: &BTreeMap<String, String>, namespace: &str, stores: &Stores) -> Interest {
    let spec = match annotations::parse(template) {
        Ok(None) => return Interest::NotOptedIn,
        Ok(Some(spec)) => spec,
        Err(problems) => return Interest::Unreadable(problems.to_string()),
    };
    if !spec.rotate {
        return Interest::OptedOut;
    }
    let (store, config) = match stores.resolve(spec.store.as_deref()) {
        Ok(s) => s,
        Err(e) => return Interest::Unreadable(e.to_string()),
    };
    // The role as admission resolves it; a missing one (admission refuses that)
    // passes only grants that name no roles.
    let role = spec.role.as_deref().or(config.default_role()).unwrap_or_default();
    let scope = match Scope::of(store, config.allow(), namespace, role) {
        Ok(scope) => scope,
        Err(e) => {
            let key = match &e {
                AccessError::Role { .. } => annotations::ROLE,
                _ if spec.store.is_some() => annotations::STORE,
                _ => annotations::INJECT,
            };
            return Interest::Denied(format!("{key}: {e}"));
        }
    };
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut fixed = Vec::new();
    for item in &spec.secrets {
        let annotation = InjectSpec::secret_annotation(&item.name);
        let reference = match Reference::parse(config.kind(), &item.reference) {
            Err(e) => return Interest::Unreadable(format!("{annotation}: {e}")),
            Ok(r) => r,
        };
        if let Err(e) = scope.check(store, namespace, &reference) {
            return Interest::Denied(format!("{annotation}: {e}"));
        }
        let identity = match reference {
            Reference::AwsSsm(r) => match r.selector {
                None => r.name,
                Some(SsmSelector::Version(_)) => {
                    fixed.push(Fixed { annotation, why: PINNED });
                    continue;
                }
                Some(SsmSelector::Label(_)) => {
                    fixed.push(Fixed { annotation, why: LABEL });
                    continue;
                }
            },
            Reference::Vault(r) => {
                if r.version.is_some() {
                    fixed.push(Fixed { annotation, why: PINNED });
                    continue;
                }
                r.path
            }
            Reference::AwsSecretsManager(r) => {
                if r.version.is_pinned() {
                    fixed.push(Fixed { annotation, why: PINNED });
                    continue;
                }
                r.id
            }
        };
        refs.entry(identity).or_default().push(annotation);
    }
    for path in &spec.paths {
        let annotation = InjectSpec::path_annotation(&path.name);
        let folder = match FolderRef::parse(config.kind(), &path.folder) {
            Err(e) => return Interest::Unreadable(format!("{annotation}: {e}")),
            Ok(f) => f,
        };
        if let Err(e) = scope.check_path(store, namespace, &folder.folder()) {
            return Interest::Denied(format!("{annotation}: {e}"));
        }
        refs.entry(folder.identity()).or_default().push(annotation);
    }
    if refs.is_empty() {
        return Interest::NothingToWatch(fixed);
    }
    Interest::Watch(Watched {
        store: store.to_owned(),
        kind: config.kind(),
        refs,
        fixed,
        interval: spec.refresh_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Stores {
        serde_json::from_str(
            r#"{"defaultStore": "vault", "stores": {
                "vault": {"kind": "vault", "address": "http://v", "auth": {"method": "jwt"}},
                "aws": {"kind": "aws-ssm", "region": "eu-west-1"}
            }}"#,
        )
        .unwrap()
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ssm_references_are_watched_by_name_and_pinned_or_labelled_ones_set_aside() {
        let a = ann(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/store", "aws"),
            ("keyhole.dev/refresh-interval", "5m"),
            ("keyhole.dev/secret-user", "/db#user"),
            ("keyhole.dev/secret-pw", "/db#pw"),
            ("keyhole.dev/secret-api", "/api"),
            ("keyhole.dev/secret-old", "/db:3"),
            ("keyhole.dev/secret-stable", "/db:stable"),
        ]);
        let Interest::Watch(w) = interest(&a, "ns", &stores()) else { panic!("not watched") };
        assert_eq!(w.store, "aws");
        assert_eq!(w.interval, Some(Duration::from_secs(300)));
        assert_eq!(w.refs.keys().collect::<Vec<_>>(), ["/api", "/db"]);
        assert_eq!(w.refs["/db"], ["keyhole.dev/secret-pw", "keyhole.dev/secret-user"]);
        assert_eq!(
            w.fixed,
            [
                Fixed { annotation: "keyhole.dev/secret-old".into(), why: PINNED },
                Fixed { annotation: "keyhole.dev/secret-stable".into(), why: LABEL },
            ]
        );
    }

    #[test]
    fn vault_references_are_watched_by_path() {
        let a = ann(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/role", "app"),
            ("keyhole.dev/secret-pw", "secret/app/db#password"),
            ("keyhole.dev/secret-whole", "secret/app/db"),
            ("keyhole.dev/secret-v1", "secret/app/db?version=1#password"),
        ]);
        let Interest::Watch(w) = interest(&a, "ns", &stores()) else { panic!("not watched") };
        assert_eq!((w.store.as_str(), w.kind), ("vault", StoreKind::Vault));
        assert_eq!(w.refs.keys().collect::<Vec<_>>(), ["secret/app/db"]);
        assert_eq!(w.fixed.len(), 1);
        assert_eq!(w.interval, None);
    }

    #[test]
    fn folders_are_watched_as_sets_inside_the_grants_only() {
        let a = ann(&[
            ("keyhole.dev/inject", "true"),
            ("keyhole.dev/store", "aws"),
            ("keyhole.dev/path-app", "/app/?recursive=true"),
            ("keyhole.dev/path-top", "/top/"),
        ]);
        let Interest::Watch(w) = interest(&a, "ns", &stores()) else { panic!("not watched") };
        assert_eq!(w.refs.keys().collect::<Vec<_>>(), ["/app/**", "/top/*"]);
        assert_eq!(w.refs["/app/**"], ["keyhole.dev/path-app"]);
        let outside = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/path-all", "secret/?recursive=true")]);
        assert!(
            matches!(interest(&outside, "team-a", &granting()), Interest::Denied(e) if e.starts_with("keyhole.dev/path-all: ")),
            "a folder above the grant would list what the namespace may not read"
        );
        let inside = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/path-all", "secret/team-a/")]);
        assert!(
            matches!(interest(&inside, "team-a", &granting()), Interest::Watch(w) if w.refs.contains_key("secret/team-a/*"))
        );
    }

    #[test]
    fn opted_out_pinned_only_and_not_opted_in_are_told_apart() {
        let base = [("keyhole.dev/inject", "true"), ("keyhole.dev/role", "app")];
        let mut a = ann(&base);
        a.insert("keyhole.dev/secret-pw".into(), "secret/app/db#pw".into());
        a.insert("keyhole.dev/rotate".into(), "false".into());
        assert_eq!(interest(&a, "ns", &stores()), Interest::OptedOut);
        let mut pinned = ann(&base);
        pinned.insert("keyhole.dev/secret-pw".into(), "secret/app/db?version=2#pw".into());
        assert!(matches!(interest(&pinned, "ns", &stores()), Interest::NothingToWatch(f) if f[0].why == PINNED));
        assert_eq!(interest(&ann(&[("app", "x")]), "ns", &stores()), Interest::NotOptedIn);
        let bad = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/store", "nope"), ("keyhole.dev/secret-a", "/a")]);
        assert!(matches!(interest(&bad, "ns", &stores()), Interest::Unreadable(e) if e.contains("unknown store")));
    }

    fn granting() -> Stores {
        serde_json::from_str(
            r#"{"defaultStore": "vault", "stores": {"vault": {"kind": "vault", "address": "http://v", "auth": {"method": "jwt"},
                "defaultRole": "team-a",
                "allow": [{"namespaces": ["team-a"], "roles": ["team-a"], "paths": ["secret/team-a/"]}]}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_reference_outside_the_namespaces_grants_is_never_watched() {
        let inside = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-db", "secret/team-a/db#pw")]);
        let Interest::Watch(w) = interest(&inside, "team-a", &granting()) else { panic!("the control is not watched") };
        assert_eq!(w.refs.keys().collect::<Vec<_>>(), ["secret/team-a/db"]);

        let mut outside = inside.clone();
        outside.insert("keyhole.dev/secret-other".into(), "secret/team-b/db#pw".into());
        assert_eq!(
            interest(&outside, "team-a", &granting()),
            Interest::Denied(
                r#"keyhole.dev/secret-other: store "vault" lets namespace "team-a" read secret/team-a/ only; "secret/team-b/db" is outside"#
                    .into()
            )
        );
        // A pinned reference is never looked up, but admission refuses it all the same.
        let mut pinned = inside.clone();
        pinned.insert("keyhole.dev/secret-old".into(), "secret/team-b/db?version=1".into());
        assert!(
            matches!(interest(&pinned, "team-a", &granting()), Interest::Denied(e) if e.starts_with("keyhole.dev/secret-old: "))
        );
    }

    #[test]
    fn another_namespace_or_role_is_denied_by_its_annotation() {
        let a = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/secret-db", "secret/team-a/db")]);
        assert!(
            matches!(interest(&a, "team-b", &granting()), Interest::Denied(e) if e.starts_with("keyhole.dev/inject: store \"vault\" is not open to namespace \"team-b\""))
        );
        let mut admin = a.clone();
        admin.insert("keyhole.dev/role".into(), "admin".into());
        assert!(
            matches!(interest(&admin, "team-a", &granting()), Interest::Denied(e) if e.starts_with("keyhole.dev/role: "))
        );
        // Stores without grants are open, as before.
        assert!(matches!(interest(&a, "team-b", &stores()), Interest::Watch(_)));
    }
}
