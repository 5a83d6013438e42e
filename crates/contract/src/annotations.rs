//! The pod annotations users write (prefix `keyhole.dev/`), parsed once into
//! [`InjectSpec`]. Defaults are applied here and never written back to the pod.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Prefix of every keyhole annotation.
pub const PREFIX: &str = "keyhole.dev/";
/// `"true"` opts the pod in.
pub const INJECT: &str = "keyhole.dev/inject";
/// Name of a store defined by the operator; default: the config's `defaultStore`.
pub const STORE: &str = "keyhole.dev/store";
/// aws-ssm: IAM role ARN to assume; vault: auth role. Default: the store's `defaultRole`.
pub const ROLE: &str = "keyhole.dev/role";
/// `files` (tmpfs, default), `secret` (native Secret) or `both`.
pub const OUTPUT: &str = "keyhole.dev/output";
/// Where the files appear in app containers; default [`DEFAULT_MOUNT_PATH`].
pub const MOUNT_PATH: &str = "keyhole.dev/mount-path";
/// Comma-separated app containers that get the values; default: all app containers.
pub const CONTAINERS: &str = "keyhole.dev/containers";
/// Octal mode of written files; default 0400 when the app's UID is known, else 0444.
pub const FILE_MODE: &str = "keyhole.dev/file-mode";
/// `"false"` opts a workload out of rollout-triggered rotation.
pub const ROTATE: &str = "keyhole.dev/rotate";
/// How often rotation polls this workload's references (`30s`, `5m`, `1h`).
pub const REFRESH_INTERVAL: &str = "keyhole.dev/refresh-interval";
/// Prefix family: `secret-<name>` holds one reference; `<name>` is the file and key.
pub const SECRET_PREFIX: &str = "keyhole.dev/secret-";
/// Prefix family: `template-<name>` is a minijinja template rendered to `<name>`.
pub const TEMPLATE_PREFIX: &str = "keyhole.dev/template-";
/// Prefix family: `generate-<name>` is the recipe of `secret-<name>`'s value,
/// made and stored in the backend by the first pod that finds it missing.
pub const GENERATE_PREFIX: &str = "keyhole.dev/generate-";
/// Prefix family: `path-<name>` names a folder (an SSM path, a Vault KV v2
/// folder); each leaf below it is a value, its key the leaf's name below the
/// folder with `/` written as `_`.
pub const PATH_PREFIX: &str = "keyhole.dev/path-";
/// Written by the webhook on injected pods (makes injection idempotent).
pub const STATUS: &str = "keyhole.dev/status";
/// Written by the rotation controller on pod templates: digest of the versions.
pub const VERSIONS: &str = "keyhole.dev/versions";
/// Written by the rotation controller on the workload: the last observed digest.
pub const OBSERVED_VERSIONS: &str = "keyhole.dev/observed-versions";

/// Value of [`STATUS`] on an injected pod.
pub const STATUS_INJECTED: &str = "injected";
pub const DEFAULT_MOUNT_PATH: &str = "/keyhole/secrets";
/// Names `keyhole.dev/containers` may list (each is looked up among the pod's).
pub const MAX_CONTAINER_NAMES: usize = 100;
/// Most `secret-*` annotations (references) one pod may have: the rotation
/// controller makes one look-up per reference, so one workload's count bounds
/// its share of every poll.
pub const MAX_REFERENCES: usize = 100;
/// Most `path-*` annotations one pod may have: each is a listing per poll.
pub const MAX_PATHS: usize = 10;
/// Most leaves one path may hold: the injector refuses a folder with more
/// (it stops reading at one more), and so does the rotation controller.
pub const MAX_PATH_LEAVES: usize = 100;

/// Every key a user may write, for the "unknown annotation" hint.
const USER_KEYS: &[&str] = &[INJECT, STORE, ROLE, OUTPUT, MOUNT_PATH, CONTAINERS, FILE_MODE, ROTATE, REFRESH_INTERVAL];
/// Keys keyhole writes itself; accepted, never required.
const SYSTEM_KEYS: &[&str] = &[STATUS, crate::names::PLAN_ANNOTATION, VERSIONS, OBSERVED_VERSIONS];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Files,
    Secret,
    Both,
}

