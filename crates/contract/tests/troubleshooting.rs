//! docs/troubleshooting.md explains every message a user can meet: the
//! injector's termination messages, the refusals at apply, the webhook's
//! certificate errors, the rotation controller's look-up failures. The messages
//! are read as text from the crates that define them (the contract crate cannot
//! depend on them), so a new error variant fails this test until it is documented.

use std::path::{Path, PathBuf};

use keyhole_contract::reference_doc::github_anchor;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn troubleshooting() -> String {
    std::fs::read_to_string(root().join("docs/troubleshooting.md")).expect("docs/troubleshooting.md")
}

/// The files whose `#[error("...")]` messages reach users, and where.
const SOURCES: &[&str] = &[
    // The injector's termination message (`kubectl describe pod`).
    "crates/injector/src/error.rs",
    "crates/backends/src/error.rs",
    "crates/contract/src/plan.rs",
    // Refusals at `kubectl apply` and at pod create.
    "crates/contract/src/annotations.rs",
    "crates/contract/src/reference.rs",
    "crates/contract/src/access.rs",
    "crates/contract/src/store.rs",
    "crates/contract/src/duration.rs",
    "crates/contract/src/generate.rs",
    // The webhook and the rotation controller at start (the config), and in their logs.
    "crates/contract/src/config.rs",
    "crates/webhook/src/tls.rs",
    "crates/rotation/src/backend.rs",
    // `keyhole roll --wait`.
    "crates/rotation/src/rollout.rs",
];

/// Fragments shorter than this are too common to say anything ("read", ": ").
const MIN_FRAGMENT: usize = 10;

/// The format string of each `#[error("...")]` before the file's tests, with its line.
fn error_formats(text: &str) -> Vec<(usize, String)> {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("#[error(").map(|i| from + i) {
        from = at + 1;
        let args = text[at + "#[error(".len()..].trim_start();
        if !args.starts_with('"') {
            continue; // transparent
        }
        let mut literal = String::new();
        let mut chars = args[1..].chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => literal.push('\n'),
                    // A continuation: the line break and the next line's indent are not in the string.
                    Some('\n') => {
                        while chars.clone().next().is_some_and(char::is_whitespace) {
                            chars.next();
                        }
                    }
                    Some(other) => literal.push(other),
                    None => break,
                },
                c => literal.push(c),
            }
        }
        out.push((text[..at].matches('\n').count() + 1, literal));
    }
    out
}

/// The literal text of a format string between its `{...}` arguments, `{{` and
/// `}}` read as braces, each piece trimmed of spaces and separators.
fn fragments(format: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                current.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                current.push('}');
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                out.push(std::mem::take(&mut current));
            }
            c => current.push(c),
        }
    }
    out.push(current);
    out.into_iter().map(|f| f.trim_matches(|c: char| c.is_whitespace() || ":;,().".contains(c)).to_owned()).collect()
}

#[test]
fn troubleshooting_explains_every_error_message() {
    let doc = troubleshooting();
    let mut checked = 0;
    let mut missing = Vec::new();
    for source in SOURCES {
        let text = std::fs::read_to_string(root().join(source)).unwrap_or_else(|e| panic!("{source}: {e}"));
        for (line, format) in error_formats(&text) {
            let Some(longest) = fragments(&format).into_iter().max_by_key(|f| f.len()) else { continue };
            if longest.len() < MIN_FRAGMENT {
                continue;
            }
            checked += 1;
            if !doc.contains(&longest) {
                missing.push(format!("{source}:{line}: {longest:?}"));
            }
        }
    }
    assert!(checked >= 60, "only {checked} messages found: is the scan still reading the error enums?");
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md does not explain these messages (each text must appear there as written):\n  {}\n\
         Add each to docs/troubleshooting.md: the message, what it means, what to do.",
        missing.join("\n  ")
    );
}

#[test]
fn fragments_are_the_literal_text_between_arguments() {
    assert_eq!(
        fragments("{annotation}: {store}: cannot read the token {path}: {reason}"),
        ["", "", "cannot read the token", "", ""]
    );
    assert_eq!(fragments("like {{{{ secrets }}}} x"), ["like {{ secrets }} x"]);
    let formats = error_formats(
        "#[error(transparent)]\nA,\n#[error(\n    \"a \\\"b\\\" {x}\",\n    x = 1\n)]\nB,\n#[cfg(test)]\n#[error(\"test\")]",
    );
    assert_eq!(formats, [(3, "a \"b\" {x}".to_owned())]);
}

/// The sections the alerts were specified to link to; the links in
/// charts/keyhole/files/alerts.yaml are read as well.
const ALERT_ANCHORS: &[&str] = &[
    "keyholewebhookerrors",
    "keyholewebhookcertificateexpiring",
    "keyholewebhookcertificatereloadfailing",
    "keyholerotationlookupsfailing",
    "keyholerotationleadermissing",
    "keyholeinjectorfailing",
];

/// The anchors of `md`: its headings' (as GitHub makes them), and `<a id="...">`s.
fn anchors(md: &str) -> Vec<String> {
    let mut out: Vec<String> =
        md.lines().filter_map(|l| l.strip_prefix('#')).map(|l| github_anchor(l.trim_start_matches('#'))).collect();
    for (i, _) in md.match_indices("<a id=\"") {
        let rest = &md[i + "<a id=\"".len()..];
        out.extend(rest.split('"').next().map(str::to_owned));
    }
    out
}

#[test]
fn troubleshooting_has_a_section_for_every_alert() {
    let anchors = anchors(&troubleshooting());
    let mut wanted: Vec<String> = ALERT_ANCHORS.iter().map(|a| (*a).to_owned()).collect();
    // Once the chart ships its alerts, every runbook link in them must resolve too.
    for file in ["charts/keyhole/files/alerts.yaml", "charts/keyhole/files/alerts.yml"] {
        let Ok(text) = std::fs::read_to_string(root().join(file)) else { continue };
        for (i, _) in text.match_indices("troubleshooting.md#") {
            let rest = &text[i + "troubleshooting.md#".len()..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(rest.len());
            wanted.push(rest[..end].to_owned());
        }
    }
    wanted.sort();
    wanted.dedup();
    let missing: Vec<&String> = wanted.iter().filter(|w| !anchors.contains(w)).collect();
    assert!(missing.is_empty(), "docs/troubleshooting.md has no heading with the anchor {missing:?}");
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(github_anchor(" KeyholeWebhookErrors"), "keyholewebhookerrors");
    assert_eq!(github_anchor("`keyhole.dev/secret-<name>`"), "keyholedevsecret-name");
    assert_eq!(github_anchor("The pod is stuck in Init:Error"), "the-pod-is-stuck-in-initerror");
    assert_eq!(anchors("## A b\n<a id=\"x-y\"></a>\n"), ["a-b", "x-y"]);
}
