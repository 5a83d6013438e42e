//! References to values in a backend, as written in `secret-<name>` annotations.
//!
//! - aws-ssm: `/prod/db/password`, `/prod/db/password:3` (version),
//!   `/prod/db/password:stable` (label), and `#key` for one field of a JSON value.
//! - vault: `secret/app/db#password`, `secret/app/db?version=3#password`; no
//!   `#field` gives the whole secret as a JSON object.
//! - aws-secretsmanager: a secret's name or ARN, `?version-stage=AWSPREVIOUS` or
//!   `?version-id=<id>` to pin one version, `#key` for one field of a JSON secret.
//!
//! And in `path-<name>` annotations, a folder whose every leaf is a value
//! ([`FolderRef`]): an SSM path `/app/`, a Vault KV v2 folder `secret/app/`,
//! with `?recursive=true` for the whole tree below it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::StoreKind;

/// Why a reference does not parse; each says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty parameter name: {SSM_EXAMPLE}")]
    EmptyName,
    #[error("parameter name longer than 2048 characters")]
    NameTooLong,
    #[error(
        "parameter name {name:?} has {bad:?}, which SSM does not allow (letters, digits, _ . - / only): {SSM_EXAMPLE}"
    )]
    SsmCharacter { name: String, bad: char },
    #[error("parameter name {0:?} is not a valid path: a hierarchical name starts with / and has no empty segment")]
    SsmPath(String),
    #[error("empty selector after ':': {SSM_EXAMPLE}")]
    EmptySelector,
    #[error("version {0:?} must be a number from 1 up")]
    Version(String),
    #[error("label {0:?} is not a valid SSM label (letters, digits, _ . -, at most 100, not starting with aws or ssm)")]
    Label(String),
    #[error("unknown query {0:?}: only ?version=N is supported; {VAULT_EXAMPLE}")]
    Query(String),
    #[error("{0:?} has no mount and path: {VAULT_EXAMPLE}")]
    NoMount(String),
    #[error("{0:?}: '.' and '..' are not allowed in a path")]
    DotSegment(String),
    #[error("{raw:?} has {bad:?} in its path: {VAULT_EXAMPLE}")]
    VaultCharacter { raw: String, bad: char },
    #[error("empty field after '#': name the JSON key, like #password")]
    EmptyField,
    #[error("field {0:?} has a second '#'")]
    SecondHash(String),
    #[error("empty secret name: {SM_EXAMPLE}")]
    EmptySecret,
    #[error("secret name longer than 2048 characters")]
    SecretTooLong,
    #[error(
        "secret name {name:?} has {bad:?}, which Secrets Manager does not allow (letters, digits, / _ + = . @ - only): {SM_EXAMPLE}"
    )]
    SecretCharacter { name: String, bad: char },
    #[error(
        "{0:?} is not a Secrets Manager secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>)"
    )]
    SecretArn(String),
    #[error("unknown query {0:?}: {SM_EXAMPLE}")]
    SecretQuery(String),
    #[error("{0:?} is the root of every parameter: {FOLDER_EXAMPLE}")]
    RootFolder(String),
    #[error("unknown query {0:?}: only ?recursive=true or ?recursive=false; {FOLDER_EXAMPLE}")]
    FolderQuery(String),
    #[error("{0:?} has {1:?}: a path names a folder, never one version or field; {FOLDER_EXAMPLE}")]
    FolderSelector(String, char),
    #[error(
        "aws-secretsmanager stores have no folders: name each secret in its own keyhole.dev/secret-<name>, or keep related values in one JSON secret"
    )]
    NoFolders,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reference {
    AwsSsm(SsmRef),
    Vault(VaultRef),
    #[serde(rename = "aws-secretsmanager")]
    AwsSecretsManager(SecretRef),
}

impl Reference {
    /// Parses `raw` in the grammar of `kind`; the error says what to write instead.
    pub fn parse(kind: StoreKind, raw: &str) -> Result<Self, ReferenceError> {
        match kind {
            StoreKind::AwsSsm => SsmRef::parse(raw).map(Reference::AwsSsm),
            StoreKind::Vault => VaultRef::parse(raw).map(Reference::Vault),
            StoreKind::AwsSecretsManager => SecretRef::parse(raw).map(Reference::AwsSecretsManager),
        }
    }

    /// The kind of store whose grammar the reference is in.
    pub fn kind(&self) -> StoreKind {
        match self {
            Reference::AwsSsm(_) => StoreKind::AwsSsm,
            Reference::Vault(_) => StoreKind::Vault,
            Reference::AwsSecretsManager(_) => StoreKind::AwsSecretsManager,
        }
    }

