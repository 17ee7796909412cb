//! Connections and streams cannot pin the controller: idle connections are
//! closed, connections are capped, the open-file limit is raised and accept
//! failures back off, every connection advertises a stream limit, and a
//! request body that never arrives is answered and freed.
//!
//! The clients here are real TLS clients (tokio-rustls trusting the
//! controller's CA from `<data-dir>/tls/ca.crt`), speaking HTTP/2 through the
//! h2 crate or as raw frames, so they can misbehave as an attacker would: finish
//! the handshake and say nothing, open streams and never send their bodies.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::Berthd;
use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Bounds every wait in these tests: a hang guard, not a timing target.
const GUARD: Duration = Duration::from_secs(30);

/// A TLS client that trusts only this controller's CA and offers ALPN h2.
fn connector(d: &Berthd) -> TlsConnector {
    let ca_path = d.data_dir.join("tls/ca.crt");
    let ca = CertificateDer::from_pem_file(&ca_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_path.display()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("trust the controller's CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TCP connection to the controller with the TLS handshake finished.
async fn tls_connect(d: &Berthd, tls: &TlsConnector) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(d.addr).await?;
    let name = ServerName::IpAddress(d.addr.ip().into());
    tokio::time::timeout(GUARD, tls.connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake hung"))?
}

/// Reads (and discards) until the server closes the connection; `None`
/// when it is still open after `guard`.
async fn closed_by_server(mut stream: TlsStream<TcpStream>, guard: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(guard, read_to_end)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// An HTTP/2 client connection (it answers PINGs and SETTINGS by itself);
/// its task ends when the server closes the connection.
async fn h2_connect(
    d: &Berthd,
    tls: &TlsConnector,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = tls_connect(d, tls).await.expect("TLS connection");
    let (send, mut conn) = h2::client::handshake(stream)
        .await
        .expect("HTTP/2 handshake");
    // One PING round trip: the server's SETTINGS (sent before its PING
    // answer) are in force before the caller opens streams.
    let mut ping = conn.ping_pong().expect("ping handle");
    let task = tokio::spawn(conn);
    tokio::time::timeout(GUARD, ping.ping(h2::Ping::opaque()))
        .await
        .expect("PING answered")
        .expect("PING");
    (send, task)
}

/// A gRPC request for `method` with the admin token, its body to follow.
fn grpc_request(d: &Berthd, method: &str) -> http::Request<()> {
    let token = d.admin_token();
    http::Request::builder()
        .method("POST")
        .uri(format!("https://{}{method}", d.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(())
        .expect("request")
}

/// A length-prefixed gRPC message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// The resident memory of a process, in KiB (`VmRSS` of /proc/PID/status);
/// `None` once it has exited.
fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// [`try_rss_kib`] of a running process.
fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).expect("VmRSS of the running controller")
}

/// How many lines of the controller's log contain `needle`.
fn log_lines(d: &Berthd, needle: &str) -> usize {
    d.log().lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_no_call_in_flight_are_closed_after_the_idle_limit() {
    let d = Berthd::start_with(&["--idle-timeout", "2s"]);
    let tls = connector(&d);

    // Twenty clients that finish the TLS handshake and send nothing at all.
    let mut silent = JoinSet::new();
    for _ in 0..20 {
        let stream = tls_connect(&d, &tls).await.expect("TLS connection");
        silent.spawn(closed_by_server(stream, GUARD));
    }
    // One that speaks HTTP/2 (preface, SETTINGS, PING answers) but calls nothing.
    let (_idle_send, idle_conn) = h2_connect(&d, &tls).await;
    // One with a call in flight: a health Watch stream, answered and kept open.
    let (busy_send, busy_conn) = h2_connect(&d, &tls).await;
    let mut busy_send = busy_send.ready().await.expect("ready");
    let mut watch = grpc_request(&d, "/grpc.health.v1.Health/Watch");
    watch.headers_mut().remove("authorization");
    let (watch_response, mut watch_body) = busy_send.send_request(watch, false).expect("Watch");
    let service = b"berth.v1.Volumes";
    let mut request = vec![0x0a, service.len() as u8];
    request.extend_from_slice(service);
    watch_body
        .send_data(grpc_frame(&request), true)
        .expect("send the Watch request");
    let watch_response = tokio::time::timeout(GUARD, watch_response)
        .await
        .expect("Watch answered")
        .expect("Watch response");
    assert_eq!(watch_response.status(), 200);
    let mut watch_stream = watch_response.into_body();
    let first = tokio::time::timeout(GUARD, watch_stream.data())
        .await
        .expect("a first health status")
        .expect("a data frame")
        .expect("data");
    assert!(!first.is_empty());

    let mut closed = Vec::new();
    while let Some(result) = silent.join_next().await {
        closed.push(result.expect("reader task"));
    }
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of 20 silent TLS connections still open after {GUARD:?} with --idle-timeout 2s"
    );
    let idle_closed = tokio::time::timeout(GUARD, idle_conn).await;
    assert!(
        idle_closed.is_ok(),
        "an HTTP/2 connection with no call was still open after {GUARD:?} with --idle-timeout 2s"
    );
    // The connection with a call in flight outlived them all.
    assert!(
        !busy_conn.is_finished(),
        "the connection with a Watch in flight was closed"
    );
    assert!(
        !watch_stream.is_end_stream(),
        "the Watch stream was ended by the server"
    );
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!("silent connections closed, the last after {slowest:?}");
    drop(watch_stream);
    drop(busy_send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_real_clients_get_in_after() {
    let d = Berthd::start_with(&["--max-connections", "4", "--idle-timeout", "3s"]);
    let tls = connector(&d);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tls_connect(&d, &tls)
                .await
                .expect("a connection under the cap"),
        );
    }
    // Ten more: each is accepted by the kernel and closed by the controller
    // before its handshake can finish.
    let mut admitted = 0;
    for _ in 0..10 {
        if let Ok(stream) = tls_connect(&d, &tls).await {
            admitted += 1;
            held.push(stream);
        }
    }
    assert_eq!(
        admitted, 0,
        "{admitted} of 10 connections over --max-connections 4 finished their TLS handshake"
    );
    let warnings = log_lines(&d, "connection limit reached");
    assert!(
        (1..=2).contains(&warnings),
        "the cap should be logged once, not per connection: {warnings} lines\n{}",
        d.log()
    );

    // Once the idle ones are gone, a real client gets in.
    let mut gone = JoinSet::new();
    for stream in held {
        gone.spawn(closed_by_server(stream, GUARD));
    }
    while let Some(result) = gone.join_next().await {
        assert!(
            result.expect("reader task").is_some(),
            "an idle connection was still open after {GUARD:?}"
        );
    }
    let listed = tokio::task::spawn_blocking(move || {
        let run = d.berth(&["volume", "list"]);
        (run.ok(), run.stdout(), run.stderr())
    })
    .await
    .expect("berth");
    assert!(
        listed.0,
        "berth volume list failed: {}{}",
        listed.2, listed.1
    );
}

/// One raw HTTP/2 frame: (type, flags, stream id, payload).
type RawFrame = (u8, u8, u32, Vec<u8>);

/// Reads one HTTP/2 frame off the connection.
async fn read_frame(stream: &mut TlsStream<TcpStream>) -> io::Result<RawFrame> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((header[3], header[4], id, payload))
}

/// Encodes a frame header and payload.
fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const SETTINGS: u8 = 4;
const PING: u8 = 6;
const ACK: u8 = 1;

/// A TLS connection on which the client preface and an empty SETTINGS
/// have been sent and the server's first SETTINGS read (and acknowledged);
/// returns it with those settings as (identifier, value) pairs.
async fn raw_h2(d: &Berthd) -> (TlsStream<TcpStream>, Vec<(u16, u32)>) {
    let mut stream = tls_connect(d, &connector(d)).await.expect("TLS connection");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("send the preface");
    let settings = tokio::time::timeout(GUARD, async {
        loop {
            let (kind, flags, _, payload) = read_frame(&mut stream).await.expect("a frame");
            if kind == SETTINGS && flags & ACK == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|s| {
                        (
                            u16::from_be_bytes([s[0], s[1]]),
                            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                        )
                    })
                    .collect::<Vec<_>>();
            }
        }
    })
    .await
    .expect("the server's SETTINGS");
    stream
        .write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("acknowledge SETTINGS");
    (stream, settings)
}

/// The SETTINGS the server sends first on a new HTTP/2 connection.
async fn server_settings(d: &Berthd) -> Vec<(u16, u32)> {
    raw_h2(d).await.1
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS`, in RFC 9113's numbering.
const MAX_CONCURRENT_STREAMS: u16 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_advertises_a_stream_limit() {
    let d = Berthd::start();
    let settings = server_settings(&d).await;
    let advertised = settings
        .iter()
        .find(|(id, _)| *id == MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v);
    assert_eq!(
        advertised,
        Some(128),
        "SETTINGS_MAX_CONCURRENT_STREAMS by default; the server sent {settings:?}"
    );

    // The flag sets it ...
    let flagged = Berthd::start_with(&["--max-concurrent-streams", "7"]);
    assert!(server_settings(&flagged)
        .await
        .contains(&(MAX_CONCURRENT_STREAMS, 7)));

    // ... and so does the config file's [limits] table.
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "[[services]]\nname = \"local\"\ndriver = \"vfs\"\n[services.options]\nroot = {:?}\n\n[limits]\nmax_concurrent_streams = 9\n",
            tmp.path().join("volumes").display().to_string()
        ),
    )
    .expect("write config");
    let configured = Berthd::start_with(&["--config", config.to_str().expect("utf-8 path")]);
    assert!(server_settings(&configured)
        .await
        .contains(&(MAX_CONCURRENT_STREAMS, 9)));
}

/// Opens `connections` HTTP/2 connections and on each `streams`
/// authenticated ListVolumes calls whose bodies are never sent (nor
/// cancelled), as fast as the server lets it; returns every stream's
/// outcome (its grpc-status, or what went wrong) once all are answered, or
/// `Err` with the number answered when they are not within [`GUARD`].
async fn flood_without_bodies(
    d: &Berthd,
    connections: usize,
    streams: usize,
) -> Result<Vec<Result<String, String>>, usize> {
    let tls = connector(d);
    let mut flood = JoinSet::new();
    for _ in 0..connections {
        let (mut send, conn) = h2_connect(d, &tls).await;
        let request = grpc_request(d, "/berth.v1.Volumes/ListVolumes");
        flood.spawn(async move {
            let mut answers = JoinSet::new();
            let mut bodies = Vec::new();
            for _ in 0..streams {
                send = send.ready().await.expect("the connection takes a stream");
                let mut req = http::Request::new(());
                *req.method_mut() = request.method().clone();
                *req.uri_mut() = request.uri().clone();
                *req.headers_mut() = request.headers().clone();
                let (response, body) = send.send_request(req, false).expect("send headers");
                bodies.push(body); // held: the body is neither sent nor cancelled
                answers.spawn(async move {
                    let response = response.await.map_err(|e| format!("no response: {e}"))?;
                    let status = match response.headers().get("grpc-status") {
                        Some(status) => Some(status.clone()),
                        None => {
                            let mut body = response.into_body();
                            while body.data().await.is_some() {}
                            let trailers = body
                                .trailers()
                                .await
                                .map_err(|e| format!("no trailers: {e}"))?;
                            trailers.and_then(|t| t.get("grpc-status").cloned())
                        }
                    };
                    let status = status.ok_or("no grpc-status")?;
                    Ok::<String, String>(String::from_utf8_lossy(status.as_bytes()).into_owned())
                });
            }
            let mut outcomes = Vec::new();
            while let Some(outcome) = answers.join_next().await {
                outcomes.push(outcome.unwrap_or_else(|e| Err(format!("task: {e}"))));
            }
            drop((bodies, send));
            conn.abort();
            outcomes
        });
    }
    let mut outcomes = Vec::new();
    let collected = tokio::time::timeout(GUARD, async {
        while let Some(done) = flood.join_next().await {
            outcomes.extend(done.expect("flood task"));
        }
    })
    .await;
    match collected {
        Ok(()) => Ok(outcomes),
        Err(_) => Err(outcomes.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_whose_bodies_never_arrive_are_answered_and_their_memory_freed() {
    const CONNECTIONS: usize = 8;
    const STREAMS: usize = 300;
    let total = CONNECTIONS * STREAMS;
    let d = Berthd::start_with(&["--request-body-timeout", "1s"]);
    let pid = d.pid();
    // Warm up (a call on every path the flood takes), then measure idle.
    {
        let (send, conn) = h2_connect(&d, &connector(&d)).await;
        let mut send = send.ready().await.expect("ready");
        let (response, mut body) = send
            .send_request(grpc_request(&d, "/berth.v1.Volumes/ListVolumes"), false)
            .expect("ListVolumes");
        body.send_data(grpc_frame(&[]), true).expect("body");
        let response = tokio::time::timeout(GUARD, response)
            .await
            .expect("answered")
            .expect("response");
        assert_eq!(response.status(), 200);
        drop((send, response));
        conn.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(pid);

    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            while let Some(rss) = try_rss_kib(pid) {
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Two floods: the second must find the first's memory freed and reuse
    // it, not add to it.
    let mut after = Vec::new();
    for round in 1..=2 {
        let started = Instant::now();
        let outcomes = match flood_without_bodies(&d, CONNECTIONS, STREAMS).await {
            Ok(outcomes) => outcomes,
            Err(answered) => panic!(
                "round {round}: {answered} of {total} streams whose bodies never arrived were answered within {GUARD:?} (RSS idle {idle} KiB, now {} KiB)",
                rss_kib(pid)
            ),
        };
        let wrong: Vec<_> = outcomes
            .iter()
            .filter(|o| o.as_deref() != Ok("4"))
            .collect();
        assert!(
            outcomes.len() == total && wrong.is_empty(),
            "round {round}: every stream should get DEADLINE_EXCEEDED (4); {} of {} did not, e.g. {:?}",
            wrong.len(),
            outcomes.len(),
            &wrong[..wrong.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        after.push(rss_kib(pid));
        eprintln!(
            "round {round}: {total} streams answered in {:?}; RSS idle {idle} KiB, peak so far {} KiB, now {} KiB",
            started.elapsed(),
            peak.load(std::sync::atomic::Ordering::Relaxed),
            after[round - 1]
        );
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after[0] <= idle + 32 * 1024 && after[1] <= after[0] + 8 * 1024,
        "RSS did not come back: idle {idle} KiB, after the first flood {} KiB, after the second {} KiB (peak {peak} KiB)",
        after[0],
        after[1]
    );
    // The controller still serves.
    let listed = tokio::task::spawn_blocking(move || d.berth(&["volume", "list"]).ok())
        .await
        .expect("berth");
    assert!(listed, "berth volume list failed after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_back_off_and_a_real_client_gets_in_afterwards() {
    // 64 descriptors and a cap far above them: accept runs out of files.
    let d = Berthd::start_with_ulimit(&["--max-connections", "1000"], "-n 64");
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(
            TcpStream::connect(d.addr)
                .await
                .expect("connect (the kernel's backlog takes it)"),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = log_lines(&d, "accept failed");
    assert!(
        failures >= 1,
        "the test did not exhaust the controller's descriptors:\n{}",
        d.log()
    );
    assert!(
        failures <= 5,
        "{failures} \"accept failed\" lines in 3 s; accept failures must back off and be logged sparingly"
    );
    drop(held);

    // A real client gets in once the descriptors are back (bounded retries).
    let outcome = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..40 {
            let run = d.berth(&["volume", "list"]);
            if run.ok() {
                return Ok(());
            }
            last = run.stderr();
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("{last}\n{}", d.log()))
    })
    .await
    .expect("berth");
    if let Err(e) = outcome {
        panic!("berth volume list never succeeded after the flood: {e}");
    }
}

/// HPACK for one header, a literal never added to the table (RFC 7541
/// 6.2.2) with a literal name; names and values here are short.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped_even_with_a_call_in_flight() {
    let d = Berthd::start_with(&[
        "--keepalive-interval",
        "1s",
        "--keepalive-timeout",
        "1s",
        "--idle-timeout",
        "10m",
    ]);
    let (mut stream, _) = raw_h2(&d).await;
    // A health Watch: answered, then kept open by the server, so the
    // connection always has a call in flight and never looks idle.
    let mut headers = Vec::new();
    hpack_literal(&mut headers, ":method", "POST");
    hpack_literal(&mut headers, ":scheme", "https");
    hpack_literal(&mut headers, ":path", "/grpc.health.v1.Health/Watch");
    hpack_literal(&mut headers, ":authority", &d.addr.to_string());
    hpack_literal(&mut headers, "content-type", "application/grpc");
    hpack_literal(&mut headers, "te", "trailers");
    let service = b"berth.v1.Volumes";
    let mut message = vec![0x0a, service.len() as u8];
    message.extend_from_slice(service);
    let mut call = frame(1, 0x4, 1, &headers); // HEADERS, END_HEADERS
    call.extend(frame(0, 0x1, 1, &grpc_frame(&message))); // DATA, END_STREAM
    stream.write_all(&call).await.expect("send the Watch");

    // From now on this peer reads but never answers a PING.
    let mut answered = false;
    let mut pings = 0;
    let outcome = tokio::time::timeout(GUARD, async {
        loop {
            match read_frame(&mut stream).await {
                Ok((0, _, 1, payload)) if !payload.is_empty() => answered = true,
                Ok((PING, flags, _, _)) if flags & ACK == 0 => pings += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(answered, "the Watch was never answered");
    assert!(
        outcome.is_ok(),
        "a peer that answered none of {pings} PINGs was still connected after {GUARD:?} (--keepalive-interval 1s --keepalive-timeout 1s)"
    );
    assert!(pings >= 1, "the connection closed without a PING");
}

/// (soft, hard) "Max open files" of a process, from /proc/PID/limits.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().expect("soft").to_owned();
    let hard = fields.next().expect("hard").to_owned();
    (soft, hard)
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let d = Berthd::start_with_ulimit(&[], "-Sn 100");
    let (soft, hard) = open_file_limits(d.pid());
    assert_ne!(hard, "100", "the test needs a hard limit above 100");
    assert_eq!(
        soft, hard,
        "berthd started with a soft open-file limit of 100 should raise it to the hard limit"
    );
    assert!(
        d.log().contains("raised the open-file limit"),
        "the raise is logged:\n{}",
        d.log()
    );
}
