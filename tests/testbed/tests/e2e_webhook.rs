//! The webhook end to end: the real process, registered with the real API server
//! through manifests/webhooks.yaml; pods created by the real controller-manager.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use keyhole_contract::names;
use keyhole_testbed::proc::wait_until;
use keyhole_testbed::webhook::{Webhook, config_yaml, config_yaml_at, repo_root};
use keyhole_testbed::{Bed, e2e_tests};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

fn main() {
    keyhole_testbed::harness::run(e2e_tests![
        annotated_deployment_pods_come_out_mutated,
        pods_that_did_not_opt_in_never_reach_the_webhook,
        bad_reference_is_refused_at_create_with_the_message,
        a_path_outside_the_namespaces_grant_is_refused_at_apply_and_at_pod_create,
        with_the_webhook_down_opted_in_pods_are_refused_and_others_still_start,
        with_the_webhook_down_only_template_changes_are_blocked,
        debug_containers_may_not_mount_the_backend_token,
        manifests_pass_server_side_dry_run,
        sigterm_drains_and_exits_cleanly,
    ]);
}

static HOOK: OnceCell<Webhook> = OnceCell::const_new();

/// One webhook for the whole run (not named `keyhole`: the dry-run test applies that).
async fn hook(bed: &Bed) -> Result<&'static Webhook> {
    HOOK.get_or_try_init(|| async {
        let hook = Webhook::start(&config_yaml(bed)).await?;
        hook.register(bed, "keyhole-e2e", None).await?;
        Ok(hook)
    })
    .await
}

fn deployment(name: &str, annotations: serde_json::Value) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "containers": [
                        {"name": "app", "image": "registry.example/app:1"},
                        {"name": "proxy", "image": "registry.example/proxy:1"}
                    ]
                }
            }
        }
    }))?)
}

async fn pods(bed: &Bed, ns: &str, n: usize) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    wait_until(&format!("{n} pods in {ns}"), Duration::from_secs(60), || {
        let api = api.clone();
        async move { api.list(&ListParams::default()).await.map(|l| l.items.len() >= n).unwrap_or(false) }
    })
    .await?;
    Ok(api.list(&ListParams::default()).await?.items)
}

async fn annotated_deployment_pods_come_out_mutated(bed: &Bed) -> Result<()> {
    hook(bed).await?;
    let ns = bed.namespace("hook-deploy").await?;
    let d = deployment(
        "web",
        json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/containers": "app", "keyhole.dev/secret-db": "secret/x/db#password"}),
    )?;
    Api::<Deployment>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &d).await?;
    for pod in pods(bed, &ns, 2).await? {
        let spec = pod.spec.as_ref().context("spec")?;
        let inits = spec.init_containers.as_ref().context("no init containers")?;
        ensure!(inits[0].name == names::INJECTOR_CONTAINER, "injector is not first");
        let sc = inits[0].security_context.as_ref().context("securityContext")?;
        ensure!(sc.run_as_user == Some(1000) && sc.read_only_root_filesystem == Some(true));
        let vols = spec.volumes.as_ref().context("volumes")?;
        let token = vols.iter().find(|v| v.name == names::TOKEN_VOLUME).context("token volume")?;
        let proj = token.projected.as_ref().and_then(|p| p.sources.as_ref()).context("projected")?;
        ensure!(proj[0].service_account_token.as_ref().and_then(|t| t.audience.as_deref()) == Some("vault"));
        let tmpfs = vols.iter().find(|v| v.name == names::SECRETS_VOLUME).context("tmpfs volume")?;
        ensure!(tmpfs.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory"));
        // The token reaches the injector only; the values reach the targeted container only.
        for c in spec.containers.iter().chain(inits.iter().skip(1)) {
            ensure!(
                !c.volume_mounts.iter().flatten().any(|m| m.name == names::TOKEN_VOLUME),
                "{} mounts the token",
                c.name
            );
        }
        let app = &spec.containers[0];
        let proxy = &spec.containers[1];
        ensure!(
            app.volume_mounts.iter().flatten().any(|m| m.name == names::SECRETS_VOLUME && m.read_only == Some(true))
        );
        ensure!(!proxy.volume_mounts.iter().flatten().any(|m| m.name == names::SECRETS_VOLUME));
        let ann = pod.metadata.annotations.as_ref().context("annotations")?;
        ensure!(ann.get("keyhole.dev/status").map(String::as_str) == Some("injected"));
        ensure!(!ann.contains_key("keyhole.dev/store"), "defaults were written back into the annotations");
    }
    Ok(())
}

