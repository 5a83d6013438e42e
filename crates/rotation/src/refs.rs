//! Which backend values a workload's pod template depends on, as the rotation
//! controller sees them: parsed by the same contract as the webhook, pinned and
//! label references set aside.

use std::collections::BTreeMap;
use std::time::Duration;

use keyhole_contract::annotations::{self, InjectSpec};
use keyhole_contract::reference::{Reference, SsmSelector};
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
    /// Reference identity (SSM parameter name, Vault path) -> the annotations using it.
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
    /// Opted in, but every reference is pinned or follows a label.
    NothingToWatch(Vec<Fixed>),
    Watch(Watched),
}

pub const PINNED: &str = "pinned to a version";
pub const LABEL: &str = "follows an SSM label, which only a value read can resolve";

/// What the template's annotations ask for.
pub fn interest(template: &BTreeMap<String, String>, stores: &Stores) -> Interest {
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
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut fixed = Vec::new();
    for item in &spec.secrets {
        let annotation = InjectSpec::secret_annotation(&item.name);
        let identity = match Reference::parse(config.kind(), &item.reference) {
            Err(e) => return Interest::Unreadable(format!("{annotation}: {e}")),
            Ok(Reference::AwsSsm(r)) => match r.selector {
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
            Ok(Reference::Vault(r)) => {
                if r.version.is_some() {
                    fixed.push(Fixed { annotation, why: PINNED });
                    continue;
                }
                r.path
            }
        };
        refs.entry(identity).or_default().push(annotation);
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
        let Interest::Watch(w) = interest(&a, &stores()) else { panic!("not watched") };
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
        let Interest::Watch(w) = interest(&a, &stores()) else { panic!("not watched") };
        assert_eq!((w.store.as_str(), w.kind), ("vault", StoreKind::Vault));
        assert_eq!(w.refs.keys().collect::<Vec<_>>(), ["secret/app/db"]);
        assert_eq!(w.fixed.len(), 1);
        assert_eq!(w.interval, None);
    }

    #[test]
    fn opted_out_pinned_only_and_not_opted_in_are_told_apart() {
        let base = [("keyhole.dev/inject", "true"), ("keyhole.dev/role", "app")];
        let mut a = ann(&base);
        a.insert("keyhole.dev/secret-pw".into(), "secret/app/db#pw".into());
        a.insert("keyhole.dev/rotate".into(), "false".into());
        assert_eq!(interest(&a, &stores()), Interest::OptedOut);
        let mut pinned = ann(&base);
        pinned.insert("keyhole.dev/secret-pw".into(), "secret/app/db?version=2#pw".into());
        assert!(matches!(interest(&pinned, &stores()), Interest::NothingToWatch(f) if f[0].why == PINNED));
        assert_eq!(interest(&ann(&[("app", "x")]), &stores()), Interest::NotOptedIn);
        let bad = ann(&[("keyhole.dev/inject", "true"), ("keyhole.dev/store", "nope"), ("keyhole.dev/secret-a", "/a")]);
        assert!(matches!(interest(&bad, &stores()), Interest::Unreadable(e) if e.contains("unknown store")));
    }
}
