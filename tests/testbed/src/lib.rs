//! keyhole's test bed: a real etcd, kube-apiserver and kube-controller-manager
//! (built from the upstream Go modules by `tests/bed/install.sh`), OpenBao in dev
//! mode and moto's server, each on a free loopback port, all stopped when the
//! [`Bed`] drops.
//!
//! Nothing here is a stand-in: tests talk to the real servers, and
//! [`Bed::start`] checks each one is what it claims to be.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod bench_node;
pub mod bench_rotation;
pub mod demo;
pub mod harness;
pub mod image;
pub mod install;
pub mod kubelet;
pub mod leaks;
pub mod netns;
pub mod node;
pub mod pki;
pub mod proc;
pub mod proxy;
pub mod rotation;
pub mod webhook;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::{Value, json};

use crate::pki::Pki;
use crate::proc::{Proc, free_port, wait_until};

/// The Kubernetes release the bed builds and runs.
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// OpenBao's dev-mode root token.
pub const VAULT_ROOT_TOKEN: &str = "root";
/// Namespace for the bed's own objects (the Vault token reviewer).
pub const BED_NAMESPACE: &str = "keyhole-bed";

/// Where installed and built parts are cached between runs.
pub fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KEYHOLE_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/keyhole")
}

/// Paths of the parts `tests/bed/install.sh` puts in the cache.
#[derive(Clone, Debug)]
pub struct Parts {
    pub kube_bed: PathBuf,
    pub bao: PathBuf,
    pub moto_server: PathBuf,
    pub kubectl: PathBuf,
    /// Built from tests/tools/helm (the chart's tests).
    pub helm: PathBuf,
    /// Built from tests/tools/promtool (the alerts' tests).
    pub promtool: PathBuf,
}

impl Parts {
    pub fn find() -> Result<Parts> {
        let cache = cache_dir();
        let venv = cache.join("venv/bin");
        let parts = Parts {
            kube_bed: cache.join("bin/kube-bed"),
            bao: venv.join("bao"),
            moto_server: venv.join("moto_server"),
            kubectl: venv.join("kubectl"),
            helm: cache.join("bin/helm"),
            promtool: cache.join("bin/promtool"),
        };
        for p in [&parts.kube_bed, &parts.bao, &parts.moto_server, &parts.kubectl, &parts.helm, &parts.promtool] {
            if !p.exists() {
                bail!("{} is missing: run `make bed-deps` (tests/bed/install.sh) first", p.display());
            }
        }
        Ok(parts)
    }
}

pub struct Bed {
    pub dir: PathBuf,
    pub parts: Parts,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub pki: Pki,
    pub api_url: String,
    /// The service-account issuer (also the OIDC discovery URL).
    pub issuer: String,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    pub vault_addr: String,
    pub moto_url: String,
    pub k8s_version: String,
    pub started_in: Duration,
    pub http: reqwest::Client,
    /// The real node, when the bed was started with one ([`Bed::start_with_node`]).
    pub node: Option<node::Node>,
    /// keyhole as installed on the node ([`Bed::install_keyhole`]).
    pub installed: Option<install::Install>,
    /// Behind a lock so a fault test can stop one part through `&Bed`.
    procs: std::sync::Mutex<Vec<Proc>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Installs ring as rustls's process-wide provider (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Bed {
    /// Starts every part. Must be called on the thread that lives as long as the
    /// bed: children die with it (`--pdeathsig`).
    pub async fn start() -> Result<Bed> {
        Bed::start_opts(false).await
    }

    /// [`Bed::start`] plus a real node (kubelet, containerd, CNI) and the
    /// scheduler: pods run. Needs keyhole's image binary (`make test` builds it).
    pub async fn start_with_node() -> Result<Bed> {
        Bed::start_opts(true).await
    }

