//! The thin HTTP layer: AdmissionReview in, AdmissionReview out. Always 200 with
//! the request's uid for anything the API server sent as a review; 400 for bytes
//! that are not one. Never logs the object: only its identity and the outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_contract::{Problems, WorkloadKind};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::App;
use crate::metrics::{EndpointLabels, ReviewLabels};
use crate::mutate::{Mutation, mutate};
use crate::slim::{PodView, SlimRequest, SlimReview};

/// The API server sends objects of at most ~3 MiB (old and new in one review).
pub const MAX_BODY: usize = 4 << 20;

pub async fn mutate_handler(State(app): State<Arc<App>>, body: Body) -> Response {
    let start = Instant::now();
    let response = match read::<SlimReview>(body).await {
        Err(resp) => resp,
        Ok(SlimReview { request: None }) => no_request(),
        Ok(SlimReview { request: Some(req) }) => review_pod(&app, req),
    };
    app.metrics.latency.get_or_create(&EndpointLabels { endpoint: "mutate" }).observe(start.elapsed().as_secs_f64());
    response
}

pub async fn validate_handler(State(app): State<Arc<App>>, body: Body) -> Response {
    let start = Instant::now();
    let response = match read::<AdmissionReview<DynamicObject>>(body).await.map(AdmissionReview::try_into) {
        Err(resp) => resp,
        Ok(Err(_)) => no_request(),
        Ok(Ok(req)) => review_workload(&app, &req),
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

async fn read<T: DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| bad_request(format!("the body is unreadable or larger than {MAX_BODY} bytes")))?;
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

fn count(app: &App, endpoint: &'static str, kind: &str, outcome: &'static str) {
    app.metrics.reviews.get_or_create(&ReviewLabels { endpoint, kind: kind.to_owned(), outcome }).inc();
}

fn review_pod(app: &App, req: SlimRequest) -> Response {
    let SlimRequest { uid, kind, namespace, operation, dry_run, object: pod } = req;
    let who = Who {
        endpoint: "mutate",
        uid: &uid,
        kind: &kind.kind,
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
    match mutate(&pod, &app.config) {
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
            who.log("denied", &problems);
            let pod_id = format!("pod {}/{}", who.namespace, who.name);
            respond(deny(&uid, denial(&pod_id, &problems)))
        }
    }
}

/// The message `kubectl apply` shows. It names the object, then every problem.
pub fn denial(who: &str, problems: &Problems) -> String {
    format!("keyhole: {who}: {problems}")
}

fn review_workload(app: &App, req: &AdmissionRequest<DynamicObject>) -> Response {
    let kind = req.kind.kind.as_str();
    let name = req.object.as_ref().and_then(|o| o.metadata.name.clone().or(o.metadata.generate_name.clone()));
    let who = Who {
        endpoint: "validate",
        uid: &req.uid,
        kind,
        namespace: req.namespace.as_deref().unwrap_or(""),
        name: name.unwrap_or_default(),
        operation: match req.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        },
        dry_run: req.dry_run,
    };
    let Some(obj) = req.object.as_ref() else {
        count(app, "validate", kind, "skipped");
        who.log("skipped", &"no object");
        return respond(allow(&req.uid));
    };
    let id = format!("{} {}/{}", kind, req.namespace.as_deref().unwrap_or(""), who.name);
    let Some(workload) = WorkloadKind::from_api_kind(kind) else {
        count(app, "validate", kind, "skipped");
        who.log("skipped", &"not a workload keyhole checks");
        return respond(allow(&req.uid));
    };
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let pod = match workload_pod(workload, name, &obj.data) {
        Ok(pod) => pod,
        Err(e) => {
            count(app, "validate", kind, "invalid");
            who.log("invalid", &e);
            return respond(deny(&req.uid, format!("keyhole: {id}: cannot read the pod template: {e}")));
        }
    };
    match mutate(&pod, &app.config) {
        Ok(_) => {
            count(app, "validate", kind, "allowed");
            who.log("allowed", &"");
            respond(allow(&req.uid))
        }
        Err(problems) => {
            count(app, "validate", kind, "denied");
            who.log("denied", &problems);
            respond(deny(&req.uid, denial(&format!("{id}: pod template"), &problems)))
        }
    }
}

/// The pod a workload would create, read from its template (`object` is the
/// workload as JSON), with a stand-in controller reference so the same checks
/// run as for its real pods.
pub fn workload_pod(kind: WorkloadKind, name: &str, object: &serde_json::Value) -> Result<PodView, serde_json::Error> {
    let mut pod = PodView::deserialize(kind.template_in(object))?;
    let owner = kind.pod_owner();
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: owner.api_version().into(),
        kind: owner.as_str().into(),
        name: name.to_owned(),
        uid: String::new(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    Ok(pod)
}
