//! Fetched values: held in `SecretString` from arrival until written, and the
//! `#field` picking that both backends share.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use keyhole_contract::annotations::{self, MAX_PATH_LEAVES};
use keyhole_contract::plan::{PlanItem, PlanPath};

use crate::error::{Error, FieldError, Joined, StoreRef};
use crate::retry::Failure;

/// Item name -> value, for writing and for templates.
pub type Values = BTreeMap<String, SecretString>;

/// A binary Secrets Manager secret that is not UTF-8 text: item name -> its bytes.
pub type Binary = Vec<(String, Zeroizing<Vec<u8>>)>;

/// A value as written to a file or a Secret key: text (every value but one
/// kind), or the bytes of a binary secret that is not UTF-8, which no
/// template can use.
#[derive(Clone)]
pub enum Payload {
    Text(SecretString),
    Bytes(Zeroizing<Vec<u8>>),
}

impl ExposeSecret<[u8]> for Payload {
    fn expose_secret(&self) -> &[u8] {
        match self {
            Payload::Text(s) => s.expose_secret().as_bytes(),
            Payload::Bytes(b) => b,
        }
    }
}

impl From<SecretString> for Payload {
    fn from(s: SecretString) -> Self {
        Payload::Text(s)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Payload([REDACTED])")
    }
}

/// Picks `field` out of a JSON object. A string field gives its text; any other
/// JSON value gives its compact JSON.
pub fn pick_field(raw: &SecretString, field: &str) -> Result<SecretString, FieldError> {
    let parsed: serde_json::Value = serde_json::from_str(raw.expose_secret()).map_err(|e| FieldError::NotJson {
        field: field.to_owned(),
        line: e.line(),
        column: e.column(),
    })?;
    let serde_json::Value::Object(mut map) = parsed else {
        return Err(FieldError::NotObject { field: field.to_owned() });
    };
    match map.remove(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretString::from(s)),
        Some(other) => Ok(SecretString::from(other.to_string())),
        None => Err(FieldError::NoField { field: field.to_owned() }),
    }
}

/// The whole value, or one field of it.
pub fn select(raw: &SecretString, field: Option<&str>) -> Result<SecretString, FieldError> {
    match field {
        None => Ok(raw.clone()),
        Some(f) => pick_field(raw, f),
    }
}

/// The value one item asked for (the whole of `raw`, or its `#field`); a failure
/// names the item's annotation, the store and the reference, never the value.
pub fn item_value(
    item: &PlanItem,
    store: &StoreRef,
    reference: &impl std::fmt::Display,
    raw: &SecretString,
    field: Option<&str>,
) -> Result<SecretString, Error> {
    select(raw, field).map_err(|reason| Error::Field {
        annotation: item.annotation(),
        store: store.clone(),
        reference: reference.to_string(),
        reason,
    })
}

/// One leaf of a `path-<name>` folder: its whole name in the backend and its value.
pub struct Leaf {
    /// Index of its path in the plan's `paths`.
    pub path: usize,
    pub full: String,
    pub value: SecretString,
}

/// Why a folder could not be read or looked up.
#[derive(Clone, Debug)]
pub enum FolderFailure {
    Call(Failure),
    /// More than the cap of leaves.
    TooBig,
    /// A listed name keyhole cannot read (its whole path).
    BadName(String),
}

impl FolderFailure {
    /// The error of `path`'s annotation.
    pub fn error(self, path: &PlanPath, store: &crate::StoreRef) -> Error {
        match self {
            FolderFailure::Call(f) => Error::FolderList {
                annotation: path.annotation(),
                store: store.clone(),
                folder: path.folder.to_string(),
                reason: f.reason,
                class: f.class,
            },
            FolderFailure::TooBig => Error::FolderTooBig {
                annotation: path.annotation(),
                store: store.clone(),
                folder: path.folder.to_string(),
                max: MAX_PATH_LEAVES,
            },
            FolderFailure::BadName(leaf) => Error::LeafName {
                annotation: path.annotation(),
                store: store.clone(),
                leaf,
                why: "a name with a character keyhole does not read (letters, digits and _ . - @ + = only)".into(),
            },
        }
    }
}

/// What a fetch brought: the items' values by name, the binary ones, and
/// the folders' leaves.
#[derive(Default)]
pub struct Fetched {
    pub values: Values,
    pub binary: Binary,
    pub leaves: Vec<Leaf>,
}

