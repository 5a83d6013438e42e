//! AWS Secrets Manager: the same web-identity session as SSM
//! ([`crate::ssm::assume_role`]), then BatchGetSecretValue for the current
//! versions, twenty secrets a call, and GetSecretValue for each pinned one (a
//! staging label or a version id), all concurrently. A binary secret is text
//! when it is UTF-8, else its bytes (written as they are; no #key, no template).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_secretsmanager::types::SecretValueEntry;
use keyhole_contract::plan::PlanItem;
use keyhole_contract::reference::{Reference, SecretRef, SecretVersion};
use keyhole_contract::store::SsmStore;
use secrecy::SecretString;
use tokio::task::JoinSet;
use zeroize::Zeroizing;

use crate::Ctx;
use crate::error::{Error, Joined};
use crate::retry::{Class, Failure};
use crate::ssm::{assume_role, classify, endpoint, http_client, retries, timeouts};
use crate::value::{Binary, Fetched, Values, item_value};

/// BatchGetSecretValue takes at most twenty ids in its SecretIdList.
pub const BATCH_SIZE: usize = 20;

fn refs(items: &[PlanItem]) -> Result<Vec<(&PlanItem, &SecretRef)>, Error> {
    items
        .iter()
        .map(|item| match &item.reference {
            Reference::AwsSecretsManager(r) => Ok((item, r)),
            other => Err(Error::WrongKind {
                annotation: item.annotation(),
                reference: other.kind().as_str(),
                store: "aws-secretsmanager",
            }),
        })
        .collect()
}

/// A Secrets Manager client with the credentials of `ctx.role`, assumed with
/// `ctx.token`; the SDK's standard retry, bounded by `ctx.deadline`.
pub async fn client(ctx: &Ctx, store: &SsmStore) -> Result<aws_sdk_secretsmanager::Client, Error> {
    let http = http_client();
    let creds = assume_role(ctx, store, &http).await?;
    let mut conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new(store.region.clone()))
        .credentials_provider(creds)
        .http_client(http)
        .retry_config(retries())
        .timeout_config(timeouts(ctx.deadline));
    if let Some(url) = endpoint(store.endpoint.as_deref(), "SECRETS_MANAGER") {
        conf = conf.endpoint_url(url);
    }
    Ok(aws_sdk_secretsmanager::Client::from_conf(conf.build()))
}

/// What one call brought back: values by the id or version asked for, and
/// the ones that do not exist.
#[derive(Default)]
struct Got {
    values: Vec<(Key, Raw)>,
    missing: Vec<Key>,
}

/// One secret at one version, as the references ask for it.
type Key = (String, SecretVersion);

#[derive(Clone)]
enum Raw {
    Text(SecretString),
    /// Binary data that is not UTF-8: written as its bytes.
    Bytes(Zeroizing<Vec<u8>>),
}

fn raw_of(text: Option<String>, binary: Option<aws_sdk_secretsmanager::primitives::Blob>) -> Raw {
    match (text, binary) {
        (Some(t), _) => Raw::Text(SecretString::from(t)),
        (None, Some(b)) => match String::from_utf8(b.into_inner()) {
            Ok(t) => Raw::Text(SecretString::from(t)),
            Err(e) => Raw::Bytes(Zeroizing::new(e.into_bytes())),
        },
        (None, None) => Raw::Text(SecretString::from(String::new())),
    }
}

/// BatchGetSecretValue of the current versions of `ids`.
async fn get_current(client: &aws_sdk_secretsmanager::Client, ids: &[String]) -> Result<Got, Failure> {
    let out = client
        .batch_get_secret_value()
        .set_secret_id_list(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| classify(&e))?;
    if out.next_token.is_some() {
        return Err(Failure::new(
            Class::Permanent,
            "BatchGetSecretValue answered with a next page, which keyhole does not ask for",
        ));
    }
    let mut got = Got::default();
    let entries: Vec<SecretValueEntry> = out.secret_values.unwrap_or_default();
    for e in entries {
        // Asked by name or by ARN (or both, in one call): the entry carries both.
        let asked: Vec<&String> = ids.iter().filter(|id| answers(id, e.name(), e.arn())).collect();
        let raw = raw_of(e.secret_string, e.secret_binary);
        for id in asked {
            got.values.push(((id.clone(), SecretVersion::Current), raw.clone()));
        }
    }
    for err in out.errors.unwrap_or_default() {
        let id = err.secret_id.unwrap_or_default();
        if err.error_code.as_deref() == Some("ResourceNotFoundException") {
            got.missing.push((id, SecretVersion::Current));
        } else {
            let reason = format!("{}: {}", err.error_code.unwrap_or_default(), err.message.unwrap_or_default());
            return Err(Failure::new(Class::Permanent, format!("{id}: {reason}")));
        }
    }
    for id in ids {
        let answered = got.values.iter().any(|((i, _), _)| i == id) || got.missing.iter().any(|(i, _)| i == id);
        if !answered {
            got.missing.push((id.clone(), SecretVersion::Current));
        }
    }
    Ok(got)
}