async fn pods_that_did_not_opt_in_never_reach_the_webhook(bed: &Bed) -> Result<()> {
    // Its own webhook, registered for this namespace only: other tests run in parallel.
    let ns = bed.namespace("hook-plain").await?;
    let own = Webhook::start(&config_yaml(bed)).await?;
    let name = format!("keyhole-{ns}");
    own.register(bed, &name, Some(&ns)).await?;
    let result = async {
        let before = own.reviews().await?;
        let d = deployment("plain", json!({"example.com/other": "x", "keyhole.dev/inject": "false"}))?;
        Api::<Deployment>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &d).await?;
        let created = pods(bed, &ns, 2).await?;
        ensure!(created.iter().all(|p| p.spec.as_ref().is_some_and(|s| s.init_containers.is_none())));
        let after = own.reviews().await?;
        ensure!(after == before, "the webhook saw {} reviews for pods that did not opt in", after - before);
        // The counter does move for a pod that opted in: this test can fail.
        let opted: Pod = serde_json::from_value(json!({
            "metadata": {"name": "opted", "annotations": {"keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/secret-a": "secret/a#b"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }))?;
        Api::<Pod>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &opted).await?;
        let moved = own.reviews().await?;
        ensure!(moved > after, "an opted-in pod did not reach the webhook");
        Ok(())
    }
    .await;
    Webhook::unregister(bed, &name).await?;
    result
}

async fn bad_reference_is_refused_at_create_with_the_message(bed: &Bed) -> Result<()> {
    hook(bed).await?;
    let ns = bed.namespace("hook-bad").await?;
    let d = deployment(
        "bad",
        json!({"keyhole.dev/inject": "true", "keyhole.dev/store": "aws", "keyhole.dev/secret-db": "prod db password"}),
    )?;
    let err = Api::<Deployment>::namespaced(bed.client.clone(), &ns)
        .create(&PostParams::default(), &d)
        .await
        .err()
        .context("a Deployment with a bad reference was created")?;
    let msg = err.to_string();
    ensure!(
        msg.contains("keyhole: Deployment")
            && msg.contains("keyhole.dev/secret-db: bad aws-ssm reference for store \"aws\"")
            && msg.contains("which SSM does not allow"),
        "message: {msg}"
    );
    Ok(())
}

