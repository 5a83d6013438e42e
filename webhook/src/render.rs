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