    /// Pinned references name one version and never rotate.
    pub fn is_pinned(&self) -> bool {
        match self {
            Reference::AwsSsm(r) => matches!(r.selector, Some(SsmSelector::Version(_))),
            Reference::Vault(r) => r.version.is_some(),
            Reference::AwsSecretsManager(r) => r.version.is_pinned(),
        }
    }

    /// The JSON field picked out of the value, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Reference::AwsSsm(r) => r.key.as_deref(),
            Reference::Vault(r) => r.field.as_deref(),
            Reference::AwsSecretsManager(r) => r.key.as_deref(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::AwsSsm(r) => r.fmt(f),
            Reference::Vault(r) => r.fmt(f),
            Reference::AwsSecretsManager(r) => r.fmt(f),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SsmRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SsmSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SsmSelector {
    Version(u64),
    Label(String),
}

const SSM_EXAMPLE: &str =
    "write a parameter name like /prod/db/password, optionally with :3 (version), :stable (label) or #key (JSON field)";

impl SsmRef {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let (rest, key) = split_field(raw)?;
        let (name, selector) = match rest.rsplit_once(':') {
            Some((name, sel)) => (name, Some(parse_ssm_selector(sel)?)),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::EmptyName);
        }
        if name.len() > 2048 {
            return Err(ReferenceError::NameTooLong);
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))) {
            return Err(ReferenceError::SsmCharacter { name: name.to_owned(), bad });
        }
        if name.contains("//") || (name.contains('/') && !name.starts_with('/')) {
            return Err(ReferenceError::SsmPath(name.to_owned()));
        }
        Ok(SsmRef { name: name.to_owned(), selector, key })
    }

    /// The name with its selector, as SSM's GetParameters takes it.
    pub fn selected_name(&self) -> String {
        match &self.selector {
            None => self.name.clone(),
            Some(SsmSelector::Version(v)) => format!("{}:{v}", self.name),
            Some(SsmSelector::Label(l)) => format!("{}:{l}", self.name),
        }
    }
}

fn parse_ssm_selector(sel: &str) -> Result<SsmSelector, ReferenceError> {
    if sel.is_empty() {
        return Err(ReferenceError::EmptySelector);
    }
    if sel.bytes().all(|b| b.is_ascii_digit()) {
        return match sel.parse::<u64>() {
            Ok(v) if v > 0 => Ok(SsmSelector::Version(v)),
            _ => Err(ReferenceError::Version(sel.to_owned())),
        };
    }
    let ok = sel.len() <= 100 && sel.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let lower = sel.to_ascii_lowercase();
    if !ok || lower.starts_with("aws") || lower.starts_with("ssm") {
        return Err(ReferenceError::Label(sel.to_owned()));
    }
    Ok(SsmSelector::Label(sel.to_owned()))
}

impl fmt::Display for SsmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.selected_name())?;
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VaultRef {
    /// Full logical path, mount included: `secret/app/db`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

const VAULT_EXAMPLE: &str = "write <mount>/<path>[?version=N][#field], like secret/app/db#password";

impl VaultRef {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let (rest, field) = split_field(raw)?;
        let (path, version) = match rest.split_once('?') {
            Some((path, query)) => {
                let v = query.strip_prefix("version=").ok_or_else(|| ReferenceError::Query(query.to_owned()))?;
                match v.parse::<u64>() {
                    Ok(v) if v > 0 => (path, Some(v)),
                    _ => return Err(ReferenceError::Version(v.to_owned())),
                }
            }
            None => (rest, None),
        };
        let path = path.trim_matches('/');
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
            return Err(ReferenceError::NoMount(raw.to_owned()));
        }
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(ReferenceError::DotSegment(raw.to_owned()));
        }
        if let Some(bad) =
            path.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '@' | '+' | '=')))
        {
            return Err(ReferenceError::VaultCharacter { raw: raw.to_owned(), bad });
        }
        Ok(VaultRef { path: path.to_owned(), version, field })
    }
}

impl fmt::Display for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(v) = self.version {
            write!(f, "?version={v}")?;
        }
        if let Some(k) = &self.field {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

/// A Secrets Manager secret: its name or ARN, which version, which JSON key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The name, or the full ARN, as written.
    pub id: String,
    #[serde(default, skip_serializing_if = "SecretVersion::is_current")]
    pub version: SecretVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which version of a secret: the current one (`AWSCURRENT`), a staging label
/// or a version id. Only the current one rolls.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretVersion {
    #[default]
    Current,
    Stage(String),
    Id(String),
}

