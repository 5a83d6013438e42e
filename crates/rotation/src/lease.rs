//! One active controller per cluster: a coordination.k8s.io/v1 Lease, taken and
//! renewed with optimistic concurrency (every write carries the resourceVersion
//! it read, so two candidates cannot both win). Standbys only try to take it.
//!
//! Expiry is judged on the local clock, as client-go does: a standby counts the
//! lease duration from the moment it last saw the record change, never from the
//! holder's timestamps, so clock skew between nodes cannot cut a lease short.
//! The holder acts only until `renew deadline` (two thirds of the duration) after
//! its last successful renewal, so it stops before any standby may take over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::health::Health;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This instance's name in `holderIdentity` (the pod name in a cluster).
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    /// How long the holder may act after a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
    /// How often the holder renews and a standby looks.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(200))
    }
}

/// Whether this instance holds the lease right now. Cheap; checked before every write.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<Option<Instant>>);

impl Leadership {
    /// A leadership that always holds (the `roll` command, tests).
    pub fn always() -> Leadership {
        // A dropped sender leaves the last value readable.
        let (_, rx) = watch::channel(Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400)));
        Leadership(rx)
    }

    pub fn holds(&self) -> bool {
        matches!(*self.0.borrow(), Some(until) if Instant::now() < until)
    }

    /// Waits until this instance holds the lease.
    pub async fn acquired(&mut self) {
        while !self.holds() {
            let until = *self.0.borrow_and_update();
            match until {
                // Held but about to lapse: wake when it does, or on a renewal.
                Some(t) if Instant::now() < t => {
                    let _ = tokio::time::timeout(t - Instant::now(), self.0.changed()).await;
                }
                _ => {
                    if self.0.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// What the lease record looked like when this instance last saw it change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    holder: Option<String>,
    renew: Option<Timestamp>,
    at: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Renew,
    TakeOver,
    Wait,
}

/// The one decision of every round, pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, seen: &mut Option<Seen>, now: Instant, default: Duration) -> Action {
    let Some(spec) = spec else { return Action::Create };
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == me => Action::Renew,
        None => Action::TakeOver,
        Some(h) => {
            let renew = spec.renew_time.as_ref().map(|t| t.0);
            let changed = seen.as_ref().is_none_or(|s| s.holder.as_deref() != Some(h) || s.renew != renew);
            if changed {
                *seen = Some(Seen { holder: Some(h.to_owned()), renew, at: now });
                return Action::Wait;
            }
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|&s| s > 0)
                .map_or(default, Duration::from_secs);
            let at = seen.as_ref().map_or(now, |s| s.at);
            if now >= at + duration { Action::TakeOver } else { Action::Wait }
        }
    }
}

fn spec_for(me: &str, duration: Duration, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)),
        acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// One round: read, decide, write. `Ok(true)`: this instance holds the lease.
async fn round(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Option<Seen>) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let action =
        decide(current.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, seen, Instant::now(), cfg.duration);
    let pp = PostParams::default();
    let written = match (action, current) {
        (Action::Wait, _) => return Ok(false),
        (Action::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() },
                spec: Some(spec_for(&cfg.identity, cfg.duration, 0, None)),
            };
            api.create(&pp, &lease).await
        }
        (Action::Renew, Some(mut lease)) => {
            let old = lease.spec.take().unwrap_or_default();
            let transitions = old.lease_transitions.unwrap_or(0);
            lease.spec = Some(spec_for(&cfg.identity, cfg.duration, transitions, old.acquire_time));
            api.replace(&cfg.name, &pp, &lease).await
        }
        (Action::TakeOver, Some(mut lease)) => {
            let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0) + 1;
            lease.spec = Some(spec_for(&cfg.identity, cfg.duration, transitions, None));
            api.replace(&cfg.name, &pp, &lease).await
        }
        (_, None) => return Ok(false),
    };
    match written {
        Ok(_) => Ok(true),
        // Someone else wrote first: they hold it (or will); look again next round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up at shutdown so a standby takes over at once.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    api.replace(&cfg.name, &PostParams::default(), &lease).await.map(|_| ())
}

