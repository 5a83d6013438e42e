//! The poll loop: while this instance holds the lease, poll the workloads that
//! are due, look each distinct reference up once, and record or roll.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use keyhole_contract::Stores;
use keyhole_contract::annotations::{self, OBSERVED_VERSIONS, VERSIONS};
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::backend::{Backends, FailureKind, Found, LookupError};
use crate::health::{Health, Poll};
use crate::lease::{Leadership, stopped};
use crate::metrics::RotationMetrics;
use crate::refs::{Interest, Watched, interest};
use crate::schedule::{RolloutBudget, is_due, joins, next_wake, targets};
use crate::state::{self, Decision, Versions, decide};
use crate::workload::{self, Candidate, Warned, Workload};

/// The shortest pause between two polls, so a burst of new workloads or a
/// failing backend cannot make the loop spin.
const FLOOR: Duration = Duration::from_secs(1);
/// New workloads arriving together are polled together.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What a workload's last Warning said, so it is said once per change.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trouble {
    /// These references could not be looked up, each for this kind of reason.
    Lookup(Vec<(String, FailureKind)>),
    Patch,
    Deferred,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// The global poll interval (and the rollout budget's window).
    pub interval: Duration,
    /// Rollouts started per interval at most.
    pub max_rollouts: usize,
    /// Watch one namespace only; `None`: the whole cluster.
    pub namespace: Option<String>,
}

/// What one poll did (for logs, tests and the benchmark).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    pub watched: usize,
    pub due: usize,
    /// Distinct (store, reference) pairs looked up.
    pub lookups: usize,
    pub recorded: usize,
    pub rolled: usize,
    pub deferred: usize,
    pub failed: usize,
}

pub struct Controller {
    client: kube::Client,
    stores: Stores,
    settings: Settings,
    backends: Backends,
    leader: Leadership,
    metrics: Arc<RotationMetrics>,
    health: Arc<Health>,
    recorder: Recorder,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    /// uid -> when it was last polled, and its interval.
    last: HashMap<String, (Instant, Duration)>,
    /// uid -> since when a rollout waits for the budget.
    pending: HashMap<String, Instant>,
    /// uid -> (resourceVersion before our write, what we wrote): the cache may
    /// lag behind our own patch for a moment, and must not make us roll twice.
    written: HashMap<String, (Option<String>, Versions)>,
    /// Workloads already told about (unreadable, nothing to watch), by uid and resourceVersion.
    told: HashSet<(String, Option<String>)>,
    /// Opted-in workloads not rotated, and why: a Warning event each at the next poll.
    refused: Vec<(Candidate, String)>,
    /// The look-up, patch and budget Warnings last given.
    warned: Warned<Trouble>,
    budget: RolloutBudget,
}

/// Marks the poll loop ended in [`Health`] if it goes (returns, panics, or is
/// dropped) before a shutdown was asked for.
struct PollLoop {
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
}

impl Drop for PollLoop {
    fn drop(&mut self) {
        if !*self.shutdown.borrow() {
            self.health.poll(Poll::Ended);
        }
    }
}

/// Starts a reflector for one workload type; new opted-in workloads without an
/// observation wake the poll loop.
fn reflect<K: Workload>(
    client: &kube::Client,
    namespace: Option<&str>,
    wake: Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>) {
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let stream =
        watcher(api, watcher::Config::default()).modify(K::strip).default_backoff().reflect(writer).applied_objects();
    let task = tokio::spawn(stream.for_each(move |r| {
        match r {
            Ok(obj) => {
                let new = obj.meta().annotations.as_ref().is_none_or(|a| !a.contains_key(OBSERVED_VERSIONS));
                if new && obj.template_annotations().is_some_and(annotations::opted_in) {
                    wake.notify_one();
                }
            }
            Err(e) => warn!(kind = %K::KIND, error = %e, "watch failed; retrying"),
        }
        futures::future::ready(())
    }));
    (reader, task)
}

