//! Templates and the atomic writer.
//!
//! The files are written into a hidden temp dir on the same volume, synced, and
//! made visible all at once the way the kubelet updates a Secret volume: the dir
//! is renamed to a timestamped `..<ts>`, a `..data` symlink to it is swapped in by
//! rename, and each name is a symlink `name -> ..data/name`. On any failure
//! everything written is removed again.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use keyhole_backends::value::Payload;
use keyhole_contract::plan::PlanTemplate;
use secrecy::{ExposeSecret, SecretString};

use crate::value::Values;

/// The symlink the per-file links go through.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";
/// The hidden dir a run writes into before anything is visible.
const TMP_PREFIX: &str = ".keyhole-tmp-";
/// Mode of the timestamped dir: the app may run as another UID (file mode 0444).
const DATA_DIR_MODE: u32 = 0o755;

/// Why a template did not render: its kind and line only, since minijinja's
/// detail can quote a value.
#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub name: String,
    pub reason: String,
}

/// Renders every template with the fetched values as `secrets["<name>"]`.
pub fn render(templates: &[PlanTemplate], values: &Values) -> Result<Vec<(String, SecretString)>, TemplateError> {
    if templates.is_empty() {
        return Ok(Vec::new());
    }
    let env = keyhole_contract::annotations::template_env();
    let secrets: std::collections::BTreeMap<&str, minijinja::Value> =
        values.iter().map(|(k, v)| (k.as_str(), minijinja::Value::from(v.expose_secret()))).collect();
    let ctx = minijinja::context! { secrets => secrets };
    let mut out = Vec::with_capacity(templates.len());
    for t in templates {
        let fail = |e: minijinja::Error| {
            let line = e.line().map(|l| format!(" at line {l}")).unwrap_or_default();
            let hint = match e.kind() {
                minijinja::ErrorKind::UndefinedError => {
                    ": a value it uses is not declared (each secrets[\"<name>\"] needs a keyhole.dev/secret-<name>)"
                }
                _ => "",
            };
            TemplateError { name: t.name.clone(), reason: format!("{}{line}{hint}", e.kind()) }
        };
        let tmpl = env.template_from_str(&t.source).map_err(fail)?;
        let rendered = tmpl.render(&ctx).map_err(fail)?;
        out.push((t.name.clone(), SecretString::from(rendered)));
    }
    Ok(out)
}

/// Why writing failed, and which file it was about.
#[derive(Debug)]
pub struct WriteError {
    pub name: Option<String>,
    pub error: io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}: {}", self.error),
            None => self.error.fmt(f),
        }
    }
}

trait Named<T> {
    fn named(self, name: &str) -> Result<T, WriteError>;
    fn unnamed(self) -> Result<T, WriteError>;
}

impl<T> Named<T> for io::Result<T> {
    fn named(self, name: &str) -> Result<T, WriteError> {
        self.map_err(|error| WriteError { name: Some(name.to_owned()), error })
    }
    fn unnamed(self) -> Result<T, WriteError> {
        self.map_err(|error| WriteError { name: None, error })
    }
}

/// Removes what a failed write left, newest first, unless disarmed.
struct Cleanup {
    paths: Vec<PathBuf>,
    /// `..data` pointed here before the swap: restore it on failure.
    previous_data: Option<PathBuf>,
    data_link: Option<PathBuf>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(link) = &self.data_link {
            match &self.previous_data {
                Some(target) => {
                    let tmp = link.with_file_name(DATA_LINK_TMP);
                    let _ = fs::remove_file(&tmp);
                    if std::os::unix::fs::symlink(target, &tmp).is_ok() {
                        let _ = fs::rename(&tmp, link);
                    }
                }
                None => {
                    let _ = fs::remove_file(link);
                }
            }
        }
        for p in self.paths.iter().rev() {
            let _ = match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(p),
                Ok(_) => fs::remove_file(p),
                Err(_) => Ok(()),
            };
        }
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"));
    }
    Ok(())
}