/// A store scoped to one namespace and one path prefix: a Deployment and a bare
/// pod reading outside it are refused with the annotation, the store and the
/// allowed paths; inside it (the control) both pass, and are injected.
async fn a_path_outside_the_namespaces_grant_is_refused_at_apply_and_at_pod_create(bed: &Bed) -> Result<()> {
    hook(bed).await?;
    let ns = bed.namespace("hook-tenant").await?;
    let allow = format!(r#"[{{namespaces: ["{ns}"], roles: [app], paths: ["secret/{ns}/"]}}]"#);
    let config = config_yaml_at(&bed.vault_addr, &bed.moto_url, &bed.moto_url, &[("allow", &allow)], &[]);
    let scoped = Webhook::start(&config).await?;
    // Named to run before the open webhook of the run, which would inject first.
    let name = format!("a-keyhole-e2e-{ns}");
    scoped.register(bed, &name, Some(&ns)).await?;
    let result = async {
        let annotations = |path: &str| {
            json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/containers": "app",
                   "keyhole.dev/secret-db": format!("{path}#password")})
        };
        let want = format!(
            "keyhole.dev/secret-db: store \"vault\" lets namespace \"{ns}\" read secret/{ns}/ only; \"secret/other/db\" is outside"
        );
        let deployments = Api::<Deployment>::namespaced(bed.client.clone(), &ns);
        let err = deployments
            .create(&PostParams::default(), &deployment("outside", annotations("secret/other/db"))?)
            .await
            .err()
            .context("a Deployment reading outside its grant was created")?;
        ensure!(err.to_string().contains(&want), "at apply: {err}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "outside", "annotations": annotations("secret/other/db")},
            "spec": {"securityContext": {"runAsUser": 1000},
                     "containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }))?;
        let pods_api = Api::<Pod>::namespaced(bed.client.clone(), &ns);
        let err = pods_api.create(&PostParams::default(), &pod).await.err().context("the pod was created")?;
        ensure!(err.to_string().contains(&want), "at pod create: {err}");

        // Control: inside the grant.
        deployments
            .create(&PostParams::default(), &deployment("inside", annotations(&format!("secret/{ns}/db")))?)
            .await
            .context("a Deployment inside its grant was refused")?;
        let mut inside = pod.clone();
        inside.metadata.name = Some("inside".into());
        inside.metadata.annotations =
            Some(serde_json::from_value(annotations(&format!("secret/{ns}/db")))?);
        let made = pods_api.create(&PostParams::default(), &inside).await.context("a pod inside its grant")?;
        let injected = made.spec.and_then(|s| s.init_containers).unwrap_or_default();
        ensure!(injected.iter().any(|c| c.name == names::INJECTOR_CONTAINER), "the pod inside its grant was not injected");
        Ok(())
    }
    .await;
    Webhook::unregister(bed, &name).await?;
    result
}

async fn with_the_webhook_down_opted_in_pods_are_refused_and_others_still_start(bed: &Bed) -> Result<()> {
    hook(bed).await?;
    let ns = bed.namespace("hook-down").await?;
    // A second webhook, registered for this namespace only, then stopped.
    let mut second = Webhook::start(&config_yaml(bed)).await?;
    let name = format!("keyhole-{ns}");
    second.register(bed, &name, Some(&ns)).await?;
    let pods_api: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    let pod = |name: &str, inject: bool| -> Result<Pod> {
        let ann = if inject {
            json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/secret-a": "secret/a#b"})
        } else {
            json!({})
        };
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": ann},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }))?)
    };
    pods_api.create(&PostParams::default(), &pod("up-opted-in", true)?).await.context("while the webhook is up")?;
    second.proc.stop(Duration::from_secs(5));

    let refused = pods_api.create(&PostParams::default(), &pod("down-opted-in", true)?).await;
    let result = match refused {
        Ok(_) => Err(anyhow::anyhow!("an opted-in pod was admitted with its webhook down")),
        Err(e) if e.to_string().contains("failed calling webhook") => Ok(()),
        Err(e) => Err(anyhow::anyhow!("refused, but not by the webhook call: {e}")),
    };
    let plain = pods_api.create(&PostParams::default(), &pod("down-plain", false)?).await;
    Webhook::unregister(bed, &name).await?;
    result?;
    plain.context("a pod that did not opt in was blocked by a webhook that is down")?;
    Ok(())
}

/// The validating webhook's matchConditions: with it down (failurePolicy Fail),
/// a changed template is refused (the control), while label updates, the
/// rotation controller's roll and a foreground deletion (the garbage
/// collector's finalizer updates) all go through.
async fn with_the_webhook_down_only_template_changes_are_blocked(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("validate-down").await?;
    let mut second = Webhook::start(&config_yaml(bed)).await?;
    let name = format!("keyhole-{ns}");
    second.register(bed, &name, Some(&ns)).await?;
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns);
    let d = deployment(
        "web",
        json!({"keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/secret-db": "secret/shop/db#password"}),
    )?;
    api.create(&PostParams::default(), &d).await.context("while the webhook is up")?;
    second.proc.stop(Duration::from_secs(5));

    let outcome = async {
        let merge = |v: serde_json::Value| kube::api::Patch::Merge(v);
        let pp = kube::api::PatchParams::default();
        let changed =
            api.patch("web", &pp, &merge(json!({"spec": {"template": {"metadata": {"labels": {"v": "2"}}}}}))).await;
        match changed {
            Ok(_) => bail!("a changed template was admitted with the validating webhook down"),
            Err(e) if e.to_string().contains("failed calling webhook") => {}
            Err(e) => bail!("refused, but not by the webhook call: {e}"),
        }
        api.patch("web", &pp, &merge(json!({"metadata": {"labels": {"team": "shop"}}})))
            .await
            .context("a label update was blocked by a webhook that is down")?;
        let roll = r#"{"spec":{"template":{"metadata":{"annotations":{"keyhole.dev/versions":"db=2"}}}}}"#;
        bed.kubectl(&[
            "-n",
            &ns,
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            roll,
            "--as=system:serviceaccount:keyhole-system:keyhole-rotation",
            "--as-group=system:masters",
        ])
        .await
        .context("the rotation controller's roll was blocked by a webhook that is down")?;
        bed.kubectl(&["-n", &ns, "delete", "deployment", "web", "--cascade=foreground", "--timeout=60s"])
            .await
            .context("a foreground deletion was blocked by a webhook that is down")?;
        wait_until("the Deployment deleted", Duration::from_secs(30), || async {
            matches!(api.get_opt("web").await, Ok(None))
        })
        .await?;
        Ok(())
    }
    .await;
    Webhook::unregister(bed, &name).await?;
    outcome
}

