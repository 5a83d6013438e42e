//! Version look-ups, never values: SSM DescribeParameters (parameter metadata)
//! and Vault KV v2 `<mount>/metadata/<path>`. The controller logs in with its own
//! service account's projected token and the store's `rotationRole`, through the
//! backends crate's logins (the injector's too), and keeps the session until it
//! nears its end or the backend no longer takes it.
//!
//! Fair under one bad workload: each look-up has a deadline of its own, answers
//! that say a reference is missing or refused are remembered for a while, and a
//! refusal of one path keeps the session.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use keyhole_backends::retry::{Class, Failure, retry};
use keyhole_backends::vault::{Mount, Session};
use keyhole_backends::{Ctx, StoreRef, TokenError, secretsmanager, ssm, value, vault};
use keyhole_contract::annotations::MAX_PATH_LEAVES;
use keyhole_contract::reference::FolderRef;
use keyhole_contract::store::{SsmStore, VaultStore};
use keyhole_contract::{Store, StoreKind, Stores};
use tokio::sync::Mutex;

use crate::metrics::{Outcome, RotationMetrics};
use crate::schedule::chunks;
use crate::state::{Version, set_version};

/// Names per DescribeParameters call.
pub const SSM_NAMES_PER_CALL: usize = ssm::NAMES_PER_DESCRIBE;
/// Look-ups in flight per store.
const CONCURRENCY: usize = 8;
/// One look-up (a DescribeParameters call with its pages, a mount look-up, a
/// metadata read), retries included: a slow reference costs its own 5 s.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// A login (AssumeRoleWithWebIdentity, a Vault login), retries included.
const LOGIN_DEADLINE: Duration = Duration::from_secs(10);
/// One store's look-ups of one poll at most, so a backend that hangs holds the
/// poll (every store's workloads) no longer than this.
pub const ROUND_DEADLINE: Duration = Duration::from_secs(30);
/// Revoking a replaced token, and each one at shutdown.
const REVOKE_DEADLINE: Duration = Duration::from_secs(2);
/// How long "no such parameter, mount or path" or "refused" is believed before
/// the reference is asked again: a fix in the backend shows within this.
pub const MISSING_TTL: Duration = Duration::from_secs(5 * 60);
/// STS credentials live an hour by default; a Vault token as long as its lease.
const MAX_SESSION_AGE: Duration = Duration::from_secs(45 * 60);

/// What a look-up found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Version(Version),
    /// KV v1 keeps no versions: such a reference never rolls.
    Unversioned,
}

/// The version, or why it could not be had (safe to log: names and statuses only).
pub type Answer = Result<Found, LookupError>;

/// Why a version could not be looked up. Cloned to every reference it concerns.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LookupError {
    #[error("store {0:?} is not in the config")]
    NoStore(String),
    #[error("store {0:?} has no rotationRole")]
    NoRotationRole(String),
    #[error("cannot read the projected token for audience {audience:?} at {path}: {reason}")]
    Token { audience: String, path: String, reason: Arc<TokenError> },
    #[error(transparent)]
    Login(Arc<keyhole_backends::Error>),
    #[error("no such parameter: {0}")]
    NoParameter(String),
    #[error("no such secret: {0}")]
    NoSecret(String),
    #[error("DescribeSecret of {id} failed: {reason}")]
    DescribeSecret { id: String, reason: Failure },
    #[error("secret {0} has no version labelled AWSCURRENT")]
    NoCurrentSecretVersion(String),
    #[error("version {version} of {name} is not a version")]
    BadVersion { name: String, version: i64 },
    #[error("DescribeParameters failed: {0}")]
    Describe(Failure),
    #[error("listing {folder} failed: {reason}")]
    Folder { folder: String, reason: Failure },
    #[error("{folder} holds more than {max} values, more than keyhole takes a path", max = MAX_PATH_LEAVES)]
    FolderTooBig { folder: String },
    #[error("{0} is a mount, not a secret in one")]
    IsMount(String),
    #[error("cannot find the mount of {path}: {reason}")]
    Mount { path: String, reason: Failure },
    #[error("no mount for {0}")]
    NoMount(String),
    #[error("{path} is on a {kind:?} mount, not a KV secrets engine")]
    NotKv { path: String, kind: String },
    #[error("reading the metadata of {path} failed: {reason}")]
    Metadata { path: String, reason: Failure },
    #[error("the metadata of {0} has no current_version")]
    NoCurrentVersion(String),
    #[error("{0} was not looked up")]
    NotLookedUp(String),
    #[error("{0} (an earlier answer: asked again {ttl} min after it)", ttl = MISSING_TTL.as_secs() / 60)]
    Remembered(Box<LookupError>),
}