/// Whether an entry (its name and full ARN) answers `id`: the name, the full
/// ARN, or an ARN without the six random characters AWS appends.
fn answers(id: &str, name: Option<&str>, arn: Option<&str>) -> bool {
    if Some(id) == name || Some(id) == arn {
        return true;
    }
    arn.and_then(|a| a.strip_prefix(id))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// GetSecretValue of one pinned version.
async fn get_pinned(client: &aws_sdk_secretsmanager::Client, key: Key) -> Result<Got, Failure> {
    let (id, version) = &key;
    let call = client.get_secret_value().secret_id(id);
    let call = match version {
        SecretVersion::Current => call,
        SecretVersion::Stage(s) => call.version_stage(s),
        SecretVersion::Id(v) => call.version_id(v),
    };
    match call.send().await.map_err(|e| classify(&e)) {
        Ok(out) => Ok(Got { values: vec![(key, raw_of(out.secret_string, out.secret_binary))], missing: vec![] }),
        Err(f) if f.class == Class::NotFound => Ok(Got { values: vec![], missing: vec![key] }),
        Err(f) => Err(f),
    }
}

fn shown((id, version): &Key) -> String {
    SecretRef { id: id.clone(), version: version.clone(), key: None }.to_string()
}

pub async fn fetch(ctx: &Ctx, store: &SsmStore, items: &[PlanItem]) -> Result<Fetched, Error> {
    let refs = refs(items)?;
    let client = client(ctx, store).await?;
    let keys: BTreeSet<Key> = refs.iter().map(|(_, r)| (r.id.clone(), normal(&r.version))).collect();
    let current: Vec<String> = keys.iter().filter(|(_, v)| v.is_current()).map(|(id, _)| id.clone()).collect();

    let mut tasks: JoinSet<(Vec<Key>, Result<Got, Failure>)> = JoinSet::new();
    for chunk in current.chunks(BATCH_SIZE) {
        let (client, ids) = (client.clone(), chunk.to_vec());
        let asked = ids.iter().map(|id| (id.clone(), SecretVersion::Current)).collect();
        tasks.spawn(async move { (asked, get_current(&client, &ids).await) });
    }
    for key in keys.iter().filter(|(_, v)| !v.is_current()).cloned() {
        let client = client.clone();
        tasks.spawn(async move { (vec![key.clone()], get_pinned(&client, key).await) });
    }
    tracing::debug!(secrets = keys.len(), calls = tasks.len(), "fetching");

    let annotations_of = |asked: &[Key]| -> Joined {
        refs.iter()
            .filter(|(_, r)| asked.iter().any(|(id, v)| *id == r.id && *v == normal(&r.version)))
            .map(|(i, _)| i.annotation())
            .collect()
    };
    let mut by_key: BTreeMap<Key, Raw> = BTreeMap::new();
    let mut missing: Vec<Key> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (asked, result) = joined.map_err(|e| Error::Task { backend: "Secrets Manager", reason: e.to_string() })?;
        match result {
            Ok(got) => {
                missing.extend(got.missing);
                by_key.extend(got.values);
            }
            Err(f) => {
                return Err(Error::GetSecrets {
                    annotations: annotations_of(&asked),
                    store: ctx.store.clone(),
                    ids: asked.iter().map(shown).collect(),
                    reason: f.reason,
                });
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        return Err(Error::SecretsNotFound {
            annotations: annotations_of(&missing),
            store: ctx.store.clone(),
            ids: missing.iter().map(shown).collect(),
        });
    }

    let mut values = Values::new();
    let mut binary = Binary::new();
    for (item, r) in refs {
        let key = (r.id.clone(), normal(&r.version));
        let not_found = || Error::SecretsNotFound {
            annotations: Joined(vec![item.annotation()]),
            store: ctx.store.clone(),
            ids: Joined(vec![shown(&key)]),
        };
        match by_key.get(&key).ok_or_else(not_found)? {
            Raw::Text(raw) => {
                values.insert(item.name.clone(), item_value(item, &ctx.store, r, raw, r.key.as_deref())?);
            }
            Raw::Bytes(bytes) => match r.key {
                None => binary.push((item.name.clone(), bytes.clone())),
                Some(_) => {
                    return Err(Error::BinarySecret {
                        annotation: item.annotation(),
                        store: ctx.store.clone(),
                        id: r.id.clone(),
                    });
                }
            },
        };
    }
    Ok(Fetched { values, binary, leaves: Vec::new() })
}

/// `?version-stage=AWSCURRENT` is the current version: one key for both.
fn normal(v: &SecretVersion) -> SecretVersion {
    if v.is_current() { SecretVersion::Current } else { v.clone() }
}

/// The id of the version of `id` that holds `AWSCURRENT`: DescribeSecret,
/// metadata only, never a value. `Ok(None)`: the secret has no current version.
pub async fn current_version(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
    deadline: tokio::time::Instant,
) -> Result<Option<String>, Failure> {
    let call = client.describe_secret().secret_id(id).send();
    let out = match tokio::time::timeout_at(deadline, call).await {
        Ok(r) => r.map_err(|e| classify(&e))?,
        Err(_) => return Err(Failure::new(Class::Timeout, "timed out before the deadline")),
    };
    let stages = out.version_ids_to_stages.unwrap_or_default();
    Ok(stages
        .into_iter()
        .find(|(_, labels)| labels.iter().any(|l| l == keyhole_contract::reference::AWSCURRENT))
        .map(|(version, _)| version))
}

/// A client for the rotation controller's look-ups: its own session, kept
/// across polls.
pub use aws_sdk_secretsmanager::Client;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_answers_its_name_its_arn_and_its_partial_arn() {
        let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:shop/db-AbCdEf";
        let (name, full) = (Some("shop/db"), Some(arn));
        assert!(answers("shop/db", name, full));
        assert!(answers(arn, name, full));
        assert!(answers("arn:aws:secretsmanager:eu-west-1:1:secret:shop/db", name, full), "a partial ARN");
        assert!(!answers("arn:aws:secretsmanager:eu-west-1:1:secret:shop", name, full), "another secret's prefix");
        assert!(!answers("shop/db2", name, full));
    }
}