    async fn start_opts(with_node: bool) -> Result<Bed> {
        install_crypto();
        let t0 = Instant::now();
        let parts = Parts::find()?;
        let tmp = tempfile::Builder::new().prefix("keyhole-bed-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;

        let pki = Pki::new("keyhole-bed-ca")?;
        let ca_file = pki_dir.join("ca.crt");
        std::fs::write(&ca_file, &pki.ca_pem)?;
        let mut sans = vec!["localhost", "127.0.0.1"];
        if with_node {
            // The kubelet dials the node IP (forwarded), pods the ClusterIP (DNAT).
            sans.extend([node::NODE_IP, node::API_CLUSTER_IP]);
        }
        let serving = pki.server(&pki_dir, "apiserver", &sans)?;
        let admin = pki.client(&pki_dir, "admin", "keyhole-bed-admin", &["system:masters"])?;
        let (sa_key, sa_pub) = pki::signing_key(&pki_dir)?;

        let etcd_port = free_port(false)?;
        let etcd_peer = free_port(false)?;
        let api_port = free_port(false)?;
        let vault_port = free_port(true)?;
        let moto_port = free_port(false)?;
        let api_url = format!("https://127.0.0.1:{api_port}");
        let vault_addr = format!("http://127.0.0.1:{vault_port}");
        let moto_url = format!("http://127.0.0.1:{moto_port}");

        let mut procs = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        procs.push(Proc::spawn(
            "etcd",
            &parts.kube_bed,
            &args(&[
                "etcd",
                "--name=bed",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=bed={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
            &[],
            &logs,
        )?);
        let vault_home = dir.join("bao-home");
        std::fs::create_dir_all(&vault_home)?;
        procs.push(Proc::spawn(
            "openbao",
            &parts.bao,
            &args(&[
                "server",
                "-dev",
                &format!("-dev-root-token-id={VAULT_ROOT_TOKEN}"),
                &format!("-dev-listen-address=127.0.0.1:{vault_port}"),
                "-dev-no-store-token",
            ]),
            &[("HOME", vault_home.display().to_string())],
            &logs,
        )?);
        procs.push(Proc::spawn(
            "moto",
            &parts.moto_server,
            &args(&["-H", "127.0.0.1", "-p", &moto_port.to_string()]),
            &[],
            &logs,
        )?);
        // With a node, the API server reaches pods and the kubelet the way it does
        // through konnectivity: an HTTP CONNECT proxy (its `cluster` egress) that
        // dials inside the node's network namespace.
        let node_netns = std::sync::Arc::new(std::sync::OnceLock::new());
        let mut node_flags = Vec::new();
        if with_node {
            let proxy_sock = dir.join("egress.sock");
            netns::connect_proxy(&proxy_sock, node_netns.clone())?;
            let egress = dir.join("egress-selector.yaml");
            std::fs::write(
                &egress,
                format!(
                    "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
                    proxy_sock.display()
                ),
            )?;
            node_flags.push(format!("--egress-selector-config-file={}", egress.display()));
            // Webhooks by Service are dialled at an endpoint (a pod IP): no kube-proxy here.
            node_flags.push("--enable-aggregator-routing=true".to_owned());
            node_flags.push("--kubelet-preferred-address-types=InternalIP".to_owned());
        }
        // The API server retries etcd until it answers: no need to wait for it first.
        procs.push(Proc::spawn(
            "kube-apiserver",
            &parts.kube_bed,
            &[
                args(&[
                    "kube-apiserver",
                    &format!("--etcd-servers={etcd_url}"),
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    &format!("--secure-port={api_port}"),
                    &format!("--cert-dir={}", dir.join("apiserver").display()),
                    &format!("--tls-cert-file={}", serving.cert.display()),
                    &format!("--tls-private-key-file={}", serving.key.display()),
                    &format!("--client-ca-file={}", ca_file.display()),
                    &format!("--service-account-issuer={api_url}"),
                    &format!("--service-account-jwks-uri={api_url}/openid/v1/jwks"),
                    &format!("--service-account-key-file={}", sa_pub.display()),
                    &format!("--service-account-signing-key-file={}", sa_key.display()),
                    "--authorization-mode=RBAC",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--endpoint-reconciler-type=none",
                    "--enable-priority-and-fairness=false",
                    "--profiling=false",
                    "--v=0",
                ]),
                node_flags,
            ]
            .concat(),
            &[],
            &logs,
        )?);

        let kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&api_url, &ca_file, &admin.cert, &admin.key))?;

        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?)
            .identity(reqwest::Identity::from_pem(
                format!("{}{}", std::fs::read_to_string(&admin.cert)?, std::fs::read_to_string(&admin.key)?).as_bytes(),
            )?)
            .timeout(Duration::from_secs(10))
            .build()?;

        let mut bed = Bed {
            dir,
            parts,
            ca_pem: pki.ca_pem.clone(),
            ca_file,
            pki,
            api_url: api_url.clone(),
            issuer: api_url.clone(),
            kubeconfig: kubeconfig.clone(),
            client: kube_client(&kubeconfig).await?,
            vault_addr,
            moto_url,
            k8s_version: String::new(),
            started_in: Duration::ZERO,
            http,
            node: None,
            installed: None,
            procs: std::sync::Mutex::new(procs),
            _tmp: Some(tmp),
        };

        bed.wait_ready("kube-apiserver /readyz", Duration::from_secs(90), format!("{api_url}/readyz")).await?;
        bed.procs.get_mut().unwrap().push(Proc::spawn(
            "kube-controller-manager",
            &bed.parts.kube_bed,
            &args(&[
                "kube-controller-manager",
                &format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false",
                "--secure-port=0",
                &format!("--service-account-private-key-file={sa_key}", sa_key = sa_key.display()),
                &format!("--root-ca-file={}", bed.ca_file.display()),
                "--use-service-account-credentials=false",
                &format!("--controllers={CONTROLLERS}{}", if with_node { NODE_CONTROLLERS } else { "" }),
                "--concurrent-gc-syncs=5",
                "--v=0",
            ]),
            &[],
            &logs,
        )?);
        let vault_health = format!("{}/v1/sys/health", bed.vault_addr);
        bed.wait_ready("OpenBao /v1/sys/health", Duration::from_secs(30), vault_health).await?;
        let moto_api = format!("{}/moto-api/", bed.moto_url);
        bed.wait_ready("moto /moto-api/", Duration::from_secs(60), moto_api).await?;

        let version: Value = bed.http.get(format!("{api_url}/version")).send().await?.json().await?;
        bed.k8s_version = version["gitVersion"].as_str().unwrap_or_default().to_owned();
        if bed.k8s_version != KUBERNETES_VERSION {
            bail!("the API server says it is {:?}, expected {KUBERNETES_VERSION}", bed.k8s_version);
        }
        bed.configure_cluster().await?;
        bed.configure_vault().await?;
        if with_node {
            bed.procs.get_mut().unwrap().push(Proc::spawn(
                "kube-scheduler",
                &bed.parts.kube_bed,
                &args(&[
                    "kube-scheduler",
                    &format!("--kubeconfig={}", kubeconfig.display()),
                    &format!("--authentication-kubeconfig={}", kubeconfig.display()),
                    &format!("--authorization-kubeconfig={}", kubeconfig.display()),
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--v=0",
                ]),
                &[],
                &logs,
            )?);
            let ports = [port_of(&bed.vault_addr)?, port_of(&bed.moto_url)?];
            let node = node::Node::start(
                node::NodeParams {
                    kube_bed: &bed.parts.kube_bed,
                    dir: &bed.dir,
                    api_port,
                    forward_ports: &ports,
                    ca_file: &bed.ca_file,
                    client_cert: &admin.cert,
                    client_key: &admin.key,
                    keyhole_bin: &image_bin()?,
                },
                &bed.client,
            )
            .await?;
            let _ = node_netns.set(node.netns.clone());
            bed.node = Some(node);
        }
        bed.started_in = t0.elapsed();
        Ok(bed)
    }

    async fn wait_ready(&mut self, what: &str, timeout: Duration, url: String) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for p in self.procs.get_mut().unwrap().iter_mut() {
                p.check_running()?;
            }
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; logs in {}", self.dir.join("logs").display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Anonymous OIDC discovery (for OpenBao's jwt auth, as on real clusters) and
    /// a token reviewer for OpenBao's kubernetes auth.
    async fn configure_cluster(&self) -> Result<()> {
        let crbs: Api<ClusterRoleBinding> = Api::all(self.client.clone());
        for (name, role, subject) in [
            (
                "keyhole-bed:oidc-discovery",
                "system:service-account-issuer-discovery",
                Subject { kind: "Group".into(), name: "system:unauthenticated".into(), ..Default::default() },
            ),
            (
                "keyhole-bed:vault-reviewer",
                "system:auth-delegator",
                Subject {
                    kind: "ServiceAccount".into(),
                    name: "vault-reviewer".into(),
                    namespace: Some(BED_NAMESPACE.into()),
                    ..Default::default()
                },
            ),
        ] {
            let crb = ClusterRoleBinding {
                metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: role.into(),
                },
                subjects: Some(vec![subject]),
            };
            crbs.create(&PostParams::default(), &crb).await.with_context(|| format!("create {name}"))?;
        }
        create_namespace(&self.client, BED_NAMESPACE).await?;
        create_service_account(&self.client, BED_NAMESPACE, "vault-reviewer").await?;
        Ok(())
    }