impl LookupError {
    /// The backend's answer about the reference itself (missing, or refused to a
    /// session it still takes): asking again soon would get the same.
    fn settled(&self) -> bool {
        match self {
            LookupError::NoParameter(_) | LookupError::NoSecret(_) => true,
            LookupError::DescribeSecret { reason, .. } => matches!(reason.class, Class::Denied),
            LookupError::Mount { reason, .. } | LookupError::Metadata { reason, .. } => {
                matches!(reason.class, Class::NotFound | Class::Denied)
            }
            LookupError::Folder { reason, .. } => matches!(reason.class, Class::Denied),
            LookupError::FolderTooBig { .. } => true,
            _ => false,
        }
    }

    /// What went wrong, without the words: two answers of the same kind are
    /// the same failure however their reasons read (attempt counts, "an earlier
    /// answer"). What a workload's Warning is said once for.
    pub fn kind(&self) -> FailureKind {
        let cause = match self {
            LookupError::Remembered(e) => e.as_ref(),
            e => e,
        };
        let class = match cause {
            LookupError::Login(e) => e.login_class(),
            e => e.class(),
        };
        (std::mem::discriminant(cause), class)
    }

    fn class(&self) -> Option<Class> {
        match self {
            LookupError::Describe(f)
            | LookupError::Folder { reason: f, .. }
            | LookupError::DescribeSecret { reason: f, .. }
            | LookupError::Mount { reason: f, .. }
            | LookupError::Metadata { reason: f, .. } => Some(f.class),
            _ => None,
        }
    }
}

/// [`LookupError::kind`]: the variant (of the first answer, when remembered) and its class.
pub type FailureKind = (std::mem::Discriminant<LookupError>, Option<Class>);

/// Where the projected token for `audience` lies: `<dir>/<audience>`, with any
/// character other than letters, digits, `.`, `-` and `_` written as `_`.
pub fn token_file(dir: &Path, audience: &str) -> PathBuf {
    let name: String = audience
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    dir.join(name)
}

enum Conn {
    Ssm(aws_sdk_ssm::Client),
    SecretsManager(secretsmanager::Client),
    Vault { session: Arc<Session>, mounts: Vec<Mount> },
}

struct Cached {
    conn: Conn,
    until: Instant,
}

/// One store's answers of one poll, and whether its session is still good.
struct Round {
    answers: BTreeMap<String, Answer>,
    session_ok: bool,
}

impl Round {
    /// Every reference failed with `e` (no session could be had); the
    /// session's state is not at issue.
    fn failed(refs: &BTreeSet<String>, e: LookupError) -> Round {
        Round { answers: refs.iter().map(|r| (r.clone(), Err(e.clone()))).collect(), session_ok: true }
    }
}

pub struct Backends {
    stores: Stores,
    token_dir: PathBuf,
    identity: String,
    metrics: Arc<RotationMetrics>,
    sessions: Mutex<HashMap<String, Cached>>,
    /// (store, reference) -> until when its settled error stands.
    missing: std::sync::Mutex<HashMap<(String, String), (Instant, LookupError)>>,
}

/// What a round's answers say of the session that gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// Ask the backend whether it still takes the token.
    Ask,
}

/// Credentials the backend no longer takes (expired, unknown: [`Class::Auth`])
/// condemn the session; a missing path, a transport failure or a 5xx say nothing
/// against it. A refusal ([`Class::Denied`]) is the role's policy on SSM
/// (AccessDenied), but on Vault a 403 is also what a token it no longer knows
/// gets: there the session is asked about itself (`lookup-self`).
fn verdict(kind: StoreKind, answers: &BTreeMap<String, Answer>) -> Verdict {
    let classes: Vec<Class> = answers.values().filter_map(|a| a.as_ref().err()?.class()).collect();
    // A token that just answered for one path is alive, whatever a 403 on another says.
    let answered = answers.values().any(Result::is_ok);
    if classes.contains(&Class::Auth) {
        Verdict::Drop
    } else if kind == StoreKind::Vault && classes.contains(&Class::Denied) && !answered {
        Verdict::Ask
    } else {
        Verdict::Keep
    }
}