/// The staging label of a secret's current version.
pub const AWSCURRENT: &str = "AWSCURRENT";

impl SecretVersion {
    pub fn is_current(&self) -> bool {
        matches!(self, SecretVersion::Current) || matches!(self, SecretVersion::Stage(s) if s == AWSCURRENT)
    }
    /// Every version but the current one is pinned: it never rolls.
    pub fn is_pinned(&self) -> bool {
        !self.is_current()
    }
}

const SM_EXAMPLE: &str = "write a secret's name or ARN like prod/db, optionally with ?version-stage=AWSPREVIOUS or ?version-id=<id>, and #key (JSON field)";

impl SecretRef {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let (rest, key) = split_field(raw)?;
        let (id, version) = match rest.split_once('?') {
            None => (rest, SecretVersion::Current),
            Some((id, query)) => {
                let version = match query.split_once('=') {
                    Some(("version-stage", s)) if valid_stage(s) => SecretVersion::Stage(s.to_owned()),
                    Some(("version-id", v)) if valid_version_id(v) => SecretVersion::Id(v.to_owned()),
                    _ => return Err(ReferenceError::SecretQuery(query.to_owned())),
                };
                (id, version)
            }
        };
        if id.is_empty() {
            return Err(ReferenceError::EmptySecret);
        }
        if id.len() > 2048 {
            return Err(ReferenceError::SecretTooLong);
        }
        let name = match id.strip_prefix("arn:") {
            Some(_) => secret_arn_name(id).ok_or_else(|| ReferenceError::SecretArn(id.to_owned()))?,
            None => id,
        };
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "/_+=.@-".contains(*c))) {
            return Err(ReferenceError::SecretCharacter { name: name.to_owned(), bad });
        }
        Ok(SecretRef { id: id.to_owned(), version, key })
    }
}

/// The name part of `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`.
fn secret_arn_name(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "secretsmanager", region, account, "secret", name]
            if !partition.is_empty() && !region.is_empty() && !account.is_empty() && !name.is_empty() =>
        {
            Some(name)
        }
        _ => None,
    }
}

fn valid_stage(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn valid_version_id(v: &str) -> bool {
    (32..=64).contains(&v.len()) && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)?;
        match &self.version {
            SecretVersion::Current => {}
            SecretVersion::Stage(s) => write!(f, "?version-stage={s}")?,
            SecretVersion::Id(v) => write!(f, "?version-id={v}")?,
        }
        if let Some(k) = &self.key {
            write!(f, "#{k}")?;
        }
        Ok(())
    }
}

const FOLDER_EXAMPLE: &str =
    "write a folder like /app/ (aws-ssm) or secret/app/ (vault), with ?recursive=true for everything below it";

/// A folder whose every leaf is a value: an SSM parameter path (GetParametersByPath)
/// or a Vault KV v2 folder (list, then read). One level, or the whole tree below.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FolderRef {
    /// Without its trailing `/`: `/app`, `secret/app`, or a Vault mount (`secret`).
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
}

impl FolderRef {
    /// Parses `raw` in the folder grammar of `kind`.
    pub fn parse(kind: StoreKind, raw: &str) -> Result<Self, ReferenceError> {
        let raw = raw.trim();
        let (rest, recursive) = match raw.split_once('?') {
            None => (raw, false),
            Some((rest, "recursive=true")) => (rest, true),
            Some((rest, "recursive=false")) => (rest, false),
            Some((_, query)) => return Err(ReferenceError::FolderQuery(query.to_owned())),
        };
        if let Some(bad) = rest.chars().find(|c| matches!(c, '#' | ':')) {
            return Err(ReferenceError::FolderSelector(rest.to_owned(), bad));
        }
        let path = match kind {
            StoreKind::AwsSecretsManager => return Err(ReferenceError::NoFolders),
            StoreKind::AwsSsm => {
                let path = rest.trim_end_matches('/');
                if path.is_empty() && rest.starts_with('/') {
                    return Err(ReferenceError::RootFolder(rest.to_owned()));
                }
                // The grammar of a parameter name, which the folder is a prefix of.
                let name = SsmRef::parse(path)?.name;
                if !name.starts_with('/') {
                    return Err(ReferenceError::SsmPath(name));
                }
                name
            }
            StoreKind::Vault => {
                let path = rest.trim_matches('/');
                if path.is_empty() {
                    return Err(ReferenceError::NoMount(raw.to_owned()));
                }
                // A mount alone is a folder too: `secret/`.
                let probe = VaultRef::parse(&format!("{path}/x")).map_err(|e| match e {
                    ReferenceError::NoMount(_) => ReferenceError::NoMount(raw.to_owned()),
                    ReferenceError::DotSegment(_) => ReferenceError::DotSegment(raw.to_owned()),
                    ReferenceError::VaultCharacter { bad, .. } => {
                        ReferenceError::VaultCharacter { raw: raw.to_owned(), bad }
                    }
                    other => other,
                })?;
                probe.path.strip_suffix("/x").expect("the probe ends in /x").to_owned()
            }
        };
        Ok(FolderRef { path, recursive })
    }

