//! Links between keyhole's docs resolve: `[text](other.md#anchor)` and
//! `[text](#anchor)` in docs/*.md and README.md name a file that exists and a
//! heading (or `<a id>`) it has, as GitHub makes anchors.

use std::path::{Path, PathBuf};

use keyhole_contract::reference_doc::github_anchor;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Anchors of a Markdown text: headings outside code fences, and `<a id="...">`.
fn anchors(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            out.push(github_anchor(h.trim_start_matches('#')));
        }
        for (i, _) in line.match_indices("<a id=\"") {
            out.extend(line[i + 7..].split('"').next().map(str::to_owned));
        }
    }
    out
}

/// `(target, line)` of every Markdown link outside code fences.
fn links(md: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for (i, _) in line.match_indices("](") {
            let rest = &line[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((rest[..end].to_owned(), n + 1));
            }
        }
    }
    out
}

#[test]
fn links_between_the_docs_resolve() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("README.md"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let md = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        for (target, line) in links(&md) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let at = format!("{}:{line}", file.strip_prefix(root()).unwrap_or(file).display());
            let dest = if path.is_empty() { file.clone() } else { dir.join(path) };
            checked += 1;
            if !dest.exists() {
                broken.push(format!("{at}: {target}: no such file"));
                continue;
            }
            if !anchor.is_empty() && dest.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&dest).unwrap();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    broken.push(format!("{at}: {target}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links in the docs:\n  {}", broken.join("\n  "));
}
