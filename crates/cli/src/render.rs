//! `keyhole render`: the pods of a manifest as the webhook would patch them,
//! offline, with the same config: users and CI see what will happen (or the
//! denial) before they apply. With `--sample-values`, the files its templates
//! would make, rendered with made-up values (`sample-<name>`), never real ones.

use keyhole_contract::annotations;
use keyhole_contract::config::Config;
use keyhole_contract::plan::Plan;
use keyhole_contract::{Problems, WorkloadKind};
use keyhole_webhook::mutate::{Mutation, mutate};
use keyhole_webhook::review::workload_pod;
use keyhole_webhook::slim::PodView;
use secrecy::{ExposeSecret, SecretString};
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
    #[error("keyhole: {kind} {name}: keyhole.dev/template-{template}: {reason}")]
    Template { kind: String, name: String, template: String, reason: String },
}

/// What to print of each object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// The patched pod (a workload's pod template as a Pod).
    Pods,
    /// The files of its templates, rendered with sample values.
    SampleFiles,
}

/// Renders every document of `yaml`. `Err` holds one error per refused object.
pub fn render(config: &Config, yaml: &str) -> Result<String, Vec<RenderError>> {
    render_as(config, yaml, Show::Pods)
}

/// Like [`render`], printing what `show` says.
pub fn render_as(config: &Config, yaml: &str, show: Show) -> Result<String, Vec<RenderError>> {
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
        let of = (
            value["kind"].as_str().unwrap_or_default().to_owned(),
            value["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        match render_one(config, value) {
            Ok(Some((pod, _))) if show == Show::Pods => {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&pod).expect("a pod serializes"));
            }
            Ok(Some((pod, Some(plan)))) => match sample_files(&of.0, &of.1, &pod, &plan) {
                Ok(files) => out.push_str(&files),
                Err(e) => errors.push(e),
            },
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The patched pod: a Pod as written, or a workload's pod template as a Pod.
/// Every field the manifest has is kept; only the patch is added.
/// A rendered object: the patched pod, and the plan when keyhole patched it.
type Rendered = (Value, Option<Box<Plan>>);

fn render_one(config: &Config, value: Value) -> Result<Option<Rendered>, RenderError> {
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
        Ok(Mutation::Skip(_)) => Ok(Some((doc, None))),
        Ok(Mutation::Patch { patch, plan }) => {
            json_patch::patch(&mut doc, &patch).map_err(|source| RenderError::Patch { kind, name, source })?;
            Ok(Some((doc, Some(plan))))
        }
        Err(problems) => Err(RenderError::Denied { kind, name, problems }),
    }
}

/// The files `plan`'s templates make, each under a comment line naming the
/// object, the annotation and the file. The values are `sample-<name>`: this
/// never fetches anything.
fn sample_files(kind: &str, name: &str, pod: &Value, plan: &Plan) -> Result<String, RenderError> {
    let samples: keyhole_backends::Values =
        plan.items.iter().map(|i| (i.name.clone(), SecretString::from(format!("sample-{}", i.name)))).collect();
    let files = keyhole_injector::output::render(&plan.templates, &samples).map_err(|e| RenderError::Template {
        kind: kind.into(),
        name: name.into(),
        template: e.name,
        reason: e.reason,
    })?;
    let dir = match plan.output_dir {
        Some(_) => {
            pod["metadata"]["annotations"][annotations::MOUNT_PATH].as_str().unwrap_or(annotations::DEFAULT_MOUNT_PATH)
        }
        None => "(Secret output)",
    };
    let mut out = String::new();
    for (file, text) in files {
        out.push_str(&format!("# {kind} {name}: keyhole.dev/template-{file} -> {dir}/{file} (sample values)\n"));
        out.push_str(text.expose_secret());
        if !text.expose_secret().ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
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

        let files = render_as(
            &config,
            &yaml.replace(
                "keyhole.dev/inject",
                "keyhole.dev/template-app.env: 'PW={{ secrets[\"pw\"] }}', keyhole.dev/inject",
            ),
            Show::SampleFiles,
        )
        .unwrap();
        assert_eq!(
            files,
            "# Deployment web: keyhole.dev/template-app.env -> /keyhole/secrets/app.env (sample values)\nPW=sample-pw\n"
        );
        let undeclared =
            yaml.replace("keyhole.dev/inject", "keyhole.dev/template-x: '{{ secrets[\"nope\"] }}', keyhole.dev/inject");
        let e = render_as(&config, &undeclared, Show::SampleFiles).unwrap_err();
        assert!(e[0].to_string().starts_with("keyhole: Deployment web: keyhole.dev/template-x: "), "{}", e[0]);

        let bad = yaml.replace("secret/web#pw", "secret#pw");
        let denials = render(&config, &bad).unwrap_err();
        assert_eq!(denials.len(), 1);
        let first = denials[0].to_string();
        assert!(first.starts_with("keyhole: Deployment web: keyhole.dev/secret-pw: bad vault reference"), "{first}");
    }
}