    async fn configure_vault(&self) -> Result<()> {
        self.vault("POST", "sys/mounts/kv1", Some(json!({"type": "kv", "options": {"version": "1"}}))).await?;
        self.vault("POST", "sys/auth/jwt", Some(json!({"type": "jwt"}))).await?;
        self.vault(
            "POST",
            "auth/jwt/config",
            Some(json!({"oidc_discovery_url": self.issuer, "oidc_discovery_ca_pem": self.ca_pem})),
        )
        .await
        .context("point OpenBao's jwt auth at the API server's OIDC discovery")?;
        self.vault("POST", "sys/auth/kubernetes", Some(json!({"type": "kubernetes"}))).await?;
        let reviewer = self.token(BED_NAMESPACE, "vault-reviewer", &[&self.api_url], 86_400, None).await?;
        self.vault(
            "POST",
            "auth/kubernetes/config",
            Some(json!({
                "kubernetes_host": self.api_url,
                "kubernetes_ca_cert": self.ca_pem,
                "token_reviewer_jwt": reviewer,
                "disable_local_ca_jwt": true,
            })),
        )
        .await?;
        Ok(())
    }

    /// A root-token call to OpenBao; errors carry its answer.
    pub async fn vault(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/v1/{path}", self.vault_addr);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method.clone(), &url).header("X-Vault-Token", VAULT_ROOT_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("OpenBao {method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("OpenBao {method} {path}: {status}: {text}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    /// A policy that reads everything under `paths` (KV v1 or v2 data paths).
    pub async fn vault_policy(&self, name: &str, paths: &[&str]) -> Result<()> {
        let hcl: String = paths.iter().map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n")).collect();
        self.vault("PUT", &format!("sys/policies/acl/{name}"), Some(json!({"policy": hcl}))).await?;
        Ok(())
    }

    /// A kubernetes-auth role bound to one service account.
    pub async fn vault_kubernetes_role(
        &self,
        role: &str,
        ns: &str,
        sa: &str,
        audience: &str,
        policy: &str,
    ) -> Result<()> {
        self.vault(
            "POST",
            &format!("auth/kubernetes/role/{role}"),
            Some(json!({
                "bound_service_account_names": [sa],
                "bound_service_account_namespaces": [ns],
                "audience": audience,
                "token_policies": [policy],
                "token_ttl": "5m",
            })),
        )
        .await?;
        Ok(())
    }

    /// A jwt-auth role bound to one service account's subject.
    pub async fn vault_jwt_role(&self, role: &str, ns: &str, sa: &str, audience: &str, policy: &str) -> Result<()> {
        self.vault(
            "POST",
            &format!("auth/jwt/role/{role}"),
            Some(json!({
                "role_type": "jwt",
                "bound_audiences": [audience],
                "bound_subject": format!("system:serviceaccount:{ns}:{sa}"),
                "user_claim": "sub",
                "token_policies": [policy],
                "token_ttl": "5m",
            })),
        )
        .await?;
        Ok(())
    }

    /// TokenRequest: a real service-account token from the API server.
    pub async fn token(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[&str],
        expiration_seconds: i64,
        bound_pod: Option<(&str, &str)>,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(audiences.iter().map(|s| s.to_string()).collect()),
                expiration_seconds: Some(expiration_seconds),
                bound_object_ref: bound_pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {ns}/{sa}"))?;
        resp.status.and_then(|s| s.token).ok_or_else(|| anyhow!("TokenRequest for {ns}/{sa} returned no token"))
    }

    /// A fresh namespace for one test, with its `default` service account in place.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id() % 10_000);
        create_namespace(&self.client, &name).await?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        wait_until("the default service account", Duration::from_secs(30), || {
            let sas = sas.clone();
            async move { matches!(sas.get_opt("default").await, Ok(Some(_))) }
        })
        .await?;
        Ok(name)
    }

    /// An SSM client for seeding moto (static keys: moto checks none).
    pub async fn ssm_admin(&self) -> aws_sdk_ssm::Client {
        let conf = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new("us-east-1"))
            .endpoint_url(&self.moto_url)
            .credentials_provider(aws_credential_types::Credentials::for_tests())
            .http_client(aws_http_client())
            .build();
        aws_sdk_ssm::Client::from_conf(conf)
    }

    /// Puts a SecureString parameter into moto: a new version if it exists.
    pub async fn put_ssm(&self, name: &str, value: &str) -> Result<()> {
        self.ssm_admin()
            .await
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .with_context(|| format!("put {name}"))?;
        Ok(())
    }

    /// moto's Secrets Manager, as its administrator.
    pub async fn secrets_admin(&self) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .endpoint_url(&self.moto_url)
            .credentials_provider(aws_credential_types::Credentials::for_tests())
            .http_client(aws_http_client())
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// Puts a secret string into moto's Secrets Manager: created, or a new
    /// current version (the old one becomes AWSPREVIOUS). Its version id.
    pub async fn put_secret(&self, name: &str, value: &str) -> Result<String> {
        let sm = self.secrets_admin().await;
        let exists = sm.describe_secret().secret_id(name).send().await.is_ok();
        let version = if exists {
            sm.put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .map(|o| o.version_id)
                .map_err(anyhow::Error::from)
        } else {
            sm.create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
                .map(|o| o.version_id)
                .map_err(anyhow::Error::from)
        };
        version.with_context(|| format!("put secret {name}"))?.with_context(|| format!("secret {name}: no version id"))
    }

    /// Name and PID of every running part.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs.lock().unwrap().iter().filter_map(|p| p.pid().map(|pid| (p.name.clone(), pid))).collect()
    }