fn timestamp_dir() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("..{}_{:09}", now.as_secs(), now.subsec_nanos())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `files` into `dir` so that a reader sees all of them or none, each
/// with `mode`. On error nothing it wrote is left behind.
pub fn write_atomic(dir: &Path, files: &[(String, Payload)], mode: u32) -> Result<(), WriteError> {
    for (name, _) in files {
        check_name(name).named(name)?;
    }
    let mut cleanup = Cleanup { paths: Vec::new(), previous_data: None, data_link: None, armed: true };

    // 1. A hidden temp dir on the same volume, so the rename below is atomic.
    // Leftovers of a run that was killed mid-way are ours to remove.
    for entry in fs::read_dir(dir).unnamed()?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            fs::remove_dir_all(entry.path()).unnamed()?;
        }
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
    DirBuilder::new().mode(0o700).create(&tmp).unnamed()?;
    cleanup.paths.push(tmp.clone());
    for (name, value) in files {
        let path = tmp.join(name);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).named(name)?;
        f.write_all(value.expose_secret()).named(name)?;
        f.set_permissions(fs::Permissions::from_mode(mode)).named(name)?;
        f.sync_all().named(name)?;
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(DATA_DIR_MODE)).unnamed()?;
    sync_dir(&tmp).unnamed()?;

    // 2. The timestamped dir: still hidden behind its `..` name.
    let ts_name = timestamp_dir();
    let ts = dir.join(&ts_name);
    fs::rename(&tmp, &ts).unnamed()?;
    cleanup.paths.pop();
    cleanup.paths.push(ts.clone());

    // 3. Swap `..data` in one rename.
    let data = dir.join(DATA_LINK);
    let previous = fs::read_link(&data).ok();
    let data_tmp = dir.join(DATA_LINK_TMP);
    let _ = fs::remove_file(&data_tmp);
    std::os::unix::fs::symlink(&ts_name, &data_tmp).unnamed()?;
    cleanup.paths.push(data_tmp.clone());
    fs::rename(&data_tmp, &data).unnamed()?;
    cleanup.paths.pop();
    cleanup.previous_data = previous.clone();
    cleanup.data_link = Some(data.clone());

    // 4. The visible names, each through `..data`.
    for (name, _) in files {
        let link = dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        match fs::read_link(&link) {
            Ok(existing) if existing == target => continue,
            Ok(_) => {
                return Err(WriteError {
                    name: Some(name.clone()),
                    error: io::Error::new(io::ErrorKind::AlreadyExists, "a symlink keyhole did not make is in the way"),
                });
            }
            Err(_) if fs::symlink_metadata(&link).is_ok() => {
                return Err(WriteError {
                    name: Some(name.clone()),
                    error: io::Error::new(io::ErrorKind::AlreadyExists, "a file keyhole did not write is in the way"),
                });
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &link).named(name)?;
        cleanup.paths.push(link);
    }
    sync_dir(dir).unnamed()?;
    cleanup.armed = false;

    // 5. Earlier runs' data (the init container ran again, or was killed between
    // the rename and the swap): drop it, and the names this run no longer writes.
    if let Some(old) = previous.filter(|old| old.as_os_str() != ts_name.as_str())
        && let Ok(entries) = fs::read_dir(dir.join(&old))
    {
        for e in entries.flatten() {
            let name = e.file_name();
            if !files.iter().any(|(n, _)| n.as_str() == name) {
                let _ = fs::remove_file(dir.join(&name));
            }
        }
    }
    for entry in fs::read_dir(dir).unnamed()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.starts_with("..") && name != DATA_LINK && name != ts_name;
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use keyhole_contract::plan::PlanTemplate;

    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "keyhole-injector-test-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn files(pairs: &[(&str, &str)]) -> Vec<(String, Payload)> {
        pairs.iter().map(|(n, v)| (n.to_string(), Payload::Text(SecretString::from(v.to_string())))).collect()
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn writes_all_files_through_the_data_link_with_the_mode() {
        let t = TempDir::new("ok");
        write_atomic(&t.0, &files(&[("a", "1"), ("b.txt", "two")]), 0o440).unwrap();
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(t.0.join("b.txt")).unwrap(), "two");
        assert_eq!(fs::read_link(t.0.join("a")).unwrap(), Path::new("..data/a"));
        let meta = fs::metadata(t.0.join("b.txt")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o440);
        let data = fs::metadata(t.0.join(DATA_LINK)).unwrap();
        assert_eq!(data.mode() & 0o777, DATA_DIR_MODE);
        let names = listing(&t.0);
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("..1")), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with(".keyhole-tmp")), "{names:?}");
    }

    #[test]
    fn a_second_run_replaces_the_first() {
        let t = TempDir::new("rerun");
        write_atomic(&t.0, &files(&[("a", "1"), ("gone", "x")]), 0o400).unwrap();
        write_atomic(&t.0, &files(&[("a", "2")]), 0o400).unwrap();
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "2");
        let names = listing(&t.0);
        assert_eq!(names.len(), 3, "old data dir and stale link gone: {names:?}");
    }

    #[test]
    fn leftovers_of_a_killed_run_are_cleared() {
        let t = TempDir::new("killed");
        fs::create_dir(t.0.join(".keyhole-tmp-4242")).unwrap();
        fs::write(t.0.join(".keyhole-tmp-4242/a"), "half").unwrap();
        fs::create_dir(t.0.join("..1_000000001")).unwrap();
        write_atomic(&t.0, &files(&[("a", "1")]), 0o400).unwrap();
        let names = listing(&t.0);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "1");
    }

    #[test]
    fn a_failure_leaves_nothing_behind() {
        let t = TempDir::new("fail");
        // A file keyhole did not write sits where the second link goes.
        fs::write(t.0.join("b"), "theirs").unwrap();
        let err = write_atomic(&t.0, &files(&[("a", "1"), ("b", "2"), ("c", "3")]), 0o400).unwrap_err();
        assert_eq!(err.name.as_deref(), Some("b"));
        assert_eq!(listing(&t.0), vec!["b"]);
        assert_eq!(fs::read_to_string(t.0.join("b")).unwrap(), "theirs");
    }

    #[test]
    fn a_failed_rerun_keeps_the_previous_files() {
        let t = TempDir::new("failrerun");
        write_atomic(&t.0, &files(&[("a", "1")]), 0o400).unwrap();
        let before = listing(&t.0);
        fs::write(t.0.join("z"), "theirs").unwrap();
        write_atomic(&t.0, &files(&[("a", "2"), ("z", "3")]), 0o400).unwrap_err();
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "1");
        let mut after = listing(&t.0);
        after.retain(|n| n != "z");
        assert_eq!(after, before);
    }

    #[test]
    fn names_that_escape_the_dir_are_refused_before_writing() {
        let t = TempDir::new("names");
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(write_atomic(&t.0, &files(&[("ok", "1"), (bad, "2")]), 0o400).is_err(), "{bad}");
        }
        assert!(listing(&t.0).is_empty());
    }

    #[test]
    fn templates_see_the_values_and_fail_on_undefined_ones() {
        let mut values = Values::new();
        values.insert("user".into(), SecretString::from("app".to_owned()));
        values.insert("pw".into(), SecretString::from("s3cr3t-value".to_owned()));
        let t = |name: &str, source: &str| PlanTemplate { name: name.into(), source: source.into() };
        let out = render(&[t("dsn", "postgres://{{ secrets[\"user\"] }}:{{ secrets.pw }}@db/app")], &values).unwrap();
        assert_eq!(out[0].1.expose_secret(), "postgres://app:s3cr3t-value@db/app");
        let err = render(&[t("bad", "line1\n{{ secrets[\"nope\"] }}")], &values).unwrap_err();
        assert_eq!(err.name, "bad");
        assert!(err.reason.contains("undefined") && err.reason.contains("line 2"), "{}", err.reason);
        // An error about a value does not quote it.
        let err = render(&[t("int", "{{ secrets.pw | int + 1 }}")], &values);
        if let Err(e) = err {
            assert!(!e.reason.contains("s3cr3t"), "{}", e.reason);
        }
    }
}