/// The leaves as values, each under its key ([`FolderRef::leaf_key`]), beside
/// the items' values. Refused, naming the leaf: a key that cannot be a file
/// name (or, with `env_keys`, an environment variable, for Secret output), and
/// two leaves or a leaf and an item or template of one key.
///
/// [`FolderRef::leaf_key`]: keyhole_contract::reference::FolderRef::leaf_key
pub fn with_leaves(
    fetched: Fetched,
    paths: &[PlanPath],
    templates: &[&str],
    env_keys: bool,
    store: &StoreRef,
) -> Result<(Values, Binary), Error> {
    let Fetched { mut values, binary, mut leaves } = fetched;
    // Backends page in their own order: sorted, a clash is told alike every time.
    leaves.sort_by(|a, b| (a.path, &a.full).cmp(&(b.path, &b.full)));
    // key -> where it came from, for the collision's message.
    let mut from: BTreeMap<String, (String, String)> = values
        .keys()
        .chain(binary.iter().map(|(k, _)| k))
        .map(|k| {
            (k.clone(), (annotations::InjectSpec::secret_annotation(k), format!("{}{k}", annotations::SECRET_PREFIX)))
        })
        .collect();
    for t in templates {
        from.insert(
            t.to_string(),
            (annotations::InjectSpec::template_annotation(t), annotations::InjectSpec::template_annotation(t)),
        );
    }
    for leaf in leaves {
        let path = &paths[leaf.path];
        let annotation = path.annotation();
        let name_error = |key: String, reason: String| Error::LeafName {
            annotation: annotation.clone(),
            store: store.clone(),
            leaf: leaf.full.clone(),
            why: format!("the key {key:?}: {reason}"),
        };
        let key = path
            .folder
            .leaf_key(&leaf.full)
            .ok_or_else(|| name_error(String::new(), format!("it is not below {}", path.folder.folder())))?;
        if let Err(e) = annotations::check_item_name(&key) {
            return Err(name_error(key, e.to_string()));
        }
        if env_keys && !annotations::is_env_name(&key) {
            let reason = format!(
                "not an environment variable name, which Secret output needs for envFrom (letters, digits and _ only, not starting with a digit, like {})",
                annotations::env_suggestion(&key)
            );
            return Err(name_error(key, reason));
        }
        if let Some((other_annotation, other)) = from.get(&key) {
            let mut both = vec![other_annotation.clone()];
            if *other_annotation != annotation {
                both.push(annotation.clone());
            }
            return Err(Error::LeafCollision {
                annotations: Joined(both),
                store: store.clone(),
                key,
                both: format!("{other} and {}", leaf.full),
            });
        }
        from.insert(key.clone(), (annotation, leaf.full));
        values.insert(key, leaf.value);
    }
    Ok((values, binary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn picks_strings_as_text_and_others_as_json() {
        let raw = s(r#"{"user": "app", "port": 5432, "opts": {"ssl": true}}"#);
        assert_eq!(pick_field(&raw, "user").unwrap().expose_secret(), "app");
        assert_eq!(pick_field(&raw, "port").unwrap().expose_secret(), "5432");
        assert_eq!(pick_field(&raw, "opts").unwrap().expose_secret(), r#"{"ssl":true}"#);
        assert_eq!(select(&raw, None).unwrap().expose_secret(), raw.expose_secret());
    }

    fn leaf(path: usize, full: &str) -> Leaf {
        Leaf { path, full: full.into(), value: s("v") }
    }

    #[test]
    fn leaves_become_keys_below_their_folder_and_bad_or_clashing_keys_are_refused() {
        use keyhole_contract::reference::FolderRef;
        let store = StoreRef { name: "aws".into(), kind: keyhole_contract::StoreKind::AwsSsm };
        let paths = vec![
            PlanPath { name: "app".into(), folder: FolderRef { path: "/app".into(), recursive: true } },
            PlanPath { name: "more".into(), folder: FolderRef { path: "/more".into(), recursive: false } },
        ];
        let mut items = Values::new();
        items.insert("pw".into(), s("x"));
        let fetched = |leaves: Vec<Leaf>| Fetched { values: items.clone(), binary: Vec::new(), leaves };
        let (ok, _) =
            with_leaves(fetched(vec![leaf(0, "/app/db/user"), leaf(1, "/more/API_KEY")]), &paths, &[], true, &store)
                .unwrap();
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["API_KEY", "db_user", "pw"]);

        let err = |leaves: Vec<Leaf>, templates: &[&str], env: bool| {
            with_leaves(fetched(leaves), &paths, templates, env, &store).unwrap_err().to_string()
        };
        assert_eq!(
            err(vec![leaf(0, "/app/a_b"), leaf(0, "/app/a/b")], &[], false),
            r#"keyhole.dev/path-app: store "aws" (aws-ssm): /app/a/b and /app/a_b would both be the key "a_b": rename one in the store, or name one in a keyhole.dev/secret-<name> of another name"#
        );
        let text = err(vec![leaf(1, "/more/pw")], &[], false);
        assert!(text.starts_with("keyhole.dev/secret-pw, keyhole.dev/path-more: "), "{text}");
        assert!(text.contains("keyhole.dev/secret-pw and /more/pw would both be the key \"pw\""), "{text}");
        assert!(err(vec![leaf(0, "/app/conf")], &["conf"], false).contains("keyhole.dev/template-conf and /app/conf"));
        let text = err(vec![leaf(0, "/app/db-url")], &[], true);
        assert!(text.contains(r#"/app/db-url would be the key "db-url": not an environment variable name"#), "{text}");
        assert!(text.contains("like db_url"), "{text}");
        assert!(
            err(vec![leaf(0, "/app/.hidden")], &[], false)
                .contains(r#"/app/.hidden would be the key ".hidden": name ".hidden" starts with '.'"#)
        );
        // The control: the same leaves as files only are fine.
        assert!(with_leaves(fetched(vec![leaf(0, "/app/db-url")]), &paths, &[], false, &store).is_ok());
    }

    #[test]
    fn errors_never_carry_the_value() {
        let secret = "hunter2-do-not-print";
        for (raw, want) in [
            (secret.to_owned(), "is not JSON"),
            (format!("[\"{secret}\"]"), "not an object"),
            (format!("{{\"other\": \"{secret}\"}}"), "no field #pw"),
        ] {
            let err = pick_field(&s(&raw), "pw").unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains(secret), "{text}");
        }
    }
}
