//! The bed's traffic between the host's loopback and the node's network
//! namespace, without a single interface or route in the host namespace:
//!
//! * [`Netns`]: a thread that lives in the node's namespace and opens sockets
//!   there (a socket stays in the namespace it was made in);
//! * [`forward`]: a listener inside the namespace (the node IP) that carries
//!   connections to a port on the host's loopback: how the kubelet and pods reach
//!   the API server, OpenBao and moto;
//! * [`connect_proxy`]: an HTTP CONNECT proxy on a unix socket that the API
//!   server's egress selector (`cluster`) uses to reach pod IPs (webhooks, by
//!   endpoint routing) and the kubelet, as konnectivity does on managed clusters.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside a network namespace; what it opens belongs to that namespace.
#[derive(Clone)]
pub struct Netns {
    jobs: mpsc::Sender<Job>,
}

impl Netns {
    /// Enters the network namespace of process `pid` on a thread of its own.
    pub fn of_pid(pid: u32) -> Result<Netns> {
        let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .with_context(|| format!("open the network namespace of process {pid}"))?
            .into();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new().name("keyhole-bed-netns".into()).spawn(move || {
            let entered = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                for job in rx {
                    job();
                }
            }
        })?;
        ready_rx.recv()?.context("setns into the node's network namespace")?;
        Ok(Netns { jobs })
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow!("the network namespace thread is gone"))?;
        Ok(rx.recv()??)
    }

    /// A listener on `addr` inside the namespace, for tokio.
    pub fn bind(&self, addr: SocketAddr) -> Result<TcpListener> {
        let l = self
            .run(move || {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .with_context(|| format!("listen on {addr} in the node's network namespace"))?;
        Ok(TcpListener::from_std(l)?)
    }

    /// A connection to `addr` made inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        let ns = self.clone();
        let s = tokio::task::spawn_blocking(move || {
            ns.run(move || {
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            })
        })
        .await??;
        Ok(TcpStream::from_std(s)?)
    }
}

/// Carries every connection to `listen` (inside the node's namespace) to
/// `127.0.0.1:to_port` on the host, until the runtime stops.
pub fn forward(ns: &Netns, listen: SocketAddr, to_port: u16) -> Result<()> {
    let listener = ns.bind(listen)?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(outbound) = TcpStream::connect(("127.0.0.1", to_port)).await {
                    pipe(inbound, outbound).await;
                }
            });
        }
    });
    Ok(())
}

/// An HTTP CONNECT proxy on the unix socket `path` (the API server's egress over
/// TCP must be mutual TLS; over a unix socket it is plain): targets on loopback
/// are dialled on the host (webhooks the tests register by URL), every other
/// target inside the node's namespace, which is set once it exists (until then
/// such targets are answered 502).
pub fn connect_proxy(path: &std::path::Path, ns: std::sync::Arc<std::sync::OnceLock<Netns>>) -> Result<()> {
    let listener = tokio::net::UnixListener::bind(path)?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let ns = ns.clone();
            tokio::spawn(async move {
                let _ = tunnel(ns, client).await;
            });
        }
    });
    Ok(())
}

async fn tunnel(ns: std::sync::Arc<std::sync::OnceLock<Netns>>, mut client: tokio::net::UnixStream) -> Result<()> {
    // The request head: "CONNECT host:port HTTP/1.1", headers, a blank line.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await??;
        if n == 0 {
            bail!("closed before the request head ended");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 8192 {
            bail!("request head over 8 KiB");
        }
    };
    let line = std::str::from_utf8(&head[..end])?.lines().next().unwrap_or_default().to_owned();
    let target: SocketAddr = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.parse().with_context(|| format!("CONNECT target {target:?}"))?,
        _ => {
            client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await?;
            bail!("not a CONNECT: {line:?}");
        }
    };
    let dialled = match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => TcpStream::connect(target).await.map_err(anyhow::Error::from),
        _ => match ns.get() {
            Some(ns) => ns.connect(target).await,
            None => Err(anyhow!("the node's network namespace does not exist yet")),
        },
    };
    let mut upstream = match dialled {
        Ok(s) => s,
        Err(e) => {
            client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await?;
            return Err(e.context(format!("dial {target}")));
        }
    };
    client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
    if head.len() > end {
        upstream.write_all(&head[end..]).await?;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

async fn pipe(mut a: TcpStream, mut b: TcpStream) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
