//! The server under clients that misbehave, over real TLS on loopback: slow
//! ones are cut off at the deadlines, connections past the limit wait, huge
//! reviews queue for their few slots while ordinary ones pass, and SIGTERM
//! turns the server not ready while it still answers, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhole_webhook::metrics::Metrics;
use keyhole_webhook::tls::CertStore;
use keyhole_webhook::{App, Config, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{exchange, handshake, read_answer, try_handshake};

struct Server {
    addr: SocketAddr,
    admin: SocketAddr,
    ca: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(limits: Limits) -> Server {
    let ca = common::ca();
    let (cert, key, _) = common::leaf(&ca);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let metrics = Arc::new(Metrics::default());
    let certs = CertStore::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"), metrics.clone()).unwrap();
    let config = Config::parse("injector: {image: x}\nstores: {}\n").unwrap();
    let app = App::with_limits(config, metrics, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keyhole_webhook::serve(listener, Some(admin), app, certs, async {
        let _ = stopped.await;
    }));
    Server { addr, admin: admin_addr, ca: ca.pem, stop: Some(stop), task, _dir: dir }
}

/// A review of a pod that did not opt in: always allowed, never patched.
fn review() -> Vec<u8> {
    br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a"}]}}}}"#.to_vec()
}

async fn admitted(server: &Server) -> bool {
    let Ok(mut s) = try_handshake(server.addr, &server.ca).await else { return false };
    matches!(exchange(&mut s, "POST", "/mutate", &review()).await, Ok((200, _)))
}

/// Reads until the server closes the connection (or answers); how long it took.
async fn until_closed(s: &mut (impl AsyncReadExt + Unpin)) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server held a stalled connection for 10 s"),
        }
    }
}

async fn readyz(server: &Server) -> u16 {
    let mut s = TcpStream::connect(server.admin).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap()
}

