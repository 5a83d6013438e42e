//! Plays the kubelet for keyhole's init container: takes the pod as the API server
//! stored it, resolves the container's command, env and volume mounts the way
//! the kubelet would (emptyDir on tmpfs, projected service-account tokens minted
//! by TokenRequest and bound to the pod), and runs the real binary under
//! bubblewrap with a read-only root, the pod's paths and the pod's UID.
//!
//! Also [`bench`]: wall time and peak RSS of the injector outside the sandbox.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use keyhole_contract::names;
use keyhole_contract::plan::Plan;

use crate::{Bed, workspace_bin};

/// UID and GID a random-UID platform would pick when the pod sets none.
pub const DEFAULT_UID: i64 = 65532;

#[derive(Clone, Debug)]
pub struct InitOpts {
    /// Added to (or replacing) the container's env, e.g. `KEYHOLE_DEADLINE`.
    pub extra_env: Vec<(String, String)>,
    /// The container is killed after this.
    pub timeout: Duration,
}

impl Default for InitOpts {
    fn default() -> Self {
        InitOpts { extra_env: Vec::new(), timeout: Duration::from_secs(120) }
    }
}

/// What the init container did. Its temp dirs go when this drops.
pub struct InitOutcome {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub termination_log: String,
    /// emptyDir volume name -> its host dir (on /dev/shm).
    pub empty_dirs: BTreeMap<String, PathBuf>,
    /// The service-account tokens handed to the container (for leak scans).
    pub tokens: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub elapsed: Duration,
    _dirs: Vec<tempfile::TempDir>,
}

impl InitOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Everything the container printed or left for the kubelet.
    pub fn printed(&self) -> String {
        format!("{}\n{}\n{}", self.stdout, self.stderr, self.termination_log)
    }

    /// A one-paragraph summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} in {:?}\n--- stdout\n{}--- stderr\n{}--- termination log\n{}",
            self.exit_code, self.elapsed, self.stdout, self.stderr, self.termination_log
        )
    }

    pub fn volume(&self, name: &str) -> Result<&Path> {
        self.empty_dirs.get(name).map(PathBuf::as_path).with_context(|| format!("no emptyDir volume {name}"))
    }
}

struct Mount {
    host: PathBuf,
    target: String,
    read_only: bool,
}

