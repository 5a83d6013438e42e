//! HashiCorp Vault / OpenBao: login through the kubernetes or jwt auth method
//! with the projected token, find each path's KV mount and version, read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keyhole_contract::annotations::MAX_PATH_LEAVES;
use keyhole_contract::plan::{PlanItem, PlanPath};
use keyhole_contract::reference::{FolderRef, Reference, VaultRef};
use keyhole_contract::store::{VaultAuthMethod, VaultStore};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::task::JoinSet;
use vaultrs::client::{VaultClient, VaultClientSettings};
use vaultrs::error::ClientError;

use crate::Ctx;
use crate::error::{Error, VaultClientError};
use crate::retry::{Class, Failure, retry, transport_reason};
use crate::value::{Fetched, FolderFailure, Leaf, Values, item_value};

/// A KV mount as `sys/internal/ui/mounts/<path>` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// With its trailing slash, as Vault reports it: `secret/`.
    pub path: String,
    pub kind: String,
    /// 1 or 2 for KV.
    pub version: u8,
}

impl Mount {
    /// Parses the `data` of the ui/mounts answer.
    pub fn from_response(body: &Value) -> Option<Mount> {
        let data = body.get("data")?;
        let path = data.get("path")?.as_str()?.to_owned();
        let kind = data.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        // KV v1 mounts report no options, or version "1".
        let version = match data.get("options").and_then(|o| o.get("version")).and_then(Value::as_str) {
            Some("2") => 2,
            _ => 1,
        };
        Some(Mount { path, kind, version })
    }

    pub fn is_kv(&self) -> bool {
        matches!(self.kind.as_str(), "kv" | "generic")
    }

    /// The path inside this mount, if `path` lies in it.
    pub fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.path.as_str()).filter(|rest| !rest.is_empty())
    }

    pub fn name(&self) -> &str {
        self.path.trim_end_matches('/')
    }
}

/// Classifies an answer by its HTTP status; `login` marks authentication calls.
fn class_of_status(code: u16, login: bool) -> Class {
    match code {
        429 | 412 => Class::Transient,
        c if c >= 500 && c != 501 => Class::Transient,
        400 | 401 | 403 if login => Class::Auth,
        // A token the server does not take (Vault itself says 403; a proxy may say 401).
        401 => Class::Auth,
        403 => Class::Denied,
        404 => Class::NotFound,
        _ => Class::Permanent,
    }
}

fn status_reason(code: u16, errors: &[String]) -> String {
    let errors: Vec<&str> = errors.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).collect();
    if !errors.is_empty() {
        return format!("{} (HTTP {code})", errors.join("; "));
    }
    let text = reqwest::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
    format!("{} (HTTP {code})", text.to_ascii_lowercase())
}

/// Classifies a vaultrs error by its variants and its sources' types. Never prints
/// a foreign error's text: a parse error's could quote the value.
pub fn classify(err: &ClientError, login: bool) -> Failure {
    match err {
        ClientError::APIError { code, errors } => {
            Failure::new(class_of_status(*code, login), status_reason(*code, errors))
        }
        ClientError::RestClientError { source } => match transport_reason(source) {
            Some(reason) => Failure::new(Class::Transient, reason),
            None => Failure::new(Class::Permanent, "unexpected answer from the server"),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            Failure::new(Class::NotFound, "the server returned no data")
        }
        ClientError::JsonParseError { .. } => Failure::new(Class::Permanent, "the answer is not what keyhole expected"),
        _ => Failure::new(Class::Permanent, "the client could not make the request"),
    }
}

