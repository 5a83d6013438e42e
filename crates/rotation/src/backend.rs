//! Version look-ups, never values: SSM DescribeParameters (parameter metadata)
//! and Vault KV v2 `<mount>/metadata/<path>`. The controller logs in with its own
//! service account's projected token and the store's `rotationRole`, through the
//! backends crate's logins (the injector's too), and keeps the session until it
//! nears its end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use keyhole_backends::retry::{Failure, retry};
use keyhole_backends::vault::{Mount, Session};
use keyhole_backends::{Ctx, StoreRef, TokenError, ssm, vault};
use keyhole_contract::store::{SsmStore, VaultStore};
use keyhole_contract::{Store, Stores};
use tokio::sync::Mutex;

use crate::metrics::RotationMetrics;
use crate::schedule::chunks;

/// Names per DescribeParameters call.
pub const SSM_NAMES_PER_CALL: usize = ssm::NAMES_PER_DESCRIBE;
/// Look-ups in flight per store.
const CONCURRENCY: usize = 8;
/// One store's look-ups, retries included.
const DEADLINE: Duration = Duration::from_secs(30);
/// STS credentials live an hour by default; a Vault token as long as its lease.
const MAX_SESSION_AGE: Duration = Duration::from_secs(45 * 60);

/// What a look-up found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Version(u64),
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
    #[error("version {version} of {name} is not a version")]
    BadVersion { name: String, version: i64 },
    #[error("DescribeParameters failed: {0}")]
    Describe(Failure),
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
}

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
    Vault { session: Arc<Session>, mounts: Vec<Mount> },
}

struct Cached {
    conn: Conn,
    until: Instant,
}

pub struct Backends {
    stores: Stores,
    token_dir: PathBuf,
    identity: String,
    metrics: Arc<RotationMetrics>,
    sessions: Mutex<HashMap<String, Cached>>,
}

impl Backends {
    pub fn new(stores: Stores, token_dir: PathBuf, identity: String, metrics: Arc<RotationMetrics>) -> Self {
        Backends { stores, token_dir, identity, metrics, sessions: Mutex::new(HashMap::new()) }
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
        let all = |reason: LookupError| refs.iter().map(|r| (r.clone(), Err(reason.clone()))).collect();
        let Some(store) = self.stores.stores.get(name) else {
            return all(LookupError::NoStore(name.to_owned()));
        };
        let Some(role) = store.rotation_role() else {
            return all(LookupError::NoRotationRole(name.to_owned()));
        };
        let ctx = match self.ctx(name, store, role) {
            Ok(ctx) => ctx,
            Err(e) => return all(e),
        };
        let answers = match store {
            Store::AwsSsm(s) => self.ssm(name, s, &ctx, refs).await,
            Store::Vault(v) => self.vault(name, v, &ctx, refs).await,
        };
        // A failed read may be an expired session: the next poll logs in again.
        if answers.values().any(Result::is_err) {
            self.sessions.lock().await.remove(name);
        }
        answers
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
            deadline: tokio::time::Instant::now() + DEADLINE,
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
        self.metrics.request(name, "AssumeRoleWithWebIdentity");
        let client = ssm::client(ctx, store).await.map_err(|e| LookupError::Login(Arc::new(e)))?;
        sessions.insert(
            name.to_owned(),
            Cached { conn: Conn::Ssm(client.clone()), until: Instant::now() + MAX_SESSION_AGE },
        );
        Ok(client)
    }

