//! The Helm chart (charts/keyhole) without a cluster: `helm lint`, the schema,
//! and `helm template` with default values against `kubectl kustomize
//! manifests/`, so the two installs cannot drift apart. Installing and
//! upgrading on the real node: e2e_chart.rs.

use std::collections::BTreeMap;
use std::process::Command;

use keyhole_testbed::Parts;
use keyhole_testbed::webhook::repo_root;
use serde::Deserialize;
use serde_json::Value;

fn parts() -> Parts {
    Parts::find().expect("the bed's tools")
}

fn run(program: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).current_dir(repo_root()).output().expect("run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!("{}{}", text(&out.stdout), text(&out.stderr)))
    }
}

fn helm(args: &[&str]) -> Result<String, String> {
    run(&parts().helm, args)
}

/// `helm template` of the chart in `keyhole-system`, with `--set`s.
fn template(sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", "keyhole", "charts/keyhole", "--namespace", "keyhole-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args).map(|y| docs(&y))
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn key(o: &Value) -> (String, String) {
    (o["kind"].as_str().unwrap_or_default().to_owned(), o["metadata"]["name"].as_str().unwrap_or_default().to_owned())
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter().find(|o| key(o) == (kind.to_owned(), name.to_owned())).unwrap_or_else(|| panic!("no {kind} {name}"))
}

const CLUSTER_SCOPED: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Namespace",
];

/// What may differ between the two renderings without changing what runs:
/// labels and annotations (the chart adds Helm's, and its pods' config
/// checksum), the caBundle (the chart makes one at install), a namespace that
/// kustomize writes on cluster-scoped objects (the API server ignores it), the
/// config's YAML text (compared parsed), and CEL's line breaks (kustomize's
/// YAML writer doubles the breaks of more-indented lines in folded scalars).
fn normalize(mut o: Value) -> Value {
    let kind = o["kind"].as_str().unwrap_or_default().to_owned();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("labels");
        m.remove("annotations");
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            m.remove("namespace");
        }
    }
    if let Some(m) = o.pointer_mut("/spec/template/metadata").and_then(Value::as_object_mut) {
        m.remove("labels");
        m.remove("annotations");
    }
    if let Some(hooks) = o["webhooks"].as_array_mut() {
        for h in hooks {
            if let Some(c) = h["clientConfig"].as_object_mut() {
                c.remove("caBundle");
            }
        }
    }
    if kind == "ConfigMap"
        && let Some(data) = o["data"].as_object_mut()
    {
        for v in data.values_mut() {
            let parsed: Value = serde_yaml::from_str(v.as_str().unwrap_or_default()).expect("config YAML");
            *v = parsed;
        }
    }
    squash_cel(&mut o);
    o
}

