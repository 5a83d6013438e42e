//! Smoke tests of the test bed itself: every part is the real one and the paths
//! keyhole relies on (TokenRequest, OIDC discovery, TokenReview, web identity,
//! controllers) work end to end.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use keyhole_testbed::proc::wait_until;
use keyhole_testbed::{Bed, KUBERNETES_VERSION, create_service_account, e2e_tests};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

fn main() {
    keyhole_testbed::harness::run(e2e_tests![
        control_plane_is_real_and_serves_oidc_discovery,
        deployment_gets_its_replicaset_and_pod,
        openbao_logs_in_with_projected_tokens_through_jwt_and_kubernetes_auth,
        moto_assumes_a_role_with_a_projected_token_and_serves_ssm,
    ]);
}

async fn control_plane_is_real_and_serves_oidc_discovery(bed: &Bed) -> Result<()> {
    let version: Value = bed.http.get(format!("{}/version", bed.api_url)).send().await?.json().await?;
    ensure!(version["gitVersion"] == KUBERNETES_VERSION, "version: {version}");
    ensure!(version["goVersion"].as_str().is_some_and(|v| v.starts_with("go1.")), "{version}");

    // Anonymous, as OpenBao reads it.
    let anon = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bed.ca_pem.as_bytes())?)
        .build()?;
    let disco: Value = anon
        .get(format!("{}/.well-known/openid-configuration", bed.api_url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(disco["issuer"] == bed.issuer, "issuer: {disco}");
    let jwks: Value =
        anon.get(format!("{}/openid/v1/jwks", bed.api_url)).send().await?.error_for_status()?.json().await?;
    ensure!(jwks["keys"][0]["alg"] == "ES256", "jwks: {jwks}");
    Ok(())
}

async fn deployment_gets_its_replicaset_and_pod(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("smoke-deploy").await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))?;
    Api::<Deployment>::namespaced(bed.client.clone(), &ns).create(&PostParams::default(), &deploy).await?;
    let rss: Api<ReplicaSet> = Api::namespaced(bed.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns);
    wait_until("the controller-manager to create 2 pods through a ReplicaSet", Duration::from_secs(60), || {
        let (rss, pods) = (rss.clone(), pods.clone());
        async move {
            let rs = rss.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
            let p = pods.list(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
            rs == 1 && p == 2
        }
    })
    .await?;
    let pod = pods.list(&ListParams::default()).await?.items.remove(0);
    let owner = &pod.metadata.owner_references.as_ref().context("pod has no owner")?[0];
    ensure!(owner.kind == "ReplicaSet" && owner.controller == Some(true), "owner: {owner:?}");
    ensure!(pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key("pod-template-hash")));
    Ok(())
}

async fn openbao_logs_in_with_projected_tokens_through_jwt_and_kubernetes_auth(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("smoke-vault").await?;
    create_service_account(&bed.client, &ns, "app").await?;
    let seal: Value = bed.vault("GET", "sys/seal-status", None).await?;
    ensure!(
        seal["version"].is_string() && seal["commit_date"].is_string() && seal["storage_type"] == "inmem",
        "not OpenBao in dev mode: {seal}"
    );

    bed.vault("POST", &format!("secret/data/{ns}/db"), Some(json!({"data": {"password": "smoke-v2-value"}}))).await?;
    bed.vault("POST", &format!("kv1/{ns}/db"), Some(json!({"password": "smoke-v1-value"}))).await?;
    bed.vault_policy(&ns, &[&format!("secret/data/{ns}/*"), &format!("kv1/{ns}/*")]).await?;
    bed.vault_jwt_role(&ns, &ns, "app", "vault", &ns).await?;
    bed.vault_kubernetes_role(&ns, &ns, "app", "vault", &ns).await?;

    let token = bed.token(&ns, "app", &["vault"], 600, None).await?;
    for method in ["jwt", "kubernetes"] {
        let client_token = vault_login(bed, method, &ns, &token).await?;
        let v2 = vault_get(bed, &client_token, &format!("secret/data/{ns}/db")).await?;
        ensure!(v2["data"]["data"]["password"] == "smoke-v2-value", "{method}: KV v2 read failed");
        let v1 = vault_get(bed, &client_token, &format!("kv1/{ns}/db")).await?;
        ensure!(v1["data"]["password"] == "smoke-v1-value", "{method}: KV v1 read failed");
    }

    // The logins above prove nothing unless a bad token fails: wrong audience.
    let wrong = bed.token(&ns, "app", &["not-vault"], 600, None).await?;
    for method in ["jwt", "kubernetes"] {
        if vault_login(bed, method, &ns, &wrong).await.is_ok() {
            bail!("{method} auth accepted a token for the wrong audience");
        }
    }
    Ok(())
}

async fn vault_login(bed: &Bed, method: &str, role: &str, jwt: &str) -> Result<String> {
    let resp = bed
        .http
        .post(format!("{}/v1/auth/{method}/login", bed.vault_addr))
        .json(&json!({"role": role, "jwt": jwt}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "{method} login: {status}: {}", body["errors"]);
    Ok(body["auth"]["client_token"].as_str().context("no client_token")?.to_owned())
}

async fn vault_get(bed: &Bed, token: &str, path: &str) -> Result<Value> {
    let resp = bed.http.get(format!("{}/v1/{path}", bed.vault_addr)).header("X-Vault-Token", token).send().await?;
    ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
    Ok(resp.json().await?)
}

async fn moto_assumes_a_role_with_a_projected_token_and_serves_ssm(bed: &Bed) -> Result<()> {
    let ns = bed.namespace("smoke-aws").await?;
    create_service_account(&bed.client, &ns, "app").await?;
    let moto: Value = bed.http.get(format!("{}/moto-api/data.json", bed.moto_url)).send().await?.json().await?;
    ensure!(moto.is_object(), "not moto: {moto}");

    let name = format!("/{ns}/db/password");
    bed.ssm_admin()
        .await
        .put_parameter()
        .name(&name)
        .value("smoke-ssm-value")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await?;

    let token = bed.token(&ns, "app", &["sts.amazonaws.com"], 600, None).await?;
    let sts_conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(&bed.moto_url)
        .http_client(keyhole_testbed::aws_http_client())
        .build();
    let assumed = aws_sdk_sts::Client::from_conf(sts_conf)
        .assume_role_with_web_identity()
        .role_arn("arn:aws:iam::123456789012:role/smoke")
        .role_session_name("smoke")
        .web_identity_token(token)
        .send()
        .await
        .context("AssumeRoleWithWebIdentity on moto")?;
    let c = assumed.credentials().context("no credentials")?;
    ensure!(c.access_key_id().starts_with("ASIA"), "moto gave no session credentials");
    let creds = aws_credential_types::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "smoke",
    );
    let ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new("us-east-1"))
            .endpoint_url(&bed.moto_url)
            .credentials_provider(creds)
            .http_client(keyhole_testbed::aws_http_client())
            .build(),
    );
    let got = ssm.get_parameter().name(&name).with_decryption(true).send().await?;
    ensure!(got.parameter().and_then(|p| p.value()) == Some("smoke-ssm-value"), "GetParameter returned another value");
    Ok(())
}