    async fn ssm(&self, name: &str, store: &SsmStore, ctx: &Ctx, refs: &BTreeSet<String>) -> BTreeMap<String, Answer> {
        let client = match self.ssm_client(name, store, ctx).await {
            Ok(c) => c,
            Err(e) => return refs.iter().map(|r| (r.clone(), Err(e.clone()))).collect(),
        };
        type Page = (Vec<String>, Result<HashMap<String, i64>, Failure>);
        let calls: Vec<BoxFuture<'_, Page>> = chunks(refs, SSM_NAMES_PER_CALL)
            .into_iter()
            .map(|names| {
                let client = client.clone();
                async move {
                    let r = self.describe(name, &client, &names, ctx).await;
                    (names, r)
                }
                .boxed()
            })
            .collect();
        let pages = futures::stream::iter(calls).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await;
        let mut out = BTreeMap::new();
        for (names, result) in pages {
            match result {
                Ok(found) => {
                    for n in names {
                        let answer = match found.get(&n) {
                            Some(&v) => u64::try_from(v)
                                .map(Found::Version)
                                .map_err(|_| LookupError::BadVersion { name: n.clone(), version: v }),
                            None => Err(LookupError::NoParameter(n.clone())),
                        };
                        out.insert(n, answer);
                    }
                }
                Err(f) => {
                    for n in names {
                        out.insert(n, Err(LookupError::Describe(f.clone())));
                    }
                }
            }
        }
        out
    }

    async fn describe(
        &self,
        store: &str,
        client: &aws_sdk_ssm::Client,
        names: &[String],
        ctx: &Ctx,
    ) -> Result<HashMap<String, i64>, Failure> {
        ssm::versions(client, names, ctx.deadline, || self.metrics.request(store, "DescribeParameters")).await
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
        self.metrics.request(name, "login");
        let session = Arc::new(vault::login(ctx, store).await.map_err(|e| LookupError::Login(Arc::new(e)))?);
        let age = if session.lease.is_zero() { MAX_SESSION_AGE } else { (session.lease * 2 / 3).min(MAX_SESSION_AGE) };
        let conn = Conn::Vault { session: session.clone(), mounts: Vec::new() };
        sessions.insert(name.to_owned(), Cached { conn, until: Instant::now() + age });
        Ok((session, Vec::new()))
    }

    async fn vault(
        &self,
        name: &str,
        store: &VaultStore,
        ctx: &Ctx,
        refs: &BTreeSet<String>,
    ) -> BTreeMap<String, Answer> {
        let (session, mut mounts) = match self.vault_session(name, store, ctx).await {
            Ok(s) => s,
            Err(e) => return refs.iter().map(|r| (r.clone(), Err(e.clone()))).collect(),
        };
        let mut out: BTreeMap<String, Answer> = BTreeMap::new();
        // Mounts first, one look-up per mount not yet known (Vault refuses nested
        // mounts, so a known mount's prefix is conclusive).
        let known = mounts.len();
        for r in refs {
            if mounts.iter().any(|m| m.relative(r).is_some()) {
                continue;
            }
            self.metrics.request(name, "mount");
            match retry(ctx.deadline, "mount look-up", || session.mount_of(r)).await {
                Ok(m) if m.relative(r).is_some() => mounts.push(m),
                Ok(_) => {
                    out.insert(r.clone(), Err(LookupError::IsMount(r.clone())));
                }
                Err(f) => {
                    out.insert(r.clone(), Err(LookupError::Mount { path: r.clone(), reason: f }));
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
                    (r.clone(), self.metadata(name, &session, &mount, r, ctx).await)
                }
                .boxed()
            })
            .collect();
        out.extend(futures::stream::iter(reads).buffer_unordered(CONCURRENCY).collect::<Vec<_>>().await);
        out
    }

    /// `GET <mount>/metadata/<path>` -> `current_version`.
    async fn metadata(&self, store: &str, session: &Session, mount: &Mount, path: &str, ctx: &Ctx) -> Answer {
        if !mount.is_kv() {
            return Err(LookupError::NotKv { path: path.to_owned(), kind: mount.kind.clone() });
        }
        if mount.version != 2 {
            return Ok(Found::Unversioned);
        }
        let version =
            vault::current_version(session, mount, path, ctx.deadline, || self.metrics.request(store, "metadata"))
                .await
                .map_err(|reason| LookupError::Metadata { path: path.to_owned(), reason })?;
        version.map(Found::Version).ok_or_else(|| LookupError::NoCurrentVersion(path.to_owned()))
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
