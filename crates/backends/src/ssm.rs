//! AWS SSM Parameter Store: credentials from an explicit, unsigned STS
//! AssumeRoleWithWebIdentity with the projected token, then GetParameters in
//! batches of ten, concurrently, always with decryption.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::ParameterStringFilter;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use keyhole_contract::annotations::MAX_PATH_LEAVES;
use keyhole_contract::plan::{PlanItem, PlanPath};
use keyhole_contract::reference::{FolderRef, Reference, SsmRef, SsmSelector};
use keyhole_contract::store::SsmStore;
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinSet;

use crate::Ctx;
use crate::error::{Error, Joined};
use crate::retry::{Class, Failure, retry, transport_reason};
use crate::value::{Fetched, FolderFailure, Leaf, Values, item_value};

/// SSM refuses more than ten names in one GetParameters.
pub const BATCH_SIZE: usize = 10;

/// One name as GetParameters takes it (`name`, `name:3`, `name:label`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub selected: String,
    pub name: String,
    pub selector: Option<SsmSelector>,
}

impl Request {
    pub fn new(r: &SsmRef) -> Self {
        Request { selected: r.selected_name(), name: r.name.clone(), selector: r.selector.clone() }
    }
}

/// The distinct requests, at most [`BATCH_SIZE`] per batch, and never two for one
/// parameter name in the same batch: results carry the name and version but (on
/// moto, and for a label) not what was asked, so one name per batch keeps the
/// matching unambiguous.
pub fn batches<'a>(refs: impl IntoIterator<Item = &'a SsmRef>) -> Vec<Vec<Request>> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Vec<Request>> = Vec::new();
    for r in refs {
        let req = Request::new(r);
        if !seen.insert(req.selected.clone()) {
            continue;
        }
        match out.iter_mut().find(|b| b.len() < BATCH_SIZE && b.iter().all(|q| q.name != req.name)) {
            Some(batch) => batch.push(req),
            None => out.push(vec![req]),
        }
    }
    out
}

/// What GetParameters said about one parameter, its value aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub name: String,
    pub version: i64,
    /// Real AWS says `:3` or `:label` here; moto says nothing.
    pub selector: Option<String>,
}

/// For each request of a batch, the index of the result that answers it.
pub fn match_results(batch: &[Request], got: &[Got]) -> Vec<Option<usize>> {
    batch
        .iter()
        .map(|req| {
            got.iter().position(|g| {
                let name_ok = g.name == req.name || g.name == req.selected;
                let selector_ok = match (&g.selector, &req.selector) {
                    (Some(s), Some(SsmSelector::Version(v))) => s.strip_prefix(':') == Some(&v.to_string()),
                    (Some(s), Some(SsmSelector::Label(l))) => s.strip_prefix(':') == Some(l.as_str()),
                    (Some(_), None) => true,
                    (None, Some(SsmSelector::Version(v))) => u64::try_from(g.version).ok() == Some(*v),
                    // One request per name in a batch: the one result for the name is it.
                    (None, Some(SsmSelector::Label(_))) | (None, None) => true,
                };
                name_ok && selector_ok
            })
        })
        .collect()
}

/// Which requests SSM listed in InvalidParameters (it lists what was asked).
pub fn invalid_requests(batch: &[Request], invalid: &[String]) -> Vec<usize> {
    (0..batch.len()).filter(|&i| invalid.iter().any(|n| *n == batch[i].selected || *n == batch[i].name)).collect()
}

fn ssm_refs(items: &[PlanItem]) -> Result<Vec<(&PlanItem, &SsmRef)>, Error> {
    items
        .iter()
        .map(|item| match &item.reference {
            Reference::AwsSsm(r) => Ok((item, r)),
            other => Err(Error::WrongKind {
                annotation: item.annotation(),
                reference: other.kind().as_str(),
                store: "aws-ssm",
            }),
        })
        .collect()
}

/// The HTTPS client of both AWS clients: rustls on ring, like the rest of keyhole.
pub fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// The store's endpoint, else `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`,
/// else the SDK's default for the region.
pub(crate) fn endpoint(configured: Option<&str>, service: &str) -> Option<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var(format!("AWS_ENDPOINT_URL_{service}")).ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|s| !s.trim().is_empty())
}

