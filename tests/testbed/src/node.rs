//! A real node: the kubelet (v1.37.2, from the same Go module as the API server),
//! containerd and runc from Debian, Debian's CNI plugins, local images only.
//!
//! Everything the node does happens in namespaces the bed makes and that die with
//! it (`unshare --net --mount --pid`, with tini as the namespace's init):
//!
//! * **mount**: fresh tmpfs on `/run`, `/var/lib` and `/var/log`, so containerd's
//!   and the kubelet's state, sandboxes, volumes and logs live and vanish there;
//!   `/proc/sys` files the kubelet checks (`protectKernelDefaults: true`) are
//!   bind-mounted read-only with the values it expects, so the shared VM's kernel
//!   settings are never changed;
//! * **pid**: when the bed dies, however it dies, the kernel kills the namespace's
//!   init and with it containerd, the shims and every container;
//! * **net**: the node IP on a veth pair whose two ends are both inside, the pod
//!   bridge, and a DNAT rule for the API server's ClusterIP (kube-proxy's one job
//!   here). Nothing is added to the host's network namespace.
//!
//! What outlives namespaces, the cgroups containerd and the kubelet make, is under
//! one cgroup root per bed; the janitor (a process that gets SIGTERM when the bed
//! dies) removes it once the namespace's processes are gone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::Api;

use crate::image::{self, Image};
use crate::netns::{self, Netns};
use crate::proc::{Proc, tail, wait_until};

/// The node's name in the API.
pub const NODE_NAME: &str = "keyhole-node";
/// The node IP, on the veth inside the node's network namespace.
pub const NODE_IP: &str = "10.250.0.1";
/// The pods' network (one node, host-local IPAM on a bridge).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The `kubernetes` Service's ClusterIP (the first of `--service-cluster-ip-range`).
pub const API_CLUSTER_IP: &str = "10.96.0.1";

/// The values the kubelet checks with `protectKernelDefaults: true`.
const KERNEL_DEFAULTS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Runs inside the new namespaces, as the child of tini: mounts, network, then sleeps.
const INIT_SH: &str = r#"set -eu
node_ip=$1 api_port=$2 cluster_ip=$3 sysctls=$4 ready=$5
for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 keyhole-node "$d"; done
for f in $(cd "$sysctls" && ls); do
  target=/proc/sys/$(echo "$f" | tr : /)
  mount --bind "$sysctls/$f" "$target"
  mount -o remount,bind,ro "$target"
done
ip link set lo up
ip link add kh0 type veth peer name kh1
ip addr add "$node_ip/24" dev kh0
ip link set kh0 up
ip link set kh1 up
ip route add default dev kh0
for chain in PREROUTING OUTPUT; do
  iptables -w -t nat -A "$chain" -d "$cluster_ip/32" -p tcp --dport 443 -j DNAT --to-destination "$node_ip:$api_port"
done
touch "$ready"
exec sleep infinity
"#;

