//! The thin HTTP layer: AdmissionReview in, AdmissionReview out. Always 200 with
//! the request's uid for anything the API server sent as a review; 400 for bytes
//! that are not one. Never logs the object: only its identity and the outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_contract::{Problems, WorkloadKind, names};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::App;
use crate::metrics::{EndpointLabels, ReviewLabels};
use crate::mutate::{Mutation, mutate};
use crate::slim::{PodView, SlimRequest, SlimReview, WorkloadView};

/// The largest review keyhole reads. The API server takes request bodies of at
/// most 3 MiB (`MaxRequestBodyBytes`) and stores objects of at most 1.5 MiB
/// (etcd's default); a review carries the object as JSON (which can be larger
/// than the protobuf a client sent) and, on UPDATE, the stored old object too:
/// 3 + 1.5 MiB plus the envelope, with room to spare, is 6 MiB.
pub const MAX_BODY: usize = 6 << 20;
/// Reviews up to this size (by Content-Length) take the ordinary lane; larger
/// ones, and bodies of unknown length, wait for one of the few large slots, so
/// a flood of huge reviews can neither exhaust memory nor queue ahead of
/// ordinary ones. A pod of 100 containers is under 100 KiB.
pub const SMALL_BODY: usize = 512 << 10;
/// The longest denial keyhole sends: `kubectl` shows it whole, and a message
/// built from what a review holds must not grow with it.
pub const MAX_MESSAGE: usize = 4096;

pub async fn mutate_handler(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let response = match read::<SlimReview>(&app, &headers, body).await {
        Err(resp) => resp,
        Ok(SlimReview { request: None }) => no_request(),
        Ok(SlimReview { request: Some(req) }) => review_pod(&app, req),
    };
    app.metrics.latency.get_or_create(&EndpointLabels { endpoint: "mutate" }).observe(start.elapsed().as_secs_f64());
    response
}

pub async fn validate_handler(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let start = Instant::now();
    let response = match read::<SlimReview<WorkloadView>>(&app, &headers, body).await {
        Err(resp) => resp,
        Ok(SlimReview { request: None }) => no_request(),
        Ok(SlimReview { request: Some(req) }) => review_workload(&app, req),
    };
    app.metrics.latency.get_or_create(&EndpointLabels { endpoint: "validate" }).observe(start.elapsed().as_secs_f64());
    response
}

/// Who a review is about, for its one log line. One event per review carries
/// every field: a span per review cost more than the rest of the logging.
struct Who<'a> {
    endpoint: &'static str,
    uid: &'a str,
    kind: &'a str,
    namespace: &'a str,
    name: String,
    operation: &'a str,
    dry_run: bool,
}

impl Who<'_> {
    fn log(&self, outcome: &'static str, detail: &dyn std::fmt::Display) {
        info!(
            endpoint = self.endpoint,
            uid = self.uid,
            kind = self.kind,
            namespace = self.namespace,
            name = %self.name,
            operation = self.operation,
            dry_run = self.dry_run,
            outcome,
            detail = %detail,
            "admission"
        );
    }
}

fn pod_label(pod: &PodView) -> String {
    let m = &pod.metadata;
    match (&m.name, &m.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) => format!("{g}*"),
        _ => String::new(),
    }
}