/// Runs the pod's `keyhole-injector` init container as the kubelet would.
pub async fn run_init_container(bed: &Bed, pod: &Pod, opts: &InitOpts) -> Result<InitOutcome> {
    let meta = &pod.metadata;
    let (name, ns, uid) = match (&meta.name, &meta.namespace, &meta.uid) {
        (Some(n), Some(ns), Some(u)) => (n.as_str(), ns.as_str(), u.as_str()),
        _ => bail!("the pod has no name, namespace or uid: read it back from the API server first"),
    };
    let spec = pod.spec.as_ref().context("pod has no spec")?;
    let container = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == names::INJECTOR_CONTAINER)
        .with_context(|| format!("pod {ns}/{name} has no init container {}", names::INJECTOR_CONTAINER))?;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");

    let csc = container.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let run_uid = csc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user)).unwrap_or(DEFAULT_UID);
    let run_gid = csc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group)).unwrap_or(DEFAULT_UID);
    let (run_uid, run_gid) = (u32::try_from(run_uid)?, u32::try_from(run_gid)?);

    let host = tempfile::Builder::new().prefix("keyhole-kubelet-").tempdir()?;
    let mut dirs = Vec::new();
    let mut mounts = Vec::new();
    let mut empty_dirs = BTreeMap::new();
    let mut tokens = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        ensure!(vm.sub_path.is_none() && vm.sub_path_expr.is_none(), "subPath is not supported here");
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == vm.name)
            .with_context(|| format!("volumeMount {} names no volume", vm.name))?;
        let host_dir = if volume.empty_dir.is_some() {
            let d = tempfile::Builder::new().prefix("keyhole-emptydir-").tempdir_in("/dev/shm")?;
            // The kubelet makes emptyDirs world-writable.
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777))?;
            let p = d.path().to_path_buf();
            empty_dirs.insert(volume.name.clone(), p.clone());
            dirs.push(d);
            p
        } else if volume.projected.is_some() {
            let dir = host.path().join(format!("volume-{}", volume.name));
            std::fs::create_dir(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            let annotations = meta.annotations.clone().unwrap_or_default();
            tokens
                .extend(project_tokens(bed, ns, sa, (name, uid), &annotations, volume, &dir, run_uid, run_gid).await?);
            dir
        } else {
            bail!("volume {} is neither an emptyDir nor a projected token: not supported here", volume.name);
        };
        mounts.push(Mount { host: host_dir, target: vm.mount_path.clone(), read_only: vm.read_only.unwrap_or(false) });
    }

    let termlog = host.path().join("termination-log");
    std::fs::write(&termlog, "")?;
    std::fs::set_permissions(&termlog, std::fs::Permissions::from_mode(0o666))?;
    let termlog_target =
        container.termination_message_path.clone().unwrap_or_else(|| names::TERMINATION_LOG.to_owned());
    mounts.push(Mount { host: termlog.clone(), target: termlog_target, read_only: false });

    let mut env = container_env(container, name, ns, uid, sa, &opts.extra_env)?;
    // The kubelet's service links: how in-cluster clients find the API server.
    let api = bed.api_url.trim_start_matches("https://");
    let (api_host, api_port) = api.rsplit_once(':').context("the bed's API URL has no port")?;
    env.entry("KUBERNETES_SERVICE_HOST".into()).or_insert_with(|| api_host.to_owned());
    env.entry("KUBERNETES_SERVICE_PORT".into()).or_insert_with(|| api_port.to_owned());
    let argv = container_argv(container)?;
    let sandbox = bwrap_args(&mounts)?;

    let mut cmd = tokio::process::Command::new("bwrap");
    cmd.args(&sandbox)
        .arg("/usr/bin/setpriv")
        .args(["--reuid", &run_uid.to_string(), "--regid", &run_gid.to_string(), "--clear-groups", "--"])
        .args(&argv)
        .env_clear()
        .envs(env)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let child = cmd.spawn().context("start bwrap (apt-get install bubblewrap)")?;
    let out = tokio::time::timeout(opts.timeout, child.wait_with_output())
        .await
        .with_context(|| format!("the init container of {ns}/{name} ran longer than {:?}", opts.timeout))??;
    let elapsed = t0.elapsed();
    dirs.push(host);
    Ok(InitOutcome {
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        termination_log: std::fs::read_to_string(&termlog)?,
        empty_dirs,
        tokens,
        uid: run_uid,
        gid: run_gid,
        elapsed,
        _dirs: dirs,
    })
}

/// Mints the tokens of a projected volume's serviceAccountToken sources, bound
/// to the pod, owned by the container's user as the kubelet makes them.
#[allow(clippy::too_many_arguments)]
async fn project_tokens(
    bed: &Bed,
    ns: &str,
    sa: &str,
    pod: (&str, &str),
    annotations: &BTreeMap<String, String>,
    volume: &Volume,
    dir: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for source in volume.projected.as_ref().and_then(|p| p.sources.as_ref()).into_iter().flatten() {
        if let Some(cm) = &source.config_map {
            project_config_map(bed, ns, cm, dir).await?;
            continue;
        }
        if let Some(downward) = &source.downward_api {
            for item in downward.items.iter().flatten() {
                let field =
                    item.field_ref.as_ref().with_context(|| format!("downwardAPI {}: only fieldRef", item.path))?;
                let path = field.field_path.as_str();
                let annotation = path.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']"));
                let value = match (path, annotation) {
                    (_, Some(key)) => annotations.get(key).map(String::as_str).unwrap_or_default(),
                    ("metadata.name", _) => pod.0,
                    ("metadata.namespace", _) => ns,
                    ("metadata.uid", _) => pod.1,
                    (other, _) => bail!("downwardAPI fieldRef {other} is not supported here"),
                };
                write_projected(&dir.join(&item.path), value.as_bytes(), 0o644, uid, gid)?;
            }
            continue;
        }
        let Some(sat) = &source.service_account_token else {
            bail!("projected volume {}: a source other than serviceAccountToken, configMap, downwardAPI", volume.name);
        };
        let audiences: Vec<&str> = sat.audience.as_deref().into_iter().collect();
        let token = bed.token(ns, sa, &audiences, sat.expiration_seconds.unwrap_or(3600), Some(pod)).await?;
        write_projected(&dir.join(&sat.path), token.as_bytes(), 0o600, uid, gid)?;
        tokens.push(token);
    }
    Ok(tokens)
}

