//! The one leak scanner of the e2e suites: every secret value and token a test
//! makes or sees is remembered here, and everything keyhole prints is scanned
//! for all of them. A leak is reported by index and length, never by value.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A distinctive value, remembered for the scan.
pub fn secret(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let v = format!("val-{what}-{:x}-{}", nanos as u64, N.fetch_add(1, Ordering::Relaxed));
    remember(v.clone());
    v
}

/// Remembers a value made elsewhere (a token, a value read back).
pub fn remember(value: String) {
    if !value.is_empty() {
        SECRETS.lock().unwrap().push(value);
    }
}

/// Remembers several values at once.
pub fn remember_all(values: impl IntoIterator<Item = String>) {
    values.into_iter().for_each(remember);
}

/// Which remembered value (by index, never by value) appears in `printed`.
pub fn leaked(printed: &str) -> Option<(usize, usize)> {
    let secrets = SECRETS.lock().unwrap();
    secrets.iter().position(|s| printed.contains(s.as_str())).map(|i| (i, secrets[i].len()))
}

/// Fails if any remembered value appears in `printed`; `what` names the output.
pub fn scan(what: &str, printed: &str) -> Result<()> {
    if let Some((i, len)) = leaked(printed) {
        bail!("secret #{i} ({len} chars) appears in {what}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_catches_a_planted_value_and_passes_clean_output() {
        let v = secret("planted");
        assert!(scan("clean output", "nothing here").is_ok());
        let err = scan("the log", &format!("a line with {v} in it")).unwrap_err().to_string();
        assert!(err.contains("appears in the log") && !err.contains(&v), "{err}");
    }
}
