//! A file re-read and compared by content: how keyhole's servers notice that
//! the kubelet updated a mounted ConfigMap or Secret. The kubelet swaps a
//! `..data` symlink atomically, which a watch on the file's path can miss;
//! comparing what a read returns cannot.

use std::path::PathBuf;

/// What one look at the file found.
#[derive(Debug)]
pub enum Change<'a> {
    Unchanged,
    /// The content differs from the last look's.
    Changed(&'a [u8]),
    /// The file cannot be read (said once, until it can be read again).
    Unreadable(std::io::Error),
}

pub struct WatchedFile {
    pub path: PathBuf,
    seen: Option<Vec<u8>>,
}

impl WatchedFile {
    /// `seen`: the content in use now (read at start).
    pub fn new(path: PathBuf, seen: Vec<u8>) -> WatchedFile {
        WatchedFile { path, seen: Some(seen) }
    }

    /// Reads the file; a content is reported changed once, an unreadable file once.
    pub fn look(&mut self) -> Change<'_> {
        match std::fs::read(&self.path) {
            Ok(bytes) if self.seen.as_ref() == Some(&bytes) => Change::Unchanged,
            Ok(bytes) => Change::Changed(self.seen.insert(bytes)),
            Err(_) if self.seen.is_none() => Change::Unchanged,
            Err(e) => {
                self.seen = None;
                Change::Unreadable(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_reported_once() {
        let dir = std::env::temp_dir().join(format!("keyhole-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "a").unwrap();
        let mut w = WatchedFile::new(path.clone(), b"a".to_vec());
        assert!(matches!(w.look(), Change::Unchanged));
        std::fs::write(&path, "b").unwrap();
        assert!(matches!(w.look(), Change::Changed(b"b")));
        assert!(matches!(w.look(), Change::Unchanged));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(w.look(), Change::Unreadable(_)));
        assert!(matches!(w.look(), Change::Unchanged), "an unreadable file is said once");
        std::fs::write(&path, "b").unwrap();
        assert!(matches!(w.look(), Change::Changed(b"b")), "readable again: its content is news");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
