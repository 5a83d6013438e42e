//! `keyhole-webhook render`: the pods of a manifest as the webhook would patch
//! them, offline, with the same config: users and CI see what will happen (or the
//! denial) before they apply.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use serde::Deserialize;
use serde_json::Value;

use crate::config::Config;
use crate::mutate::{Mutation, mutate};
use crate::review::{denial, workload_pod};

/// Renders every document of `yaml`. `Err` holds one denial per refused object.
pub fn render(config: &Config, yaml: &str) -> Result<String, Vec<String>> {
    let mut out = String::new();
    let mut denials = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                denials.push(format!("not YAML: {e}"));
                continue;
            }
        };
        match render_one(config, value) {
            Ok(Some(pod)) => {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&pod).expect("a pod serializes"));
            }
            Ok(None) => {}
            Err(e) => denials.push(e),
        }
    }
    if denials.is_empty() { Ok(out) } else { Err(denials) }
}

fn render_one(config: &Config, value: Value) -> Result<Option<Value>, String> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let pod: Pod = if kind == "Pod" {
        serde_json::from_value(value).map_err(|e| format!("Pod {name}: {e}"))?
    } else {
        let obj: DynamicObject = serde_json::from_value(value).map_err(|e| format!("{kind} {name}: {e}"))?;
        match workload_pod(&kind, &obj).map_err(|e| format!("{kind} {name}: pod template: {e}"))? {
            Some(pod) => pod,
            None => return Ok(None),
        }
    };
    let mut doc = serde_json::to_value(&pod).expect("a pod serializes");
    match mutate(&pod, config) {
        Ok(Mutation::Skip(_)) => Ok(Some(doc)),
        Ok(Mutation::Patch { patch, .. }) => {
            json_patch::patch(&mut doc, &patch).map_err(|e| format!("{kind} {name}: the patch does not apply: {e}"))?;
            Ok(Some(doc))
        }
        Err(problems) => Err(denial(&format!("{kind} {name}"), &problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "injector: {image: keyhole:test}\ndefaultStore: v\nstores:\n  v: {kind: vault, address: 'https://v:8200', auth: {method: jwt}, defaultRole: app}\n";

    #[test]
    fn renders_workload_pods_and_plain_pods_and_reports_denials() {
        let config = Config::parse(CONFIG).unwrap();
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {keyhole.dev/inject: "true", keyhole.dev/secret-pw: secret/web#pw}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: v1
kind: Pod
metadata: {name: plain}
spec: {containers: [{name: app, image: a}]}
"#;
        let out = render(&config, yaml).unwrap();
        assert_eq!(out.matches("---\n").count(), 2, "{out}");
        assert!(out.contains("name: keyhole-injector"), "{out}");
        assert!(out.contains("keyhole.dev/status: injected"), "{out}");

        let bad = yaml.replace("secret/web#pw", "secret#pw");
        let denials = render(&config, &bad).unwrap_err();
        assert_eq!(denials.len(), 1);
        assert!(
            denials[0].starts_with("keyhole: Deployment web: keyhole.dev/secret-pw: bad vault reference"),
            "{denials:?}"
        );
    }
}