fn write_projected(path: &Path, content: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

/// A configMap source (the API server's own `kube-root-ca.crt` in every
/// service-account volume), waiting a little for its controller to publish it.
async fn project_config_map(
    bed: &Bed,
    ns: &str,
    cm: &k8s_openapi::api::core::v1::ConfigMapProjection,
    dir: &Path,
) -> Result<()> {
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(bed.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        match api.get_opt(&cm.name).await? {
            Some(found) => break found,
            None if cm.optional == Some(true) => return Ok(()),
            None if Instant::now() > deadline => bail!("configMap {ns}/{} does not exist", cm.name),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let data = found.data.unwrap_or_default();
    let items: Vec<(String, String)> = match &cm.items {
        Some(items) => items.iter().map(|i| (i.key.clone(), i.path.clone())).collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, path) in items {
        let value = data.get(&key).with_context(|| format!("configMap {ns}/{} has no key {key}", cm.name))?;
        write_projected(&dir.join(path), value.as_bytes(), 0o644, 0, 0)?;
    }
    Ok(())
}

fn container_env(
    c: &Container,
    name: &str,
    ns: &str,
    uid: &str,
    sa: &str,
    extra: &[(String, String)],
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let field =
                    from.field_ref.as_ref().with_context(|| format!("env {}: only fieldRef is supported", e.name))?;
                match field.field_path.as_str() {
                    "metadata.name" => name.to_owned(),
                    "metadata.namespace" => ns.to_owned(),
                    "metadata.uid" => uid.to_owned(),
                    "spec.serviceAccountName" => sa.to_owned(),
                    other => bail!("env {}: fieldRef {other} is not supported here", e.name),
                }
            }
            (None, None) => String::new(),
        };
        env.insert(e.name.clone(), value);
    }
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

/// `command` + `args`, with `keyhole-injector` mapped to the binary built here.
fn container_argv(c: &Container) -> Result<Vec<String>> {
    let mut argv: Vec<String> = c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect();
    ensure!(!argv.is_empty(), "container {} has no command (the image's entrypoint is not known here)", c.name);
    let base = Path::new(&argv[0]).file_name().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
    ensure!(base == "keyhole-injector", "command {:?} is not keyhole-injector", argv[0]);
    argv[0] = workspace_bin("keyhole-injector")?.display().to_string();
    Ok(argv)
}

/// Resolves a container path against the host's symlinks (`/var/run` is `/run`),
/// since the sandbox's root mirrors the host's. Returns the resolved path and its
/// deepest ancestor that exists on the host.
fn resolve(target: &str) -> Result<(PathBuf, PathBuf)> {
    let path = Path::new(target);
    ensure!(path.is_absolute(), "mount path {target} is not absolute");
    let mut existing = PathBuf::from("/");
    let mut rest = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) if rest.is_empty() && existing.join(s).exists() => existing.push(s),
            Component::Normal(s) => rest.push(s.to_owned()),
            _ => bail!("mount path {target} has . or .."),
        }
    }
    let existing = std::fs::canonicalize(&existing)?;
    let mut full = existing.clone();
    full.extend(rest);
    Ok((full, existing))
}

