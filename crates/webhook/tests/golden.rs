//! Golden tests, one named test per case: a real-world pod shape goes through the
//! in-process router as real AdmissionReview JSON; the patch is applied with
//! json-patch to the pod *as JSON* and compared with the expected pod as JSON, so
//! every field of the pod, known to k8s-openapi or not, must survive; the result
//! must still read as k8s-openapi's `Pod`, and a second review of it must give no
//! patch. `*.denied.txt` holds the expected denial.
//!
//! `KEYHOLE_BLESS=1 cargo test -p keyhole-webhook --test golden` rewrites the
//! expected files; review the diff before committing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use keyhole_webhook::App;
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};

mod common;
use common::{review, send};

fn main() {
    let mut trials: Vec<Trial> = cases()
        .into_iter()
        .map(|case| {
            let stem = case.file_name().unwrap().to_string_lossy().trim_end_matches(".pod.yaml").to_owned();
            Trial::test(format!("golden::{stem}"), move || run(golden_case(&case, &stem)))
        })
        .collect();
    trials.push(Trial::test("malformed_or_oversized_reviews_get_400_not_a_panic", || {
        run(malformed_or_oversized_reviews_get_400_not_a_panic())
    }));
    trials.push(Trial::test("workloads_with_bad_templates_are_denied_at_validate", || {
        run(workloads_with_bad_templates_are_denied_at_validate())
    }));
    trials.push(Trial::test("a_generated_value_is_refused_at_validate_unless_the_store_allows_it", || {
        run(a_generated_value_is_refused_at_validate_unless_the_store_allows_it())
    }));
    trials.push(Trial::test("the_golden_cases_are_all_there", || {
        let n = cases().len();
        if n < 28 { Err(format!("only {n} golden cases").into()) } else { Ok(()) }
    }));
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

/// Runs one async test; a panic in it fails that test only.
fn run(test: impl std::future::Future<Output = ()>) -> Result<(), Failed> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(test);
    Ok(())
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pod.yaml"))
        .collect();
    cases.sort();
    cases
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn app() -> Arc<App> {
    common::golden_app()
}

async fn admit(app: &Arc<App>, pod: &Value) -> Value {
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    let (status, body) = send(app, "/mutate", serde_json::to_vec(&review(pod, uid)).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let out: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], uid, "the response must echo the request's uid");
    out["response"].clone()
}

fn decode_patch(resp: &Value) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = match &resp["patch"] {
        Value::Null => return None,
        // Go's []byte: base64.
        Value::String(b) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).unwrap(),
        other => panic!("unexpected patch encoding {other}"),
    };
    assert_eq!(resp["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn expected(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} is missing: run with KEYHOLE_BLESS=1 and review it", path.display()))
}

fn bless(path: &Path, actual: &str) -> bool {
    let blessing = std::env::var_os("KEYHOLE_BLESS").is_some();
    if blessing {
        std::fs::write(path, actual).unwrap();
    }
    blessing
}

fn check_text(path: &Path, actual: &str) {
    if !bless(path, actual) {
        assert_eq!(actual, expected(path), "{} differs", path.display());
    }
}

/// Compares as JSON: key order and YAML layout do not matter, every field does.
fn check_json(path: &Path, actual: &Value) {
    if !bless(path, &serde_yaml::to_string(actual).unwrap()) {
        let want: Value = serde_yaml::from_str(&expected(path)).unwrap();
        if &want != actual {
            panic!("{} differs; got:\n{}", path.display(), serde_yaml::to_string(actual).unwrap());
        }
    }
}