/// Each attempt at most 10 s; each operation, retries included, ends at the deadline.
pub(crate) fn timeouts(deadline: tokio::time::Instant) -> aws_sdk_ssm::config::timeout::TimeoutConfig {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    aws_sdk_ssm::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10).min(left))
        .operation_timeout(left)
        .build()
}

/// The SDK's standard retry: it knows AWS's throttling and transient errors
/// (keyhole does not list them again) and spends a retry quota, so a storm of
/// pods backs off together. Five attempts (at most ~0.8 s of backoff) end with
/// the last attempt's reason ("connection refused") well inside any deadline;
/// the operation timeout stops it at the deadline all the same.
pub(crate) fn retries() -> aws_sdk_ssm::config::retry::RetryConfig {
    aws_sdk_ssm::config::retry::RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(2))
}

/// SSM's "no such parameter, version or label". GetParameters' model declares
/// none of them (only GetParameter's does), so they arrive unmodelled and are
/// told apart by the code in the error's metadata.
/// Secrets Manager's is `ResourceNotFoundException` (a secret, or the version
/// asked for).
const NOT_FOUND_CODES: &[&str] =
    &["ParameterNotFound", "ParameterVersionNotFound", "ParameterVersionLabelNotFound", "ResourceNotFoundException"];
/// Credentials AWS no longer takes (expired or unknown session keys): a new
/// session helps, unlike for [`DENIED_CODES`], where the role's policy refuses.
const SESSION_CODES: &[&str] =
    &["ExpiredTokenException", "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException"];
const DENIED_CODES: &[&str] = &["AccessDeniedException", "AccessDenied"];

/// Reduces an SDK error, after the SDK's own retries, to a reason that is safe
/// to print (the service's code and message, or the transport's I/O error), and
/// tells "not found", "denied" and "credentials no longer taken" apart: keyhole
/// still runs [`retry`] around STS for its one retry of a refused token, and the
/// rotation controller keeps its session unless the credentials are at fault.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code();
            let reason = match (code, ctx.err().message()) {
                (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
                (Some(c), _) => c.to_owned(),
                (None, _) => format!("HTTP {status}"),
            };
            let class = match code {
                Some(c) if NOT_FOUND_CODES.contains(&c) => Class::NotFound,
                Some(c) if SESSION_CODES.contains(&c) => Class::Auth,
                Some(c) if DENIED_CODES.contains(&c) => Class::Denied,
                _ => Class::Permanent,
            };
            Failure::new(class, reason)
        }
        SdkError::DispatchFailure(d) => {
            let reason = transport_reason(err).unwrap_or_else(|| {
                if d.is_timeout() { "timed out".to_owned() } else { "the request could not be sent".to_owned() }
            });
            Failure::new(if d.is_timeout() { Class::Timeout } else { Class::Permanent }, reason)
        }
        SdkError::TimeoutError(_) => Failure::new(Class::Timeout, "timed out before the deadline"),
        SdkError::ResponseError(_) => Failure::new(
            Class::Permanent,
            transport_reason(err).unwrap_or_else(|| "the response could not be read".to_owned()),
        ),
        _ => Failure::new(Class::Permanent, "the request could not be built"),
    }
}

/// STS's answer, by its modelled errors: a token the identity provider rejected
/// is tried once more (minted a moment ago, it may not be valid yet where STS's
/// clock is behind), an unreachable identity provider is transient; the SDK has
/// already retried throttling and 5xx.
fn classify_sts(
    err: &SdkError<aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError, HttpResponse>,
) -> Failure {
    let mut failure = classify(err);
    if let Some(e) = err.as_service_error() {
        if e.is_invalid_identity_token_exception() || e.is_idp_rejected_claim_exception() {
            failure.class = Class::Auth;
        } else if e.is_idp_communication_error_exception() {
            failure.class = Class::Transient;
        }
    }
    failure
}