/// Resolves once `shutdown` turns true (or its sender is gone). Drops the
/// channel's read guard before returning, so callers stay `Send`.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

/// Runs the election until `shutdown` turns true; then releases the lease if held.
/// Returns the [`Leadership`] the poll loop checks. Every round's end is told
/// to `health` (the probes).
pub fn spawn(
    api: Api<Lease>,
    cfg: LeaseConfig,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None::<Instant>);
    let task = tokio::spawn(async move {
        let mut seen = None;
        let mut leading = false;
        loop {
            let started = Instant::now();
            let result = round(&api, &cfg, &mut seen).await;
            health.lease_round(result.is_ok());
            match result {
                Ok(true) => {
                    tx.send_replace(Some(started + cfg.renew_deadline()));
                    if !leading {
                        info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "acquired the lease: leading");
                        leading = true;
                    }
                }
                Ok(false) => {
                    tx.send_replace(None);
                    if leading {
                        warn!(lease = %cfg.name, "lost the lease: standing by");
                        leading = false;
                    } else if seen.is_some() {
                        tracing::debug!(holder = ?seen.as_ref().and_then(|s| s.holder.clone()), "standing by");
                    }
                }
                // A failed renewal keeps the last deadline: the holder acts until it lapses.
                Err(e) => warn!(lease = %cfg.name, error = %e, "lease round failed"),
            }
            if leading && !matches!(*tx.borrow(), Some(t) if Instant::now() < t) {
                warn!(lease = %cfg.name, "renew deadline passed: standing by");
                leading = false;
            }
            tokio::select! {
                () = tokio::time::sleep(cfg.retry_period()) => {}
                () = stopped(&mut shutdown) => {
                    tx.send_replace(None);
                    if leading && let Err(e) = release(&api, &cfg).await {
                        warn!(error = %e, "could not release the lease");
                    }
                    return;
                }
            }
        }
    });
    (Leadership(rx), task)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(holder: Option<&str>, renew_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renew_secs).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_is_created_and_ones_own_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, "a", &mut None, now, D), Action::Create);
        assert_eq!(decide(Some(&held_by(Some("a"), 100)), "a", &mut None, now, D), Action::Renew);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(decide(Some(&held_by(None, 100)), "b", &mut None, now, D), Action::TakeOver);
        assert_eq!(decide(Some(&held_by(Some(""), 100)), "b", &mut None, now, D), Action::TakeOver);
    }

    #[test]
    fn a_standby_waits_a_full_duration_of_silence_on_its_own_clock() {
        let t0 = Instant::now();
        let mut seen = None;
        let lease = held_by(Some("a"), 100);
        assert_eq!(decide(Some(&lease), "b", &mut seen, t0, D), Action::Wait);
        assert_eq!(decide(Some(&lease), "b", &mut seen, t0 + Duration::from_secs(14), D), Action::Wait);
        // The holder renews: the clock starts over.
        let renewed = held_by(Some("a"), 110);
        assert_eq!(decide(Some(&renewed), "b", &mut seen, t0 + Duration::from_secs(14), D), Action::Wait);
        assert_eq!(decide(Some(&renewed), "b", &mut seen, t0 + Duration::from_secs(28), D), Action::Wait);
        assert_eq!(decide(Some(&renewed), "b", &mut seen, t0 + Duration::from_secs(29), D), Action::TakeOver);
    }

    #[test]
    fn the_holder_acts_for_less_than_a_standby_waits() {
        let cfg = LeaseConfig { name: "l".into(), namespace: "n".into(), identity: "a".into(), duration: D };
        assert!(cfg.renew_deadline() + cfg.retry_period() < cfg.duration);
    }

    #[tokio::test]
    async fn leadership_lapses_with_its_deadline() {
        let (tx, rx) = watch::channel(Some(Instant::now() + Duration::from_millis(50)));
        let l = Leadership(rx);
        assert!(l.holds());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!l.holds(), "no renewal: it stops acting by itself");
        tx.send_replace(None);
        assert!(!l.holds());
        assert!(Leadership::always().holds());
    }
}
