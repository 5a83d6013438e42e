//! A small HTTP/1.1 proxy in front of a backend (OpenBao or moto) that counts
//! every request reaching it, can answer the first SSM GetParameters calls with
//! throttling, and can be stopped to make the backend unreachable.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Seen {
    /// One label per request, with when it arrived: `AmazonSSM.GetParameters`,
    /// `STS AssumeRoleWithWebIdentity`, `GET /v1/...`.
    requests: Mutex<Vec<(String, Instant)>>,
    throttled: AtomicU32,
    /// While true, requests are counted but not forwarded.
    held: tokio::sync::watch::Sender<bool>,
}

pub struct Proxy {
    pub url: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Forwards everything to `upstream` (`http://host:port`), counting.
    pub async fn start(upstream: &str) -> Result<Proxy> {
        Self::throttling(upstream, 0).await
    }

    /// Like [`Proxy::start`], but answers the first `n` SSM GetParameters calls
    /// with `400 ThrottlingException`.
    pub async fn throttling(upstream: &str, n: u32) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let seen = Arc::new(Seen {
            requests: Mutex::default(),
            throttled: AtomicU32::default(),
            held: tokio::sync::watch::Sender::new(false),
        });
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (upstream, s) = (upstream.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, &upstream, n, &s).await;
                });
            }
        });
        Ok(Proxy { url, seen, task })
    }

    /// Closes the listener: new connections are refused, as with a stopped backend.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Counts but holds every request from now on, until [`Proxy::release`]:
    /// lines up several clients at the same point.
    pub fn hold(&self) {
        self.seen.held.send_replace(true);
    }

    pub fn release(&self) {
        self.seen.held.send_replace(false);
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.requests.lock().unwrap().iter().map(|(r, _)| r.clone()).collect()
    }

    /// When each request whose label contains `what` arrived.
    pub fn times_of(&self, what: &str) -> Vec<Instant> {
        self.seen.requests.lock().unwrap().iter().filter(|(r, _)| r.contains(what)).map(|(_, t)| *t).collect()
    }

    pub fn count(&self) -> usize {
        self.seen.requests.lock().unwrap().len()
    }

    /// Requests whose label contains `what`.
    pub fn count_of(&self, what: &str) -> usize {
        self.seen.requests.lock().unwrap().iter().filter(|(r, _)| r.contains(what)).count()
    }

    pub fn throttled(&self) -> u32 {
        self.seen.throttled.load(Ordering::SeqCst)
    }
}

async fn serve(sock: TcpStream, upstream: &str, n: u32, seen: &Seen) -> Result<()> {
    let mut conn = BufReader::new(sock);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await?;
        let target = header("x-amz-target");
        let label = match &target {
            Some(t) => t.clone(),
            None if body.starts_with(b"Action=") => {
                let action = String::from_utf8_lossy(&body[7..]).split('&').next().unwrap_or_default().to_owned();
                format!("STS {action}")
            }
            None => {
                let mut words = head.lines().next().unwrap_or_default().split_whitespace();
                let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                format!("{method} {}", path.split('?').next().unwrap_or_default())
            }
        };
        let call = {
            let mut requests = seen.requests.lock().unwrap();
            requests.push((label, Instant::now()));
            requests.iter().filter(|(r, _)| r.as_str() == "AmazonSSM.GetParameters").count() as u32
        };
        if target.as_deref() == Some("AmazonSSM.GetParameters") && call <= n {
            seen.throttled.fetch_add(1, Ordering::SeqCst);
            let b = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
            conn.get_mut().write_all(resp.as_bytes()).await?;
            continue;
        }
        seen.held.subscribe().wait_for(|held| !*held).await?;
        // Forward on a fresh upstream connection that closes after the answer.
        let forwarded: String = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            + "Connection: close\r\n\r\n";
        let mut up = TcpStream::connect(upstream).await?;
        up.write_all(forwarded.as_bytes()).await?;
        up.write_all(&body).await?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;
        conn.get_mut().write_all(&resp).await?;
        let resp_head = String::from_utf8_lossy(&resp[..resp.len().min(4096)]).to_ascii_lowercase();
        if resp_head.contains("connection: close") || !resp_head.contains("content-length") {
            return Ok(());
        }
    }
}