/// AssumeRoleWithWebIdentity, unsigned, with the projected token.
pub async fn assume_role(
    ctx: &Ctx,
    store: &SsmStore,
    http: &SharedHttpClient,
) -> Result<aws_credential_types::Credentials, Error> {
    let mut conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(store.region.clone()))
        .http_client(http.clone())
        .retry_config(retries())
        .timeout_config(timeouts(ctx.deadline));
    if let Some(url) = endpoint(store.sts_endpoint.as_deref(), "STS") {
        conf = conf.endpoint_url(url);
    }
    let sts = aws_sdk_sts::Client::from_conf(conf.build());
    let session = &ctx.session;
    let fail = |reason: String, class: Class| Error::AssumeRole {
        store: ctx.store.clone(),
        role: ctx.role.clone(),
        reason,
        class,
    };
    let out = retry(ctx.deadline, "AssumeRoleWithWebIdentity", || {
        let call = sts
            .assume_role_with_web_identity()
            .role_arn(&ctx.role)
            .role_session_name(session)
            .web_identity_token(ctx.token.expose_secret());
        async move { call.send().await.map_err(|e| classify_sts(&e)) }
    })
    .await
    .map_err(|f| fail(f.reason, f.class))?;
    let c = out.credentials.ok_or_else(|| fail("STS returned no credentials".to_owned(), Class::Permanent))?;
    Ok(aws_credential_types::Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        None,
        "keyhole-web-identity",
    ))
}

/// What one batch brought back.
struct BatchOut {
    batch: Vec<Request>,
    values: Vec<Option<SecretString>>,
    invalid: Vec<usize>,
}

async fn get_batch(client: &aws_sdk_ssm::Client, batch: &[Request], ctx: &Ctx) -> Result<BatchOut, Failure> {
    let names: Vec<String> = batch.iter().map(|r| r.selected.clone()).collect();
    let result =
        client.get_parameters().set_names(Some(names)).with_decryption(true).send().await.map_err(|e| classify(&e));
    let out = match result {
        Ok(out) => out,
        // A missing label (or version, on some servers) fails the whole call: ask
        // for each name alone to tell which one it was.
        Err(f) if f.class == Class::NotFound && batch.len() > 1 => {
            let mut values = Vec::with_capacity(batch.len());
            let mut invalid = Vec::new();
            for (i, req) in batch.iter().enumerate() {
                let one = Box::pin(get_batch(client, std::slice::from_ref(req), ctx)).await?;
                if one.invalid.is_empty() {
                    values.extend(one.values);
                } else {
                    values.push(None);
                    invalid.push(i);
                }
            }
            return Ok(BatchOut { batch: batch.to_vec(), values, invalid });
        }
        Err(f) if f.class == Class::NotFound => {
            return Ok(BatchOut { batch: batch.to_vec(), values: vec![None], invalid: vec![0] });
        }
        Err(f) => return Err(f),
    };

    let mut invalid = invalid_requests(batch, out.invalid_parameters.as_deref().unwrap_or_default());
    let mut got = Vec::new();
    let mut raw = Vec::new();
    for p in out.parameters.unwrap_or_default() {
        got.push(Got { name: p.name.unwrap_or_default(), version: p.version, selector: p.selector });
        raw.push(p.value.map(SecretString::from));
    }
    let matched = match_results(batch, &got);
    let mut values = Vec::with_capacity(batch.len());
    for (i, m) in matched.into_iter().enumerate() {
        match m.and_then(|j| raw[j].clone()) {
            Some(v) => values.push(Some(v)),
            None => {
                values.push(None);
                if !invalid.contains(&i) {
                    invalid.push(i);
                }
            }
        }
    }
    invalid.sort_unstable();
    Ok(BatchOut { batch: batch.to_vec(), values, invalid })
}

/// An SSM client with the credentials of `ctx.role`, assumed with `ctx.token`;
/// the SDK's standard retry, bounded by `ctx.deadline`.
pub async fn client(ctx: &Ctx, store: &SsmStore) -> Result<aws_sdk_ssm::Client, Error> {
    let http = http_client();
    let creds = assume_role(ctx, store, &http).await?;
    let mut conf = aws_sdk_ssm::Config::builder()
        .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
        .region(aws_sdk_ssm::config::Region::new(store.region.clone()))
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(retries())
        .timeout_config(timeouts(ctx.deadline));
    if let Some(url) = endpoint(store.endpoint.as_deref(), "SSM") {
        conf = conf.endpoint_url(url);
    }
    Ok(aws_sdk_ssm::Client::from_conf(conf.build()))
}

