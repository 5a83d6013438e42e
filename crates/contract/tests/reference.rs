//! docs/annotations.md is generated from the contract (`reference_doc`), covers
//! every `keyhole.dev/` annotation the project names, and its examples parse;
//! the YAML examples of the other docs parse through the same code.
//!
//! `KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference` rewrites
//! docs/annotations.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyhole_contract::annotations::{self, Output};
use keyhole_contract::config::Config;
use keyhole_contract::reference_doc::{self, Writer};
use keyhole_contract::{Reference, StoreKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn annotations_md() -> PathBuf {
    root().join("docs/annotations.md")
}

/// Files under `dir` (recursively) whose names end in one of `exts`, sorted.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else { continue };
        for entry in read.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if exts.iter().any(|e| path.to_string_lossy().ends_with(e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

#[test]
fn annotations_md_is_what_the_contract_renders() {
    let want = reference_doc::render_markdown();
    let path = annotations_md();
    if std::env::var("KEYHOLE_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &want).expect("write docs/annotations.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    let (n, theirs, ours) = have
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(want.lines().map(Some).chain(std::iter::repeat(None)))
        .take(have.lines().count().max(want.lines().count()) + 1)
        .enumerate()
        .find(|(_, (h, w))| h != w)
        .map(|(i, (h, w))| (i + 1, h.unwrap_or("<end of file>"), w.unwrap_or("<end of file>")))
        .unwrap_or((0, "", "(only the line endings differ)"));
    panic!(
        "docs/annotations.md is not what crates/contract renders; first difference at line {n}:\n  file:      {theirs}\n  generated: {ours}\n\
         The file is generated: edit crates/contract/src/reference_doc.rs (or the constants it reads), not the file, then run\n  \
         KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference\nand review the diff of docs/annotations.md."
    );
}

/// String constants `const NAME: &str = "keyhole.dev/..."` in `text`: the value
/// of each literal whose statement, back to the previous `;`, `{` or `}`,
/// declares a `const` of type `&str`.
fn annotation_constants(text: &str) -> Vec<(usize, String)> {
    const NEEDLE: &str = "\"keyhole.dev/";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(NEEDLE).map(|i| from + i) {
        from = at + 1;
        let start = text[..at].rfind([';', '{', '}']).map_or(0, |i| i + 1);
        let statement = &text[start..at];
        if !(statement.split_whitespace().any(|w| w == "const") && statement.contains("&str")) {
            continue;
        }
        let Some(len) = text[at + 1..].find('"') else { continue };
        let line = text[..at].matches('\n').count() + 1;
        out.push((line, text[at + 1..at + 1 + len].to_owned()));
    }
    out
}

#[test]
fn every_keyhole_dev_constant_in_the_crates_is_in_the_reference() {
    let entries = reference_doc::entries();
    let mut found = 0;
    let mut missing = Vec::new();
    // Library and binary source only: tests hold made-up keys on purpose.
    for path in
        files(&root().join("crates"), &[".rs"]).into_iter().filter(|p| p.components().any(|c| c.as_os_str() == "src"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        for (line, value) in annotation_constants(&text) {
            if value == annotations::PREFIX {
                continue;
            }
            found += 1;
            if !entries.iter().any(|e| e.key.is_constant(&value)) {
                missing.push(format!("{}:{line}: {value}", rel(&path)));
            }
        }
    }
    assert!(found >= 15, "the scan found only {found} annotation constants: is it still reading the crates?");
    assert!(
        missing.is_empty(),
        "annotation constants the reference does not cover:\n  {}\nAdd an Entry for each to crates/contract/src/reference_doc.rs (a Key::Exact, or a Key::Family for a prefix), then run KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference",
        missing.join("\n  ")
    );
}

#[test]
fn the_scan_sees_constants_however_they_are_wrapped() {
    let text = "pub const A: &str = \"keyhole.dev/a\";\nconst B: &str =\n    \"keyhole.dev/b\";\nlet x = \"keyhole.dev/not-a-const\";\nfn f() { g(\"keyhole.dev/c\") }";
    let values: Vec<String> = annotation_constants(text).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, ["keyhole.dev/a", "keyhole.dev/b"]);
}

/// `keyhole.dev/<key>` tokens in `text` that are annotation keys: not part of a
/// path (`/var/run/secrets/keyhole.dev/...`) or of a longer name. A trailing
/// `.` or `-` ends a sentence or a wrapped line, not the key.
fn annotation_tokens(text: &str) -> Vec<(usize, String)> {
    const PREFIX: &str = "keyhole.dev/";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX).map(|i| from + i) {
        from = at + PREFIX.len();
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c == '/' || c == '.' || c == '-' || c.is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &text[from..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.<>*".contains(c))).unwrap_or(rest.len());
        let key = rest[..end].trim_end_matches(['.', '-']);
        if key.is_empty() {
            continue;
        }
        out.push((text[..at].matches('\n').count() + 1, format!("{PREFIX}{key}")));
    }
    out
}

#[test]
fn every_annotation_the_install_and_the_docs_name_is_in_the_reference() {
    let entries = reference_doc::entries();
    let mut paths = files(&root().join("manifests"), &[".yaml", ".yml"]);
    paths.extend(files(&root().join("charts"), &[".yaml", ".yml", ".tpl", ".txt", ".json"]));
    paths.extend(files(&root().join("docs"), &[".md"]));
    paths.push(root().join("README.md"));
    let mut missing = Vec::new();
    let mut seen = 0;
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for (line, key) in annotation_tokens(&text) {
            seen += 1;
            if !entries.iter().any(|e| e.key.covers(&key)) {
                missing.push(format!("{}:{line}: {key}", rel(&path)));
            }
        }
    }
    assert!(seen > 50, "only {seen} annotations found in manifests, charts and docs: is the scan still reading them?");
    assert!(
        missing.is_empty(),
        "annotations that keyhole does not have (a typo?) or that the reference does not cover:\n  {}\n\
         Fix the name, or add it to crates/contract/src/reference_doc.rs and run KEYHOLE_BLESS=1 cargo test -p keyhole-contract --test reference",
        missing.join("\n  ")
    );
}

#[test]
fn the_token_scan_skips_paths_and_webhook_names() {
    let text = "/var/run/secrets/keyhole.dev/rotation inject.keyhole.dev `keyhole.dev/` keyhole.dev/store. 'keyhole.dev/secret-DB_PASSWORD':";
    let keys: Vec<String> = annotation_tokens(text).into_iter().map(|(_, k)| k).collect();
    assert_eq!(keys, ["keyhole.dev/store", "keyhole.dev/secret-DB_PASSWORD"]);
}

/// The annotations of an example, with what a pod needs around them to parse:
/// the opt-in, and a value when the example declares none.
fn with_context(example: &[(String, String)], kind: StoreKind) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = example.iter().cloned().collect();
    a.entry(annotations::INJECT.into()).or_insert_with(|| "true".into());
    if !a.keys().any(|k| k.starts_with(annotations::SECRET_PREFIX) || k.starts_with(annotations::TEMPLATE_PREFIX)) {
        let reference = match kind {
            StoreKind::AwsSsm => "/shop/db/password",
            StoreKind::Vault => "secret/shop/db#password",
            StoreKind::AwsSecretsManager => "shop/db#password",
        };
        a.insert(format!("{}DB_PASSWORD", annotations::SECRET_PREFIX), reference.into());
    }
    a
}

#[test]
fn examples_in_the_reference_parse() {
    let mut checked = 0;
    for entry in reference_doc::entries() {
        // Only what goes on a pod: keyhole's Secrets' annotations are refused there.
        let on_pods = entry.writer == Writer::User
            || [annotations::STATUS, annotations::VERSIONS, annotations::OBSERVED_VERSIONS]
                .iter()
                .any(|k| entry.key.covers(k));
        assert!(!entry.examples.is_empty(), "{} has no example", entry.key.pattern());
        if !on_pods {
            continue;
        }
        for ex in &entry.examples {
            let kind = ex.store.unwrap_or(StoreKind::Vault);
            let a = with_context(&ex.annotations, kind);
            let spec = annotations::parse(&a)
                .unwrap_or_else(|p| panic!("the example of {} is refused: {p}", entry.key.pattern()))
                .expect("opted in");
            for item in &spec.secrets {
                if let Err(e) = Reference::parse(kind, &item.reference) {
                    panic!(
                        "the example of {}: {:?} is not a {} reference: {e}",
                        entry.key.pattern(),
                        item.reference,
                        kind.as_str()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked}");
}

/// What the reference says in prose where no constant exists; each fails
/// when the behaviour changes, so the prose is changed with it.
#[test]
fn documented_limits_hold() {
    assert!(annotations::check_item_name(&"a".repeat(200)).is_ok());
    assert!(annotations::check_item_name(&"a".repeat(201)).is_err(), "names: at most 200 characters");
    assert!(annotations::check_item_name(".hidden").is_err(), "names: not starting with '.'");
    assert!(annotations::check_item_name("a-b_c.d").is_ok());
    for mode in ["0400", "0440", "0444", "400"] {
        assert!(annotations::parse_file_mode(mode).is_ok(), "{mode}");
    }
    for mode in ["0600", "0500", "0044"] {
        assert!(annotations::parse_file_mode(mode).is_err(), "{mode}");
    }
    assert_eq!(Output::default(), Output::Files);
    assert!(annotations::parse_interval("15").is_err(), "a bare number is refused");
    for d in ["30s", "1h30m", "1500ms", "PT30S"] {
        assert!(keyhole_contract::duration::parse(d, std::time::Duration::ZERO).is_ok(), "{d}");
    }
    let env = annotations::template_env();
    let rendered =
        env.render_str("x = {{ secrets[\"a\"] }}\n", minijinja::context! { secrets => BTreeMap::from([("a", "1")]) });
    assert_eq!(rendered.unwrap(), "x = 1", "one trailing newline is dropped");
    let undefined =
        env.render_str("{{ secrets[\"b\"] }}", minijinja::context! { secrets => BTreeMap::from([("a", "1")]) });
    assert!(undefined.is_err(), "an undeclared value is an error");
    let html =
        env.render_str("{{ secrets[\"a\"] }}", minijinja::context! { secrets => BTreeMap::from([("a", "<&>")]) });
    assert_eq!(html.unwrap(), "<&>", "nothing is HTML-escaped");
}

/// The ```yaml blocks of a Markdown text, with the line each starts on.
fn yaml_blocks(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```yaml") || fence.starts_with("```yml") => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if fence.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// keyhole's config, if `doc` is one: the file itself (`injector`, `stores`),
/// the chart's values (`config:`), or the ConfigMap (`data: config.yaml`).
fn config_in(doc: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    let map = doc.as_mapping()?;
    if map.contains_key("stores") && (map.contains_key("injector") || map.contains_key("defaultStore")) {
        return Some(serde_yaml::to_string(doc).unwrap());
    }
    if let Some(Value::Mapping(config)) = map.get("config") {
        // As the chart renders it: the injector image defaults to the chart's
        // own, and a store set to null removes the chart's example of that name.
        let mut config = config.clone();
        let injector = config.entry("injector".into()).or_insert_with(|| Value::Mapping(Default::default()));
        if let Value::Mapping(i) = injector {
            i.entry("image".into()).or_insert_with(|| "ghcr.io/keyhole/keyhole:0.1.0".into());
        }
        if let Some(Value::Mapping(stores)) = config.get_mut("stores") {
            stores.retain(|_, v| !v.is_null());
        }
        return Some(serde_yaml::to_string(&config).unwrap());
    }
    if map.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
        return map.get("data")?.get("config.yaml")?.as_str().map(str::to_owned);
    }
    None
}

/// Every `annotations:` map under `doc` that opts in to keyhole.
fn opted_in_annotations(doc: &serde_yaml::Value, out: &mut Vec<BTreeMap<String, String>>) {
    use serde_yaml::Value;
    match doc {
        Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("annotations")
                    && let Value::Mapping(a) = v
                    && a.contains_key(annotations::INJECT)
                {
                    out.push(
                        a.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()))).collect(),
                    );
                }
                opted_in_annotations(v, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| opted_in_annotations(v, out)),
        _ => {}
    }
}

#[test]
fn yaml_examples_in_the_docs_parse() {
    use serde::Deserialize;
    let (mut configs, mut pods) = (0, 0);
    let mut failures = Vec::new();
    for path in files(&root().join("docs"), &[".md"]) {
        let md = std::fs::read_to_string(&path).unwrap();
        for (line, block) in yaml_blocks(&md) {
            let at = format!("{}:{line}", rel(&path));
            for doc in serde_yaml::Deserializer::from_str(&block) {
                let doc = match serde_yaml::Value::deserialize(doc) {
                    Ok(doc) => doc,
                    Err(e) => {
                        failures.push(format!("{at}: not YAML: {e}"));
                        break;
                    }
                };
                if let Some(config) = config_in(&doc) {
                    configs += 1;
                    if let Err(e) = Config::parse(&config) {
                        failures.push(format!("{at}: keyhole's config is refused: {e}"));
                    }
                }
                let mut found = Vec::new();
                opted_in_annotations(&doc, &mut found);
                for a in found {
                    pods += 1;
                    if let Err(p) = annotations::parse(&a) {
                        failures.push(format!("{at}: the annotations are refused: {p}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "YAML examples in docs/ that keyhole would refuse:\n  {}", failures.join("\n  "));
    // usage.md and quickstart.md's configs; the pods of usage, quickstart, the migration and the reference.
    assert!(
        configs >= 4 && pods >= 5,
        "found only {configs} configs and {pods} annotated pods in docs/: is the scan still reading them?"
    );
}