/// A folder's listing failed.
fn folder_error(folder: &FolderRef, f: value::FolderFailure) -> LookupError {
    let folder = folder.to_string();
    match f {
        value::FolderFailure::TooBig => LookupError::FolderTooBig { folder },
        value::FolderFailure::Call(reason) => LookupError::Folder { folder, reason },
        value::FolderFailure::BadName(leaf) => LookupError::Folder {
            folder,
            reason: Failure::new(Class::Permanent, format!("{leaf} has a character keyhole does not read")),
        },
    }
}

/// How a request ended, for [`RotationMetrics::request`].
fn ended<T>(r: &Result<T, Failure>) -> Outcome {
    Outcome::of(r.as_ref().map(drop).map_err(|f| f.class))
}

/// How a login ended: the class of its last attempt.
fn logged_in<T>(r: &Result<T, keyhole_backends::Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(e) => e.login_class().map_or(Outcome::Error, |c| Outcome::of(Err(c))),
    }
}

/// A look-up's deadline: its own 5 s, within the store's round.
fn deadline(round_end: tokio::time::Instant) -> tokio::time::Instant {
    (tokio::time::Instant::now() + LOOKUP_DEADLINE).min(round_end)
}

impl Backends {
    pub fn new(stores: Stores, token_dir: PathBuf, identity: String, metrics: Arc<RotationMetrics>) -> Self {
        Backends {
            stores,
            token_dir,
            identity,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            missing: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Stores the controller cannot poll, and why (said once at start).
    pub fn unusable(&self) -> Vec<(String, String)> {
        self.stores
            .stores
            .iter()
            .filter(|(_, s)| s.rotation_role().is_none())
            .map(|(name, s)| {
                let example = match s {
                    Store::AwsSsm(_) => "an IAM role ARN allowed ssm:DescribeParameters",
                    Store::AwsSecretsManager(_) => "an IAM role ARN allowed secretsmanager:DescribeSecret",
                    Store::Vault(_) => "a Vault role whose policy reads <mount>/metadata/*",
                };
                (name.clone(), format!("no rotationRole: set stores.{name}.rotationRole to {example}"))
            })
            .collect()
    }

    /// Every wanted reference of every store, stores in parallel.
    pub async fn lookup_all(
        &self,
        wanted: &BTreeMap<String, BTreeSet<String>>,
    ) -> BTreeMap<String, BTreeMap<String, Answer>> {
        let lookups: Vec<BoxFuture<'_, (String, BTreeMap<String, Answer>)>> = wanted
            .iter()
            .map(|(store, refs)| async move { (store.clone(), self.lookup(store, refs).await) }.boxed())
            .collect();
        futures::future::join_all(lookups).await.into_iter().collect()
    }

    /// One store's references: one answer each.
    pub async fn lookup(&self, name: &str, refs: &BTreeSet<String>) -> BTreeMap<String, Answer> {
        let mut out = self.remembered(name, refs);
        let ask: BTreeSet<String> = refs.iter().filter(|r| !out.contains_key(*r)).cloned().collect();
        if ask.is_empty() {
            return out;
        }
        let all = |reason: LookupError| ask.iter().map(move |r| (r.clone(), Err::<Found, _>(reason.clone())));
        let Some(store) = self.stores.stores.get(name) else {
            out.extend(all(LookupError::NoStore(name.to_owned())));
            return out;
        };
        let Some(role) = store.rotation_role() else {
            out.extend(all(LookupError::NoRotationRole(name.to_owned())));
            return out;
        };
        let ctx = match self.ctx(name, store, role) {
            Ok(ctx) => ctx,
            Err(e) => {
                out.extend(all(e));
                return out;
            }
        };
        let round_end = tokio::time::Instant::now() + ROUND_DEADLINE;
        let round = match store {
            Store::AwsSsm(s) => self.ssm(name, s, &ctx, &ask, round_end).await,
            Store::AwsSecretsManager(s) => self.secrets(name, s, &ctx, &ask, round_end).await,
            Store::Vault(v) => self.vault(name, v, &ctx, &ask, round_end).await,
        };
        if round.session_ok {
            self.remember(name, &round.answers);
        } else {
            // Expired or no longer taken: the next poll logs in again, and
            // the old token is revoked in case the server still knows it.
            let dropped = self.sessions.lock().await.remove(name);
            if let Some(Cached { conn: Conn::Vault { session, .. }, .. }) = dropped {
                self.revoke(name, &session, tokio::time::Instant::now() + REVOKE_DEADLINE).await;
            }
        }
        out.extend(round.answers);
        out
    }

    /// The settled errors still standing for `refs`.
    fn remembered(&self, store: &str, refs: &BTreeSet<String>) -> BTreeMap<String, Answer> {
        let now = Instant::now();
        let mut missing = self.missing.lock().expect("the cache lock");
        missing.retain(|_, (until, _)| now < *until);
        refs.iter()
            .filter_map(|r| {
                let (_, e) = missing.get(&(store.to_owned(), r.clone()))?;
                Some((r.clone(), Err(LookupError::Remembered(Box::new(e.clone())))))
            })
            .collect()
    }

    fn remember(&self, store: &str, answers: &BTreeMap<String, Answer>) {
        let until = Instant::now() + MISSING_TTL;
        let mut missing = self.missing.lock().expect("the cache lock");
        for (r, answer) in answers {
            if let Err(e) = answer
                && e.settled()
            {
                missing.insert((store.to_owned(), r.clone()), (until, e.clone()));
            }
        }
    }

    /// Revokes the Vault tokens of every cached session (at shutdown).
    pub async fn close(&self) {
        let cached: Vec<(String, Cached)> = self.sessions.lock().await.drain().collect();
        let deadline = tokio::time::Instant::now() + REVOKE_DEADLINE;
        let revokes = cached.iter().filter_map(|(name, c)| match &c.conn {
            Conn::Vault { session, .. } => Some(self.revoke(name, session, deadline)),
            Conn::Ssm(_) | Conn::SecretsManager(_) => None,
        });
        futures::future::join_all(revokes).await;
    }

    async fn revoke(&self, name: &str, session: &Session, deadline: tokio::time::Instant) {
        let store = StoreRef { name: name.to_owned(), kind: StoreKind::Vault };
        let revoked = vault::revoke(session, &store, deadline).await;
        self.metrics.request(name, "revoke", Outcome::of(revoked));
    }

    fn ctx(&self, name: &str, store: &Store, role: &str) -> Result<Ctx, LookupError> {
        let path = token_file(&self.token_dir, store.audience());
        let token = keyhole_backends::read_token(&path).map_err(|e| LookupError::Token {
            audience: store.audience().to_owned(),
            path: path.display().to_string(),
            reason: Arc::new(e),
        })?;
        Ok(Ctx {
            store: StoreRef { name: name.to_owned(), kind: store.kind() },
            role: role.to_owned(),
            token,
            // The login's; each look-up has its own.
            deadline: tokio::time::Instant::now() + LOGIN_DEADLINE,
            session: keyhole_backends::session_name(&format!("rotation-{}", self.identity)),
        })
    }

    async fn ssm_client(&self, name: &str, store: &SsmStore, ctx: &Ctx) -> Result<aws_sdk_ssm::Client, LookupError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(Cached { conn: Conn::Ssm(c), until }) = sessions.get(name)
            && Instant::now() < *until
        {
            return Ok(c.clone());
        }
        let client = ssm::client(ctx, store).await;
        self.metrics.request(name, "AssumeRoleWithWebIdentity", logged_in(&client));
        let client = client.map_err(|e| LookupError::Login(Arc::new(e)))?;
        sessions.insert(
            name.to_owned(),
            Cached { conn: Conn::Ssm(client.clone()), until: Instant::now() + MAX_SESSION_AGE },
        );
        Ok(client)
    }

    async fn ssm(
        &self,
        name: &str,
        store: &SsmStore,
        ctx: &Ctx,
        refs: &BTreeSet<String>,
        round_end: tokio::time::Instant,
    ) -> Round {
        let client = match self.ssm_client(name, store, ctx).await {
            Ok(c) => c,
            Err(e) => return Round::failed(refs, e),
        };
        let (folders, names): (BTreeSet<String>, BTreeSet<String>) =
            refs.iter().cloned().partition(|r| FolderRef::from_identity(r).is_some());
        let sets: Vec<BoxFuture<'_, (String, Answer)>> = folders
            .iter()
            .map(|identity| {
                let client = client.clone();
                async move {
                    let folder = FolderRef::from_identity(identity).expect("partitioned above");
                    let r = ssm::folder_versions(&client, &folder, MAX_PATH_LEAVES, deadline(round_end), |answer| {
                        self.metrics.request(name, "DescribeParameters", Outcome::of(answer))
                    })
                    .await;
                    let answer = match r {
                        Ok(found) => {
                            let leaves = found.iter().map(|(n, &v)| (n.as_str(), Version::Number(v.max(0) as u64)));
                            Ok(Found::Version(set_version(leaves)))
                        }
                        Err(f) => Err(folder_error(&folder, f)),
                    };
                    (identity.clone(), answer)
                }
                .boxed()
            })
            .collect();
        let sets = futures::stream::iter(sets).buffer_unordered(CONCURRENCY).collect::<Vec<_>>();
        type Page = (Vec<String>, Result<BTreeMap<String, i64>, Failure>);
        let calls: Vec<BoxFuture<'_, Page>> = chunks(&names, SSM_NAMES_PER_CALL)
            .into_iter()
            .map(|names| {
                let client = client.clone();
                async move {
                    let r = ssm::versions(&client, &names, deadline(round_end), |answer| {
                        self.metrics.request(name, "DescribeParameters", Outcome::of(answer))
                    })
                    .await;
                    (names, r)
                }
                .boxed()
            })
            .collect();
        let pages = futures::stream::iter(calls).buffer_unordered(CONCURRENCY).collect::<Vec<_>>();
        let (sets, pages) = futures::join!(sets, pages);
        let mut answers: BTreeMap<String, Answer> = sets.into_iter().collect();
        for (names, result) in pages {
            match result {
                Ok(found) => {
                    for n in names {
                        let answer = match found.get(&n) {
                            Some(&v) => u64::try_from(v)
                                .map(|v| Found::Version(v.into()))
                                .map_err(|_| LookupError::BadVersion { name: n.clone(), version: v }),
                            None => Err(LookupError::NoParameter(n.clone())),
                        };
                        answers.insert(n, answer);
                    }
                }
                Err(f) => {
                    for n in names {
                        answers.insert(n, Err(LookupError::Describe(f.clone())));
                    }
                }
            }
        }
        let session_ok = verdict(StoreKind::AwsSsm, &answers) == Verdict::Keep;
        Round { answers, session_ok }
    }

    async fn secrets_client(
        &self,
        name: &str,
        store: &SsmStore,
        ctx: &Ctx,
    ) -> Result<secretsmanager::Client, LookupError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(Cached { conn: Conn::SecretsManager(c), until }) = sessions.get(name)
            && Instant::now() < *until
        {
            return Ok(c.clone());
        }
        let client = secretsmanager::client(ctx, store).await;
        self.metrics.request(name, "AssumeRoleWithWebIdentity", logged_in(&client));
        let client = client.map_err(|e| LookupError::Login(Arc::new(e)))?;
        let cached = Cached { conn: Conn::SecretsManager(client.clone()), until: Instant::now() + MAX_SESSION_AGE };
        sessions.insert(name.to_owned(), cached);
        Ok(client)
    }