/// Removes the node's cgroup root once nothing runs in it: on SIGUSR1 (the bed's
/// orderly stop), or on SIGTERM (sent by the kernel when the bed dies), which
/// also removes the bed's directory, as the bed would have.
const JANITOR_SH: &str = r#"cg=$1 dir=$2
clean() {
  i=0
  while [ $i -lt 100 ]; do
    busy=$(cat /sys/fs/cgroup/*/"$cg"/tasks /sys/fs/cgroup/*/"$cg"/*/tasks /sys/fs/cgroup/*/"$cg"/*/*/tasks /sys/fs/cgroup/*/"$cg"/*/*/*/tasks 2>/dev/null | head -1)
    [ -z "$busy" ] && break
    sleep 0.1; i=$((i+1))
  done
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$cg" ] && find "$h$cg" -depth -type d -exec rmdir {} + 2>/dev/null
  done
}
trap 'clean; exit 0' USR1
trap 'clean; rm -rf "$dir"; exit 0' TERM
while :; do sleep 0.2; done
"#;

pub struct Node {
    pub name: String,
    pub ip: String,
    pub cgroup_root: String,
    pub containerd_sock: PathBuf,
    pub images: Vec<Image>,
    pub netns: Netns,
    /// The namespaces' init (tini), for `nsenter --target`.
    pub init_pid: u32,
    /// Start → node Ready.
    pub started_in: Duration,
    kubelet: Option<NsProc>,
    containerd: Option<NsProc>,
    holder: Option<Proc>,
    janitor: Option<Proc>,
    logs: PathBuf,
    images_dir: PathBuf,
}

/// How the node reaches the host's parts: every port is carried from the node IP
/// to the same port on the host's loopback.
pub struct NodeParams<'a> {
    pub kube_bed: &'a Path,
    pub dir: &'a Path,
    pub api_port: u16,
    pub forward_ports: &'a [u16],
    pub ca_file: &'a Path,
    pub client_cert: &'a Path,
    pub client_key: &'a Path,
    pub keyhole_bin: &'a Path,
}

impl Node {
    pub async fn start(p: NodeParams<'_>, client: &kube::Client) -> Result<Node> {
        let t0 = Instant::now();
        for tool in ["containerd", "runc", "ctr", "tini", "iptables", "unshare", "nsenter", "gcc", "busybox"] {
            ensure!(which(tool), "{tool} is missing: run `make bed-deps` (tests/bed/install.sh)");
        }
        ensure!(Path::new("/usr/lib/cni/bridge").exists(), "CNI plugins are missing: run `make bed-deps`");
        let dir = p.dir.join("node");
        let logs = p.dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        let cgroup_root = format!("keyhole-bed-{}-{}", std::process::id(), t0.elapsed().subsec_nanos() % 100_000);

        // The images first: it needs no node, and a missing binary fails fast.
        let images_dir = dir.join("images");
        std::fs::create_dir_all(&images_dir)?;
        let images =
            vec![image::pause(&images_dir)?, image::app(&images_dir)?, image::keyhole(p.keyhole_bin, &images_dir)?];

        // The janitor before anything that makes cgroups.
        let janitor_sh = dir.join("janitor.sh");
        std::fs::write(&janitor_sh, JANITOR_SH)?;
        let janitor = Proc::spawn_with_deathsig(
            "node-janitor",
            Path::new("/bin/sh"),
            &[janitor_sh.display().to_string(), cgroup_root.clone(), p.dir.display().to_string()],
            &[],
            &logs,
            "TERM",
        )?;
        make_cgroup_root(&cgroup_root)?;

        let sysctls = dir.join("sysctls");
        std::fs::create_dir_all(&sysctls)?;
        for (key, value) in KERNEL_DEFAULTS {
            std::fs::write(sysctls.join(key.replace('/', ":")), format!("{value}\n"))?;
        }
        let init_sh = dir.join("init.sh");
        std::fs::write(&init_sh, INIT_SH)?;
        let ready = dir.join("namespaces.ready");
        let holder = Proc::spawn(
            "node-namespaces",
            Path::new("/usr/bin/unshare"),
            &strings(&[
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
                "tini",
                "-s",
                "--",
                "sh",
                &init_sh.display().to_string(),
                NODE_IP,
                &p.api_port.to_string(),
                API_CLUSTER_IP,
                &sysctls.display().to_string(),
                &ready.display().to_string(),
            ]),
            &[],
            &logs,
        )?;
        let mut holder = holder;
        let init_pid = match wait_namespaces(&mut holder, &ready).await {
            Ok(pid) => pid,
            Err(e) => bail!("{e:#}\n{}", log_tail(&logs, "node-namespaces")),
        };
        let mut node = Node {
            name: NODE_NAME.into(),
            ip: NODE_IP.into(),
            cgroup_root: cgroup_root.clone(),
            containerd_sock: dir.join("containerd.sock"),
            images,
            netns: Netns::of_pid(init_pid)?,
            init_pid,
            started_in: Duration::ZERO,
            kubelet: None,
            containerd: None,
            holder: Some(holder),
            janitor: Some(janitor),
            logs: logs.clone(),
            images_dir: images_dir.clone(),
        };
        let node_ip: std::net::IpAddr = NODE_IP.parse()?;
        for port in p.forward_ports.iter().chain([&p.api_port]) {
            netns::forward(&node.netns, SocketAddr::new(node_ip, *port), *port)?;
        }

        // containerd, then the images, then the kubelet.
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni)?;
        std::fs::write(cni.join("10-bed.conflist"), cni_conflist())?;
        let containerd_toml = dir.join("containerd.toml");
        std::fs::write(&containerd_toml, containerd_config(&node.containerd_sock, &cni))?;
        node.containerd = Some(NsProc::spawn(
            "containerd",
            init_pid,
            Path::new("/usr/bin/containerd"),
            &strings(&["--config", &containerd_toml.display().to_string()]),
            &logs,
        )?);
        let sock = node.containerd_sock.clone();
        wait_until("containerd's socket", Duration::from_secs(20), || {
            let ok = ctr(&sock, &["version"]).is_ok();
            async move { ok }
        })
        .await
        .map_err(|e| e.context(node.log_tail("containerd")))?;
        for img in &node.images {
            ctr(&node.containerd_sock, &["images", "import", &img.archive.display().to_string()])
                .with_context(|| format!("import {}", img.name))?;
        }

        let kubeconfig = dir.join("kubelet.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: https://{NODE_IP}:{}\n    certificate-authority: {}\nusers:\n- name: kubelet\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: bed\n  context: {{cluster: bed, user: kubelet}}\ncurrent-context: bed\n",
                p.api_port,
                p.ca_file.display(),
                p.client_cert.display(),
                p.client_key.display()
            ),
        )?;
        let resolv = dir.join("resolv.conf");
        // Pods resolve nothing outside the node: every address the tests use is an IP.
        std::fs::write(&resolv, "nameserver 127.0.0.1\noptions ndots:1 attempts:1 timeout:1\n")?;
        let kubelet_yaml = dir.join("kubelet.yaml");
        std::fs::write(&kubelet_yaml, kubelet_config(&cgroup_root, &node.containerd_sock, &resolv))?;
        node.kubelet = Some(NsProc::spawn(
            "kubelet",
            init_pid,
            p.kube_bed,
            &strings(&[
                "kubelet",
                &format!("--config={}", kubelet_yaml.display()),
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--hostname-override={NODE_NAME}"),
                &format!("--node-ip={NODE_IP}"),
                "--v=1",
            ]),
            &logs,
        )?);
        let nodes: Api<KubeNode> = Api::all(client.clone());
        let ready = wait_until("the node to be Ready", Duration::from_secs(90), || {
            let nodes = nodes.clone();
            async move {
                let Ok(Some(n)) = nodes.get_opt(NODE_NAME).await else { return false };
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            }
        })
        .await;
        if let Err(e) = ready {
            bail!("{e:#}\n{}", node.log_tail("kubelet"));
        }
        node.started_in = t0.elapsed();
        Ok(node)
    }

    fn log_tail(&self, name: &str) -> String {
        log_tail(&self.logs, name)
    }

    /// Runs `program args` in the node's network namespace (a test's view from
    /// inside the cluster network); stdout on success.
    pub async fn in_netns(&self, program: &str, args: &[&str], stdin: &[u8]) -> Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.init_pid))
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin).await?;
        }
        let out = child.wait_with_output().await?;
        ensure!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports one more image into the node's containerd.
    pub fn import(&self, img: &Image) -> Result<()> {
        self.ctr(&["images", "import", &img.archive.display().to_string()]).map(drop)
    }

    /// Where this node's image archives are written.
    pub fn images_dir(&self) -> &Path {
        &self.images_dir
    }

    /// `ctr -n k8s.io <args>` against the node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        ctr(&self.containerd_sock, args)
    }

    /// In order, so nothing outlives the bed: the kubelet (pods were deleted through
    /// the API by the tests), the sandboxes with containerd and the namespaces' init
    /// (the kernel kills what is left in the PID namespace), then the cgroups.
    pub fn stop(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(5));
        }
        if self.containerd.is_some() {
            // Sandboxes first, so that their shims exit through containerd.
            if let Ok(list) = self.ctr(&["tasks", "list", "-q"]) {
                for id in list.lines().filter(|l| !l.is_empty()) {
                    let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
                }
            }
        }
        if let Some(mut c) = self.containerd.take() {
            c.stop(Duration::from_secs(5));
        }
        if let Some(mut h) = self.holder.take() {
            h.stop(Duration::from_secs(2));
        }
        if let Some(mut j) = self.janitor.take() {
            if let Some(pid) = j.pid() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGUSR1);
            }
            if j.wait_exit(Duration::from_secs(15)).is_err() {
                j.stop(Duration::from_secs(1));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process started inside the node's namespaces through `nsenter`, which forks
/// into the PID namespace: signals go to nsenter's child, the real process.
struct NsProc {
    proc: Proc,
}

impl NsProc {
    fn spawn(name: &str, init_pid: u32, program: &Path, args: &[String], logs: &Path) -> Result<NsProc> {
        let mut all = strings(&["--target", &init_pid.to_string(), "--net", "--mount", "--pid", "--"]);
        all.push(program.display().to_string());
        all.extend(args.iter().cloned());
        Ok(NsProc { proc: Proc::spawn(name, Path::new("/usr/bin/nsenter"), &all, &[], logs)? })
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(pid) = self.proc.pid() {
            for child in children(pid) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = self.proc.wait_exit(grace);
        }
        self.proc.stop(Duration::from_secs(1));
    }
}

async fn wait_namespaces(holder: &mut Proc, ready: &Path) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        holder.check_running()?;
        if Instant::now() > deadline {
            bail!("the node's namespaces were not set up in 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // unshare's child is tini, the namespaces' init.
    let unshare = holder.pid().context("unshare is not running")?;
    children(unshare).first().copied().context("unshare has no child (tini)")
}

fn log_tail(logs: &Path, name: &str) -> String {
    let log = logs.join(format!("{name}.log"));
    format!("end of {}:\n{}", log.display(), tail(&log, 30))
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn ctr(sock: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .context("run ctr")?;
    if !out.status.success() {
        bail!("ctr {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(tool).is_file())
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The cgroup root (`cgroupRoot`) in every v1 hierarchy, with the parent's CPUs and
/// memory nodes in cpuset (an empty cpuset takes no task).
fn make_cgroup_root(name: &str) -> Result<()> {
    for entry in std::fs::read_dir("/sys/fs/cgroup")? {
        let hierarchy = entry?.path();
        if hierarchy.join("cgroup.procs").exists() {
            let dir = hierarchy.join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(hierarchy.join(file)) {
                    std::fs::write(dir.join(file), v.trim())?;
                }
            }
        }
    }
    Ok(())
}

fn containerd_config(sock: &Path, cni: &Path) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  # No CAP_SYS_RESOURCE on these machines: a sandbox cannot get -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        sock = sock.display(),
        cni = cni.display(),
        pause = image::PAUSE_IMAGE,
    )
}

fn cni_conflist() -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "keyhole-bed",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    })
    .to_string()
}

fn kubelet_config(cgroup_root: &str, sock: &Path, resolv: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 (hybrid) on these machines; no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
# Check the kernel settings, never write them (they are the shared VM's).
protectKernelDefaults: true
oomScoreAdj: 0
failSwapOn: false
containerRuntimeEndpoint: unix://{sock}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The bed only: anonymous kubelet API (reached through the bed's namespace only).
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
resolvConf: {resolv}
hairpinMode: hairpin-veth
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
shutdownGracePeriod: 0s
"#,
        sock = sock.display(),
        resolv = resolv.display(),
    )
}