/// Connection set-up: one HTTP client for vaultrs and the mount look-ups,
/// trusting the store's CA bundle on top of the system roots.
pub fn http_client(store: &VaultStore) -> Result<reqwest::Client, VaultClientError> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    if store.address.starts_with("http://") {
        // Plain HTTP needs no roots; loading the system's costs time (reqwest#2988).
        builder = builder.tls_certs_only(Vec::new());
    } else if let Some(pem) = store.ca_bundle.as_deref().filter(|p| !p.trim().is_empty()) {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(VaultClientError::CaBundle)?;
        if certs.is_empty() {
            return Err(VaultClientError::NoCertificate);
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(VaultClientError::Build)
}

/// A logged-in Vault client (the injector's, and the rotation controller's).
pub struct Session {
    http: reqwest::Client,
    address: reqwest::Url,
    namespace: Option<String>,
    token: SecretString,
    /// The token's lifetime as the login answered it (0: no expiry).
    pub lease: Duration,
}

impl Session {
    /// `GET /v1/<path>` with this session's token: the answer's JSON, or a
    /// failure built from the status and Vault's `errors` (never from the body).
    pub async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.send(reqwest::Method::GET, path).await
    }

    async fn send(&self, method: reqwest::Method, path: &str) -> Result<Value, Failure> {
        self.send_body(method, path, None).await
    }

    /// `body` may hold a value: it is sent, never logged or put in an error.
    async fn send_body(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let url = self
            .address
            .join(&format!("v1/{path}"))
            .map_err(|e| Failure::new(Class::Permanent, format!("bad URL: {e}")))?;
        let mut req = self.http.request(method, url).header("X-Vault-Token", self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(Class::Transient, transport_reason(&e).unwrap_or_else(|| "the request failed".to_owned()))
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let errors: Vec<String> = body
                .get("errors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default();
            return Err(Failure::new(class_of_status(status, false), status_reason(status, &errors)));
        }
        Ok(body)
    }

    /// Whether the server still takes this session's token (`auth/token/lookup-self`,
    /// which the default policy allows): Vault answers 403 alike for a path the
    /// policy does not cover and for a token it no longer knows, so a 403 alone
    /// cannot say which. `Err`: no answer (transport, 5xx).
    pub async fn token_valid(&self, deadline: tokio::time::Instant) -> Result<bool, Failure> {
        // The answer holds the token itself: dropped unread.
        match retry(deadline, "token look-up", || self.send(reqwest::Method::GET, "auth/token/lookup-self")).await {
            Ok(_) => Ok(true),
            Err(f) if matches!(f.class, Class::Denied | Class::Auth) => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// `POST auth/token/revoke-self`: the token (and its leases) end now rather
    /// than at their TTL. One attempt, ended at `deadline`.
    pub async fn revoke(&self, deadline: tokio::time::Instant) -> Result<(), Failure> {
        match tokio::time::timeout_at(deadline, self.send(reqwest::Method::POST, "auth/token/revoke-self")).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(Failure::new(Class::Timeout, "no time left before the deadline")),
        }
    }

    /// `GET /v1/sys/internal/ui/mounts/<path>`: which mount `path` lives on and
    /// its KV version (what the Vault CLI asks before a `kv get`).
    pub async fn mount_of(&self, path: &str) -> Result<Mount, Failure> {
        let body = self.get_json(&format!("sys/internal/ui/mounts/{path}")).await?;
        Mount::from_response(&body).ok_or_else(|| Failure::new(Class::Permanent, "the answer names no mount"))
    }

    /// Creates the KV v2 secret `path` holding `{field: value}` only if it does
    /// not exist (check-and-set 0): two pods racing make it once. A refused
    /// write (it exists) is an `Err` like any other; the caller reads again.
    pub async fn create_if_absent(&self, path: &str, field: &str, value: &SecretString) -> Result<(), Failure> {
        let mount = self.mount_of(path).await?;
        if !mount.is_kv() || mount.version != 2 {
            return Err(Failure::new(Class::Permanent, "only a KV v2 mount can make a value once (check-and-set)"));
        }
        let rel = mount.relative(path).ok_or_else(|| Failure::new(Class::Permanent, "the path is the mount itself"))?;
        let body = serde_json::json!({"options": {"cas": 0}, "data": {field: value.expose_secret()}});
        self.send_body(reqwest::Method::POST, &format!("{}/data/{rel}", mount.name()), Some(&body)).await.map(drop)
    }

    /// Every secret in `folder` on `mount`, by its whole path (`secret/app/db`):
    /// `LIST` of the folder (of `<mount>/metadata/` on KV v2), and of each
    /// sub-folder's when recursive, at most `max` secrets and as many lists.
    /// A folder Vault does not know (404) is empty.
    pub async fn list_folder(
        &self,
        mount: &Mount,
        folder: &FolderRef,
        max: usize,
        deadline: tokio::time::Instant,
        answered: impl Fn(Result<(), Class>),
    ) -> Result<Vec<String>, FolderFailure> {
        let start = folder.folder();
        let Some(start) = start.strip_prefix(mount.path.as_str()).map(str::to_owned) else {
            let reason = format!("the folder is not on mount {}", mount.path);
            return Err(FolderFailure::Call(Failure::new(Class::Permanent, reason)));
        };
        let api = if mount.version == 2 { format!("{}/metadata/", mount.name()) } else { format!("{}/", mount.name()) };
        let mut todo = vec![start];
        let mut found = Vec::new();
        let mut lists = 0;
        while let Some(rel) = todo.pop() {
            lists += 1;
            if lists > max {
                return Err(FolderFailure::TooBig);
            }
            let url = format!("{api}{rel}?list=true");
            let listed = retry(deadline, "KV list", || {
                let request = self.get_json(&url);
                async {
                    let r = match tokio::time::timeout_at(deadline, request).await {
                        Ok(r) => r,
                        Err(_) => Err(Failure::new(Class::Timeout, "the deadline passed during the request")),
                    };
                    answered(r.as_ref().map(drop).map_err(|f| f.class));
                    r
                }
            })
            .await;
            let body = match listed {
                Ok(body) => body,
                Err(f) if f.class == Class::NotFound => continue,
                Err(f) => return Err(FolderFailure::Call(f)),
            };
            let keys = body.get("data").and_then(|d| d.get("keys")).and_then(Value::as_array);
            for key in keys.into_iter().flatten().filter_map(Value::as_str) {
                // A name keyhole's references could not write either (and
                // that would not survive a URL path): refused, named.
                let name = key.strip_suffix('/').unwrap_or(key);
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-@+=".contains(c)) {
                    return Err(FolderFailure::BadName(format!("{}{rel}{key}", mount.path)));
                }
                if let Some(sub) = key.strip_suffix('/') {
                    if folder.recursive && !sub.is_empty() {
                        todo.push(format!("{rel}{key}"));
                    }
                } else {
                    found.push(format!("{}{rel}{key}", mount.path));
                    if found.len() > max {
                        return Err(FolderFailure::TooBig);
                    }
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// A secret's data (the current version, or `version`), as JSON text.
    /// Told by the HTTP status alone: a KV v2 secret whose current version is
    /// deleted answers 404 with its metadata, which vaultrs took for a
    /// malformed answer; here it is [`Class::NotFound`], like a missing one.
    async fn read(&self, mount: &Mount, rel: &str, version: Option<u64>) -> Result<SecretString, Failure> {
        let m = mount.name();
        let (url, pointer) = match (mount.version, version) {
            (2, None) => (format!("{m}/data/{rel}"), "/data/data"),
            (2, Some(v)) => (format!("{m}/data/{rel}?version={v}"), "/data/data"),
            (_, _) => (format!("{m}/{rel}"), "/data"),
        };
        let body = self.get_json(&url).await?;
        match body.pointer(pointer) {
            Some(data) if data.is_object() => Ok(SecretString::from(data.to_string())),
            // A soft-deleted KV v2 version answers with `data: null`.
            _ => Err(Failure::new(Class::NotFound, "the version is deleted")),
        }
    }
}

fn vault_refs(items: &[PlanItem]) -> Result<Vec<(&PlanItem, &VaultRef)>, Error> {
    items
        .iter()
        .map(|item| match &item.reference {
            Reference::Vault(r) => Ok((item, r)),
            other => Err(Error::WrongKind {
                annotation: item.annotation(),
                reference: other.kind().as_str(),
                store: "vault",
            }),
        })
        .collect()
}

/// Logs in through the store's auth method with `ctx`'s token and role.
pub async fn login(ctx: &Ctx, store: &VaultStore) -> Result<Session, Error> {
    let method = store.auth.method;
    let mount = store.auth.mount().to_owned();
    let fail = |reason: String, class: Class| Error::VaultLogin {
        store: ctx.store.clone(),
        method: method.as_str(),
        mount: mount.clone(),
        role: ctx.role.clone(),
        reason,
        class,
    };
    let address = reqwest::Url::parse(&store.address)
        .map_err(|e| fail(format!("address is not a URL: {e}"), Class::Permanent))?;
    let http = http_client(store).map_err(|reason| Error::VaultClient { store: ctx.store.clone(), reason })?;
    let settings = VaultClientSettings {
        address: address.clone(),
        ca_certs: Vec::new(),
        identity: None,
        timeout: Some(Duration::from_secs(10)),
        token: String::new(),
        verify: true,
        version: 1,
        wrapping: false,
        namespace: store.namespace.clone(),
        proxy: None,
    };
    let mut client =
        VaultClient::new(settings).map_err(|_| fail("cannot build the Vault client".to_owned(), Class::Permanent))?;
    // Ours trusts the store's CA bundle, which vaultrs only takes as file paths.
    client.http.http = http.clone();

    let jwt = ctx.token.expose_secret();
    let auth = retry(ctx.deadline, "vault login", || {
        let (client, mount, role) = (&client, mount.as_str(), ctx.role.as_str());
        async move {
            match method {
                VaultAuthMethod::Kubernetes => vaultrs::auth::kubernetes::login(client, mount, role, jwt).await,
                VaultAuthMethod::Jwt => vaultrs::auth::oidc::login(client, mount, jwt, Some(role.to_owned())).await,
            }
            .map_err(|e| classify(&e, true))
        }
    })
    .await
    .map_err(|f| fail(f.reason, f.class))?;
    let token = SecretString::from(auth.client_token);
    let lease = Duration::from_secs(auth.lease_duration);
    Ok(Session { http, address, namespace: store.namespace.clone(), token, lease })
}

/// Revokes the session's token, best effort: a failure is logged (never the
/// token) and otherwise ignored, as the token ends at its TTL anyway. The
/// result says how it ended, for counting.
pub async fn revoke(session: &Session, store: &crate::StoreRef, deadline: tokio::time::Instant) -> Result<(), Class> {
    match session.revoke(deadline).await {
        Ok(()) => {
            tracing::debug!(store = %store, "Vault token revoked");
            Ok(())
        }
        Err(f) => {
            tracing::warn!(store = %store, reason = %f, "could not revoke the Vault token; it ends at its TTL");
            Err(f.class)
        }
    }
}

/// Logs in, reads every item and every folder's secrets, and revokes the
/// token whatever the reads gave: the injector needs it for nothing after.
pub async fn fetch(ctx: &Ctx, store: &VaultStore, items: &[PlanItem], paths: &[PlanPath]) -> Result<Fetched, Error> {
    let refs = vault_refs(items)?;
    let session = Arc::new(login(ctx, store).await?);
    let values = async {
        let values = read_all(ctx, &session, &refs).await?;
        let leaves = read_folders(ctx, &session, paths).await?;
        Ok(Fetched { values, binary: Vec::new(), leaves })
    }
    .await;
    // Its own 2 s: slow reads may have spent the deadline, and a token left
    // alive lives to its TTL.
    let _ = revoke(&session, &ctx.store, tokio::time::Instant::now() + Duration::from_secs(2)).await;
    values
}

/// Leaf reads in flight at once, all folders of a pod together.
const LEAF_READS_AT_ONCE: usize = 16;

/// Each folder: its mount, its listing, then every secret in it, read whole
/// (a JSON object, like a reference without #field), [`LEAF_READS_AT_ONCE`]
/// at a time. A listed secret whose current version is deleted (or that
/// has metadata only) reads as missing and is left out, as the rotation
/// controller leaves it out of the folder's set.
async fn read_folders(ctx: &Ctx, session: &Arc<Session>, paths: &[PlanPath]) -> Result<Vec<Leaf>, Error> {
    let mut listed = JoinSet::new();
    for (index, path) in paths.iter().enumerate() {
        let (session, ctx, path) = (session.clone(), ctx.clone(), path.clone());
        listed.spawn(async move {
            let annotation = path.annotation();
            let mount =
                retry(ctx.deadline, "mount look-up", || session.mount_of(&path.folder.path)).await.map_err(|f| {
                    Error::VaultMount {
                        annotation: annotation.clone(),
                        store: ctx.store.clone(),
                        path: path.folder.folder(),
                        reason: f.reason,
                    }
                })?;
            if !mount.is_kv() {
                return Err(Error::NotKv {
                    annotation,
                    store: ctx.store.clone(),
                    path: path.folder.folder(),
                    mount_type: mount.kind.clone(),
                });
            }
            let found = session
                .list_folder(&mount, &path.folder, MAX_PATH_LEAVES, ctx.deadline, |_| {})
                .await
                .map_err(|f| f.error(&path, &ctx.store))?;
            Ok((index, mount, found))
        });
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(LEAF_READS_AT_ONCE));
    let mut reads = JoinSet::new();
    while let Some(joined) = listed.join_next().await {
        let (index, mount, found) = joined.map_err(|e| Error::Task { backend: "Vault", reason: e.to_string() })??;
        for full in found {
            let (session, ctx, mount, permits) = (session.clone(), ctx.clone(), mount.clone(), permits.clone());
            reads.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let rel = mount.relative(&full).unwrap_or_default().to_owned();
                let r = retry(ctx.deadline, "KV read", || session.read(&mount, &rel, None)).await;
                (index, full, r)
            });
        }
    }
    let mut leaves = Vec::new();
    while let Some(joined) = reads.join_next().await {
        let (index, full, r) = joined.map_err(|e| Error::Task { backend: "Vault", reason: e.to_string() })?;
        let value = match r {
            Ok(value) => value,
            Err(f) if f.class == Class::NotFound => {
                tracing::debug!(path = %full, "listed, but its current version is deleted: left out");
                continue;
            }
            Err(f) => {
                return Err(Error::VaultRead {
                    annotation: paths[index].annotation(),
                    store: ctx.store.clone(),
                    reference: full,
                    reason: f.reason,
                    class: f.class,
                });
            }
        };
        leaves.push(Leaf { path: index, full, value });
    }
    if let Some(empty) = paths.iter().enumerate().find(|(i, _)| !leaves.iter().any(|l| l.path == *i)) {
        let path = empty.1;
        return Err(Error::FolderEmpty {
            annotation: path.annotation(),
            store: ctx.store.clone(),
            folder: path.folder.to_string(),
        });
    }
    leaves.sort_by(|a, b| (a.path, &a.full).cmp(&(b.path, &b.full)));
    Ok(leaves)
}

async fn read_all(ctx: &Ctx, session: &Arc<Session>, refs: &[(&PlanItem, &VaultRef)]) -> Result<Values, Error> {
    // Mounts: one look-up per first path segment, then by prefix (Vault refuses
    // mounts nested in mounts, so a known mount's prefix is conclusive).
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, r) in refs {
        let first = r.path.split('/').next().unwrap_or_default();
        let group = groups.entry(first).or_default();
        if !group.contains(&r.path.as_str()) {
            group.push(&r.path);
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    let mut mount_tasks = JoinSet::new();
    for paths in groups.values() {
        let (session, ctx, path) = (session.clone(), ctx.clone(), paths[0].to_owned());
        mount_tasks.spawn(async move {
            let r = retry(ctx.deadline, "mount look-up", || session.mount_of(&path)).await;
            (path, r)
        });
    }
    let mut failed: BTreeMap<String, Failure> = BTreeMap::new();
    while let Some(joined) = mount_tasks.join_next().await {
        let (path, r) = joined.map_err(|e| Error::Task { backend: "Vault", reason: e.to_string() })?;
        match r {
            Ok(m) => mounts.push(m),
            Err(f) => {
                failed.insert(path, f);
            }
        }
    }
    // Paths outside the mounts found so far (another mount under the same first
    // segment, rare): one look-up each.
    for (_, r) in refs {
        if !failed.contains_key(&r.path) && !mounts.iter().any(|m| m.relative(&r.path).is_some()) {
            match retry(ctx.deadline, "mount look-up", || session.mount_of(&r.path)).await {
                Ok(m) => mounts.push(m),
                Err(f) => {
                    failed.insert(r.path.clone(), f);
                }
            }
        }
    }
    let mut reads: Vec<(String, Option<u64>)> = Vec::new();
    for (item, r) in refs {
        let annotation = item.annotation();
        if let Some(f) = failed.get(&r.path) {
            return Err(Error::VaultMount {
                annotation,
                store: ctx.store.clone(),
                path: r.path.clone(),
                reason: f.reason.clone(),
            });
        }
        let mount = mounts.iter().find(|m| m.relative(&r.path).is_some()).ok_or_else(|| Error::VaultMount {
            annotation: annotation.clone(),
            store: ctx.store.clone(),
            path: r.path.clone(),
            reason: "the path is the mount itself, not a secret in it".to_owned(),
        })?;
        if !mount.is_kv() {
            return Err(Error::NotKv {
                annotation,
                store: ctx.store.clone(),
                path: r.path.clone(),
                mount_type: mount.kind.clone(),
            });
        }
        if mount.version == 1 && r.version.is_some() {
            return Err(Error::VersionOnKv1 {
                annotation,
                store: ctx.store.clone(),
                reference: r.to_string(),
                mount: mount.path.clone(),
            });
        }
        let key = (r.path.clone(), r.version);
        if !reads.contains(&key) {
            reads.push(key);
        }
    }

    let mut tasks = JoinSet::new();
    for (path, version) in reads {
        let mount = mounts.iter().find(|m| m.relative(&path).is_some()).cloned().expect("checked above");
        let (session, ctx) = (session.clone(), ctx.clone());
        tasks.spawn(async move {
            let rel = mount.relative(&path).unwrap_or_default().to_owned();
            let r = retry(ctx.deadline, "KV read", || session.read(&mount, &rel, version)).await;
            ((path, version), r)
        });
    }
    let mut raw: BTreeMap<(String, Option<u64>), Result<SecretString, Failure>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (key, r) = joined.map_err(|e| Error::Task { backend: "Vault", reason: e.to_string() })?;
        raw.insert(key, r);
    }

    let mut values = Values::new();
    for (item, r) in refs {
        let read = raw.get(&(r.path.clone(), r.version)).expect("every reference was read");
        let whole = read.as_ref().map_err(|f| Error::VaultRead {
            annotation: item.annotation(),
            store: ctx.store.clone(),
            reference: r.to_string(),
            reason: f.reason.clone(),
            class: f.class,
        })?;
        values.insert(item.name.clone(), item_value(item, &ctx.store, r, whole, r.field.as_deref())?);
    }
    Ok(values)
}

/// `current_version` of a KV v2 secret, from `GET <mount>/metadata/<path>`:
/// metadata only, never a value. `None` if the answer holds no version.
/// `answered` is told how every request ended (for counting), a request cut
/// by the deadline included.
pub async fn current_version(
    session: &Session,
    mount: &Mount,
    path: &str,
    deadline: tokio::time::Instant,
    answered: impl Fn(Result<(), Class>),
) -> Result<Option<u64>, Failure> {
    metadata(session, mount, path, deadline, answered).await.map(|body| version_of(&body))
}

/// `GET <mount>/metadata/<path>`, the whole answer (versions and their
/// deletion times; never a value).
pub async fn metadata(
    session: &Session,
    mount: &Mount,
    path: &str,
    deadline: tokio::time::Instant,
    answered: impl Fn(Result<(), Class>),
) -> Result<Value, Failure> {
    let rel = mount.relative(path).unwrap_or_default();
    let url = format!("{}/metadata/{rel}", mount.name());
    let answered = &answered;
    retry(deadline, "KV metadata", || {
        let request = session.get_json(&url);
        async move {
            // The same deadline as retry's own, polled first: a request it cuts is counted.
            let r = match tokio::time::timeout_at(deadline, request).await {
                Ok(r) => r,
                Err(_) => Err(Failure::new(Class::Timeout, "the deadline passed during the request")),
            };
            answered(r.as_ref().map(drop).map_err(|f| f.class));
            r
        }
    })
    .await
}

/// `data.current_version` of a KV v2 metadata answer.
fn version_of(body: &Value) -> Option<u64> {
    body.get("data")?.get("current_version")?.as_u64().filter(|&v| v > 0)
}

/// The current version of a KV v2 metadata answer if it holds data: not
/// deleted, not destroyed (what a read of the secret would give).
pub fn live_version_of(body: &Value) -> Option<u64> {
    let v = version_of(body)?;
    let current = body.get("data")?.get("versions")?.get(v.to_string())?;
    let deleted = current.get("deletion_time").and_then(Value::as_str).is_some_and(|t| !t.is_empty());
    let destroyed = current.get("destroyed").and_then(Value::as_bool).unwrap_or(false);
    (!deleted && !destroyed).then_some(v)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mounts_parse_kv_versions() {
        let v2 = json!({"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}});
        let m = Mount::from_response(&v2).unwrap();
        assert_eq!((m.path.as_str(), m.version, m.is_kv()), ("secret/", 2, true));
        assert_eq!(m.relative("secret/app/db"), Some("app/db"));
        assert_eq!(m.relative("secretx/app"), None);
        assert_eq!(m.name(), "secret");
        let v1 = json!({"data": {"path": "kv1/", "type": "kv", "options": null}});
        assert_eq!(Mount::from_response(&v1).unwrap().version, 1);
        let pki = json!({"data": {"path": "pki/", "type": "pki"}});
        assert!(!Mount::from_response(&pki).unwrap().is_kv());
        assert_eq!(Mount::from_response(&json!({"errors": []})), None);
    }

    #[test]
    fn a_deleted_or_destroyed_current_version_is_not_live() {
        let body = |deletion: &str, destroyed: bool| {
            json!({"data": {"current_version": 2, "versions": {
                "1": {"deletion_time": "", "destroyed": false},
                "2": {"deletion_time": deletion, "destroyed": destroyed}}}})
        };
        assert_eq!(live_version_of(&body("", false)), Some(2));
        assert_eq!(live_version_of(&body("2026-01-01T00:00:00Z", false)), None);
        assert_eq!(live_version_of(&body("", true)), None);
        assert_eq!(version_of(&body("2026-01-01T00:00:00Z", false)), Some(2), "a reference still sees the number");
        assert_eq!(live_version_of(&json!({"data": {"current_version": 0, "versions": {}}})), None, "metadata only");
    }

    #[test]
    fn a_ca_bundle_must_hold_a_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = |address: &str, ca: Option<&str>| VaultStore {
            address: address.into(),
            auth: keyhole_contract::store::VaultAuth { method: VaultAuthMethod::Jwt, mount: None },
            audience: "vault".into(),
            ca_bundle: ca.map(str::to_owned),
            namespace: None,
            default_role: None,
            rotation_role: None,
            allow: None,
            allow_generate: false,
        };
        assert!(http_client(&store("http://127.0.0.1:8200", None)).is_ok());
        let err = http_client(&store("https://vault:8200", Some("not a certificate"))).unwrap_err();
        assert!(err.to_string().contains("caBundle"), "{err}");
    }

    #[test]
    fn api_errors_keep_vaults_reason_and_classify_by_status() {
        let e = ClientError::APIError { code: 400, errors: vec!["invalid audience (aud) claim".into()] };
        let f = classify(&e, true);
        assert_eq!(f, Failure::new(Class::Auth, "invalid audience (aud) claim (HTTP 400)"));
        let e = ClientError::APIError { code: 403, errors: vec!["permission denied".into()] };
        assert_eq!(classify(&e, false).class, Class::Denied);
        let e = ClientError::APIError { code: 401, errors: vec![] };
        assert_eq!(classify(&e, false).class, Class::Auth);
        let e = ClientError::APIError { code: 404, errors: vec![] };
        assert_eq!(classify(&e, false), Failure::new(Class::NotFound, "not found (HTTP 404)"));
        let e = ClientError::APIError { code: 503, errors: vec![] };
        assert_eq!(classify(&e, false).class, Class::Transient);
    }
}