    /// One DescribeSecret a secret (no batch call returns versions), at most
    /// [`CONCURRENCY`] at once.
    async fn secrets(
        &self,
        name: &str,
        store: &SsmStore,
        ctx: &Ctx,
        refs: &BTreeSet<String>,
        round_end: tokio::time::Instant,
    ) -> Round {
        let client = match self.secrets_client(name, store, ctx).await {
            Ok(c) => c,
            Err(e) => return Round::failed(refs, e),
        };
        let calls: Vec<BoxFuture<'_, (String, Answer)>> = refs
            .iter()
            .map(|id| {
                let client = client.clone();
                async move {
                    let r = secretsmanager::current_version(&client, id, deadline(round_end)).await;
                    self.metrics.request(name, "DescribeSecret", ended(&r));
                    let answer = match r {
                        Ok(Some(v)) => Ok(Found::Version(Version::Id(v))),
                        Ok(None) => Err(LookupError::NoCurrentSecretVersion(id.clone())),
                        Err(f) if f.class == Class::NotFound => Err(LookupError::NoSecret(id.clone())),
                        Err(reason) => Err(LookupError::DescribeSecret { id: id.clone(), reason }),
                    };
                    (id.clone(), answer)
                }
                .boxed()
            })
            .collect();
        let answers: BTreeMap<String, Answer> =
            futures::stream::iter(calls).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await.into_iter().collect();
        let session_ok = verdict(StoreKind::AwsSecretsManager, &answers) == Verdict::Keep;
        Round { answers, session_ok }
    }