impl Output {
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Files => "files",
            Output::Secret => "secret",
            Output::Both => "both",
        }
    }
    pub fn files(self) -> bool {
        matches!(self, Output::Files | Output::Both)
    }
    pub fn secret(self) -> bool {
        matches!(self, Output::Secret | Output::Both)
    }
}

impl std::str::FromStr for Output {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        match s {
            "files" => Ok(Output::Files),
            "secret" => Ok(Output::Secret),
            "both" => Ok(Output::Both),
            other => Err(ValueError::Output(other.to_owned())),
        }
    }
}

/// One thing wrong with one annotation, and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub annotation: String,
    pub message: String,
}

impl Problem {
    pub fn new(annotation: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { annotation: annotation.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.annotation, self.message)
    }
}

/// All problems found at once, so a user fixes them in one round.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Problems shown in a message; the rest are counted ("… and 12 more"), so
    /// a pod with a thousand mistakes gets an answer of bounded size.
    pub const SHOWN: usize = 10;
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            p.fmt(f)?;
        }
        if self.0.len() > Self::SHOWN {
            write!(f, "; … and {} more", self.0.len() - Self::SHOWN)?;
        }
        Ok(())
    }
}

/// One `secret-<name>` annotation, its reference not yet parsed (that needs the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretItem {
    pub name: String,
    pub reference: String,
    /// `generate-<name>`: made when missing.
    pub generate: Option<crate::generate::Recipe>,
}

/// One `path-<name>` annotation, its folder not yet parsed (that needs the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathItem {
    pub name: String,
    pub folder: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateItem {
    pub name: String,
    pub source: String,
}

/// What a pod's annotations ask for, defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectSpec {
    pub store: Option<String>,
    pub role: Option<String>,
    pub secrets: Vec<SecretItem>,
    pub paths: Vec<PathItem>,
    pub templates: Vec<TemplateItem>,
    pub output: Output,
    pub mount_path: String,
    pub containers: Option<Vec<String>>,
    pub file_mode: Option<u32>,
    pub rotate: bool,
    pub refresh_interval: Option<Duration>,
}

impl InjectSpec {
    /// The annotation key of an item name, for error messages.
    pub fn secret_annotation(name: &str) -> String {
        format!("{SECRET_PREFIX}{name}")
    }
    pub fn template_annotation(name: &str) -> String {
        format!("{TEMPLATE_PREFIX}{name}")
    }
    pub fn path_annotation(name: &str) -> String {
        format!("{PATH_PREFIX}{name}")
    }
}

/// True when the annotations opt in (`keyhole.dev/inject: "true"`).
pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(INJECT).map(String::as_str) == Some("true")
}

/// True when the webhook has already injected this pod.
pub fn injected(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(STATUS).map(String::as_str) == Some(STATUS_INJECTED)
}