/// Every leaf of `folder` with its value (GetParametersByPath with
/// decryption, ten a page, page after page), at most `max`: one more is an
/// error, and no page is asked for after it.
pub async fn get_folder(
    client: &aws_sdk_ssm::Client,
    folder: &FolderRef,
    max: usize,
) -> Result<Vec<(String, SecretString)>, FolderFailure> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = client
            .get_parameters_by_path()
            .path(&folder.path)
            .recursive(folder.recursive)
            .with_decryption(true)
            .max_results(BATCH_SIZE as i32)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| FolderFailure::Call(classify(&e)))?;
        for p in page.parameters.unwrap_or_default() {
            if let (Some(name), Some(value)) = (p.name, p.value) {
                out.push((name, SecretString::from(value)));
            }
        }
        if out.len() > max {
            return Err(FolderFailure::TooBig);
        }
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) => next = Some(t),
            None => return Ok(out),
        }
    }
}

/// The items' values and the folders' leaves, on one session: the folders'
/// pages run beside the items' batches.
pub async fn fetch(ctx: &Ctx, store: &SsmStore, items: &[PlanItem], paths: &[PlanPath]) -> Result<Fetched, Error> {
    let refs = ssm_refs(items)?;
    let client = client(ctx, store).await?;
    let mut folders = JoinSet::new();
    for (index, path) in paths.iter().enumerate() {
        let (client, path) = (client.clone(), path.clone());
        folders.spawn(async move {
            let r = get_folder(&client, &path.folder, MAX_PATH_LEAVES).await;
            (index, path, r)
        });
    }
    let values = fetch_items(ctx, &client, refs).await?;
    let mut leaves = Vec::new();
    let mut done = Vec::new();
    while let Some(joined) = folders.join_next().await {
        done.push(joined.map_err(|e| Error::Task { backend: "SSM", reason: e.to_string() })?);
    }
    done.sort_by_key(|(index, _, _)| *index);
    for (index, path, r) in done {
        let found = r.map_err(|f| f.error(&path, &ctx.store))?;
        if found.is_empty() {
            return Err(Error::FolderEmpty {
                annotation: path.annotation(),
                store: ctx.store.clone(),
                folder: path.folder.to_string(),
            });
        }
        leaves.extend(found.into_iter().map(|(full, value)| Leaf { path: index, full, value }));
    }
    Ok(Fetched { values, binary: Vec::new(), leaves })
}

async fn fetch_items(
    ctx: &Ctx,
    client: &aws_sdk_ssm::Client,
    refs: Vec<(&PlanItem, &SsmRef)>,
) -> Result<Values, Error> {
    let batches = batches(refs.iter().map(|(_, r)| *r));
    tracing::debug!(parameters = batches.iter().map(Vec::len).sum::<usize>(), batches = batches.len(), "fetching");
    let mut tasks = JoinSet::new();
    for (index, batch) in batches.into_iter().enumerate() {
        let client = client.clone();
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let r = get_batch(&client, &batch, &ctx).await;
            (index, batch, r)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.map_err(|e| Error::Task { backend: "SSM", reason: e.to_string() })?);
    }
    outcomes.sort_by_key(|(index, _, _)| *index);

    let annotations_of = |selected: &[&str]| -> Joined {
        refs.iter()
            .filter(|(_, r)| selected.contains(&r.selected_name().as_str()))
            .map(|(i, _)| i.annotation())
            .collect()
    };
    let mut by_name: BTreeMap<String, SecretString> = BTreeMap::new();
    let mut invalid_names: Vec<String> = Vec::new();
    for (_, batch, result) in outcomes {
        let out = match result {
            Ok(out) => out,
            Err(f) => {
                let selected: Vec<&str> = batch.iter().map(|r| r.selected.as_str()).collect();
                return Err(Error::GetParameters {
                    annotations: annotations_of(&selected),
                    store: ctx.store.clone(),
                    names: selected.iter().map(|s| s.to_string()).collect(),
                    reason: f.reason,
                });
            }
        };
        for &i in &out.invalid {
            invalid_names.push(out.batch[i].selected.clone());
        }
        for (req, value) in out.batch.into_iter().zip(out.values) {
            if let Some(v) = value {
                by_name.insert(req.selected, v);
            }
        }
    }
    if !invalid_names.is_empty() {
        let selected: Vec<&str> = invalid_names.iter().map(String::as_str).collect();
        return Err(Error::ParametersNotFound {
            annotations: annotations_of(&selected),
            store: ctx.store.clone(),
            names: Joined(invalid_names),
        });
    }

    let mut values = Values::new();
    for (item, r) in refs {
        let raw = by_name.get(&r.selected_name()).ok_or_else(|| Error::ParametersNotFound {
            annotations: Joined(vec![item.annotation()]),
            store: ctx.store.clone(),
            names: Joined(vec![r.selected_name()]),
        })?;
        values.insert(item.name.clone(), item_value(item, &ctx.store, r, raw, r.key.as_deref())?);
    }
    Ok(values)
}