    /// Stops one part by name (for fault tests: the bed is not whole afterwards);
    /// returns whether it was running.
    pub fn stop_part(&self, name: &str) -> bool {
        match self.procs.lock().unwrap().iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.stop(Duration::from_secs(5));
                true
            }
            None => false,
        }
    }

    /// Stops everything, newest first; the temp dir goes too unless `keep` says so.
    pub fn stop(&mut self, keep: bool) {
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        while let Some(mut p) = self.procs.get_mut().unwrap().pop() {
            p.stop(Duration::from_secs(5));
        }
        if keep && let Some(tmp) = self._tmp.take() {
            eprintln!("keyhole-bed: kept {} (logs/, pki/, admin.kubeconfig)", tmp.keep().display());
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let keep = std::env::var_os("KEYHOLE_KEEP_BED").is_some();
        self.stop(keep);
    }
}

/// The controllers every bed runs; with a node also those a node needs.
const CONTROLLERS: &str = "deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,job-controller,cronjob-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,root-ca-certificate-publisher-controller";
const NODE_CONTROLLERS: &str =
    ",endpoints-controller,endpointslice-controller,node-lifecycle-controller,pod-garbage-collector-controller";

fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in {url}"))
}

/// keyhole's multi-call binary built for the image (`cargo build --profile image
/// -p keyhole-cli`, which `make test` runs), beside the test's own profile dir.
pub fn image_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(2).take(2) {
        let candidate = dir.join("image/keyhole");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("target/image/keyhole is not built: run `cargo build --profile image -p keyhole-cli` (make test does)")
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: bed\n  context:\n    cluster: bed\n    user: admin\ncurrent-context: bed\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// A kube client from a kubeconfig file.
pub async fn kube_client(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The HTTPS client the AWS SDK uses here: rustls on ring, like keyhole itself.
pub fn aws_http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}

pub async fn create_service_account(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let sa =
        ServiceAccount { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .with_context(|| format!("create service account {ns}/{name}"))?;
    Ok(())
}

/// A binary of this workspace, from the target dir the tests run from. `make test`
/// builds them first (`cargo build --workspace --bins`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{name} is not built next to {}: run `cargo build --workspace --bins` (make test does)", exe.display())
}
