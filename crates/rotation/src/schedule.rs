//! When to poll which workload, which look-ups one poll makes, and how many
//! rollouts may start: pure functions over times, testable without a cluster.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A workload is due when its interval has passed since its last poll, less a
/// tenth of the interval: workloads with the same interval then fall into the
/// same poll and share its look-ups instead of drifting apart.
pub fn is_due(last: Option<Instant>, interval: Duration, now: Instant) -> bool {
    match last {
        None => true,
        Some(last) => now + interval / 10 >= last + interval,
    }
}

/// Whether a workload joins a poll that runs anyway (someone else is due): once
/// half its interval has passed. Workloads first seen at different moments so
/// fall into step after one early poll, and share every look-up from then on.
pub fn joins(last: Option<Instant>, interval: Duration, now: Instant) -> bool {
    match last {
        None => true,
        Some(last) => now + interval / 2 >= last + interval,
    }
}

/// When the next poll should run: the earliest moment a workload falls due,
/// at least `floor` and at most `tick` from now.
pub fn next_wake(
    dues: impl IntoIterator<Item = (Option<Instant>, Duration)>,
    now: Instant,
    tick: Duration,
    floor: Duration,
) -> Instant {
    let earliest = dues
        .into_iter()
        .map(|(last, interval)| match last {
            None => now,
            Some(last) => last + interval - interval / 10,
        })
        .min()
        .unwrap_or(now + tick);
    earliest.clamp(now + floor, now + tick)
}

/// One look-up per distinct (store, reference) across all due workloads.
pub fn targets<'a>(wanted: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (store, reference) in wanted {
        out.entry(store.to_owned()).or_default().insert(reference.to_owned());
    }
    out
}

/// Splits names into chunks of at most `size` (SSM takes 50 values per filter).
pub fn chunks(names: &BTreeSet<String>, size: usize) -> Vec<Vec<String>> {
    let names: Vec<String> = names.iter().cloned().collect();
    names.chunks(size.max(1)).map(<[String]>::to_vec).collect()
}

/// At most `max` rollouts started in any `window`: a change to a widely
/// shared secret rolls the cluster in waves instead of all at once.
#[derive(Debug)]
pub struct RolloutBudget {
    max: usize,
    window: Duration,
    started: VecDeque<Instant>,
}

impl RolloutBudget {
    pub fn new(max: usize, window: Duration) -> Self {
        RolloutBudget { max: max.max(1), window, started: VecDeque::new() }
    }

    fn forget_old(&mut self, now: Instant) {
        while self.started.front().is_some_and(|&t| t + self.window <= now) {
            self.started.pop_front();
        }
    }

    /// Takes one rollout from the budget if there is one left.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        if self.started.len() < self.max {
            self.started.push_back(now);
            true
        } else {
            false
        }
    }

    /// When the next rollout may start (`now` if one may start now).
    pub fn next_free(&mut self, now: Instant) -> Instant {
        self.forget_old(now);
        if self.started.len() < self.max { now } else { self.started.front().map_or(now, |&t| t + self.window) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn due_after_the_interval_with_a_tenth_of_slack() {
        let t0 = Instant::now();
        let i = 60 * S;
        assert!(is_due(None, i, t0), "never polled: due at once");
        assert!(!is_due(Some(t0), i, t0 + 30 * S));
        assert!(!is_due(Some(t0), i, t0 + 53 * S));
        assert!(is_due(Some(t0), i, t0 + 54 * S), "within a tenth of the interval");
        assert!(is_due(Some(t0), i, t0 + 61 * S));
    }

    #[test]
    fn a_workload_half_way_through_its_interval_joins_a_poll() {
        let t0 = Instant::now();
        let i = 10 * S;
        assert!(!joins(Some(t0), i, t0 + 4 * S));
        assert!(joins(Some(t0), i, t0 + 5 * S));
        assert!(joins(None, i, t0));
    }

    #[test]
    fn next_wake_is_the_earliest_due_clamped_to_floor_and_tick() {
        let now = Instant::now();
        let tick = 60 * S;
        assert_eq!(next_wake([], now, tick, S), now + tick);
        assert_eq!(next_wake([(None, tick)], now, tick, S), now + S, "a new workload: soon, not in a busy loop");
        let last = now - 40 * S;
        // 30 s interval polled 40 s ago: overdue -> the floor.
        assert_eq!(next_wake([(Some(last), 30 * S)], now, tick, S), now + S);
        // A 5-minute refresh-interval does not push the wake past the tick.
        assert_eq!(next_wake([(Some(now), 300 * S)], now, tick, S), now + tick);
        // Two workloads: the earlier one decides (20 s interval less 2 s slack).
        let wake = next_wake([(Some(now), 20 * S), (Some(now), tick)], now, tick, S);
        assert_eq!(wake, now + 18 * S);
    }

    #[test]
    fn targets_are_deduplicated_per_store() {
        let wanted = [("aws", "/a"), ("aws", "/b"), ("aws", "/a"), ("vault", "secret/x"), ("vault", "secret/x")];
        let t = targets(wanted);
        assert_eq!(t["aws"].len(), 2);
        assert_eq!(t["vault"].len(), 1);
        // 1,000 workloads over 200 parameters: 200 look-ups, in 4 calls of 50.
        let many: Vec<(String, String)> = (0..1000).map(|i| ("aws".to_owned(), format!("/p/{}", i % 200))).collect();
        let t = targets(many.iter().map(|(s, r)| (s.as_str(), r.as_str())));
        assert_eq!(t["aws"].len(), 200);
        let c = chunks(&t["aws"], 50);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), [50, 50, 50, 50]);
    }

    #[test]
    fn the_budget_allows_max_per_window_and_says_when_the_next_frees() {
        let t0 = Instant::now();
        let mut b = RolloutBudget::new(2, 10 * S);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0 + S));
        assert!(!b.try_take(t0 + 2 * S), "a third within the window waits");
        assert_eq!(b.next_free(t0 + 2 * S), t0 + 10 * S);
        assert!(b.try_take(t0 + 10 * S), "the first one left the window");
        assert!(!b.try_take(t0 + 10 * S));
        assert_eq!(b.next_free(t0 + 11 * S), t0 + 11 * S);
    }
}