/// PutParameter, SecureString, `Overwrite=false`: made only if it does not
/// exist, so two pods racing make it once. A refused write (it exists) is an
/// `Err` like any other; the caller reads again.
pub async fn put_if_absent(client: &aws_sdk_ssm::Client, name: &str, value: &SecretString) -> Result<(), Failure> {
    client
        .put_parameter()
        .name(name)
        .value(value.expose_secret())
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(false)
        .send()
        .await
        .map(drop)
        .map_err(|e| classify(&e))
}

/// SSM takes at most 50 values in one ParameterStringFilter, and returns at
/// most 50 results a page.
pub const NAMES_PER_DESCRIBE: usize = 50;

/// The current version of each of `names` (at most [`NAMES_PER_DESCRIBE`]):
/// DescribeParameters with a Name/Equals filter, every page. Metadata only,
/// never a value. `answered` is told how every request ended (for counting).
pub async fn versions(
    client: &aws_sdk_ssm::Client,
    names: &[String],
    deadline: tokio::time::Instant,
    answered: impl Fn(Result<(), Class>),
) -> Result<BTreeMap<String, i64>, Failure> {
    let filter = ParameterStringFilter::builder().key("Name").option("Equals").set_values(Some(names.to_vec())).build();
    match describe(client, filter, usize::MAX, deadline, answered).await {
        Ok(found) => Ok(found),
        Err(FolderFailure::Call(f)) => Err(f),
        Err(_) => Err(Failure::new(Class::Permanent, "more parameters than were asked for")),
    }
}

/// The current version of every parameter in `folder` (at most `max`; one
/// more is [`FolderFailure::TooBig`]): DescribeParameters with a Path filter
/// (`Recursive` or `OneLevel`), every page. Metadata only, never a value.
pub async fn folder_versions(
    client: &aws_sdk_ssm::Client,
    folder: &FolderRef,
    max: usize,
    deadline: tokio::time::Instant,
    answered: impl Fn(Result<(), Class>),
) -> Result<BTreeMap<String, i64>, FolderFailure> {
    let option = if folder.recursive { "Recursive" } else { "OneLevel" };
    let filter = ParameterStringFilter::builder().key("Path").option(option).values(&folder.path).build();
    describe(client, filter, max, deadline, answered).await
}

