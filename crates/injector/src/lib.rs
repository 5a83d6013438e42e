//! keyhole-injector: the init container. It runs the plan the webhook built from
//! the pod's annotations: logs in to the store with the pod's projected token,
//! fetches every value, renders the templates and writes all files at once, or
//! fails with one line in the termination log and nothing written.
//!
//! Values live in `SecretString` from arrival until written; no log line, error
//! or panic message carries one, nor the token.
#![forbid(unsafe_code)]

pub mod error;
pub mod output;
pub mod secret;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use keyhole_backends::value::Payload;
use keyhole_backends::{Ctx, generate, secretsmanager, ssm, value, vault};
use keyhole_contract::annotations::{self, InjectSpec};
use keyhole_contract::plan::PlanItem;
use keyhole_contract::{Plan, Store, names};
use tokio::time::Instant;
use tracing::Instrument;
use tracing::level_filters::LevelFilter;

pub use crate::error::{Error, LoadError, StoreRef};
pub use crate::secret::PodIdentity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Flags; every one can also come from its `KEYHOLE_*` env var.
#[derive(Parser)]
#[command(name = "keyhole-injector", version, about = "Fetches the planned secrets into the pod's tmpfs volume")]
pub struct Args {
    /// The plan as JSON, for use outside a pod.
    #[arg(long = "plan-json", env = names::PLAN_ENV, hide_env_values = true)]
    pub plan_json: Option<String>,
    /// A file holding the plan as JSON; wins over KEYHOLE_PLAN. In a pod, the
    /// webhook's `keyhole.dev/plan` annotation through a downward-API volume.
    #[arg(long, env = names::PLAN_FILE_ENV)]
    pub plan: Option<PathBuf>,
    /// SHA-256 (hex) the plan's text must have; the webhook sets it in the
    /// injector's env, which no one can change after admission.
    #[arg(long, env = names::PLAN_SHA256_ENV)]
    pub plan_sha256: Option<String>,
    /// Where the one-line failure reason goes.
    #[arg(long, env = "KEYHOLE_TERMINATION_LOG", default_value = names::TERMINATION_LOG)]
    pub termination_log: PathBuf,
    /// Total deadline in seconds, retries included; default: the plan's.
    #[arg(long, env = "KEYHOLE_DEADLINE")]
    pub deadline: Option<u64>,
    #[arg(long, env = names::POD_NAMESPACE_ENV)]
    pub pod_namespace: Option<String>,
    #[arg(long, env = names::POD_NAME_ENV)]
    pub pod_name: Option<String>,
    #[arg(long, env = names::POD_UID_ENV)]
    pub pod_uid: Option<String>,
    #[arg(long, env = names::POD_SERVICE_ACCOUNT_ENV)]
    pub pod_service_account: Option<String>,
    /// Level of keyhole's own logs. Dependencies never log: their debug output
    /// could carry a token or a value.
    #[arg(long, env = "KEYHOLE_LOG_LEVEL", default_value = "info")]
    pub log_level: LevelFilter,
    #[arg(long, env = "KEYHOLE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub values: usize,
    pub files: usize,
    /// What happened to the revision's Secret, for Secret output.
    pub secret: Option<SecretOutcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    /// This pod fetched the values and created the Secret.
    Created,
    /// This pod fetched the values, but another pod of the revision created the
    /// Secret first; its values are used.
    CreatedByAnother,
    /// The Secret was there: no backend call.
    Reused,
}

impl SecretOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretOutcome::Created => "created",
            SecretOutcome::CreatedByAnother => "created-by-another-pod",
            SecretOutcome::Reused => "reused",
        }
    }
}