    async fn vault_session(
        &self,
        name: &str,
        store: &VaultStore,
        ctx: &Ctx,
    ) -> Result<(Arc<Session>, Vec<Mount>), LookupError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(Cached { conn: Conn::Vault { session, mounts }, until }) = sessions.get(name)
            && Instant::now() < *until
        {
            return Ok((session.clone(), mounts.clone()));
        }
        // Nearing its end: replaced, and revoked once the login is done.
        let old = sessions.remove(name);
        let login = vault::login(ctx, store).await.map(Arc::new);
        self.metrics.request(name, "login", logged_in(&login));
        if let Ok(session) = &login {
            let age =
                if session.lease.is_zero() { MAX_SESSION_AGE } else { (session.lease * 2 / 3).min(MAX_SESSION_AGE) };
            let conn = Conn::Vault { session: session.clone(), mounts: Vec::new() };
            sessions.insert(name.to_owned(), Cached { conn, until: Instant::now() + age });
        }
        drop(sessions);
        if let Some(Cached { conn: Conn::Vault { session: old, .. }, .. }) = old {
            self.revoke(name, &old, tokio::time::Instant::now() + REVOKE_DEADLINE).await;
        }
        let session = login.map_err(|e| LookupError::Login(Arc::new(e)))?;
        Ok((session, Vec::new()))
    }

    async fn vault(
        &self,
        name: &str,
        store: &VaultStore,
        ctx: &Ctx,
        refs: &BTreeSet<String>,
        round_end: tokio::time::Instant,
    ) -> Round {
        let (session, mut mounts) = match self.vault_session(name, store, ctx).await {
            Ok(s) => s,
            Err(e) => return Round::failed(refs, e),
        };
        let mut out: BTreeMap<String, Answer> = BTreeMap::new();
        // Mounts not known yet: one look-up per first path segment, then one per
        // path still outside every known mount (another mount under the same
        // segment: rare). Vault refuses nested mounts, so a known mount's prefix
        // is conclusive.
        let known = mounts.len();
        for by_segment in [true, false] {
            let mut segments = BTreeSet::new();
            let todo: Vec<BoxFuture<'_, (&String, Result<Mount, Failure>)>> = refs
                .iter()
                .filter(|r| !out.contains_key(*r) && !mounts.iter().any(|m| m.relative(r).is_some()))
                .filter(|r| !by_segment || segments.insert(r.split('/').next().unwrap_or_default()))
                .map(|r| {
                    let session = session.clone();
                    async move {
                        let found = retry(deadline(round_end), "mount look-up", || session.mount_of(r)).await;
                        self.metrics.request(name, "mount", ended(&found));
                        (r, found)
                    }
                    .boxed()
                })
                .collect();
            for (r, found) in futures::stream::iter(todo).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await {
                match found {
                    Ok(m) if m.relative(r).is_some() => {
                        if !mounts.contains(&m) {
                            mounts.push(m);
                        }
                    }
                    Ok(_) => {
                        out.insert(r.clone(), Err(LookupError::IsMount(r.clone())));
                    }
                    Err(reason) => {
                        out.insert(r.clone(), Err(LookupError::Mount { path: r.clone(), reason }));
                    }
                }
            }
        }
        if mounts.len() > known
            && let Some(Cached { conn: Conn::Vault { mounts: cached, .. }, .. }) =
                self.sessions.lock().await.get_mut(name)
        {
            cached.clone_from(&mounts);
        }
        let reads: Vec<BoxFuture<'_, (String, Answer)>> = refs
            .iter()
            .filter(|r| !out.contains_key(*r))
            .map(|r| {
                let mount = mounts.iter().find(|m| m.relative(r).is_some()).cloned();
                let session = session.clone();
                async move {
                    let Some(mount) = mount else { return (r.clone(), Err(LookupError::NoMount(r.clone()))) };
                    let answer = match FolderRef::from_identity(r) {
                        Some(folder) => {
                            self.folder_metadata(name, &session, &mount, &folder, deadline(round_end)).await
                        }
                        None => self.metadata(name, &session, &mount, r, deadline(round_end)).await,
                    };
                    (r.clone(), answer)
                }
                .boxed()
            })
            .collect();
        out.extend(futures::stream::iter(reads).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await);
        let session_ok = self.session_holds(name, &session, &out, round_end).await;
        Round { answers: out, session_ok }
    }

    /// Whether the Vault session survives this round's answers (see [`verdict`]).
    async fn session_holds(
        &self,
        name: &str,
        session: &Session,
        answers: &BTreeMap<String, Answer>,
        round_end: tokio::time::Instant,
    ) -> bool {
        match verdict(StoreKind::Vault, answers) {
            Verdict::Keep => true,
            Verdict::Drop => false,
            Verdict::Ask => {
                let valid = session.token_valid(deadline(round_end)).await;
                let outcome = match &valid {
                    Ok(true) => Outcome::Ok,
                    Ok(false) => Outcome::Auth,
                    Err(f) => Outcome::of(Err(f.class)),
                };
                self.metrics.request(name, "lookup-self", outcome);
                // No answer (transport, 5xx) says nothing against the token.
                valid.unwrap_or(true)
            }
        }
    }

    /// A folder's set: its listing, then `current_version` of each secret in
    /// it ([`set_version`]), within one look-up's deadline.
    async fn folder_metadata(
        &self,
        store: &str,
        session: &Session,
        mount: &Mount,
        folder: &FolderRef,
        deadline: tokio::time::Instant,
    ) -> Answer {
        if !mount.is_kv() {
            return Err(LookupError::NotKv { path: folder.folder(), kind: mount.kind.clone() });
        }
        if mount.version != 2 {
            return Ok(Found::Unversioned);
        }
        let listed = session
            .list_folder(mount, folder, MAX_PATH_LEAVES, deadline, |answer| {
                self.metrics.request(store, "list", Outcome::of(answer))
            })
            .await;
        let leaves = match listed {
            Ok(leaves) => leaves,
            Err(f) => return Err(folder_error(folder, f)),
        };
        // Each secret's current version, if it holds data: one whose current
        // version is deleted (or with metadata only) is not in the set, as
        // the injector leaves it out.
        type Read<'a> = BoxFuture<'a, Result<(String, Option<u64>), LookupError>>;
        let mut reads: Vec<Read<'_>> = Vec::with_capacity(leaves.len());
        for leaf in leaves {
            reads.push(
                async move {
                    let body = vault::metadata(session, mount, &leaf, deadline, |answer| {
                        self.metrics.request(store, "metadata", Outcome::of(answer))
                    })
                    .await
                    .map_err(|reason| LookupError::Metadata { path: leaf.clone(), reason })?;
                    Ok((leaf, vault::live_version_of(&body)))
                }
                .boxed(),
            );
        }
        let found: Vec<(String, Option<u64>)> = futures::stream::iter(reads)
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let versions = found.iter().filter_map(|(leaf, v)| Some((leaf.as_str(), Version::Number((*v)?))));
        Ok(Found::Version(set_version(versions)))
    }

    /// `GET <mount>/metadata/<path>` -> `current_version`.
    async fn metadata(
        &self,
        store: &str,
        session: &Session,
        mount: &Mount,
        path: &str,
        deadline: tokio::time::Instant,
    ) -> Answer {
        if !mount.is_kv() {
            return Err(LookupError::NotKv { path: path.to_owned(), kind: mount.kind.clone() });
        }
        if mount.version != 2 {
            return Ok(Found::Unversioned);
        }
        let version = vault::current_version(session, mount, path, deadline, |answer| {
            self.metrics.request(store, "metadata", Outcome::of(answer))
        })
        .await
        .map_err(|reason| LookupError::Metadata { path: path.to_owned(), reason })?;
        version.map(|v| Found::Version(v.into())).ok_or_else(|| LookupError::NoCurrentVersion(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_named_after_the_audience() {
        let d = Path::new("/t");
        assert_eq!(token_file(d, "vault"), Path::new("/t/vault"));
        assert_eq!(token_file(d, "sts.amazonaws.com"), Path::new("/t/sts.amazonaws.com"));
        assert_eq!(token_file(d, "https://vault.example.com:8200"), Path::new("/t/https___vault.example.com_8200"));
        assert_eq!(token_file(d, "../x"), Path::new("/t/.._x"));
    }

    fn failed(class: Class) -> Answer {
        Err(LookupError::Metadata { path: "secret/p".into(), reason: Failure::new(class, "why") })
    }

    #[test]
    fn a_failure_is_of_one_kind_however_its_reason_reads() {
        let first =
            LookupError::Metadata { path: "p".into(), reason: Failure::new(Class::Denied, "permission denied") };
        let retried = LookupError::Metadata {
            path: "p".into(),
            reason: Failure::new(Class::Denied, "denied (after 2 attempts)"),
        };
        assert_eq!(first.kind(), retried.kind());
        assert_eq!(LookupError::Remembered(Box::new(first.clone())).kind(), first.kind());
        let missing = LookupError::Metadata { path: "p".into(), reason: Failure::new(Class::NotFound, "gone") };
        assert_ne!(first.kind(), missing.kind(), "another class");
        assert_ne!(LookupError::NoParameter("p".into()).kind(), LookupError::NoMount("p".into()).kind());
    }

    #[test]
    fn only_credentials_at_fault_drop_the_session() {
        let round = |answers: Vec<Answer>| -> BTreeMap<String, Answer> {
            answers.into_iter().enumerate().map(|(i, a)| (format!("r{i}"), a)).collect()
        };
        let missing = round(vec![
            Ok(Found::Version(1.into())),
            failed(Class::NotFound),
            Err(LookupError::NoParameter("/p".into())),
        ]);
        assert_eq!(verdict(StoreKind::Vault, &missing), Verdict::Keep);
        assert_eq!(verdict(StoreKind::AwsSsm, &round(vec![failed(Class::Transient)])), Verdict::Keep);
        assert_eq!(verdict(StoreKind::AwsSsm, &round(vec![failed(Class::Denied)])), Verdict::Keep, "AccessDenied");
        assert_eq!(verdict(StoreKind::Vault, &round(vec![failed(Class::Denied)])), Verdict::Ask, "a 403");
        let one_read = round(vec![Ok(Found::Version(2.into())), failed(Class::Denied)]);
        assert_eq!(verdict(StoreKind::Vault, &one_read), Verdict::Keep, "a token that just answered is alive");
        let expired = round(vec![failed(Class::Denied), failed(Class::Auth)]);
        assert_eq!(verdict(StoreKind::AwsSsm, &expired), Verdict::Drop);
        assert_eq!(verdict(StoreKind::Vault, &expired), Verdict::Drop);
    }

    #[tokio::test(start_paused = true)]
    async fn each_look_up_has_its_own_deadline_within_the_round() {
        let start = tokio::time::Instant::now();
        let round_end = start + ROUND_DEADLINE;
        assert_eq!(deadline(round_end), start + LOOKUP_DEADLINE);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(deadline(round_end), start + Duration::from_secs(20) + LOOKUP_DEADLINE, "a later one starts afresh");
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(deadline(round_end), round_end);
    }

    #[tokio::test]
    async fn missing_and_refused_references_are_not_asked_again() {
        let stores: Stores = serde_json::from_str(
            r#"{"stores": {"v": {"kind": "vault", "address": "http://v", "auth": {"method": "jwt"}}}}"#,
        )
        .unwrap();
        let metrics = Arc::new(RotationMetrics::default());
        let b = Backends::new(stores, "/t".into(), "me".into(), metrics);
        let answers: BTreeMap<String, Answer> = [
            ("gone".to_owned(), failed(Class::NotFound)),
            ("refused".to_owned(), failed(Class::Denied)),
            (
                "no-mount".to_owned(),
                Err(LookupError::Mount { path: "x".into(), reason: Failure::new(Class::Denied, "d") }),
            ),
            ("flaky".to_owned(), failed(Class::Transient)),
            ("found".to_owned(), Ok(Found::Version(3.into()))),
        ]
        .into();
        b.remember("v", &answers);
        let refs: BTreeSet<String> = answers.keys().cloned().collect();
        let again = b.lookup("v", &refs).await;
        for r in ["gone", "refused", "no-mount"] {
            let e = again[r].as_ref().unwrap_err();
            assert!(matches!(e, LookupError::Remembered(_)), "{r}: {e}");
            assert!(e.to_string().ends_with("(an earlier answer: asked again 5 min after it)"), "{e}");
        }
        // The rest are asked (here: refused for want of a rotationRole, before any request).
        for r in ["flaky", "found"] {
            assert!(matches!(again[r], Err(LookupError::NoRotationRole(_))), "{r}");
        }
        assert!(b.lookup("other", &refs).await.values().all(|a| matches!(a, Err(LookupError::NoStore(_)))));
    }

    #[test]
    fn stores_without_a_rotation_role_are_named() {
        let stores: Stores = serde_json::from_str(
            r#"{"stores": {
                "a": {"kind": "aws-ssm", "region": "eu-west-1", "rotationRole": "arn:aws:iam::1:role/r"},
                "v": {"kind": "vault", "address": "http://v", "auth": {"method": "jwt"}}
            }}"#,
        )
        .unwrap();
        let b = Backends::new(stores, "/t".into(), "me".into(), Arc::default());
        let u = b.unusable();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].0, "v");
        assert!(u[0].1.contains("stores.v.rotationRole"), "{}", u[0].1);
    }
}
