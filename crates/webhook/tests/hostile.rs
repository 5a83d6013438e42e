//! Reviews built as an attacker would build them, through the in-process
//! router: each is refused early with a bounded answer, and the server's state
//! (metrics) cannot be grown by what a review holds. Each has a control that
//! shows the same path does answer otherwise.

use axum::http::StatusCode;
use keyhole_webhook::review::MAX_MESSAGE;
use serde_json::{Value, json};

mod common;
use common::{golden_app, review, send};

fn opted_in(spec: Value) -> Value {
    json!({
        "metadata": {"name": "p", "namespace": "default",
                     "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/secret-x": "secret/default/x#y"}},
        "spec": spec
    })
}

async fn answer(path: &str, review: &Value) -> (Value, usize) {
    let app = golden_app();
    let (status, body) = send(&app, path, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    (serde_json::from_slice::<Value>(&body).unwrap()["response"].clone(), body.len())
}

fn message(resp: &Value) -> &str {
    resp["status"]["message"].as_str().unwrap_or_default()
}

/// The attack of issue 11: 4 MB of `{"name":""}` containers, opted in. Before,
/// each review built 330,000 containers and answered with a 62 MB patch.
#[tokio::test]
async fn a_pod_of_330000_containers_is_refused_with_a_small_answer() {
    let containers: Vec<Value> = (0..330_000).map(|_| json!({"name": ""})).collect();
    let r = review(&opted_in(json!({"containers": containers})), "u-1");
    assert!(serde_json::to_vec(&r).unwrap().len() > 3_900_000);
    let (resp, size) = answer("/mutate", &r).await;
    assert_eq!(resp["allowed"], false);
    assert!(message(&resp).contains("spec.containers has 330000 entries"), "{}", message(&resp));
    assert!(size < 1024, "a {size}-byte answer");

    // The same attack inside a Deployment's template, at /validate.
    let mut d = review(
        &json!({"metadata": {"name": "d", "namespace": "default"},
        "spec": {"template": opted_in(json!({"containers": (0..330_000).map(|_| json!({"name": ""})).collect::<Vec<_>>()}))}}),
        "u-2",
    );
    d["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (resp, size) = answer("/validate", &d).await;
    assert_eq!(resp["allowed"], false);
    assert!(message(&resp).contains("pod template: spec.containers has 330000 entries"), "{}", message(&resp));
    assert!(size < 1024);

    // Control: the same pod with a thousand containers is patched.
    let containers: Vec<Value> = (0..1000).map(|i| json!({"name": format!("c{i}")})).collect();
    let (resp, _) = answer("/mutate", &review(&opted_in(json!({"containers": containers})), "u-3")).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
}

#[tokio::test]
async fn mounts_and_annotations_past_the_limits_are_refused_too() {
    let mounts: Vec<Value> = (0..5000).map(|i| json!({"name": "v", "mountPath": format!("/m{i}")})).collect();
    let (resp, _) =
        answer("/mutate", &review(&opted_in(json!({"containers": [{"name": "a", "volumeMounts": mounts}]})), "u-1"))
            .await;
    assert!(message(&resp).contains(r#"spec.containers["a"].volumeMounts has 5000 entries"#), "{}", message(&resp));

    let mut pod = opted_in(json!({"containers": [{"name": "a"}]}));
    pod["metadata"]["annotations"]["keyhole.dev/template-big"] = json!("x".repeat(300 * 1024));
    let (resp, _) = answer("/mutate", &review(&pod, "u-2")).await;
    assert_eq!(resp["allowed"], false);
    assert!(message(&resp).contains("annotations hold"), "{}", message(&resp));
}

#[tokio::test]
async fn at_most_ten_problems_and_4_kib_are_sent_back() {
    let mut pod = opted_in(json!({"containers": [{"name": "a"}]}));
    for i in 0..30 {
        pod["metadata"]["annotations"][format!("keyhole.dev/nonsense-{i}")] = json!("1");
    }
    let (resp, _) = answer("/mutate", &review(&pod, "u-1")).await;
    let msg = message(&resp);
    assert!(msg.ends_with("; … and 20 more"), "{msg}");
    assert_eq!(msg.matches("unknown annotation").count(), 10);

    // A name the API server would refuse later, but keyhole sees first.
    let long = "n".repeat(200_000);
    let pod = opted_in(
        json!({"containers": [{"name": long, "volumeMounts": [{"name": "keyhole-token", "mountPath": "/t"}]}]}),
    );
    let (resp, size) = answer("/mutate", &review(&pod, "u-2")).await;
    assert!(message(&resp).len() <= MAX_MESSAGE, "{} bytes", message(&resp).len());
    assert!(message(&resp).ends_with("more bytes)"));
    assert!(size < MAX_MESSAGE + 512);
}

#[tokio::test]
async fn metric_labels_never_come_from_the_review() {
    let app = golden_app();
    let pod = opted_in(json!({"containers": [{"name": "a"}]}));
    for kind in ["Pod", "Unique-3f9c1e", "Unique-77aa02"] {
        let mut r = review(&pod, "u-1");
        r["request"]["kind"]["kind"] = json!(kind);
        assert_eq!(send(&app, "/mutate", serde_json::to_vec(&r).unwrap()).await.0, StatusCode::OK);
        assert_eq!(send(&app, "/validate", serde_json::to_vec(&r).unwrap()).await.0, StatusCode::OK);
    }
    let text = app.metrics.encode();
    assert!(!text.contains("Unique-"), "{text}");
    assert!(text.contains(r#"kind="other""#), "{text}");
    assert!(text.contains(r#"endpoint="mutate",kind="Pod",outcome="patched""#), "{text}");
}

/// `kubectl debug` adds an ephemeral container through `pods/ephemeralcontainers`;
/// it must not get the backend token (or the API token) keyhole gave the injector.
#[tokio::test]
async fn ephemeral_containers_may_not_mount_keyhole_tokens() {
    for (volume, allowed) in
        [("keyhole-token", false), ("keyhole-api-token", false), ("keyhole-secrets", true), ("data", true)]
    {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "default", "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/status": "injected"}},
            "spec": {"containers": [{"name": "a"}],
                     "ephemeralContainers": [{"name": "debugger", "image": "busybox", "volumeMounts": [{"name": volume, "mountPath": "/x"}]}]}
        });
        let mut r = review(&pod, "u-1");
        r["request"]["operation"] = json!("UPDATE");
        r["request"]["subResource"] = json!("ephemeralcontainers");
        let (resp, _) = answer("/validate", &r).await;
        assert_eq!(resp["allowed"], allowed, "{volume}: {}", message(&resp));
        if !allowed {
            assert!(
                message(&resp).contains(&format!("ephemeral container \"debugger\" mounts \"{volume}\"")),
                "{}",
                message(&resp)
            );
        }
    }
}

/// Mounts past the limit are not kept, so a token mount hidden behind a
/// thousand others must not pass unseen (found in review).
#[tokio::test]
async fn a_token_mount_behind_a_thousand_others_is_refused() {
    for (hidden, allowed) in [(true, false), (false, true)] {
        let mut mounts: Vec<Value> =
            (0..1000).map(|i| json!({"name": "data", "mountPath": format!("/m{i}")})).collect();
        if hidden {
            mounts.push(json!({"name": "keyhole-token", "mountPath": "/t"}));
        }
        let pod = json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a"}], "volumes": [{"name": "keyhole-token"}],
                     "ephemeralContainers": [{"name": "debugger", "image": "busybox", "volumeMounts": mounts}]}
        });
        let mut r = review(&pod, "u-1");
        r["request"]["operation"] = json!("UPDATE");
        let (resp, _) = answer("/validate", &r).await;
        assert_eq!(resp["allowed"], allowed, "hidden {hidden}: {}", message(&resp));
    }
}