    /// The folder with its trailing `/`, as grants and listings name it.
    pub fn folder(&self) -> String {
        format!("{}/", self.path)
    }

    /// How the rotation controller names the set: the folder and `*` (one
    /// level) or `**` (recursive). No reference has a `*`, so this never
    /// meets one.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.path, if self.recursive { "**" } else { "*" })
    }

    /// The inverse of [`identity`](Self::identity).
    pub fn from_identity(identity: &str) -> Option<FolderRef> {
        if let Some(path) = identity.strip_suffix("/**") {
            return Some(FolderRef { path: path.to_owned(), recursive: true });
        }
        identity.strip_suffix("/*").map(|path| FolderRef { path: path.to_owned(), recursive: false })
    }

    /// The key (file name, Secret key, template name) of the leaf `full`
    /// (its whole name in the backend): the part below the folder, each `/`
    /// written as `_`. `None` if `full` is not below the folder.
    pub fn leaf_key(&self, full: &str) -> Option<String> {
        let below = full.strip_prefix(&self.folder())?;
        (!below.is_empty()).then(|| below.replace('/', "_"))
    }
}

impl fmt::Display for FolderRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.path)?;
        if self.recursive {
            f.write_str("?recursive=true")?;
        }
        Ok(())
    }
}

/// Splits `rest#field`; the field is a JSON key: non-empty, no further `#`.
fn split_field(raw: &str) -> Result<(&str, Option<String>), ReferenceError> {
    let raw = raw.trim();
    match raw.split_once('#') {
        None => Ok((raw, None)),
        Some((_, "")) => Err(ReferenceError::EmptyField),
        Some((_, f)) if f.contains('#') => Err(ReferenceError::SecondHash(f.to_owned())),
        Some((rest, f)) => Ok((rest, Some(f.to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssm_grammar_round_trips() {
        for raw in ["/prod/db/password", "/prod/db/password:3", "/prod/db/password:stable", "/a/b:2#user", "plain"] {
            let r = Reference::parse(StoreKind::AwsSsm, raw).unwrap();
            assert_eq!(r.to_string(), raw);
        }
        let r = SsmRef::parse("/a/b:7#k").unwrap();
        assert_eq!(r.selector, Some(SsmSelector::Version(7)));
        assert_eq!(r.key.as_deref(), Some("k"));
        assert_eq!(r.selected_name(), "/a/b:7");
        assert!(Reference::AwsSsm(r).is_pinned());
        assert!(!Reference::parse(StoreKind::AwsSsm, "/a:stable").unwrap().is_pinned());
    }

    #[test]
    fn ssm_grammar_refuses_with_a_hint() {
        for (raw, hint) in [
            ("/a b", "does not allow"),
            ("/a:0", "from 1 up"),
            ("/a:", "empty selector"),
            ("/a:awsfoo", "not a valid SSM label"),
            ("a/b", "starts with /"),
            ("/a//b", "empty segment"),
            ("/a#", "empty field"),
            ("", "empty parameter name"),
        ] {
            let err = SsmRef::parse(raw).unwrap_err();
            assert!(err.to_string().contains(hint), "{raw}: {err}");
        }
    }

    #[test]
    fn secretsmanager_grammar_round_trips() {
        let id = "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111";
        for raw in [
            "prod/db",
            "prod/db#password",
            "prod/db?version-stage=AWSPREVIOUS#password",
            &format!("prod/db?version-id={id}"),
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf#user",
        ] {
            assert_eq!(Reference::parse(StoreKind::AwsSecretsManager, raw).unwrap().to_string(), raw);
        }
        let pinned = |raw: &str| Reference::parse(StoreKind::AwsSecretsManager, raw).unwrap().is_pinned();
        assert!(!pinned("prod/db#k"));
        assert!(!pinned("prod/db?version-stage=AWSCURRENT"), "AWSCURRENT is the current version");
        assert!(pinned("prod/db?version-stage=AWSPREVIOUS"));
        assert!(pinned(&format!("prod/db?version-id={id}")));
    }

    #[test]
    fn secretsmanager_grammar_refuses_with_a_hint() {
        for (raw, hint) in [
            ("", "empty secret name"),
            ("prod db", "does not allow"),
            ("prod/db?version=3", "unknown query"),
            ("prod/db?version-stage=", "unknown query"),
            ("prod/db?version-id=short", "unknown query"),
            ("arn:aws:ssm:eu-west-1:1:parameter/x", "not a Secrets Manager secret ARN"),
            ("prod/db#", "empty field"),
        ] {
            let err = SecretRef::parse(raw).unwrap_err();
            assert!(err.to_string().contains(hint), "{raw}: {err}");
        }
    }

    #[test]
    fn folders_parse_round_trip_and_map_leaves() {
        for (kind, raw, path, recursive) in [
            (StoreKind::AwsSsm, "/app/", "/app", false),
            (StoreKind::AwsSsm, "/app?recursive=true", "/app", true),
            (StoreKind::AwsSsm, "/app/prod/?recursive=false", "/app/prod", false),
            (StoreKind::Vault, "secret/app/", "secret/app", false),
            (StoreKind::Vault, "/secret/app?recursive=true", "secret/app", true),
            (StoreKind::Vault, "secret/", "secret", false),
            (StoreKind::Vault, "secret/app/x/", "secret/app/x", false),
            (StoreKind::Vault, "secret/x/x", "secret/x/x", false),
        ] {
            let f = FolderRef::parse(kind, raw).unwrap();
            assert_eq!((f.path.as_str(), f.recursive), (path, recursive), "{raw}");
            assert_eq!(FolderRef::parse(kind, &f.to_string()).unwrap(), f, "{raw} round-trips");
            assert_eq!(FolderRef::from_identity(&f.identity()), Some(f));
        }
        let f = FolderRef::parse(StoreKind::AwsSsm, "/app/?recursive=true").unwrap();
        assert_eq!(f.identity(), "/app/**");
        assert_eq!(f.leaf_key("/app/db/password").as_deref(), Some("db_password"));
        assert_eq!(f.leaf_key("/app/API_KEY").as_deref(), Some("API_KEY"));
        assert_eq!(f.leaf_key("/application/x"), None, "a sibling whose name starts alike is not below");
        assert_eq!(f.leaf_key("/app/"), None);
    }

    #[test]
    fn folders_refuse_with_a_hint() {
        for (kind, raw, hint) in [
            (StoreKind::AwsSsm, "/", "root of every parameter"),
            (StoreKind::AwsSsm, "app/", "starts with /"),
            (StoreKind::AwsSsm, "/app/?recursive", "only ?recursive=true"),
            (StoreKind::AwsSsm, "/app:3", "never one version"),
            (StoreKind::AwsSsm, "/a b/", "does not allow"),
            (StoreKind::Vault, "secret/app#pw", "never one version or field"),
            (StoreKind::Vault, "/", "no mount and path"),
            (StoreKind::Vault, "secret/../x/", "not allowed"),
            (StoreKind::AwsSecretsManager, "prod/", "have no folders"),
        ] {
            let err = FolderRef::parse(kind, raw).unwrap_err();
            assert!(err.to_string().contains(hint), "{raw}: {err}");
        }
    }

    #[test]
    fn vault_grammar_round_trips() {
        for raw in ["secret/app/db#password", "secret/app/db", "kv/x?version=3#f", "kv/team/a/b?version=1"] {
            assert_eq!(Reference::parse(StoreKind::Vault, raw).unwrap().to_string(), raw);
        }
        let r = VaultRef::parse("/secret/app/db/?version=2#pw").unwrap();
        assert_eq!((r.path.as_str(), r.version, r.field.as_deref()), ("secret/app/db", Some(2), Some("pw")));
    }

    #[test]
    fn vault_grammar_refuses_with_a_hint() {
        for (raw, hint) in [
            ("secret", "no mount and path"),
            ("secret//a", "no mount and path"),
            ("secret/../a", "not allowed"),
            ("secret/a?v=1", "only ?version=N"),
            ("secret/a?version=x", "from 1 up"),
            ("secret/a b#f", "in its path"),
        ] {
            let err = VaultRef::parse(raw).unwrap_err();
            assert!(err.to_string().contains(hint), "{raw}: {err}");
        }
    }
}
