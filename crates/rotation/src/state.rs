//! What the controller remembers, kept on the workload itself so a restart
//! changes nothing: the versions it last saw (`keyhole.dev/observed-versions`,
//! a small JSON map; versions are not secret) and, on the pod template, a digest
//! of them (`keyhole.dev/versions`) whose change is what rolls the workload.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Reference identity (SSM parameter name, Vault path, secret name) -> its current version.
pub type Versions = BTreeMap<String, Version>;

/// A version as its backend counts it: SSM and Vault number them, Secrets
/// Manager names them (a version id). A number is written as a JSON number,
/// so the annotations of SSM and Vault workloads are what they always were.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Version {
    Number(u64),
    Id(String),
}

impl From<u64> for Version {
    fn from(v: u64) -> Self {
        Version::Number(v)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Number(n) => write!(f, "{n}"),
            Version::Id(id) => f.write_str(id),
        }
    }
}

/// The version of a folder's set of leaves: their count and 16 hex digits of
/// SHA-256 over each leaf's name and version, so a leaf added, removed or
/// changed moves it, and a log line says how many there are (`25@3f2a…`).
pub fn set_version<'a>(leaves: impl IntoIterator<Item = (&'a str, Version)>) -> Version {
    let mut sorted: Vec<(&str, Version)> = leaves.into_iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (name, version) in &sorted {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(version.to_string().as_bytes());
        h.update(b"\n");
    }
    Version::Id(format!("{}@{}", sorted.len(), hex::encode(&h.finalize()[..8])))
}

/// The annotation value: compact JSON with sorted keys.
pub fn encode(v: &Versions) -> String {
    serde_json::to_string(v).expect("a map of strings to numbers or strings serializes")
}

/// `None` when the annotation is missing or not keyhole's JSON (then it is
/// treated as a first observation: recorded, nothing rolled).
pub fn decode(raw: Option<&str>) -> Option<Versions> {
    serde_json::from_str(raw?).ok()
}

/// The template annotation: 16 hex digits of SHA-256 over the encoded versions.
/// `nonce` (the manual trigger's timestamp) makes it change without a new version.
pub fn digest(v: &Versions, nonce: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(encode(v).as_bytes());
    if let Some(n) = nonce {
        h.update(b"\n");
        h.update(n.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// One reference whose version moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub reference: String,
    pub from: Version,
    pub to: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changed.
    UpToDate,
    /// Write `observed` without rolling: the first observation, or references
    /// added or removed (the user's own template edit rolls the pods already).
    Record,
    /// A version moved: write `observed` and a new template digest.
    Roll(Vec<Move>),
}

pub fn decide(observed: Option<&Versions>, current: &Versions) -> Decision {
    let Some(observed) = observed else { return Decision::Record };
    let moves: Vec<Move> = current
        .iter()
        .filter_map(|(reference, to)| match observed.get(reference) {
            Some(from) if from != to => Some(Move { reference: reference.clone(), from: from.clone(), to: to.clone() }),
            _ => None,
        })
        .collect();
    if !moves.is_empty() {
        Decision::Roll(moves)
    } else if observed != current {
        Decision::Record
    } else {
        Decision::UpToDate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(pairs: &[(&str, u64)]) -> Versions {
        pairs.iter().map(|(k, n)| (k.to_string(), Version::Number(*n))).collect()
    }

    #[test]
    fn encoding_is_sorted_compact_json_and_round_trips() {
        let versions = v(&[("/b", 2), ("/a", 10)]);
        assert_eq!(encode(&versions), r#"{"/a":10,"/b":2}"#);
        assert_eq!(decode(Some(&encode(&versions))), Some(versions));
        assert_eq!(decode(None), None);
        assert_eq!(decode(Some("not json")), None);
        assert_eq!(decode(Some(r#"{"/a":true}"#)), None);
        let ids: Versions = [("prod/db".to_owned(), Version::Id("a1b2".into())), ("/n".to_owned(), 3.into())].into();
        assert_eq!(encode(&ids), r#"{"/n":3,"prod/db":"a1b2"}"#, "numbers stay numbers, ids are strings");
        assert_eq!(decode(Some(&encode(&ids))), Some(ids));
    }

    #[test]
    fn digest_is_short_stable_and_moves_with_any_version_or_nonce() {
        let a = v(&[("/a", 1), ("/b", 2)]);
        let d = digest(&a, None);
        assert_eq!(d.len(), 16);
        assert!(d.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(d, digest(&v(&[("/b", 2), ("/a", 1)]), None), "order of insertion does not matter");
        assert_ne!(d, digest(&v(&[("/a", 1), ("/b", 3)]), None));
        assert_ne!(d, digest(&v(&[("/a", 1)]), None));
        assert_ne!(d, digest(&a, Some("2025-01-01T00:00:00Z")));
        assert_ne!(digest(&a, Some("t1")), digest(&a, Some("t2")));
    }

    #[test]
    fn a_sets_version_moves_with_a_leaf_added_removed_or_changed_only() {
        let set = |leaves: &[(&'static str, u64)]| set_version(leaves.iter().map(|(n, v)| (*n, Version::Number(*v))));
        let base = set(&[("/app/a", 1), ("/app/b", 2)]);
        assert!(matches!(&base, Version::Id(id) if id.starts_with("2@") && id.len() == 18), "{base}");
        assert_eq!(base, set(&[("/app/b", 2), ("/app/a", 1)]), "order does not matter");
        assert_ne!(base, set(&[("/app/a", 1), ("/app/b", 3)]), "changed");
        assert_ne!(base, set(&[("/app/a", 1)]), "removed");
        assert_ne!(base, set(&[("/app/a", 1), ("/app/b", 2), ("/app/c", 1)]), "added");
        assert_ne!(set(&[("/app/a1", 1)]), set(&[("/app/a", 11)]), "names and versions stay apart");
        assert_eq!(set(&[]), Version::Id("0@e3b0c44298fc1c14".into()));
    }

    #[test]
    fn first_observation_records_and_never_rolls() {
        assert_eq!(decide(None, &v(&[("/a", 7)])), Decision::Record);
    }

    #[test]
    fn a_moved_version_rolls_and_says_from_which_to_which() {
        let observed = v(&[("/a", 3), ("/b", 1)]);
        let current = v(&[("/a", 4), ("/b", 1)]);
        assert_eq!(
            decide(Some(&observed), &current),
            Decision::Roll(vec![Move { reference: "/a".into(), from: 3.into(), to: 4.into() }])
        );
        // A secret deleted and created again starts over at 1: still a change.
        let reset = v(&[("/a", 1), ("/b", 1)]);
        assert!(matches!(decide(Some(&observed), &reset), Decision::Roll(m) if m[0].to == Version::Number(1)));
    }

    #[test]
    fn same_versions_are_up_to_date_and_a_changed_set_is_only_recorded() {
        let observed = v(&[("/a", 3)]);
        assert_eq!(decide(Some(&observed), &observed.clone()), Decision::UpToDate);
        assert_eq!(decide(Some(&observed), &v(&[("/a", 3), ("/new", 1)])), Decision::Record);
        assert_eq!(decide(Some(&observed), &v(&[])), Decision::Record);
        // A new reference and a moved one: the move rolls.
        assert!(matches!(decide(Some(&observed), &v(&[("/a", 4), ("/new", 1)])), Decision::Roll(m) if m.len() == 1));
    }
}
