//! Raw bytes → AdmissionReview → mutate / validate → the patch applied to the
//! pod. Checked on every input: no panic; a patch applies; a pod that read as a
//! Pod still does; keyhole's injector is the first init container; no other
//! container mounts keyhole's tokens; a second review of the result is a no-op.
#![no_main]

use std::sync::LazyLock;

use keyhole_contract::config::Config;
use keyhole_contract::{WorkloadKind, names};
use keyhole_webhook::mutate::{Mutation, mutate};
use keyhole_webhook::review::template_pod;
use keyhole_webhook::slim::{PodView, SlimReview, WorkloadView};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    Config::parse(include_str!("../../crates/webhook/tests/golden/config.yaml")).expect("the golden config")
});

fuzz_target!(|data: &[u8]| {
    // serde_json skips the fields keyhole does not name without checking their
    // UTF-8 or escapes (the first two finds, fuzz/found/): a body the API server
    // would never send can be read, and its patch is of no use to the sender.
    // The invariants below are for what the API server sends: valid JSON.
    let Ok(data) = std::str::from_utf8(data) else { return };
    let Ok(review) = serde_json::from_str::<Value>(data) else { return };
    // /validate's reading, for the kind the review names: never a panic.
    if let Ok(SlimReview { request: Some(req) }) = serde_json::from_str::<SlimReview<WorkloadView>>(data) {
        if let Some(obj) = req.object {
            let kind = WorkloadKind::from_api_kind(&req.kind.kind).unwrap_or(WorkloadKind::Deployment);
            let _ = mutate(&template_pod(kind, "w", obj.into_template(kind)), &CONFIG);
        }
    }

    let Ok(SlimReview { request: Some(req) }) = serde_json::from_str::<SlimReview>(data) else { return };
    let Some(pod) = req.object else { return };
    let Ok(Mutation::Patch { patch, .. }) = mutate(&pod, &CONFIG) else { return };

    let mut object = review["request"]["object"].clone();
    let was_a_pod = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(object.clone()).is_ok();
    json_patch::patch(&mut object, &patch).expect("keyhole's patch applies to the pod it was made for");
    if was_a_pod {
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(object.clone()).expect("the result is a Pod");
    }
    let inits = object["spec"]["initContainers"].as_array().expect("init containers");
    assert_eq!(inits[0]["name"], names::INJECTOR_CONTAINER, "the injector goes first");
    let tokens = [names::TOKEN_VOLUME, names::API_TOKEN_VOLUME];
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for (i, c) in object["spec"][list].as_array().into_iter().flatten().enumerate() {
            if list == "initContainers" && i == 0 {
                continue;
            }
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                assert!(!tokens.iter().any(|t| m["name"] == *t), "{list}[{i}] mounts {}", m["name"]);
            }
        }
    }
    let again: PodView = serde_json::from_value(object).expect("the result reads again");
    match mutate(&again, &CONFIG) {
        Ok(Mutation::Skip(_)) => {}
        other => panic!("a second review was not a no-op: {:?}", other.map(|_| "patch")),
    }
});
