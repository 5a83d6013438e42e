//! Retries with exponential backoff and jitter inside one total deadline.
//!
//! Throttling, 5xx and connection errors are retried until the deadline; an
//! authentication failure once (a token minted a moment ago may not be valid yet
//! where the backend's clock is behind); anything else not at all.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// How a failed attempt is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Throttling, 5xx, connection refused or reset, timeouts.
    Transient,
    /// The backend refused the credentials.
    Auth,
    /// The parameter, version or secret does not exist.
    NotFound,
    /// Refused with these credentials (HTTP 403, AccessDenied): a policy that
    /// does not cover this path, or (on Vault, which answers both alike) a token
    /// no longer valid. Not retried; a caller that must know asks the backend.
    Denied,
    /// Retrying cannot help: denied, malformed.
    Permanent,
    /// No answer before the deadline. Not retried: no time is left.
    Timeout,
}

/// A failed attempt, already reduced to a reason that is safe to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub class: Class,
    pub reason: String,
}

impl Failure {
    pub fn new(class: Class, reason: impl Into<String>) -> Self {
        Failure { class, reason: reason.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The backoff: 50 ms doubling up to 2 s, each delay stretched by up to itself at
/// random, so many pods started at once do not retry in step.
fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// Runs `op` until it succeeds, fails for good, or the next try would pass the
/// deadline (backon does the backoff and the sleeping). The error says how many
/// attempts were made when more than one was.
pub async fn retry<T, F, Fut>(deadline: Instant, what: &str, mut op: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    use backon::Retryable;
    // Atomics rather than cells: the future must stay Send for spawned tasks.
    let attempts = AtomicU32::new(0);
    let auth_retried = AtomicBool::new(false);
    let out_of_time = AtomicBool::new(false);
    let attempt = || {
        attempts.fetch_add(1, Relaxed);
        let call = op();
        async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(r) => r,
                Err(_) => Err(Failure::new(Class::Timeout, "the deadline passed during the request")),
            }
        }
    };
    let result = attempt
        .retry(backoff())
        .sleep(tokio::time::sleep)
        .when(|f: &Failure| match f.class {
            Class::Transient => true,
            Class::Auth => !auth_retried.swap(true, Relaxed),
            Class::NotFound | Class::Denied | Class::Permanent | Class::Timeout => false,
        })
        .adjust(|_, delay| {
            let delay = delay?;
            if Instant::now() + delay >= deadline {
                out_of_time.store(true, Relaxed);
                return None;
            }
            Some(delay)
        })
        .notify(|f: &Failure, delay: Duration| {
            tracing::warn!(
                operation = what,
                attempt = attempts.load(Relaxed),
                delay_ms = delay.as_millis() as u64,
                reason = %f.reason,
                "retrying"
            );
        })
        .await;
    result.map_err(|failure| {
        let n = attempts.load(Relaxed);
        let reason = if n > 1 {
            format!("{} (after {n} attempts)", failure.reason)
        } else if out_of_time.load(Relaxed) {
            format!("{} (no time left to retry before the deadline)", failure.reason)
        } else {
            failure.reason
        };
        Failure { class: failure.class, reason }
    })
}

/// Reduces a transport error (connection refused, reset, timed out, DNS) to a
/// short reason by walking its sources for typed I/O errors.
pub fn transport_reason(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut timed_out = false;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return Some(
                match io.kind() {
                    ConnectionRefused => "connection refused",
                    ConnectionReset => "connection reset",
                    ConnectionAborted => "connection aborted",
                    TimedOut => "connection timed out",
                    UnexpectedEof => "connection closed early",
                    _ => return Some(format!("I/O error: {io}")),
                }
                .to_owned(),
            );
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            timed_out = true;
        }
        cur = e.source();
    }
    timed_out.then(|| "timed out".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    async fn count(class: Class, succeed_after: u32, deadline: Duration) -> (Result<(), Failure>, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let r = retry(Instant::now() + deadline, "test", move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                if n > succeed_after { Ok(()) } else { Err(Failure::new(class, "nope")) }
            }
        })
        .await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let (r, calls) = count(Class::Transient, 3, Duration::from_secs(60)).await;
        assert!(r.is_ok());
        assert_eq!(calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_failures_are_retried_once_and_permanent_ones_never() {
        let (r, calls) = count(Class::Auth, 10, Duration::from_secs(60)).await;
        assert_eq!(calls, 2);
        assert_eq!(r.unwrap_err().reason, "nope (after 2 attempts)");
        let (r, calls) = count(Class::Permanent, 10, Duration::from_secs(60)).await;
        assert_eq!(calls, 1);
        assert_eq!(r.unwrap_err().reason, "nope");
        let (_, calls) = count(Class::Denied, 10, Duration::from_secs(60)).await;
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_retries() {
        let start = Instant::now();
        let (r, calls) = count(Class::Transient, u32::MAX, Duration::from_secs(5)).await;
        assert!(r.unwrap_err().reason.contains("attempts"));
        assert!(calls > 3, "{calls}");
        assert!(start.elapsed() <= Duration::from_secs(5));
    }

    #[test]
    fn connection_refused_is_named() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(transport_reason(&io).as_deref(), Some("connection refused"));
    }
}