/// Reads and parses one review within the app's budget: a slot of the right
/// lane (waited for, as the reading itself, within the request deadline) and
/// at most [`MAX_BODY`] bytes, or [`SMALL_BODY`] for the ordinary lane.
async fn read<T: DeserializeOwned>(app: &App, headers: &HeaderMap, body: Body) -> Result<T, Response> {
    let length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if length.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let small = length.is_some_and(|n| n <= SMALL_BODY);
    let work = async {
        // A large review waits for its own slot and budget before it takes any
        // of the ordinary lane's bytes; an ordinary one takes its own size.
        let _large = if small {
            None
        } else {
            let slot = app.large_slots.acquire().await.expect("the semaphore is never closed");
            app.large_budget(length.unwrap_or(MAX_BODY)).await;
            Some(slot)
        };
        let _bytes = app.in_flight(if small { length.unwrap_or(SMALL_BODY) } else { SMALL_BODY }).await;
        let bytes: Bytes =
            axum::body::to_bytes(body, if small { SMALL_BODY } else { MAX_BODY }).await.map_err(|_| too_large())?;
        // serde's messages can quote the input, which may hold env values: report
        // only where the JSON went wrong.
        serde_json::from_slice(&bytes).map_err(|e| {
            bad_request(format!(
                "not an AdmissionReview: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    };
    match tokio::time::timeout(app.limits.request_timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            warn!(timeout = ?app.limits.request_timeout, "an admission request was not read in time");
            Err((StatusCode::REQUEST_TIMEOUT, "the review was not received in time").into_response())
        }
    }
}

fn too_large() -> Response {
    bad_request(format!("the body is unreadable or larger than {MAX_BODY} bytes"))
}

fn no_request() -> Response {
    bad_request("the AdmissionReview has no request".to_owned())
}

fn bad_request(message: String) -> Response {
    warn!(reason = %message, "refused a malformed admission request");
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// The AdmissionReview answered, written here rather than with kube-core's
/// `AdmissionResponse`, which serializes the patch as a JSON array of numbers:
/// 3x base64's size, and the largest single cost of a review.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Answer<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Denied>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the JSON patch, as Go's `[]byte` is encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct Denied {
    code: u16,
    reason: &'static str,
    message: String,
}

fn respond(answer: Answer<'_>) -> Response {
    let review = ReviewOut { api_version: "admission.k8s.io/v1", kind: "AdmissionReview", response: answer };
    match serde_json::to_vec(&review) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            warn!(error = %e, "could not serialize the AdmissionReview");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn allow(uid: &str) -> Answer<'_> {
    Answer { uid, allowed: true, status: None, patch_type: None, patch: None }
}

fn deny(uid: &str, message: String) -> Answer<'_> {
    Answer {
        uid,
        allowed: false,
        status: Some(Denied { code: 403, reason: "Forbidden", message }),
        patch_type: None,
        patch: None,
    }
}

/// `request.kind` as a metric label: one of a fixed set, never the request's
/// own string, so no review can add a time series.
fn kind_label(kind: &str) -> &'static str {
    match WorkloadKind::from_api_kind(kind) {
        Some(k) => k.as_str(),
        None if kind == "Pod" => "Pod",
        None => "other",
    }
}

fn count(app: &App, endpoint: &'static str, kind: &str, outcome: &'static str) {
    app.metrics.reviews.get_or_create(&ReviewLabels { endpoint, kind: kind_label(kind), outcome }).inc();
}

fn review_pod(app: &App, req: SlimRequest) -> Response {
    let SlimRequest { uid, kind, namespace, operation, dry_run, object: pod } = req;
    let who = Who {
        endpoint: "mutate",
        uid: &uid,
        kind: kind_label(&kind.kind),
        namespace: namespace.as_deref().unwrap_or(""),
        name: pod.as_ref().map(pod_label).unwrap_or_default(),
        operation: &operation,
        dry_run,
    };
    let Some(pod) = pod else {
        count(app, "mutate", who.kind, "skipped");
        who.log("skipped", &"no object");
        return respond(allow(&uid));
    };
    let pod_id = format!("pod {}/{}", who.namespace, who.name);
    let pod = in_namespace(pod, who.namespace);
    if let Some(why) = pod.over_limits() {
        count(app, "mutate", who.kind, "invalid");
        who.log("invalid", &message(why.clone()));
        return respond(deny(&uid, message(format!("keyhole: {pod_id}: {why}"))));
    }
    match mutate(&pod, &app.config()) {
        Ok(Mutation::Skip(why)) => {
            count(app, "mutate", who.kind, "skipped");
            who.log("skipped", &why);
            respond(allow(&uid))
        }
        Ok(Mutation::Patch { patch, plan }) => match serde_json::to_vec(&patch) {
            Ok(json) => {
                count(app, "mutate", who.kind, "patched");
                let detail = format_args!(
                    "store {}, {} values, {} templates",
                    plan.store_name,
                    plan.items.len(),
                    plan.templates.len()
                );
                who.log("patched", &detail);
                respond(Answer {
                    patch_type: Some("JSONPatch"),
                    patch: Some(base64::engine::general_purpose::STANDARD.encode(json)),
                    ..allow(&uid)
                })
            }
            Err(e) => {
                count(app, "mutate", who.kind, "error");
                who.log("error", &e);
                respond(deny(&uid, format!("keyhole could not build its patch: {e}")))
            }
        },
        Err(problems) => {
            count(app, "mutate", who.kind, "denied");
            who.log("denied", &message(problems.to_string()));
            respond(deny(&uid, denial(&pod_id, &problems)))
        }
    }
}

/// The message `kubectl apply` shows. It names the object, then the problems
/// (at most [`Problems::SHOWN`] of them), in at most [`MAX_MESSAGE`] bytes.
pub fn denial(who: &str, problems: &Problems) -> String {
    message(format!("keyhole: {who}: {problems}"))
}

fn message(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = text.len() - end;
        text.truncate(end);
        text.push_str(&format!(" … ({cut} more bytes)"));
    }
    text
}

fn review_workload(app: &App, req: SlimRequest<WorkloadView>) -> Response {
    let SlimRequest { uid, kind, namespace, operation, dry_run, object } = req;
    let kind = kind.kind;
    let name = object.as_ref().and_then(|o| o.metadata.name.clone().or(o.metadata.generate_name.clone()));
    let who = Who {
        endpoint: "validate",
        uid: &uid,
        kind: kind_label(&kind),
        namespace: namespace.as_deref().unwrap_or(""),
        name: name.unwrap_or_default(),
        operation: &operation,
        dry_run,
    };
    let Some(obj) = object else {
        count(app, "validate", &kind, "skipped");
        who.log("skipped", &"no object");
        return respond(allow(&uid));
    };
    let id = format!("{} {}/{}", who.kind, who.namespace, who.name);
    if kind == "Pod" {
        return review_ephemeral(app, &who, &id, &obj);
    }
    let Some(workload) = WorkloadKind::from_api_kind(&kind) else {
        count(app, "validate", &kind, "skipped");
        who.log("skipped", &"not a workload keyhole checks");
        return respond(allow(&uid));
    };
    let name = obj.metadata.name.clone().unwrap_or_default();
    let pod = in_namespace(template_pod(workload, &name, obj.into_template(workload)), who.namespace);
    if let Some(why) = pod.over_limits() {
        count(app, "validate", &kind, "invalid");
        who.log("invalid", &message(why.clone()));
        return respond(deny(&uid, message(format!("keyhole: {id}: pod template: {why}"))));
    }
    match mutate(&pod, &app.config()) {
        Ok(_) => {
            count(app, "validate", &kind, "allowed");
            who.log("allowed", &"");
            respond(allow(&uid))
        }
        Err(problems) => {
            count(app, "validate", &kind, "denied");
            who.log("denied", &message(problems.to_string()));
            respond(deny(&uid, denial(&format!("{id}: pod template"), &problems)))
        }
    }
}

/// `pods/ephemeralcontainers`: `kubectl debug` must not hand keyhole's tokens
/// (the backend's or the API server's) to whoever debugs the pod.
fn review_ephemeral(app: &App, who: &Who<'_>, id: &str, pod: &WorkloadView) -> Response {
    let ephemeral = pod.spec.as_ref().and_then(|s| s.ephemeral_containers.as_ref());
    let mut bad = Vec::new();
    for c in ephemeral.into_iter().flatten() {
        for m in c.volume_mounts.iter().flatten() {
            if [names::TOKEN_VOLUME, names::API_TOKEN_VOLUME].contains(&m.name.as_str()) {
                bad.push(format!(
                    "ephemeral container {:?} mounts {:?}, keyhole's backend credentials, which only keyhole's injector may mount: debug without that volume mount",
                    c.name, m.name
                ));
            }
        }
    }
    // Mounts past the limit are not kept, so they cannot be checked: refuse.
    let over = ephemeral.is_some_and(|e| {
        e.total > crate::slim::MAX_ENTRIES
            || e.iter().any(|c| c.volume_mounts.as_ref().is_some_and(|m| m.total > crate::slim::MAX_ENTRIES))
    });
    if over {
        bad.push(format!(
            "an ephemeral container list or its mounts has more than {} entries",
            crate::slim::MAX_ENTRIES
        ));
    }
    if bad.is_empty() {
        count(app, "validate", "Pod", "allowed");
        who.log("allowed", &"ephemeral containers");
        return respond(allow(who.uid));
    }
    count(app, "validate", "Pod", "denied");
    let text = message(format!("keyhole: {id}: {}", bad.join("; ")));
    who.log("denied", &text);
    respond(deny(who.uid, text))
}

/// The request's namespace is the pod's: a pod's own `metadata.namespace` may
/// be unset at CREATE, and a template's always is. The stores' `allow` is
/// checked against it.
fn in_namespace(mut pod: PodView, namespace: &str) -> PodView {
    if !namespace.is_empty() {
        pod.metadata.namespace = Some(namespace.to_owned());
    }
    pod
}

/// The pod a workload would create, from its template, with a stand-in
/// controller reference so the same checks run as for its real pods.
pub fn template_pod(kind: WorkloadKind, name: &str, mut pod: PodView) -> PodView {
    let owner = kind.pod_owner();
    pod.metadata.owner_references = Some(
        vec![OwnerReference {
            api_version: owner.api_version().into(),
            kind: owner.as_str().into(),
            name: name.to_owned(),
            uid: String::new(),
            controller: Some(true),
            block_owner_deletion: None,
        }]
        .into(),
    );
    pod
}

/// [`template_pod`] for a workload read as JSON (`render`'s files).
pub fn workload_pod(kind: WorkloadKind, name: &str, object: &serde_json::Value) -> Result<PodView, serde_json::Error> {
    Ok(template_pod(kind, name, PodView::deserialize(kind.template_in(object))?))
}
