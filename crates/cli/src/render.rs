//! `keyhole render`: the pods of a manifest as the webhook would patch them,
//! offline, with the same config: users and CI see what will happen (or the
//! denial) before they apply.

use keyhole_contract::config::Config;
use keyhole_contract::{Problems, WorkloadKind};
use keyhole_webhook::mutate::{Mutation, mutate};
use keyhole_webhook::review::workload_pod;
use keyhole_webhook::slim::PodView;
use serde::Deserialize;
use serde_json::{Value, json};

/// Why one document of a manifest cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("not YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("{kind} {name}: {source}")]
    Unreadable { kind: String, name: String, source: serde_json::Error },
    #[error("{kind} {name}: the patch does not apply: {source}")]
    Patch { kind: String, name: String, source: json_patch::PatchError },
    #[error("keyhole: {kind} {name}: {problems}")]
    Denied { kind: String, name: String, problems: Problems },
}

/// Renders every document of `yaml`. `Err` holds one error per refused object.
pub fn render(config: &Config, yaml: &str) -> Result<String, Vec<RenderError>> {
    let mut out = String::new();
    let mut errors = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(RenderError::Yaml(e));
                continue;
            }
        };
        match render_one(config, value) {
            Ok(Some(pod)) => {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&pod).expect("a pod serializes"));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The patched pod: a Pod as written, or a workload's pod template as a Pod.
/// Every field the manifest has is kept; only the patch is added.
fn render_one(config: &Config, value: Value) -> Result<Option<Value>, RenderError> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let name = value["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let unreadable = |source| RenderError::Unreadable { kind: kind.clone(), name: name.clone(), source };
    let (view, mut doc) = if kind == "Pod" {
        (PodView::deserialize(&value).map_err(unreadable)?, value)
    } else if let Some(workload) = WorkloadKind::from_api_kind(&kind) {
        let view = workload_pod(workload, &name, &value).map_err(unreadable)?;
        let template = workload.template_in(&value);
        let mut doc =
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]});
        doc["metadata"]["ownerReferences"] = serde_json::to_value(&view.metadata.owner_references).expect("serializes");
        (view, doc)
    } else {
        return Ok(None);
    };
    match mutate(&view, config) {
        Ok(Mutation::Skip(_)) => Ok(Some(doc)),
        Ok(Mutation::Patch { patch, .. }) => {
            json_patch::patch(&mut doc, &patch).map_err(|source| RenderError::Patch { kind, name, source })?;
            Ok(Some(doc))
        }
        Err(problems) => Err(RenderError::Denied { kind, name, problems }),
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
        let first = denials[0].to_string();
        assert!(first.starts_with("keyhole: Deployment web: keyhole.dev/secret-pw: bad vault reference"), "{first}");
    }
}