async fn golden_case(case: &Path, stem: &str) {
    let app = app();
    let pod: Value = serde_yaml::from_str(&std::fs::read_to_string(case).unwrap()).unwrap();
    let resp = admit(&app, &pod).await;
    if resp["allowed"] == false {
        let msg = resp["status"]["message"].as_str().unwrap().to_owned();
        check_text(&dir().join(format!("{stem}.denied.txt")), &format!("{msg}\n"));
        return;
    }
    let mut result = pod.clone();
    if let Some(patch) = decode_patch(&resp) {
        json_patch::patch(&mut result, &patch).unwrap_or_else(|e| panic!("{stem}: patch does not apply: {e}"));
    }
    serde_json::from_value::<Pod>(result.clone()).unwrap_or_else(|e| panic!("{stem}: not a Pod: {e}"));
    check_json(&dir().join(format!("{stem}.expected.yaml")), &result);

    // Reinvocation (IfNeeded) or a retry: the same pod again gives no patch.
    let again = admit(&app, &result).await;
    assert_eq!(again["allowed"], true, "{stem}: second review");
    assert!(decode_patch(&again).is_none(), "{stem}: second review patched again");
}

async fn malformed_or_oversized_reviews_get_400_not_a_panic() {
    let app = app();
    for body in [b"not json".to_vec(), b"{}".to_vec(), br#"{"request": {"uid": 1}}"#.to_vec()] {
        let (status, _) = send(&app, "/mutate", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let huge = vec![b' '; keyhole_webhook::review::MAX_BODY + 1];
    assert_eq!(send(&app, "/mutate", huge).await.0, StatusCode::BAD_REQUEST);
    // A secret-looking value in the bad input never comes back in the message.
    let (status, body) = send(&app, "/mutate", br#"{"request": "hunter2-super-secret"}"#.to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
}

/// `kubectl apply` of a Deployment asking for a generated value: refused,
/// with what to do, by a webhook whose store does not allow it; admitted by
/// one whose store does (the control).
async fn a_generated_value_is_refused_at_validate_unless_the_store_allows_it() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {
                "keyhole.dev/inject": "true", "keyhole.dev/secret-key": "/shop/session-key",
                "keyhole.dev/generate-key": "length=32"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    });
    let mut r = review(&deployment, "u-3");
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    for (allow, want) in [(false, false), (true, true)] {
        let config = format!(
            "injector: {{image: x}}\ndefaultStore: aws\nstores:\n  aws: {{kind: aws-ssm, region: eu-west-1, defaultRole: r, allowGenerate: {allow}}}\n"
        );
        let app = App::new(keyhole_webhook::Config::parse(&config).unwrap(), Arc::new(Default::default()));
        let (_, body) = send(&app, "/validate", serde_json::to_vec(&r).unwrap()).await;
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["allowed"], want, "allowGenerate {allow}: {out}");
        if !want {
            let msg = out["response"]["status"]["message"].as_str().unwrap();
            assert!(
                msg.contains("keyhole.dev/generate-key: store \"aws\" does not allow generated values: its operator sets allowGenerate: true"),
                "{msg}"
            );
        }
    }
}

async fn workloads_with_bad_templates_are_denied_at_validate() {
    let app = app();
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {
                "keyhole.dev/inject": "true", "keyhole.dev/secret-db": "secret/shop/db#"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    });
    for (kind, object) in [
        ("Deployment", deployment.clone()),
        (
            "CronJob",
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": deployment["spec"]["template"]}}}}),
        ),
    ] {
        let mut r = review(&object, "u-1");
        r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": kind});
        let (status, body) = send(&app, "/validate", serde_json::to_vec(&r).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(out["response"]["allowed"], false, "{kind}");
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!(
                "keyhole: {kind} shop/web: pod template: keyhole.dev/secret-db: bad vault reference"
            )),
            "{msg}"
        );
        assert!(msg.contains("empty field after '#'"), "{msg}");
    }
    let mut good = deployment;
    good["spec"]["template"]["metadata"]["annotations"]["keyhole.dev/secret-db"] = json!("secret/shop/db#password");
    let mut r = review(&good, "u-2");
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (_, body) = send(&app, "/validate", serde_json::to_vec(&r).unwrap()).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["response"]["allowed"], true);
}