/// bubblewrap's arguments: the host's top-level dirs read-only on a tmpfs root
/// (so the pod's own mount points can be created), `/dev`, `/proc`, the volumes,
/// then the root made read-only like `readOnlyRootFilesystem`.
fn bwrap_args(mounts: &[Mount]) -> Result<Vec<String>> {
    let mut tmpfs: Vec<PathBuf> = Vec::new();
    let mut resolved = Vec::new();
    for m in mounts {
        let (full, existing) = resolve(&m.target)?;
        // A mount point to create inside a read-only bind: put a tmpfs over the
        // deepest existing dir (a container's /run is its own anyway).
        if full != existing && existing != Path::new("/") && !existing.starts_with("/dev") {
            ensure!(
                existing.components().count() == 2,
                "mount path {} would need a tmpfs over {}, which the sandbox cannot spare",
                m.target,
                existing.display()
            );
            if !tmpfs.contains(&existing) {
                tmpfs.push(existing.clone());
            }
        }
        resolved.push((m, full, existing));
    }

    let mut args: Vec<String> = Vec::new();
    let mut push = |a: &[&str]| args.extend(a.iter().map(|s| s.to_string()));
    let mut entries: Vec<PathBuf> = std::fs::read_dir("/")?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for e in entries {
        let s = e.display().to_string();
        if matches!(s.as_str(), "/dev" | "/proc") || tmpfs.contains(&e) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&e)?;
        if meta.file_type().is_symlink() {
            push(&["--symlink", &std::fs::read_link(&e)?.display().to_string(), &s]);
        } else if meta.is_dir() {
            push(&["--ro-bind", &s, &s]);
        }
    }
    push(&["--dev", "/dev", "--proc", "/proc"]);
    for t in &tmpfs {
        push(&["--tmpfs", &t.display().to_string()]);
    }
    for (m, full, existing) in resolved {
        // bubblewrap makes missing parents 0700: make them as a kubelet would.
        let mut dir = existing.clone();
        let parents: Vec<_> =
            full.strip_prefix(&existing)?.parent().map(|p| p.components().collect()).unwrap_or_default();
        for c in parents {
            dir.push(c);
            push(&["--perms", "0755", "--dir", &dir.display().to_string()]);
        }
        let flag = if m.read_only { "--ro-bind" } else { "--bind" };
        push(&[flag, &m.host.display().to_string(), &full.display().to_string()]);
    }
    push(&["--remount-ro", "/", "--unshare-pid", "--die-with-parent", "--chdir", "/"]);
    Ok(args)
}

/// One row of [`bench`].
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub store: String,
    pub secrets: usize,
    /// Median wall time from process start to exit (files written), over the runs.
    pub wall: Duration,
    pub min_wall: Duration,
    /// Peak RSS of the injector, from `/usr/bin/time`.
    pub max_rss_kb: u64,
}

/// Runs `binary` outside the sandbox on `plan` (its token and output dir replaced
/// by temp paths), `runs` times, after one warm-up run. The plan's store must be
/// seeded already. `values`: how many it writes (a folder's leaves are not in the plan).
pub async fn bench(binary: &Path, plan: &Plan, token: &str, runs: usize, values: usize) -> Result<BenchRow> {
    let tmp = tempfile::Builder::new().prefix("keyhole-bench-").tempdir()?;
    let token_path = tmp.path().join("token");
    std::fs::write(&token_path, token)?;
    let mut walls = Vec::new();
    let mut max_rss_kb = 0;
    for run in 0..=runs {
        let out_dir = tempfile::Builder::new().prefix("keyhole-bench-out-").tempdir_in("/dev/shm")?;
        let mut p = plan.clone();
        p.token_path = token_path.display().to_string();
        p.output_dir = Some(out_dir.path().display().to_string());
        let time_out = tmp.path().join(format!("time-{run}"));
        let t0 = Instant::now();
        let out = tokio::process::Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&time_out)
            .arg(binary)
            .env_clear()
            .env(names::PLAN_ENV, p.to_json())
            .env("KEYHOLE_TERMINATION_LOG", tmp.path().join("termination-log"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
            .await?;
        let wall = t0.elapsed();
        ensure!(
            out.status.success(),
            "bench run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let written = std::fs::read_dir(out_dir.path())?.count();
        ensure!(written >= values, "bench run wrote {written} entries for {values} values");
        let rss: u64 = std::fs::read_to_string(&time_out)?.trim().lines().last().unwrap_or("0").parse()?;
        if run > 0 {
            walls.push(wall);
            max_rss_kb = max_rss_kb.max(rss);
        }
    }
    walls.sort();
    Ok(BenchRow {
        store: plan.store_name.clone(),
        secrets: values,
        wall: walls[walls.len() / 2],
        min_wall: walls[0],
        max_rss_kb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_resolve_through_host_symlinks() {
        let (full, existing) = resolve("/keyhole/out").unwrap();
        assert_eq!((full.as_path(), existing.as_path()), (Path::new("/keyhole/out"), Path::new("/")));
        if std::fs::read_link("/var/run").is_ok() && !Path::new("/run/secrets").exists() {
            let (full, existing) = resolve("/var/run/secrets/keyhole.dev/backend").unwrap();
            assert_eq!(full, Path::new("/run/secrets/keyhole.dev/backend"));
            assert_eq!(existing, Path::new("/run"));
        }
    }
}
