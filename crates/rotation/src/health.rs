//! What the controller's probes say. Ready once every watched kind has had its
//! first list and the lease loop has lately had an answer from the API server
//! (holding the lease or standing by: either can take traffic, which here is
//! only a scrape, and a rollout of the controller waits for it). Live while the
//! lease loop and the poll loop make progress: only a restart helps a loop
//! that is stuck or gone.
//!
//! The loops report as they go; [`ready`] and [`live`] are pure decisions over
//! what they reported and an injected `now`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lease::LeaseConfig;
use crate::workload::Kind;

/// The kinds the controller watches, in the order [`State::listed`] keeps them.
pub const WATCHED: [Kind; 3] = [Kind::Deployment, Kind::StatefulSet, Kind::DaemonSet];

/// Longest a poll step may take before the loop counts as stuck: a store's
/// look-ups (its login's 10 s, then [`crate::backend::ROUND_DEADLINE`]) or one
/// write to the API server, with room to spare.
pub const POLL_STEP: Duration = Duration::from_secs(120);
/// How long past its wake-up time a sleeping poll loop may stay asleep.
pub const POLL_LATE: Duration = Duration::from_secs(60);

/// The thresholds of [`ready`] and [`live`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Ready only if a lease round got an answer within this.
    pub lease_fresh: Duration,
    /// Live only if a lease round ended, whatever its result, within this.
    pub lease_stall: Duration,
    pub poll_step: Duration,
    pub poll_late: Duration,
}

impl Limits {
    /// A lease round runs every [`LeaseConfig::retry_period`]: ready while one
    /// answered within two of them (5 s at least, so a slow API server does not
    /// make a short lease flap); stuck after four lease durations (a minute at
    /// least) without a round ending.
    pub fn of(lease: &LeaseConfig) -> Limits {
        Limits {
            lease_fresh: (lease.retry_period() * 2).max(Duration::from_secs(5)),
            lease_stall: (lease.duration * 4).max(Duration::from_secs(60)),
            poll_step: POLL_STEP,
            poll_late: POLL_LATE,
        }
    }
}

/// Where the poll loop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Not polling yet (listing) or not leading: the lease loop speaks for it.
    Waiting,
    /// Polling; its last step ended at this instant.
    Working(Instant),
    /// Asleep until this instant (or until a new workload wakes it).
    Sleeping(Instant),
    /// Ended, and not for a shutdown.
    Ended,
}

/// What the loops reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    /// When the controller started.
    pub started: Instant,
    /// Per kind of [`WATCHED`]: has its watch had its first list?
    pub listed: [bool; 3],
    /// The last lease round that got an answer (held, taken or standing by).
    pub lease_answered: Option<Instant>,
    /// The last lease round that ended, failed ones too.
    pub lease_ended: Option<Instant>,
    pub poll: Poll,
}

/// Ready: every kind listed, and the lease loop answered lately.
pub fn ready(s: &State, now: Instant, limits: &Limits) -> Result<(), &'static str> {
    if let Some(i) = s.listed.iter().position(|listed| !listed) {
        return Err(match WATCHED[i] {
            Kind::Deployment => "the Deployments have not been listed yet",
            Kind::StatefulSet => "the StatefulSets have not been listed yet",
            _ => "the DaemonSets have not been listed yet",
        });
    }
    match s.lease_answered {
        None => Err("the lease has not been read yet"),
        Some(t) if now.saturating_duration_since(t) > limits.lease_fresh => {
            Err("the lease loop has had no answer from the API server lately")
        }
        Some(_) => Ok(()),
    }
}

/// Live: the lease loop ends rounds, and the poll loop is neither stuck in a
/// step, nor asleep past its time, nor gone.
pub fn live(s: &State, now: Instant, limits: &Limits) -> Result<(), &'static str> {
    let lease = s.lease_ended.unwrap_or(s.started);
    if now.saturating_duration_since(lease) > limits.lease_stall {
        return Err("the lease loop stopped making progress");
    }
    match s.poll {
        Poll::Working(since) if now.saturating_duration_since(since) > limits.poll_step => {
            Err("the poll loop is stuck in one step")
        }
        Poll::Sleeping(until) if now.saturating_duration_since(until) > limits.poll_late => {
            Err("the poll loop did not wake up")
        }
        Poll::Ended => Err("the poll loop ended"),
        _ => Ok(()),
    }
}

/// The loops' reports, shared with the admin listener.
#[derive(Debug)]
pub struct Health {
    limits: Limits,
    state: Mutex<State>,
}