/// `kubectl debug` (the `pods/ephemeralcontainers` subresource) may add a
/// container to an injected pod, but not one that mounts keyhole's token.
async fn debug_containers_may_not_mount_the_backend_token(bed: &Bed) -> Result<()> {
    hook(bed).await?;
    let ns = bed.namespace("debug").await?;
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app", "annotations": {
            "keyhole.dev/inject": "true", "keyhole.dev/role": "app", "keyhole.dev/secret-a": "secret/a#b"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    }))?;
    api.create(&PostParams::default(), &pod).await?;
    let debug = |n: &str, mount: Option<&str>| {
        let mounts: Vec<_> = mount.map(|m| json!({"name": m, "mountPath": "/x"})).into_iter().collect();
        kube::api::Patch::Strategic(json!({"spec": {"ephemeralContainers": [
            {"name": n, "image": "registry.example/busybox:1", "volumeMounts": mounts}]}}))
    };
    let pp = kube::api::PatchParams::default();
    let stolen = api.patch_ephemeral_containers("app", &pp, &debug("thief", Some(names::TOKEN_VOLUME))).await;
    let msg = match stolen {
        Ok(_) => bail!("an ephemeral container mounting {} was admitted", names::TOKEN_VOLUME),
        Err(e) => e.to_string(),
    };
    ensure!(msg.contains("ephemeral container \"thief\" mounts \"keyhole-token\""), "{msg}");
    // Control: a debug container without the mount is added.
    api.patch_ephemeral_containers("app", &pp, &debug("debugger", None)).await.context("a plain debug container")?;
    let got = api.get("app").await?;
    let names: Vec<_> = got.spec.and_then(|s| s.ephemeral_containers).into_iter().flatten().map(|c| c.name).collect();
    ensure!(names == ["debugger"], "{names:?}");
    Ok(())
}

async fn manifests_pass_server_side_dry_run(bed: &Bed) -> Result<()> {
    // Namespaced objects need their namespace to exist for a server-side dry run.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "keyhole-system"}}))?;
    let _ = Api::<Namespace>::all(bed.client.clone()).create(&PostParams::default(), &ns).await;
    for dir in ["manifests"] {
        let out = tokio::process::Command::new(&bed.parts.kubectl)
            .arg("--kubeconfig")
            .arg(&bed.kubeconfig)
            .args(["apply", "--dry-run=server", "-k"])
            .arg(repo_root().join(dir))
            .output()
            .await?;
        if !out.status.success() {
            bail!("kubectl apply --dry-run=server -k {dir}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(stdout.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/keyhole"), "{stdout}");
    }
    Ok(())
}

async fn sigterm_drains_and_exits_cleanly(bed: &Bed) -> Result<()> {
    let mut hook = Webhook::start(&config_yaml(bed)).await?;
    let pid = hook.proc.pid().context("pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let status = hook.proc.wait_exit(Duration::from_secs(10))?;
    ensure!(status.success(), "exit status after SIGTERM: {status}");
    ensure!(hook.log().contains("draining in-flight requests"), "log: {}", hook.log());
    Ok(())
}
