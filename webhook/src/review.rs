//! The thin HTTP layer: AdmissionReview in, AdmissionReview out. Always 200 with
//! the request's uid for anything the API server sent as a review; 400 for bytes
//! that are not one. Never logs the object: only its identity and the outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyhole_contract::Problems;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use crate::App;
use crate::metrics::{EndpointLabels, ReviewLabels};
use crate::mutate::{Mutation, mutate};

/// The API server sends objects of at most ~3 MiB (old and new in one review).
pub const MAX_BODY: usize = 4 << 20;

pub async fn mutate_handler(State(app): State<Arc<App>>, body: Body) -> Response {
    let start = Instant::now();
    let response = match read_review::<Pod>(body).await {
        Err(resp) => resp,
        Ok(req) => {
            let span = span("mutate", &req, pod_label(req.object.as_ref()));
            span.in_scope(|| review_pod(&app, &req))
        }
    };
    app.metrics.latency.get_or_create(&EndpointLabels { endpoint: "mutate" }).observe(start.elapsed().as_secs_f64());
    response
}

pub async fn validate_handler(State(app): State<Arc<App>>, body: Body) -> Response {
    let start = Instant::now();
    let response = match read_review::<DynamicObject>(body).await {
        Err(resp) => resp,
        Ok(req) => {
            let name = req.object.as_ref().and_then(|o| o.metadata.name.clone()).unwrap_or_default();
            let span = span("validate", &req, name);
            async { review_workload(&app, &req) }.instrument(span).await
        }
    };
    app.metrics.latency.get_or_create(&EndpointLabels { endpoint: "validate" }).observe(start.elapsed().as_secs_f64());
    response
}

fn span<T: kube::Resource>(endpoint: &'static str, req: &AdmissionRequest<T>, name: String) -> tracing::Span {
    info_span!(
        "admission",
        endpoint,
        uid = %req.uid,
        kind = %req.kind.kind,
        namespace = req.namespace.as_deref().unwrap_or(""),
        name = %name,
        operation = ?req.operation,
        dry_run = req.dry_run,
    )
}

fn pod_label(pod: Option<&Pod>) -> String {
    let Some(m) = pod.map(|p| &p.metadata) else { return String::new() };
    match (&m.name, &m.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(g)) => format!("{g}*"),
        _ => String::new(),
    }
}

async fn read_review<T>(body: Body) -> Result<AdmissionRequest<T>, Response>
where
    T: kube::Resource + DeserializeOwned,
{
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| bad_request(format!("the body is unreadable or larger than {MAX_BODY} bytes")))?;
    // serde's messages can quote the input, which may hold env values: report
    // only where the JSON went wrong.
    let review: AdmissionReview<T> = serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(format!(
            "not an AdmissionReview: {:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    review.try_into().map_err(|_| bad_request("the AdmissionReview has no request".to_owned()))
}

fn bad_request(message: String) -> Response {
    warn!(reason = %message, "refused a malformed admission request");
    (StatusCode::BAD_REQUEST, message).into_response()
}

fn respond(resp: AdmissionResponse) -> Response {
    match serde_json::to_vec(&resp.into_review()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            warn!(error = %e, "could not serialize the AdmissionReview");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn count(app: &App, endpoint: &'static str, kind: &str, outcome: &'static str) {
    app.metrics.reviews.get_or_create(&ReviewLabels { endpoint, kind: kind.to_owned(), outcome }).inc();
}

fn review_pod(app: &App, req: &AdmissionRequest<Pod>) -> Response {
    let resp = AdmissionResponse::from(req);
    let Some(pod) = req.object.as_ref() else {
        count(app, "mutate", &req.kind.kind, "skipped");
        return respond(resp);
    };
    match mutate(pod, &app.config) {
        Ok(Mutation::Skip(why)) => {
            count(app, "mutate", &req.kind.kind, "skipped");
            info!(reason = why, "allowed unchanged");
            respond(resp)
        }
        Ok(Mutation::Patch { patch, plan }) => match resp.clone().with_patch(patch) {
            Ok(resp) => {
                count(app, "mutate", &req.kind.kind, "patched");
                info!(store = %plan.store_name, values = plan.items.len(), templates = plan.templates.len(), "injected");
                respond(resp)
            }
            Err(e) => {
                count(app, "mutate", &req.kind.kind, "error");
                warn!(error = %e, "could not serialize the patch");
                respond(resp.deny(format!("keyhole could not build its patch: {e}")))
            }
        },
        Err(problems) => {
            count(app, "mutate", &req.kind.kind, "denied");
            let who = format!("pod {}/{}", req.namespace.as_deref().unwrap_or(""), pod_label(Some(pod)));
            info!(reason = %problems, "denied");
            respond(resp.deny(denial(&who, &problems)))
        }
    }
}

/// The message `kubectl apply` shows. It names the object, then every problem.
pub fn denial(who: &str, problems: &Problems) -> String {
    format!("keyhole: {who}: {problems}")
}

fn review_workload(app: &App, req: &AdmissionRequest<DynamicObject>) -> Response {
    let resp = AdmissionResponse::from(req);
    let kind = req.kind.kind.clone();
    let Some(obj) = req.object.as_ref() else {
        count(app, "validate", &kind, "skipped");
        return respond(resp);
    };
    let who = format!(
        "{} {}/{}",
        kind,
        req.namespace.as_deref().unwrap_or(""),
        obj.metadata.name.as_deref().or(obj.metadata.generate_name.as_deref()).unwrap_or("")
    );
    let pod = match workload_pod(&kind, obj) {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            count(app, "validate", &kind, "skipped");
            return respond(resp);
        }
        Err(e) => {
            count(app, "validate", &kind, "invalid");
            return respond(resp.deny(format!("keyhole: {who}: cannot read the pod template: {e}")));
        }
    };
    match mutate(&pod, &app.config) {
        Ok(_) => {
            count(app, "validate", &kind, "allowed");
            respond(resp)
        }
        Err(problems) => {
            count(app, "validate", &kind, "denied");
            info!(reason = %problems, "denied");
            respond(resp.deny(denial(&format!("{who}: pod template"), &problems)))
        }
    }
}

/// The pod a workload would create, with a stand-in controller reference so the
/// same checks run as for its real pods. `None`: not a workload keyhole knows.
pub fn workload_pod(kind: &str, obj: &DynamicObject) -> Result<Option<Pod>, serde_json::Error> {
    let spec = &obj.data["spec"];
    let (template, controller_kind) = match kind {
        "Deployment" => (&spec["template"], "ReplicaSet"),
        "ReplicaSet" => (&spec["template"], "ReplicaSet"),
        "StatefulSet" => (&spec["template"], "StatefulSet"),
        "DaemonSet" => (&spec["template"], "DaemonSet"),
        "Job" => (&spec["template"], "Job"),
        "CronJob" => (&spec["jobTemplate"]["spec"]["template"], "Job"),
        _ => return Ok(None),
    };
    let template: PodTemplateSpec = serde_json::from_value(template.clone())?;
    let mut metadata = template.metadata.unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: controller_kind.into(),
        name: name.clone(),
        uid: String::new(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    Ok(Some(Pod { metadata, spec: template.spec, status: None }))
}