/// DescribeParameters with one filter, page after page, each page within
/// `deadline`: name -> version, at most `max` (one more is an error, and no
/// page is asked for after it).
async fn describe(
    client: &aws_sdk_ssm::Client,
    filter: Result<ParameterStringFilter, aws_sdk_ssm::error::BuildError>,
    max: usize,
    deadline: tokio::time::Instant,
    answered: impl Fn(Result<(), Class>),
) -> Result<BTreeMap<String, i64>, FolderFailure> {
    let filter = filter.map_err(|e| FolderFailure::Call(Failure::new(Class::Permanent, e.to_string())))?;
    let mut found = BTreeMap::new();
    let mut next: Option<String> = None;
    loop {
        let call = client
            .describe_parameters()
            .parameter_filters(filter.clone())
            .max_results(NAMES_PER_DESCRIBE as i32)
            .set_next_token(next.take())
            .customize()
            .config_override(aws_sdk_ssm::config::Config::builder().timeout_config(timeouts(deadline)));
        let page = call.send().await.map_err(|e| classify(&e));
        answered(page.as_ref().map(drop).map_err(|f| f.class));
        let page = page.map_err(FolderFailure::Call)?;
        for p in page.parameters.unwrap_or_default() {
            if let Some(n) = p.name {
                found.insert(n, p.version);
            }
        }
        if found.len() > max {
            return Err(FolderFailure::TooBig);
        }
        match page.next_token.filter(|t| !t.is_empty()) {
            Some(t) => next = Some(t),
            None => return Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(raw: &str) -> SsmRef {
        SsmRef::parse(raw).unwrap()
    }

    #[test]
    fn batches_hold_ten_distinct_names_at_most() {
        let refs: Vec<SsmRef> = (0..25).map(|i| r(&format!("/p/{i}"))).collect();
        let b = batches(&refs);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(b[2][4].selected, "/p/24");
    }

    #[test]
    fn batches_dedupe_and_split_one_name_with_many_selectors() {
        let refs = vec![r("/a"), r("/a#user"), r("/a:1"), r("/a:stable"), r("/b"), r("/a:1#pw")];
        let b = batches(&refs);
        let sel: Vec<Vec<&str>> = b.iter().map(|b| b.iter().map(|q| q.selected.as_str()).collect()).collect();
        assert_eq!(sel, vec![vec!["/a", "/b"], vec!["/a:1"], vec!["/a:stable"]]);
    }

    #[test]
    fn results_match_by_name_and_version_in_any_order() {
        let batch = vec![Request::new(&r("/a:2")), Request::new(&r("/b:stable")), Request::new(&r("/c"))];
        let got = vec![
            Got { name: "/c".into(), version: 7, selector: None },
            Got { name: "/b".into(), version: 3, selector: None },
            Got { name: "/a".into(), version: 2, selector: None },
        ];
        assert_eq!(match_results(&batch, &got), vec![Some(2), Some(1), Some(0)]);
        // A result for another version does not answer a pinned request.
        let wrong = vec![Got { name: "/a".into(), version: 3, selector: None }];
        assert_eq!(match_results(&batch[..1], &wrong), vec![None]);
        // Real AWS's Selector is used when present.
        let aws = vec![Got { name: "/b".into(), version: 3, selector: Some(":stable".into()) }];
        assert_eq!(match_results(&batch[1..2], &aws), vec![Some(0)]);
        let other_label = vec![Got { name: "/b".into(), version: 3, selector: Some(":beta".into()) }];
        assert_eq!(match_results(&batch[1..2], &other_label), vec![None]);
    }

    #[test]
    fn invalid_parameters_map_back_to_requests() {
        let batch = vec![Request::new(&r("/a:9")), Request::new(&r("/b")), Request::new(&r("/c:x"))];
        assert_eq!(invalid_requests(&batch, &["/a:9".into(), "/c:x".into()]), vec![0, 2]);
        assert_eq!(invalid_requests(&batch, &["/b".into()]), vec![1]);
    }

    #[test]
    fn expired_credentials_are_told_from_a_denied_path() {
        use aws_sdk_ssm::error::ErrorMetadata;
        use aws_sdk_ssm::operation::describe_parameters::DescribeParametersError;
        let answer = |code: &str| {
            let err = DescribeParametersError::generic(ErrorMetadata::builder().code(code).message("m").build());
            let raw = HttpResponse::new(400.try_into().unwrap(), "".into());
            classify(&SdkError::service_error(err, raw))
        };
        assert_eq!(answer("ExpiredTokenException"), Failure::new(Class::Auth, "ExpiredTokenException: m"));
        assert_eq!(answer("AccessDeniedException").class, Class::Denied);
        assert_eq!(answer("ParameterNotFound").class, Class::NotFound);
        assert_eq!(answer("ValidationException").class, Class::Permanent);
    }

    #[test]
    fn endpoint_prefers_the_store() {
        assert_eq!(endpoint(Some("http://x"), "SSM").as_deref(), Some("http://x"));
    }
}