/// Parses the keyhole annotations. `Ok(None)`: the pod did not opt in.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<InjectSpec>, Problems> {
    let mut problems = Vec::new();
    match annotations.get(INJECT).map(String::as_str) {
        Some("true") => {}
        None | Some("false") => return Ok(None),
        Some(other) => {
            return Err(Problems(vec![Problem::new(
                INJECT,
                format!("{other:?} is not a boolean: write \"true\" to opt in or \"false\" (or remove it) to opt out"),
            )]));
        }
    }

    let mut spec = InjectSpec {
        store: None,
        role: None,
        secrets: Vec::new(),
        paths: Vec::new(),
        templates: Vec::new(),
        output: Output::Files,
        mount_path: DEFAULT_MOUNT_PATH.to_owned(),
        containers: None,
        file_mode: None,
        rotate: true,
        refresh_interval: None,
    };

    let mut recipes = Vec::new();
    for (key, value) in annotations.range(PREFIX.to_owned()..) {
        let Some(short) = key.strip_prefix(PREFIX) else { break };
        let mut bad = |msg: String| problems.push(Problem::new(key.clone(), msg));
        match key.as_str() {
            INJECT => {}
            k if SYSTEM_KEYS.contains(&k) => {}
            STORE => match non_empty(value) {
                Some(v) => spec.store = Some(v.to_owned()),
                None => bad("empty store name: name a store from the webhook config, or remove it for the default".into()),
            },
            ROLE => match non_empty(value) {
                Some(v) => spec.role = Some(v.to_owned()),
                None => bad("empty role: write the IAM role ARN (aws-ssm) or the auth role (vault), or remove it for the store's default".into()),
            },
            OUTPUT => match value.parse() {
                Ok(o) => spec.output = o,
                Err(e) => bad(e.to_string()),
            },
            MOUNT_PATH => match check_mount_path(value) {
                Ok(()) => spec.mount_path = value.trim_end_matches('/').to_owned(),
                Err(e) => bad(e.to_string()),
            },
            CONTAINERS => {
                let names: Vec<String> =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                if names.is_empty() {
                    bad("empty container list: name app containers separated by commas, or remove it for all".into());
                } else if names.len() > MAX_CONTAINER_NAMES {
                    bad(format!("{} names; a pod has far fewer containers: name at most {MAX_CONTAINER_NAMES}", names.len()));
                } else {
                    spec.containers = Some(names);
                }
            }
            FILE_MODE => match parse_file_mode(value) {
                Ok(m) => spec.file_mode = Some(m),
                Err(e) => bad(e.to_string()),
            },
            ROTATE => match value.as_str() {
                "true" => spec.rotate = true,
                "false" => spec.rotate = false,
                other => bad(format!("{other:?} is not a boolean: write \"true\" or \"false\"")),
            },
            REFRESH_INTERVAL => match parse_interval(value) {
                Ok(d) => spec.refresh_interval = Some(d),
                Err(e) => bad(e.to_string()),
            },
            _ => {
                if let Some(name) = short.strip_prefix("secret-") {
                    match (check_item_name(name), non_empty(value)) {
                        (Err(e), _) => bad(e.to_string()),
                        (_, None) => bad("empty reference: write where the value lives in the store".into()),
                        (Ok(()), Some(v)) => spec.secrets.push(SecretItem {
                            name: name.to_owned(),
                            reference: v.to_owned(),
                            generate: None,
                        }),
                    }
                } else if let Some(name) = short.strip_prefix("path-") {
                    match (check_item_name(name), non_empty(value)) {
                        (Err(e), _) => bad(e.to_string()),
                        (_, None) => bad("empty path: write the folder whose values you want, like /app/ or secret/app/".into()),
                        (Ok(()), Some(v)) => spec.paths.push(PathItem { name: name.to_owned(), folder: v.to_owned() }),
                    }
                } else if let Some(name) = short.strip_prefix("generate-") {
                    match crate::generate::Recipe::parse(value) {
                        Ok(recipe) => recipes.push((key.clone(), name.to_owned(), recipe)),
                        Err(e) => bad(e.to_string()),
                    }
                } else if let Some(name) = short.strip_prefix("template-") {
                    match check_item_name(name).and_then(|()| check_template(value)) {
                        Err(e) => bad(e.to_string()),
                        Ok(()) => spec.templates.push(TemplateItem { name: name.to_owned(), source: value.clone() }),
                    }
                } else {
                    bad(unknown_key_hint(short));
                }
            }
        }
    }

    for (key, name, recipe) in recipes {
        match spec.secrets.iter_mut().find(|s| s.name == name) {
            Some(item) => item.generate = Some(recipe),
            None => problems.push(Problem::new(
                key,
                format!("there is no {SECRET_PREFIX}{name}: add it, naming where the generated value is kept"),
            )),
        }
    }
    if spec.secrets.len() > MAX_REFERENCES {
        problems.push(Problem::new(
            format!("{SECRET_PREFIX}*"),
            format!(
                "{} references; keyhole takes at most {MAX_REFERENCES} a pod: keep related values in one JSON secret and pick fields with #key (a field of one secret is one look-up)",
                spec.secrets.len()
            ),
        ));
    }
    if spec.paths.len() > MAX_PATHS {
        problems.push(Problem::new(
            format!("{PATH_PREFIX}*"),
            format!(
                "{} paths; keyhole takes at most {MAX_PATHS} a pod: name their common parent once, with ?recursive=true",
                spec.paths.len()
            ),
        ));
    }
    for t in &spec.templates {
        if spec.secrets.iter().any(|s| s.name == t.name) {
            problems.push(Problem::new(
                InjectSpec::template_annotation(&t.name),
                format!("{SECRET_PREFIX}{} already writes {:?}: give the template another name", t.name, t.name),
            ));
        }
    }
    if spec.secrets.is_empty() && spec.paths.is_empty() && spec.templates.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            INJECT,
            format!(
                "the pod opts in but declares no value: add {SECRET_PREFIX}<name>: <reference> (or {PATH_PREFIX}<name>: <folder>)"
            ),
        ));
    }
    if spec.output.secret() {
        for name in spec.secrets.iter().map(|s| &s.name).chain(spec.templates.iter().map(|t| &t.name)) {
            if !is_env_name(name) {
                problems.push(Problem::new(
                    format!("{PREFIX}{}-{name}", if spec.secrets.iter().any(|s| &s.name == name) { "secret" } else { "template" }),
                    format!(
                        "{name:?} is not a valid environment variable name, which output {} needs for envFrom: use letters, digits and _ only, not starting with a digit (for example {})",
                        spec.output.as_str(),
                        env_suggestion(name)
                    ),
                ));
            }
        }
    }

    if problems.is_empty() { Ok(Some(spec)) } else { Err(Problems(problems)) }
}

fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

fn unknown_key_hint(short: &str) -> String {
    let mut known: Vec<String> = USER_KEYS.iter().map(|k| k.to_string()).collect();
    known.push(format!("{SECRET_PREFIX}<name>"));
    known.push(format!("{TEMPLATE_PREFIX}<name>"));
    known.push(format!("{GENERATE_PREFIX}<name>"));
    known.push(format!("{PATH_PREFIX}<name>"));
    let close = USER_KEYS
        .iter()
        .map(|k| k.strip_prefix(PREFIX).unwrap_or(k))
        .chain(["secret-<name>", "template-<name>", "generate-<name>", "path-<name>"])
        .find(|k| {
            edit_distance(k, short) <= 2
                || ["secret", "path"].iter().any(|family| short.starts_with(family) && k.starts_with(family))
        });
    match close {
        Some(k) => format!("unknown annotation: did you mean {PREFIX}{k}?"),
        None => format!("unknown annotation: keyhole knows {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Why one annotation's value (or the name in its key) is refused; each says
/// what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("no name after the prefix: write secret-<name>, where <name> becomes the file name")]
    NoName,
    #[error("name {0:?} is longer than 200 characters")]
    NameTooLong(String),
    #[error("name {0:?} starts with '.', which keyhole keeps for its own files: drop the dot")]
    DotName(String),
    #[error(
        "name {name:?} has {bad:?}, which is not allowed in a file name or Secret key: use letters, digits, - _ . (for example {suggestion})"
    )]
    NameCharacter { name: String, bad: char, suggestion: String },
    #[error("{0:?} is not an output: write files, secret or both")]
    Output(String),
    #[error("{0:?} is not an absolute directory other than /: {MOUNT_HINT}")]
    NotAbsolute(String),
    #[error("{0:?} has '.' or '..': {MOUNT_HINT}")]
    DotSegment(String),
    #[error("{0:?} has ':' or white space: {MOUNT_HINT}")]
    MountCharacter(String),
    #[error("{0:?} is not an octal mode: {MODE_HINT}")]
    NotOctal(String),
    #[error("{0:?} is out of range: {MODE_HINT}")]
    ModeRange(String),
    #[error("{0:?} allows writing or executing: {MODE_HINT}")]
    Writable(String),
    #[error("{0:?} does not let the owner read: {MODE_HINT}")]
    OwnerCannotRead(String),
    #[error("empty template: write a minijinja template that uses secrets[\"<name>\"]")]
    EmptyTemplate,
    #[error("template does not parse: {0}; values are secrets[\"<name>\"], like {{{{ secrets[\"password\"] }}}}")]
    Template(#[source] minijinja::Error),
}

const MOUNT_HINT: &str = "write an absolute directory like /keyhole/secrets";
const MODE_HINT: &str = "write a read-only octal mode like 0400, 0440 or 0444";

/// Whether `name` can be an environment variable (what Secret output's envFrom needs).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An item name is a file name on the tmpfs and a key in the Secret.
pub fn check_item_name(name: &str) -> Result<(), ValueError> {
    if name.is_empty() {
        return Err(ValueError::NoName);
    }
    if name.len() > 200 {
        return Err(ValueError::NameTooLong(name.to_owned()));
    }
    if name.starts_with('.') {
        return Err(ValueError::DotName(name.to_owned()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(ValueError::NameCharacter { name: name.to_owned(), bad, suggestion: env_suggestion(name) });
    }
    Ok(())
}

pub fn env_suggestion(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn check_mount_path(v: &str) -> Result<(), ValueError> {
    if !v.starts_with('/') || v == "/" {
        return Err(ValueError::NotAbsolute(v.to_owned()));
    }
    if v.split('/').any(|s| s == ".." || s == ".") {
        return Err(ValueError::DotSegment(v.to_owned()));
    }
    if v.contains(':') || v.chars().any(char::is_whitespace) {
        return Err(ValueError::MountCharacter(v.to_owned()));
    }
    Ok(())
}

/// Read-only octal modes only: `0400`, `440`, `0444`.
pub fn parse_file_mode(v: &str) -> Result<u32, ValueError> {
    let mode = u32::from_str_radix(v.trim(), 8).map_err(|_| ValueError::NotOctal(v.to_owned()))?;
    if mode > 0o777 {
        return Err(ValueError::ModeRange(v.to_owned()));
    }
    if mode & 0o333 != 0 {
        return Err(ValueError::Writable(v.to_owned()));
    }
    if mode & 0o400 == 0 {
        return Err(ValueError::OwnerCannotRead(v.to_owned()));
    }
    Ok(mode)
}

/// The shortest `refresh-interval`, so a workload cannot hammer the backend.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// `30s`, `5m`, `1h`; at least [`MIN_REFRESH_INTERVAL`].
pub fn parse_interval(v: &str) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::parse(v, MIN_REFRESH_INTERVAL)
}

/// The same environment the injector renders with, so what parses here renders there.
pub fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

fn check_template(source: &str) -> Result<(), ValueError> {
    if source.trim().is_empty() {
        return Err(ValueError::EmptyTemplate);
    }
    template_env().template_from_str(source).map(|_| ()).map_err(ValueError::Template)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn references_are_capped_per_pod() {
        let mut a = ann(&[(INJECT, "true")]);
        for i in 0..MAX_REFERENCES {
            a.insert(format!("{SECRET_PREFIX}v{i}"), format!("/p/{i}"));
        }
        assert_eq!(parse(&a).unwrap().unwrap().secrets.len(), MAX_REFERENCES, "the cap itself is allowed");
        a.insert(format!("{SECRET_PREFIX}one_more"), "/p/x".into());
        let text = parse(&a).unwrap_err().to_string();
        assert!(text.starts_with("keyhole.dev/secret-*: 101 references; keyhole takes at most 100"), "{text}");
    }

    #[test]
    fn paths_parse_and_are_capped() {
        let mut a = ann(&[(INJECT, "true"), ("keyhole.dev/path-app", "/app/?recursive=true")]);
        let s = parse(&a).unwrap().unwrap();
        assert_eq!(s.paths, vec![PathItem { name: "app".into(), folder: "/app/?recursive=true".into() }]);
        assert!(s.secrets.is_empty(), "a path alone is a pod's values");
        for i in 0..MAX_PATHS {
            a.insert(format!("{PATH_PREFIX}p{i}"), format!("/p{i}/"));
        }
        let text = parse(&a).unwrap_err().to_string();
        assert!(text.starts_with("keyhole.dev/path-*: 11 paths; keyhole takes at most 10"), "{text}");
        let empty = ann(&[(INJECT, "true"), ("keyhole.dev/path-app", " ")]);
        assert!(parse(&empty).unwrap_err().to_string().contains("keyhole.dev/path-app: empty path"));
        let typo = ann(&[(INJECT, "true"), ("keyhole.dev/paths-app", "/app/")]);
        assert!(parse(&typo).unwrap_err().to_string().contains("did you mean keyhole.dev/path-<name>?"));
    }

    #[test]
    fn not_opted_in_is_none() {
        assert_eq!(parse(&ann(&[])).unwrap(), None);
        assert_eq!(parse(&ann(&[(INJECT, "false"), ("keyhole.dev/secret-a", "/x")])).unwrap(), None);
        assert!(parse(&ann(&[(INJECT, "yes")])).unwrap_err().to_string().contains("write \"true\""));
    }

    #[test]
    fn full_spec_parses_with_defaults_untouched() {
        let a = ann(&[
            (INJECT, "true"),
            (STORE, "aws"),
            ("keyhole.dev/secret-db_password", "/prod/db/password"),
            ("keyhole.dev/template-config.ini", "pw={{ secrets[\"db_password\"] }}"),
            (CONTAINERS, "app, sidecar"),
            (FILE_MODE, "0440"),
            (REFRESH_INTERVAL, "5m"),
            (ROTATE, "false"),
            (STATUS, "injected"),
            ("other.io/x", "y"),
        ]);
        let s = parse(&a).unwrap().unwrap();
        assert_eq!(s.store.as_deref(), Some("aws"));
        assert_eq!(
            s.secrets,
            vec![SecretItem { name: "db_password".into(), reference: "/prod/db/password".into(), generate: None }]
        );
        assert_eq!(s.templates[0].name, "config.ini");
        assert_eq!(s.containers, Some(vec!["app".into(), "sidecar".into()]));
        assert_eq!(s.file_mode, Some(0o440));
        assert_eq!(s.refresh_interval, Some(Duration::from_secs(300)));
        assert!(!s.rotate);
        assert_eq!(s.mount_path, DEFAULT_MOUNT_PATH);
        assert_eq!(s.output, Output::Files);
    }

    #[test]
    fn every_problem_names_its_annotation_and_a_fix() {
        let a = ann(&[
            (INJECT, "true"),
            ("keyhole.dev/secret-a/b", "/x"),
            ("keyhole.dev/template-t", "{{ unclosed"),
            ("keyhole.dev/stor", "aws"),
            ("keyhole.dev/frobnicate", "1"),
            (FILE_MODE, "0600"),
            (MOUNT_PATH, "relative"),
            (REFRESH_INTERVAL, "1s"),
            (OUTPUT, "env"),
        ]);
        let p = parse(&a).unwrap_err();
        let text = p.to_string();
        for needle in [
            "keyhole.dev/secret-a/b: name \"a/b\" has '/'",
            "keyhole.dev/template-t: template does not parse",
            "keyhole.dev/stor: unknown annotation: did you mean keyhole.dev/store?",
            "keyhole.dev/frobnicate: unknown annotation: keyhole knows",
            "keyhole.dev/file-mode: \"0600\" allows writing",
            "keyhole.dev/mount-path: \"relative\" is not an absolute",
            "keyhole.dev/refresh-interval: \"1s\" is too short",
            "keyhole.dev/output: \"env\" is not an output",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
    }

    #[test]
    fn secret_output_needs_env_names() {
        let a = ann(&[(INJECT, "true"), (OUTPUT, "both"), ("keyhole.dev/secret-db-password", "/x")]);
        let text = parse(&a).unwrap_err().to_string();
        assert!(
            text.contains("keyhole.dev/secret-db-password: \"db-password\" is not a valid environment variable name"),
            "{text}"
        );
        assert!(text.contains("db_password"), "{text}");
        let ok = ann(&[(INJECT, "true"), (OUTPUT, "files"), ("keyhole.dev/secret-db-password", "/x")]);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn opted_in_without_values_is_refused() {
        let text = parse(&ann(&[(INJECT, "true")])).unwrap_err().to_string();
        assert!(text.contains("declares no value"), "{text}");
    }

    #[test]
    fn intervals_and_modes() {
        assert_eq!(parse_interval("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_interval("10").is_err());
        assert_eq!(parse_file_mode("400").unwrap(), 0o400);
        assert!(parse_file_mode("0044").is_err());
        assert!(parse_file_mode("9").is_err());
    }
}