impl Controller {
    /// Starts the watches; returns once their caches hold the cluster's workloads
    /// (each kind's first list is told to `health`: readiness waits for all).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: kube::Client,
        stores: Stores,
        settings: Settings,
        backends: Backends,
        leader: Leadership,
        metrics: Arc<RotationMetrics>,
        health: Arc<Health>,
        recorder: Recorder,
    ) -> (Controller, Arc<Notify>, Vec<tokio::task::JoinHandle<()>>) {
        let wake = Arc::new(Notify::new());
        let ns = settings.namespace.as_deref();
        let (deployments, t1) = reflect::<Deployment>(&client, ns, wake.clone());
        let (statefulsets, t2) = reflect::<StatefulSet>(&client, ns, wake.clone());
        let (daemonsets, t3) = reflect::<DaemonSet>(&client, ns, wake.clone());
        // Side by side, so readiness names the kinds still unlisted.
        futures::join!(
            async {
                let _ = deployments.wait_until_ready().await;
                health.listed(Deployment::KIND);
            },
            async {
                let _ = statefulsets.wait_until_ready().await;
                health.listed(StatefulSet::KIND);
            },
            async {
                let _ = daemonsets.wait_until_ready().await;
                health.listed(DaemonSet::KIND);
            },
        );
        let budget = RolloutBudget::new(settings.max_rollouts, settings.interval);
        let controller = Controller {
            client,
            stores,
            settings,
            backends,
            leader,
            metrics,
            health,
            recorder,
            deployments,
            statefulsets,
            daemonsets,
            last: HashMap::new(),
            pending: HashMap::new(),
            written: HashMap::new(),
            told: HashSet::new(),
            refused: Vec::new(),
            warned: Warned::default(),
            budget,
        };
        (controller, wake, vec![t1, t2, t3])
    }

    /// Polls while leading, until `shutdown` turns true; then revokes its Vault tokens.
    pub async fn run(mut self, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        let _alive = PollLoop { health: self.health.clone(), shutdown: shutdown.clone() };
        self.poll_until(wake, &mut shutdown).await;
        self.backends.close().await;
    }

    async fn poll_until(&mut self, wake: Arc<Notify>, shutdown: &mut watch::Receiver<bool>) {
        loop {
            if !self.leader.holds() {
                self.metrics.leader.set(0);
                self.health.poll(Poll::Waiting);
                let mut leader = self.leader.clone();
                tokio::select! {
                    () = leader.acquired() => {}
                    () = stopped(shutdown) => return,
                }
            }
            self.metrics.leader.set(1);
            self.health.step();
            let report = self.poll().await;
            if report.due > 0 {
                info!(
                    watched = report.watched,
                    due = report.due,
                    lookups = report.lookups,
                    recorded = report.recorded,
                    rolled = report.rolled,
                    deferred = report.deferred,
                    failed = report.failed,
                    "polled"
                );
            }
            let at = self.next_wake(Instant::now());
            self.health.poll(Poll::Sleeping(at + DEBOUNCE));
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = stopped(shutdown) => return,
            }
        }
    }

    fn candidates(&mut self) -> Vec<(Candidate, Watched)> {
        let all = self
            .deployments
            .state()
            .iter()
            .filter_map(|d| Candidate::of(d.as_ref()))
            .chain(self.statefulsets.state().iter().filter_map(|s| Candidate::of(s.as_ref())))
            .chain(self.daemonsets.state().iter().filter_map(|d| Candidate::of(d.as_ref())))
            .collect::<Vec<_>>();
        let mut out = Vec::new();
        for c in all {
            let first_time = || (c.uid.clone(), c.resource_version.clone());
            match interest(&c.template, &c.namespace, &self.stores) {
                Interest::Watch(w) => out.push((c, w)),
                Interest::NotOptedIn => {}
                Interest::OptedOut => {
                    if self.told.insert(first_time()) {
                        debug!(workload = %c.key(), "opted out of rotation");
                    }
                }
                Interest::NothingToWatch(fixed) => {
                    if self.told.insert(first_time()) {
                        let why: Vec<String> = fixed.iter().map(|f| format!("{} is {}", f.annotation, f.why)).collect();
                        info!(workload = %c.key(), reason = %why.join("; "), "nothing to rotate");
                    }
                }
                Interest::Unreadable(e) => {
                    if self.told.insert(first_time()) {
                        warn!(workload = %c.key(), reason = %e, "annotations do not parse; not rotated");
                        self.refused.push((c, format!("not rotated: the annotations do not parse: {e}")));
                    }
                }
                Interest::Denied(e) => {
                    if self.told.insert(first_time()) {
                        warn!(workload = %c.key(), reason = %e, "outside what the store grants its namespace; nothing looked up, not rotated");
                        self.refused.push((c, format!("not rotated, nothing looked up: {e}")));
                    }
                }
            }
        }
        let present: HashSet<&str> = out.iter().map(|(c, _)| c.uid.as_str()).collect();
        self.last.retain(|uid, _| present.contains(uid.as_str()));
        self.pending.retain(|uid, _| present.contains(uid.as_str()));
        self.written.retain(|uid, _| present.contains(uid.as_str()));
        self.warned.retain(|uid| present.contains(uid));
        if self.told.len() > 10_000 {
            self.told.clear();
        }
        out
    }

    /// What the workload last recorded, minding our own writes the cache has not caught up with.
    fn observed(&mut self, c: &Candidate) -> Option<Versions> {
        if let Some((before, wrote)) = self.written.get(&c.uid) {
            if *before == c.resource_version {
                return Some(wrote.clone());
            }
            self.written.remove(&c.uid);
        }
        state::decode(c.observed.as_deref())
    }

    /// One poll of every due workload.
    pub async fn poll(&mut self) -> PollReport {
        let started = Instant::now();
        let watched = self.candidates();
        // Said once per resourceVersion, where `kubectl describe` shows it.
        for (c, note) in std::mem::take(&mut self.refused) {
            workload::warning(&self.recorder, &c, workload::REASON_REFUSED, note).await;
        }
        self.metrics.workloads.set(watched.len() as i64);
        let mut report = PollReport { watched: watched.len(), ..Default::default() };
        let tick = self.settings.interval;
        let last = |c: &Candidate| self.last.get(&c.uid).map(|l| l.0);
        let anyone_due = watched.iter().any(|(c, w)| is_due(last(c), w.interval.unwrap_or(tick), started));
        // When a poll runs, workloads half-way through their interval join it.
        let due: Vec<&(Candidate, Watched)> = watched
            .iter()
            .filter(|(c, w)| {
                self.pending.contains_key(&c.uid) || (anyone_due && joins(last(c), w.interval.unwrap_or(tick), started))
            })
            .collect();
        report.due = due.len();
        if due.is_empty() {
            return report;
        }
        self.metrics.polls.inc();
        let wanted = targets(due.iter().flat_map(|(_, w)| w.refs.keys().map(|r| (w.store.as_str(), r.as_str()))));
        report.lookups = wanted.values().map(|s| s.len()).sum();
        let answers = self.backends.lookup_all(&wanted).await;
        self.health.step();

        let mut rolls = Vec::new();
        for (c, w) in due {
            self.last.insert(c.uid.clone(), (started, w.interval.unwrap_or(tick)));
            let mut current = Versions::new();
            let mut failures: Vec<(&String, LookupError)> = Vec::new();
            for r in w.refs.keys() {
                match answers.get(&w.store).and_then(|a| a.get(r)) {
                    Some(Ok(Found::Version(v))) => {
                        current.insert(r.clone(), v.clone());
                    }
                    Some(Ok(Found::Unversioned)) => {}
                    Some(Err(e)) => failures.push((r, e.clone())),
                    None => failures.push((r, LookupError::NotLookedUp(r.clone()))),
                }
            }
            if !failures.is_empty() {
                report.failed += 1;
                self.metrics.outcome("lookup_failed");
                let reasons: Vec<String> = failures.iter().map(|(_, e)| e.to_string()).collect();
                let reasons = reasons.join("; ");
                warn!(workload = %c.key(), store = %w.store, reason = %reasons, "version look-up failed; trying again next interval");
                let trouble = Trouble::Lookup(failures.iter().map(|(r, e)| ((*r).clone(), e.kind())).collect());
                let note = format!(
                    "not rotated until its versions can be looked up in store {:?}: {reasons}; trying again every poll",
                    w.store
                );
                self.warn_once(c, trouble, workload::REASON_LOOKUP_FAILED, note).await;
                continue;
            }
            let observed = self.observed(c);
            match decide(observed.as_ref(), &current) {
                Decision::UpToDate => {
                    self.metrics.outcome("up_to_date");
                    self.warned.clear(&c.uid);
                }
                Decision::Record => {
                    if !self.leader.holds() {
                        return report;
                    }
                    let patched = workload::patch(&self.client, c, &workload::record_patch(&current)).await;
                    self.health.step();
                    match patched {
                        Ok(_) => {
                            report.recorded += 1;
                            self.metrics.outcome("recorded");
                            self.warned.clear(&c.uid);
                            self.written.insert(c.uid.clone(), (c.resource_version.clone(), current.clone()));
                            info!(workload = %c.key(), versions = %state::encode(&current), "recorded the versions; nothing rolled");
                        }
                        Err(e) => {
                            report.failed += 1;
                            self.metrics.outcome("patch_failed");
                            warn!(workload = %c.key(), error = %e, "could not record the versions");
                            let note = format!(
                                "could not record the versions it depends on ({OBSERVED_VERSIONS}): {e}; trying again every poll"
                            );
                            self.warn_once(c, Trouble::Patch, workload::REASON_PATCH_FAILED, note).await;
                        }
                    }
                }
                Decision::Roll(moves) => rolls.push((c, w, current, moves)),
            }
        }

        // Oldest waiting first, then by name: a wave never starves anyone.
        rolls.sort_by(|a, b| {
            let since = |c: &Candidate| self.pending.get(&c.uid).copied().unwrap_or(started);
            since(a.0).cmp(&since(b.0)).then_with(|| a.0.key().cmp(&b.0.key()))
        });
        for (c, w, current, moves) in rolls {
            if !self.budget.try_take(Instant::now()) {
                report.deferred += 1;
                self.metrics.outcome("deferred");
                self.pending.entry(c.uid.clone()).or_insert(started);
                let (max, interval) = (self.settings.max_rollouts, self.settings.interval);
                let note = workload::deferred_note(&moves, &w.refs, max, interval);
                self.warn_once(c, Trouble::Deferred, workload::REASON_DEFERRED, note).await;
                continue;
            }
            if !self.leader.holds() {
                return report;
            }
            let digest = state::digest(&current, None);
            let patched = workload::patch(&self.client, c, &workload::roll_patch(&current, &digest)).await;
            self.health.step();
            match patched {
                Ok(_) => {
                    report.rolled += 1;
                    self.metrics.outcome("rolled");
                    self.pending.remove(&c.uid);
                    self.warned.clear(&c.uid);
                    self.written.insert(c.uid.clone(), (c.resource_version.clone(), current.clone()));
                    let note = workload::rotated_note(&moves, &w.refs, &digest);
                    info!(workload = %c.key(), versions = %state::encode(&current), change = %note, "rolled out");
                    workload::event(&self.recorder, c, workload::REASON_ROTATED, note).await;
                }
                Err(e) => {
                    report.failed += 1;
                    self.metrics.outcome("patch_failed");
                    // Still pending: the next poll finds the same change and tries again.
                    warn!(workload = %c.key(), error = %e, "could not patch the pod template");
                    let note =
                        format!("could not roll it out ({VERSIONS} on the pod template): {e}; trying again every poll");
                    self.warn_once(c, Trouble::Patch, workload::REASON_PATCH_FAILED, note).await;
                }
            }
        }
        if report.deferred > 0 {
            info!(
                deferred = report.deferred,
                max = self.settings.max_rollouts,
                "rollout budget spent; the rest follow"
            );
        }
        self.metrics.poll_duration.observe(started.elapsed().as_secs_f64());
        report
    }

    /// A Warning on the workload, unless its last one said the same (once per change of state).
    async fn warn_once(&mut self, c: &Candidate, trouble: Trouble, reason: &str, note: String) {
        if self.warned.first(&c.uid, trouble) {
            workload::warning(&self.recorder, c, reason, note).await;
            self.health.step();
        }
    }

    /// When to poll next.
    pub fn next_wake(&mut self, now: Instant) -> Instant {
        let wake = next_wake(self.last.values().map(|&(l, i)| (Some(l), i)), now, self.settings.interval, FLOOR);
        if self.pending.is_empty() { wake } else { wake.min(self.budget.next_free(now).max(now + FLOOR)) }
    }
}

/// The versions map of a workload right now, for the manual trigger.
pub async fn current_versions(backends: &Backends, w: &Watched) -> Result<Versions, LookupError> {
    let wanted: BTreeMap<String, _> = [(w.store.clone(), w.refs.keys().cloned().collect())].into();
    let answers = backends.lookup_all(&wanted).await;
    let mut out = Versions::new();
    for r in w.refs.keys() {
        match answers.get(&w.store).and_then(|a| a.get(r)) {
            Some(Ok(Found::Version(v))) => {
                out.insert(r.clone(), v.clone());
            }
            Some(Ok(Found::Unversioned)) => {}
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(LookupError::NotLookedUp(r.clone())),
        }
    }
    Ok(out)
}