/// The whole program: logs, the crypto provider, a one-thread runtime, the plan.
/// Exits non-zero when the run failed (it has already said why).
pub fn main(args: Args) -> std::process::ExitCode {
    args.init_logging();
    // One crypto provider for every TLS client, chosen here rather than by features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyhole-injector: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(args.run()) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

impl Args {
    /// JSON (or text) logs on stderr, keyhole's own events only.
    pub fn init_logging(&self) {
        let level = self.log_level;
        let filter = tracing_subscriber::EnvFilter::new(format!("keyhole_injector={level},keyhole_backends={level}"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
        let _ = match self.log_format {
            LogFormat::Json => {
                builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
            }
            LogFormat::Text => builder.compact().try_init(),
        };
    }

    /// Runs the plan. On failure the reason is logged and written to the
    /// termination log, and nothing is left in the output dir.
    pub async fn run(self) -> Result<Report, Error> {
        let Self {
            plan_json,
            plan,
            plan_sha256,
            termination_log,
            deadline,
            pod_namespace,
            pod_name,
            pod_uid,
            pod_service_account,
            log_level: _,
            log_format: _,
        } = self;
        let started = std::time::Instant::now();
        let loaded = load_plan(plan_json.as_deref(), plan.as_deref(), plan_sha256.as_deref());
        let (store, kind) = match &loaded {
            Ok(p) => (p.store_name.clone(), p.store.kind().as_str()),
            Err(_) => ("-".to_owned(), "-"),
        };
        let pod = format!("{}/{}", pod_namespace.as_deref().unwrap_or("-"), pod_name.as_deref().unwrap_or("-"));
        let span = tracing::info_span!("injector", store = %store, kind, pod = %pod, pod_uid = pod_uid.as_deref().unwrap_or("-"));
        let result = async {
            let plan = loaded?;
            let pod = PodIdentity {
                namespace: pod_namespace.as_deref(),
                name: pod_name.as_deref(),
                uid: pod_uid.as_deref(),
                service_account: pod_service_account.as_deref(),
            };
            execute(&plan, deadline, &pod).await
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(report) => tracing::info!(
                values = report.values,
                files = report.files,
                secret = report.secret.map(SecretOutcome::as_str).unwrap_or("-"),
                elapsed_ms,
                "done"
            ),
            Err(e) => {
                tracing::error!(error = %e, elapsed_ms, "failed");
                if let Err(io) = std::fs::write(&termination_log, e.termination_message()) {
                    tracing::warn!(path = %termination_log.display(), error = %io, "cannot write the termination log");
                }
            }
        }
        result
    }
}

fn load_plan(json: Option<&str>, file: Option<&Path>, sha256: Option<&str>) -> Result<Plan, LoadError> {
    let text = match (file, json) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?,
        (None, Some(json)) => json.to_owned(),
        (None, None) => return Err(LoadError::Missing),
    };
    if let Some(expected) = sha256 {
        let found = Plan::json_sha256(&text);
        if !found.eq_ignore_ascii_case(expected.trim()) {
            return Err(LoadError::Changed { expected: expected.trim().to_owned(), found });
        }
    }
    Ok(Plan::from_json(&text)?)
}

/// Fetches, renders and writes what `plan` asks for: files, a Secret, or both.
pub async fn execute(plan: &Plan, deadline_override: Option<u64>, pod: &PodIdentity<'_>) -> Result<Report, Error> {
    let store = StoreRef { name: plan.store_name.clone(), kind: plan.store.kind() };
    let seconds = deadline_override.unwrap_or(plan.deadline_seconds).max(1);
    let budget = Duration::from_secs(seconds);
    let mut deadline = Instant::now() + budget;
    tracing::info!(
        role = %plan.role,
        items = plan.items.len(),
        paths = plan.paths.len(),
        templates = plan.templates.len(),
        secret = plan.secret.is_some(),
        files = plan.output_dir.is_some(),
        deadline_s = seconds,
        "starting"
    );
    let target = match &plan.secret {
        Some(t) => {
            let keys = plan.items.iter().map(|i| i.name.clone()).chain(plan.templates.iter().map(|t| t.name.clone()));
            let mut target = secret::Target::new(t, pod, keys.collect(), plan.paths.len())
                .map_err(|e| Error::secret(&store, None, e))?;
            target.bind_revision(deadline).await.map_err(|e| Error::secret(&store, Some(&target), e))?;
            Some(target)
        }
        None => None,
    };
    let digest = target.as_ref().map(|t| plan.digest(&t.namespace, t.owner_uid())).unwrap_or_default();

    if let Some(t) = &target {
        let err = |e| Error::secret(&store, Some(t), e);
        // A later pod of the revision: the Secret holds its values; the backend
        // is not asked, so pods still start while it is down.
        let mut found = t.find(&digest, deadline).await.map_err(err)?;
        if found.is_none()
            && let secret::Claim::Theirs { holder, until } = t.claim(deadline, budget).await.map_err(err)?
        {
            tracing::info!(secret = %t.id(), holder = %holder, "another pod of this revision is fetching: waiting for its Secret");
            found = t.wait(&digest, until).await.map_err(err)?;
            if found.is_none() {
                // The wait spent this pod's time on another's claim: the fetch
                // gets a whole budget of its own.
                tracing::warn!(secret = %t.id(), holder = %holder, "its claim lapsed without a Secret: fetching");
                deadline = Instant::now() + budget;
            }
        }
        if let Some(data) = found {
            tracing::info!(secret = %t.id(), "found this revision's Secret: no backend call");
            let files = write_files(plan, &store, &data)?;
            let values = data.len().saturating_sub(plan.templates.len());
            return Ok(Report { values, files, secret: Some(SecretOutcome::Reused) });
        }
    }

    let (mut data, n_values) = fetch(plan, &store, deadline, seconds, pod.name).await?;
    let mut outcome = None;
    if let Some(t) = &target {
        let (winner, created) =
            t.create(&digest, data, deadline).await.map_err(|e| Error::secret(&store, Some(t), e))?;
        outcome = Some(if created { SecretOutcome::Created } else { SecretOutcome::CreatedByAnother });
        tracing::info!(secret = %t.id(), created, "the revision's Secret is in place");
        data = winner;
    }
    let files = write_files(plan, &store, &data)?;
    Ok(Report { values: n_values, files, secret: outcome })
}

/// Logs in, fetches every value and renders the templates: what to write, and
/// how many of it are values (the rest are rendered templates).
async fn fetch(
    plan: &Plan,
    store: &StoreRef,
    deadline: Instant,
    seconds: u64,
    pod_name: Option<&str>,
) -> Result<(Vec<(String, Payload)>, usize), Error> {
    let token = keyhole_backends::read_token(Path::new(&plan.token_path)).map_err(|reason| {
        keyhole_backends::Error::Token { store: store.clone(), path: plan.token_path.clone(), reason }
    })?;
    let ctx = Ctx {
        store: store.clone(),
        role: plan.role.clone(),
        token,
        deadline,
        session: keyhole_backends::session_name(pod_name.unwrap_or("injector")),
    };
    let read = || async {
        match &plan.store {
            Store::AwsSsm(s) => ssm::fetch(&ctx, s, &plan.items, &plan.paths).await,
            Store::AwsSecretsManager(s) => secretsmanager::fetch(&ctx, s, &plan.items).await,
            Store::Vault(v) => vault::fetch(&ctx, v, &plan.items, &plan.paths).await,
        }
    };
    let fetch = async {
        // A missing value with a recipe is made here (writes never overwrite,
        // so racing pods make it once) and read like any value: a loser reads
        // the winner's. Only values the read said are missing are written;
        // Vault names one missing path a read, so this may take a round each.
        let mut result = read().await;
        let mut tried: Vec<&str> = Vec::new();
        loop {
            let missing: Vec<&PlanItem> = match &result {
                Err(e) if e.is_missing() => plan
                    .items
                    .iter()
                    .filter(|i| i.generate.is_some() && !tried.contains(&i.name.as_str()))
                    .filter(|i| e.says_missing(&i.reference.to_string()))
                    .collect(),
                _ => break,
            };
            if missing.is_empty() {
                break;
            }
            tracing::info!(values = missing.len(), "values with a recipe are missing: making them");
            tried.extend(missing.iter().map(|i| i.name.as_str()));
            let failed = generate::write_missing(&ctx, &plan.store, &missing).await?;
            result = read().await;
            if let Err(again) = &result {
                let lost = failed.into_iter().find_map(|(name, f)| {
                    let item = missing.iter().find(|i| i.name == name)?;
                    again.says_missing(&item.reference.to_string()).then_some((item, f))
                });
                if let Some((item, f)) = lost {
                    return Err(keyhole_backends::Error::Generate {
                        annotation: item.annotation(),
                        store: ctx.store.clone(),
                        reference: item.reference.to_string(),
                        reason: f.reason,
                    });
                }
            }
        }
        result
    };
    // A backstop only: every call and retry already stops at the deadline, with
    // a better reason than this one.
    let backstop = deadline + Duration::from_secs(2);
    let fetched = tokio::time::timeout_at(backstop, fetch).await.map_err(|_| Error::Deadline {
        store: store.clone(),
        seconds,
        doing: "fetching the values",
    })??;
    let templates: Vec<&str> = plan.templates.iter().map(|t| t.name.as_str()).collect();
    let (values, binary) = value::with_leaves(fetched, &plan.paths, &templates, plan.secret.is_some(), store)?;
    let rendered = output::render(&plan.templates, &values).map_err(|e| Error::Template {
        annotation: InjectSpec::template_annotation(&e.name),
        store: store.clone(),
        reason: e.reason,
    })?;
    let mut data: Vec<(String, Payload)> = values.into_iter().map(|(k, v)| (k, Payload::Text(v))).collect();
    data.extend(binary.into_iter().map(|(k, v)| (k, Payload::Bytes(v))));
    let n_values = data.len();
    data.extend(rendered.into_iter().map(|(k, v)| (k, Payload::Text(v))));
    Ok((data, n_values))
}

/// Writes the files if the plan has an output dir; how many.
fn write_files(plan: &Plan, store: &StoreRef, files: &[(String, Payload)]) -> Result<usize, Error> {
    let Some(dir) = &plan.output_dir else {
        return Ok(0);
    };
    output::write_atomic(Path::new(dir), files, plan.file_mode).map_err(|e| {
        let annotations = match &e.name {
            Some(n) if plan.items.iter().any(|i| &i.name == n) => vec![InjectSpec::secret_annotation(n)],
            Some(n) if plan.templates.iter().any(|t| &t.name == n) => vec![InjectSpec::template_annotation(n)],
            // A folder's leaf.
            Some(_) => plan.paths.iter().map(|p| p.annotation()).collect(),
            None => vec![annotations::OUTPUT.to_owned()],
        };
        Error::Write {
            annotations: error::Joined(annotations),
            store: store.clone(),
            dir: dir.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_plan_says_how_to_give_one() {
        let err = load_plan(None, None, None).unwrap_err().to_string();
        assert!(err.contains("keyhole.dev/plan") && err.contains("--plan"), "{err}");
        let err = load_plan(Some("{}"), None, None).unwrap_err().to_string();
        assert!(err.contains("not valid JSON of keyhole's plan"), "{err}");
    }

    #[test]
    fn a_plan_changed_after_admission_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(names::PLAN_FILE);
        std::fs::write(&file, "{}").unwrap();
        let digest = Plan::json_sha256("{}");
        let err = load_plan(None, Some(&file), Some(&digest)).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "the control (same digest) gets as far as parsing: {err}");
        std::fs::write(&file, "{} ").unwrap();
        let err = load_plan(None, Some(&file), Some(&digest)).unwrap_err().to_string();
        assert!(err.contains("keyhole.dev/plan changed after admission"), "{err}");
    }
}