impl Health {
    pub fn new(limits: Limits) -> Health {
        let state = State {
            started: Instant::now(),
            listed: [false; 3],
            lease_answered: None,
            lease_ended: None,
            poll: Poll::Waiting,
        };
        Health { limits, state: Mutex::new(state) }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("the health lock"));
    }

    fn snapshot(&self) -> State {
        *self.state.lock().expect("the health lock")
    }

    pub fn listed(&self, kind: Kind) {
        if let Some(i) = WATCHED.iter().position(|k| *k == kind) {
            self.update(|s| s.listed[i] = true);
        }
    }

    /// A lease round ended; `answered`: the API server answered it.
    pub fn lease_round(&self, answered: bool) {
        let now = Instant::now();
        self.update(|s| {
            s.lease_ended = Some(now);
            if answered {
                s.lease_answered = Some(now);
            }
        });
    }

    pub fn poll(&self, poll: Poll) {
        self.update(|s| s.poll = poll);
    }

    /// A poll step ended: the loop is working.
    pub fn step(&self) {
        self.poll(Poll::Working(Instant::now()));
    }

    pub fn ready(&self) -> Result<(), &'static str> {
        ready(&self.snapshot(), Instant::now(), &self.limits)
    }

    pub fn live(&self) -> Result<(), &'static str> {
        live(&self.snapshot(), Instant::now(), &self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> Limits {
        let lease = LeaseConfig { name: "l".into(), namespace: "n".into(), identity: "a".into(), duration: 15 * S };
        Limits::of(&lease)
    }

    fn synced(t0: Instant) -> State {
        State { started: t0, listed: [true; 3], lease_answered: Some(t0), lease_ended: Some(t0), poll: Poll::Waiting }
    }

    #[test]
    fn limits_follow_the_lease() {
        let l = limits();
        assert_eq!((l.lease_fresh, l.lease_stall), (6 * S, 60 * S), "two renew periods of 3 s; four durations");
        let short = LeaseConfig { name: "l".into(), namespace: "n".into(), identity: "a".into(), duration: 4 * S };
        assert_eq!(Limits::of(&short).lease_fresh, 5 * S, "never below 5 s");
    }

    #[test]
    fn ready_only_once_every_kind_is_listed_and_the_lease_answered() {
        let t0 = Instant::now();
        let mut s = State { lease_answered: None, listed: [false; 3], ..synced(t0) };
        assert_eq!(ready(&s, t0, &limits()), Err("the Deployments have not been listed yet"));
        s.listed = [true, true, false];
        assert_eq!(ready(&s, t0, &limits()), Err("the DaemonSets have not been listed yet"));
        s.listed = [true; 3];
        assert_eq!(ready(&s, t0, &limits()), Err("the lease has not been read yet"));
        s.lease_answered = Some(t0);
        assert_eq!(ready(&s, t0 + 6 * S, &limits()), Ok(()));
    }

    #[test]
    fn not_ready_when_the_lease_loop_had_no_answer_for_two_renew_periods() {
        let t0 = Instant::now();
        let mut s = synced(t0);
        // Rounds keep ending, but fail (the API server is away).
        s.lease_ended = Some(t0 + 10 * S);
        assert_eq!(
            ready(&s, t0 + 7 * S, &limits()),
            Err("the lease loop has had no answer from the API server lately")
        );
        assert_eq!(live(&s, t0 + 7 * S, &limits()), Ok(()), "failing rounds are progress");
        s.lease_answered = Some(t0 + 10 * S);
        assert_eq!(ready(&s, t0 + 11 * S, &limits()), Ok(()));
    }

    #[test]
    fn a_lease_loop_that_ends_no_round_is_not_live() {
        let t0 = Instant::now();
        let s = synced(t0);
        assert_eq!(live(&s, t0 + 60 * S, &limits()), Ok(()));
        assert_eq!(live(&s, t0 + 61 * S, &limits()), Err("the lease loop stopped making progress"));
        // Before its first round, counted from the start.
        let fresh = State { lease_ended: None, lease_answered: None, ..s };
        assert_eq!(live(&fresh, t0 + 30 * S, &limits()), Ok(()));
        assert_eq!(live(&fresh, t0 + 61 * S, &limits()), Err("the lease loop stopped making progress"));
    }

    #[test]
    fn the_poll_loop_is_live_while_it_steps_sleeps_on_time_or_waits() {
        let t0 = Instant::now();
        let at = |poll| State { poll, lease_ended: Some(t0 + 300 * S), ..synced(t0) };
        let now = t0 + 300 * S;
        assert_eq!(live(&at(Poll::Working(now - 120 * S)), now, &limits()), Ok(()));
        assert_eq!(live(&at(Poll::Working(now - 121 * S)), now, &limits()), Err("the poll loop is stuck in one step"));
        assert_eq!(live(&at(Poll::Sleeping(now + 3600 * S)), now, &limits()), Ok(()), "a long interval");
        assert_eq!(live(&at(Poll::Sleeping(now - 60 * S)), now, &limits()), Ok(()));
        assert_eq!(live(&at(Poll::Sleeping(now - 61 * S)), now, &limits()), Err("the poll loop did not wake up"));
        assert_eq!(live(&at(Poll::Waiting), now, &limits()), Ok(()), "a standby waits as long as it likes");
        assert_eq!(live(&at(Poll::Ended), now, &limits()), Err("the poll loop ended"));
    }

    #[test]
    fn reports_reach_the_decisions() {
        let h = Health::new(limits());
        assert!(h.ready().is_err());
        for k in WATCHED {
            h.listed(k);
        }
        h.lease_round(false);
        assert_eq!(h.ready(), Err("the lease has not been read yet"));
        h.lease_round(true);
        assert_eq!(h.ready(), Ok(()));
        h.step();
        assert_eq!(h.live(), Ok(()));
        h.poll(Poll::Ended);
        assert_eq!(h.live(), Err("the poll loop ended"));
    }
}