fn quick() -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        shutdown_grace: Duration::from_millis(100),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_at_each_stage_and_others_are_served() {
    let server = start(quick()).await;
    let limit = Duration::from_millis(1500);

    // No TLS hello at all.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert!(until_closed(&mut tcp).await < limit, "a silent TCP connection was held");

    // Headers sent one byte at a time, never finished.
    let mut s = handshake(server.addr, &server.ca).await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nhost").await.unwrap();
    s.flush().await.unwrap();
    assert!(until_closed(&mut s).await < limit, "unfinished headers were waited for");

    // Headers done, the body promised and never sent.
    let mut s = handshake(server.addr, &server.ca).await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{\"request\":").await.unwrap();
    s.flush().await.unwrap();
    let start = Instant::now();
    let (status, _) = read_answer(&mut s).await.unwrap();
    assert_eq!(status, 408, "a stalled body gets 408 Request Timeout");
    assert!(start.elapsed() < limit);

    // An idle keep-alive connection after a full exchange.
    let mut s = handshake(server.addr, &server.ca).await;
    assert_eq!(exchange(&mut s, "POST", "/mutate", &review()).await.unwrap().0, 200);
    assert!(until_closed(&mut s).await < limit, "an idle keep-alive connection was kept");

    // Control: a client that behaves is answered.
    assert!(admitted(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let server = start(Limits { max_connections: 4, ..quick() }).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = handshake(server.addr, &server.ca).await;
        // Keep each busy past the idle timeout with a body that trickles in.
        s.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{").await.unwrap();
        open.push(s);
    }
    let fifth = tokio::time::timeout(Duration::from_millis(300), try_handshake(server.addr, &server.ca)).await;
    assert!(fifth.is_err(), "a fifth connection was served past max_connections 4");
    drop(open);
    let start = Instant::now();
    assert!(admitted(&server).await, "no connection was accepted after the others closed");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_reviews_queue_for_their_slots_while_ordinary_ones_pass() {
    let limits = Limits { max_large_in_flight: 1, request_timeout: Duration::from_secs(3), ..quick() };
    let server = start(limits).await;
    // A large review that takes its time holds the one large slot.
    let mut first = handshake(server.addr, &server.ca).await;
    let big = 2 << 20;
    first
        .write_all(format!("POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-length: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    first.write_all(&vec![b' '; 1 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second large one waits for it ...
    let mut second = handshake(server.addr, &server.ca).await;
    let mut body = vec![b' '; big - review().len()];
    body.extend_from_slice(&review());
    let waiting = tokio::spawn(async move {
        let start = Instant::now();
        let answer = exchange(&mut second, "POST", "/mutate", &body).await.unwrap();
        (answer.0, start.elapsed())
    });
    // ... while ordinary reviews are answered at once.
    for _ in 0..5 {
        let start = Instant::now();
        assert!(admitted(&server).await);
        assert!(start.elapsed() < Duration::from_millis(500), "an ordinary review waited behind the large ones");
    }
    assert!(!waiting.is_finished(), "the second large review did not wait for the slot");
    // The first one stalls past the deadline and gets 408; the second then runs.
    assert_eq!(read_answer(&mut first).await.unwrap().0, 408);
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(waited > Duration::from_millis(500), "{waited:?}");
}

/// Seven 1 MiB reviews against a budget of 1 MiB/s (a burst of 6 MiB): the
/// seventh waits about a second; the control, the default budget, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reviews_share_a_byte_budget() {
    let mut body = vec![b' '; (1 << 20) - review().len()];
    body.extend_from_slice(&review());
    for (rate, slow) in [(1 << 20, true), (Limits::default().large_bytes_per_second, false)] {
        let server =
            start(Limits { large_bytes_per_second: rate, request_timeout: Duration::from_secs(5), ..quick() }).await;
        let mut s = handshake(server.addr, &server.ca).await;
        let start = Instant::now();
        for _ in 0..7 {
            assert_eq!(exchange(&mut s, "POST", "/mutate", &body).await.unwrap().0, 200);
        }
        let took = start.elapsed();
        assert_eq!(took > Duration::from_millis(800), slow, "{rate} B/s: {took:?}");
        if slow {
            let t = Instant::now();
            assert!(admitted(&server).await);
            assert!(t.elapsed() < Duration::from_millis(300), "an ordinary review was held by the budget");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_not_ready_keeps_answering_then_drains() {
    let limits = Limits {
        shutdown_grace: Duration::from_millis(1500),
        drain_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..quick()
    };
    let mut server = start(limits).await;
    assert_eq!(readyz(&server).await, 200);

    // A review in flight: its body trickles in across the whole shutdown.
    let mut slow = handshake(server.addr, &server.ca).await;
    let body = review();
    slow.write_all(format!("POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    let in_flight = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        slow.write_all(&body[10..]).await.unwrap();
        read_answer(&mut slow).await.unwrap().0
    });

    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(readyz(&server).await, 503, "not ready as soon as SIGTERM arrives");
    // During the grace period new connections are still served: the endpoints
    // have not dropped the pod yet, and the API server still sends reviews.
    let grace_end = Instant::now() + Duration::from_millis(1200);
    let mut served = 0;
    while Instant::now() < grace_end {
        assert!(admitted(&server).await, "a review was refused during the grace period");
        served += 1;
    }
    assert!(served > 3);
    // And each answer tells the client to leave its keep-alive connection.
    let mut s = handshake(server.addr, &server.ca).await;
    assert_eq!(exchange(&mut s, "POST", "/mutate", &review()).await.unwrap().0, 200);
    assert!(
        until_closed(&mut s).await < Duration::from_millis(300),
        "a keep-alive connection stayed open while draining"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting after the grace period");
    assert_eq!(in_flight.await.unwrap(), 200, "the review in flight was not finished");
    tokio::time::timeout(Duration::from_secs(5), server.task).await.unwrap().unwrap().unwrap();
}