fn squash_cel(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if let (true, Value::String(s)) = (k == "expression" || k == "messageExpression" || k == "message", &*v)
                {
                    *v = Value::String(s.split_whitespace().collect::<Vec<_>>().join(" "));
                } else {
                    squash_cel(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(squash_cel),
        _ => {}
    }
}

#[test]
fn helm_lint_passes_strict() {
    let out = helm(&["lint", "--strict", "charts/keyhole"]).unwrap_or_else(|e| panic!("helm lint: {e}"));
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn default_values_render_the_objects_kustomize_renders() {
    let kustomize = run(&parts().kubectl, &["kustomize", "manifests"]).expect("kubectl kustomize manifests");
    let base: BTreeMap<_, _> = docs(&kustomize).into_iter().map(|o| (key(&o), normalize(o))).collect();
    let chart: BTreeMap<_, _> =
        template(&[]).expect("helm template").into_iter().map(|o| (key(&o), normalize(o))).collect();

    // The base leaves the namespace and the serving certificate to the user
    // (`make certs`); the chart is installed into a namespace Helm makes, and
    // makes the certificate.
    let only = |a: &BTreeMap<(String, String), Value>, b: &BTreeMap<(String, String), Value>| {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect::<Vec<_>>()
    };
    let ns = |n: &str| (n.to_owned(), "keyhole-system".to_owned());
    assert_eq!(only(&base, &chart), vec![ns("Namespace")], "objects only kustomize renders");
    assert_eq!(
        only(&chart, &base),
        vec![
            ("Secret".to_owned(), "keyhole-webhook-tls".to_owned()),
            ("Secret".to_owned(), "keyhole-webhook-tls-ca".to_owned())
        ],
        "objects only the chart renders"
    );
    let mut differ = Vec::new();
    for (k, b) in &base {
        if let Some(c) = chart.get(k)
            && b != c
        {
            differ.push(format!(
                "{k:?}:\n  kustomize: {}\n  chart:     {}",
                serde_json::to_string(b).unwrap(),
                serde_json::to_string(c).unwrap()
            ));
        }
    }
    assert!(differ.is_empty(), "the chart's defaults differ from manifests/:\n{}", differ.join("\n"));
}

#[test]
fn the_schema_refuses_wrong_values_and_says_which() {
    for (set, says) in [
        ("tls.source=vault", "/tls/source"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("webhook.failurePolicy=Never", "/webhook/failurePolicy"),
        ("rotation.interval=soon", "/rotation/interval"),
        ("config.stores.x.kind=gcp", "/config/stores/x/kind"),
        ("replicas=2", "replicas"),
    ] {
        let err = template(&[set]).err().unwrap_or_else(|| panic!("--set {set} was accepted"));
        assert!(err.contains(says), "--set {set}: {err}");
    }
    // Control: right values of the same keys pass.
    template(&["tls.source=cert-manager", "webhook.timeoutSeconds=30", "rotation.interval=90s"]).expect("valid values");
}

#[test]
fn tls_source_secret_needs_the_ca_bundle_and_uses_it_everywhere() {
    let err = template(&["tls.source=secret"]).expect_err("no caBundle");
    assert!(err.contains("tls.caBundle"), "{err}");
    let objs = template(&["tls.source=secret", "tls.caBundle=Q0E="]).expect("template");
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"), "the chart made a Secret with tls.source=secret");
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        for h in find(&objs, kind, "keyhole")["webhooks"].as_array().unwrap() {
            assert_eq!(h["clientConfig"]["caBundle"], "Q0E=", "{kind} {}", h["name"]);
        }
    }
}

#[test]
fn tls_source_helm_signs_the_serving_certificate_with_the_ca_in_every_ca_bundle() {
    let objs = template(&[]).expect("template");
    let secret = find(&objs, "Secret", "keyhole-webhook-tls");
    let ca = secret["data"]["ca.crt"].as_str().expect("ca.crt");
    assert_eq!(
        find(&objs, "Secret", "keyhole-webhook-tls-ca")["data"]["tls.crt"].as_str(),
        Some(ca),
        "the CA's own Secret"
    );
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let hooks = find(&objs, kind, "keyhole")["webhooks"].as_array().unwrap().clone();
        assert!(!hooks.is_empty());
        for h in hooks {
            assert_eq!(h["clientConfig"]["caBundle"].as_str(), Some(ca), "{kind} {}", h["name"]);
        }
    }
    // The certificate is for the Service's names and chains to that CA.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, b64: &str| {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
        std::fs::write(dir.path().join(name), pem).unwrap();
        dir.path().join(name).display().to_string()
    };
    let (ca, crt) = (write("ca.crt", ca), write("tls.crt", secret["data"]["tls.crt"].as_str().unwrap()));
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", &ca, "-verify_hostname", "keyhole-webhook.keyhole-system.svc", &crt])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl verify: {}", String::from_utf8_lossy(&out.stderr));
    // The pod mounts the pair, not the CA.
    let tls = find(&objs, "Deployment", "keyhole-webhook")["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .cloned()
        .unwrap();
    let keys: Vec<_> = tls["secret"]["items"].as_array().unwrap().iter().map(|i| i["key"].clone()).collect();
    assert_eq!(keys, vec!["tls.crt", "tls.key"]);
}

#[test]
fn tls_source_cert_manager_is_a_ca_chain_whose_ca_is_injected() {
    let objs = template(&["tls.source=cert-manager"]).expect("template");
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"), "no Secret: cert-manager writes it");
    assert_eq!(find(&objs, "Issuer", "keyhole-selfsigned")["spec"]["selfSigned"], serde_json::json!({}));
    let ca = find(&objs, "Certificate", "keyhole-webhook-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["issuerRef"]["name"], "keyhole-selfsigned");
    assert_eq!(find(&objs, "Issuer", "keyhole-ca")["spec"]["ca"]["secretName"], ca["spec"]["secretName"]);
    let leaf = find(&objs, "Certificate", "keyhole-webhook");
    assert_eq!(leaf["spec"]["issuerRef"]["name"], "keyhole-ca", "the serving certificate must come from the CA Issuer");
    assert_eq!(leaf["spec"]["secretName"], "keyhole-webhook-tls");
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let o = find(&objs, kind, "keyhole");
        assert_eq!(o["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "keyhole-system/keyhole-webhook");
        assert!(o["webhooks"].as_array().unwrap().iter().all(|h| h["clientConfig"].get("caBundle").is_none()));
    }
    // An issuer of the user's own: no chain of the chart's.
    let objs = template(&[
        "tls.source=cert-manager",
        "tls.certManager.issuerRef.name=corp-ca",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ])
    .expect("template");
    assert!(!objs.iter().any(|o| o["kind"] == "Issuer"));
    assert_eq!(find(&objs, "Certificate", "keyhole-webhook")["spec"]["issuerRef"]["name"], "corp-ca");
}

#[test]
fn the_release_namespace_reaches_every_reference_to_it() {
    let out = helm(&["template", "keyhole", "charts/keyhole", "--namespace", "secrets"]).expect("template");
    let objs = docs(&out);
    let hooks = find(&objs, "ValidatingWebhookConfiguration", "keyhole")["webhooks"].as_array().unwrap().clone();
    for h in &hooks {
        assert_eq!(h["clientConfig"]["service"]["namespace"], "secrets");
        let excluded = &h["namespaceSelector"]["matchExpressions"][0]["values"];
        assert_eq!(excluded, &serde_json::json!(["kube-system", "secrets"]), "{}", h["name"]);
    }
    let cel = serde_json::to_string(&hooks[0]["matchConditions"]).unwrap();
    assert!(cel.contains("system:serviceaccount:secrets:keyhole-rotation"), "{cel}");
    assert_eq!(find(&objs, "ClusterRoleBinding", "keyhole-rotation")["subjects"][0]["namespace"], "secrets");
    assert!(!out.contains("keyhole-system"), "keyhole-system is hard-coded somewhere:\n{out}");
}

#[test]
fn a_changed_config_changes_the_pods_checksum_and_nothing_else_of_them() {
    let checksum = |sets: &[&str]| {
        let objs = template(sets).expect("template");
        ["keyhole-webhook", "keyhole-rotation"].map(|d| {
            find(&objs, "Deployment", d)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
        })
    };
    let before = checksum(&[]);
    assert_eq!(before, checksum(&[]), "the checksum is not stable");
    let after = checksum(&["config.stores.vault.address=https://vault.example:8200"]);
    assert!(before[0] != after[0] && before[1] != after[1], "a config change would not roll the pods");
    // Control: a change outside the config keeps it.
    assert_eq!(before, checksum(&["webhook.replicas=3"]));
}

#[test]
fn monitoring_objects_render_when_enabled_and_only_then() {
    let kinds = |sets: &[&str]| -> Vec<String> {
        template(sets).expect("template").iter().map(|o| o["kind"].as_str().unwrap().to_owned()).collect()
    };
    let off = kinds(&[]);
    assert!(!off.iter().any(|k| k == "PodMonitor" || k == "PrometheusRule"));
    let objs = template(&[
        "metrics.podMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "metrics.dashboard.enabled=true",
    ])
    .expect("template");
    let rule = find(&objs, "PrometheusRule", "keyhole");
    let alerts = |rule: &Value| -> Vec<String> {
        rule["spec"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["alert"].as_str().map(str::to_owned))
            .collect()
    };
    let file: Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join("charts/keyhole/files/alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["spec"], file, "the PrometheusRule is files/alerts.yaml, which promtool tests");
    assert!(alerts(rule).iter().any(|a| a == "KeyholeRotationLeaderMissing"), "the control: {:?}", alerts(rule));
    // Without the rotation controller its leader is missing for good: no alert on it.
    let without = template(&["metrics.prometheusRule.enabled=true", "rotation.enabled=false"]).expect("template");
    let left = alerts(find(&without, "PrometheusRule", "keyhole"));
    assert!(!left.iter().any(|a| a.starts_with("KeyholeRotation")), "{left:?}");
    assert!(left.iter().any(|a| a == "KeyholeWebhookErrors"), "{left:?}");
    let pm = find(&objs, "PodMonitor", "keyhole");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let dash = find(&objs, "ConfigMap", "keyhole-dashboard");
    let json: Value = serde_json::from_str(dash["data"]["keyhole.json"].as_str().unwrap()).expect("dashboard JSON");
    assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

/// The kustomize side of the same chain (certs/cert-manager): it builds
/// (kustomize refused it while it lived inside the base), and the serving
/// certificate comes from the CA Issuer whose CA is injected.
#[test]
fn the_cert_manager_overlay_builds_a_ca_chain_whose_ca_is_injected() {
    let out =
        run(&parts().kubectl, &["kustomize", "certs/cert-manager"]).expect("kubectl kustomize certs/cert-manager");
    let objs = docs(&out);
    assert_eq!(find(&objs, "Certificate", "keyhole-webhook-ca")["spec"]["isCA"], true);
    assert_eq!(find(&objs, "Issuer", "keyhole-ca")["spec"]["ca"]["secretName"], "keyhole-webhook-ca");
    assert_eq!(find(&objs, "Certificate", "keyhole-webhook")["spec"]["issuerRef"]["name"], "keyhole-ca");
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let o = find(&objs, kind, "keyhole");
        assert_eq!(o["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "keyhole-system/keyhole-webhook");
    }
}

/// `make certs`'s overlay puts the CA in every webhook's caBundle (the
/// ephemeral-container webhook once had none, so `kubectl debug` of a keyhole
/// pod failed on TLS).
#[test]
fn the_make_certs_overlay_gives_every_webhook_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo_root().join("certs/make-certs.sh"))
        .env("CERTS_OUT", dir.path())
        .output()
        .expect("make-certs.sh");
    assert!(out.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&out.stderr));
    let overlay = dir.path().join("overlay").display().to_string();
    let objs = docs(&run(&parts().kubectl, &["kustomize", &overlay]).expect("kubectl kustomize the overlay"));
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        for h in find(&objs, kind, "keyhole")["webhooks"].as_array().unwrap() {
            assert!(
                h["clientConfig"]["caBundle"].as_str().is_some_and(|b| !b.is_empty()),
                "{kind} {} has no caBundle",
                h["name"]
            );
        }
    }
}

/// Every `values.yaml` of docs/quickstart.md, rendered by the real Helm: its
/// `null` stores are gone from keyhole-config (Helm merges them over the
/// chart's examples), the others are there, and the config loads as keyhole
/// loads it.
#[test]
fn the_quickstarts_values_render_a_config_with_the_stores_they_name() {
    let page = std::fs::read_to_string(repo_root().join("docs/quickstart.md")).unwrap();
    let blocks: Vec<&str> = page
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.starts_with("config:"))
        .collect();
    assert!(blocks.len() >= 3, "the quickstart's values blocks: {}", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let values: Value = serde_yaml::from_str(block).unwrap_or_else(|e| panic!("block {i}: {e}"));
        let stores = values["config"]["stores"].as_object().expect("stores");
        let wanted: Vec<&str> = stores.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.as_str()).collect();
        assert!(stores.values().any(Value::is_null), "block {i} drops no example store: the control is gone");
        let file = dir.path().join(format!("values-{i}.yaml"));
        std::fs::write(&file, block).unwrap();
        let args = ["template", "keyhole", "charts/keyhole", "-n", "keyhole-system", "-f", file.to_str().unwrap()];
        let objs = docs(&helm(&args).unwrap_or_else(|e| panic!("block {i}: {e}")));
        let text = find(&objs, "ConfigMap", "keyhole-config")["data"]["config.yaml"].as_str().unwrap().to_owned();
        let config = keyhole_contract::config::Config::parse(&text).unwrap_or_else(|e| panic!("block {i}: {e}"));
        let got: Vec<&str> = config.stores.stores.keys().map(String::as_str).collect();
        assert_eq!(got, wanted, "block {i}:\n{block}");
    }
}
