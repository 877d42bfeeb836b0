//! The server over real sockets on 127.0.0.1, once per backend.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::net::{config, eventually, Client, TestServer};
use coreloop::metrics::Deadline;
use coreloop::Backend;

per_backend!(
    keep_alive,
    pipelined_hundred_in_one_write,
    thousand_concurrent_connections,
    slow_sender,
    request_and_response_larger_than_buffers,
    head_deadline_answers_408,
    silent_connection_closed_at_head_deadline,
    idle_deadline_closes_keep_alive,
    body_deadline_answers_408,
    write_deadline_closes_a_stalled_reader,
    max_conns_reached_and_recovered,
    bad_input_closes_only_that_connection,
    client_that_never_reads_is_throttled,
    panicking_handler_answers_500_and_core_survives,
    shutdown_answers_in_flight_and_closes_idle,
    runs_on_the_backend_it_names,
    half_close_with_the_request_is_answered_and_closed,
);

/// A request and the client's FIN in one go: answered, then closed at
/// once (not at the idle timeout).
fn half_close_with_the_request_is_answered_and_closed(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_response().unwrap().body, b"Hello, World!");
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "closed after the FIN"
    );
}

/// The counters prove which kernel interface served the requests.
fn runs_on_the_backend_it_names(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    for _ in 0..10 {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    let enters = server.total(|s| s.ring_enters.get());
    let completions = server.total(|s| s.ring_completions.get());
    let wakeups = server.total(|s| s.poll_wakeups.get());
    match backend {
        Backend::Uring => {
            assert!(
                completions >= 20,
                "recv and send completions for 10 requests: {completions}"
            );
            assert!(enters >= 10, "{enters}");
            assert_eq!(wakeups, 0);
        }
        _ => {
            assert!(wakeups >= 10, "{wakeups}");
            assert_eq!(enters + completions, 0);
        }
    }
}

fn keep_alive(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    for _ in 0..100 {
        let r = c.get("/plaintext");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"Hello, World!"[..]));
        assert!(!r.closes());
    }
    assert_eq!(server.total(|s| s.accepted.get()), 1);
    assert_eq!(server.total(|s| s.requests.get()), 100);
}

fn pipelined_hundred_in_one_write(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    let batch: String = (0..100)
        .map(|i| format!("GET /target?{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    c.send(batch.as_bytes());
    for i in 0..100 {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body,
            format!("/target|{i}|/target?{i}").as_bytes(),
            "in order"
        );
    }
}

fn thousand_concurrent_connections(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut clients: Vec<Client> = (0..1000).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for c in &mut clients {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || server
        .total(|s| s.active.get())
        == 1000));
    drop(clients);
    assert!(eventually(Duration::from_secs(5), || server
        .total(|s| s.active.get())
        == 0));
}

fn slow_sender(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    for b in b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc" {
        c.send(&[*b]);
        thread::sleep(Duration::from_millis(2));
    }
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
}

fn request_and_response_larger_than_buffers(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut c = server.connect();
    let body: Vec<u8> = (0..900_000u32).map(|i| (i % 253) as u8).collect();
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(&body);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "echoed body intact");
    let r = c.get("/big?8000000");
    assert_eq!(r.body.len(), 8_000_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(c.get("/plaintext").status, 200, "connection still usable");
}

fn short_limits(backend: Backend) -> coreloop::Config {
    let mut cfg = config(backend);
    cfg.limits.head_timeout = Duration::from_millis(300);
    cfg.limits.body_timeout = Duration::from_millis(300);
    cfg.limits.idle_timeout = Duration::from_millis(600);
    cfg.limits.write_timeout = Duration::from_millis(300);
    cfg
}

fn deadlines(server: &TestServer, kind: Deadline) -> u64 {
    server.total(|s| s.deadlines[kind as usize].get())
}

fn head_deadline_answers_408(backend: Backend) {
    let server = TestServer::start(short_limits(backend));
    let mut c = server.connect();
    c.send(b"GET /plaintext HTTP/1.1\r\nHo");
    let started = Instant::now();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(r.closes());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(c.closed_within(Duration::from_secs(2)));
    assert_eq!(deadlines(&server, Deadline::Head), 1);
}

fn silent_connection_closed_at_head_deadline(backend: Backend) {
    let server = TestServer::start(short_limits(backend));
    let mut c = server.connect();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert_eq!(deadlines(&server, Deadline::Head), 1);
}

fn idle_deadline_closes_keep_alive(backend: Backend) {
    let server = TestServer::start(short_limits(backend));
    let mut c = server.connect();
    assert_eq!(c.get("/plaintext").status, 200);
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the idle timeout"
    );
    assert_eq!(deadlines(&server, Deadline::Idle), 1);
}

fn body_deadline_answers_408(backend: Backend) {
    let server = TestServer::start(short_limits(backend));
    let mut c = server.connect();
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(deadlines(&server, Deadline::Body), 1);
}

fn write_deadline_closes_a_stalled_reader(backend: Backend) {
    let server = TestServer::start(short_limits(backend));
    let mut c = server.connect();
    c.send(b"GET /big?64000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(eventually(Duration::from_secs(5), || deadlines(
        &server,
        Deadline::Write
    ) == 1));
    let mut got = Vec::new();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = c.stream.read_to_end(&mut got);
    assert!(
        got.len() < 64_000_000,
        "response was cut, not completed ({} bytes)",
        got.len()
    );
}

fn max_conns_reached_and_recovered(backend: Backend) {
    let mut cfg = config(backend);
    cfg.workers = Some(1);
    cfg.max_conns = 4;
    let server = TestServer::start(cfg);
    let mut first: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for c in &mut first {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    let mut waiting = server.connect();
    waiting.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    waiting
        .stream
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = loop {
        match waiting.stream.read(&mut byte) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "not served while full: {early:?}"
    );
    assert_eq!(
        first[0].get("/plaintext").status,
        200,
        "established connections still served"
    );
    drop(first.pop());
    waiting
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let r = waiting.read_response().unwrap();
    assert_eq!(r.status, 200, "served once a slot freed");
}

fn bad_input_closes_only_that_connection(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut good = server.connect();
    assert_eq!(good.get("/plaintext").status, 200);
    let mut bad = server.connect();
    bad.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = bad.read_response().unwrap();
    assert_eq!(r.status, 400);
    assert!(r.closes());
    assert!(
        bad.closed_within(Duration::from_secs(3)),
        "closed, and the smuggled request is not answered"
    );
    assert_eq!(good.get("/plaintext").status, 200);
}

fn client_that_never_reads_is_throttled(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut hog = server.connect();
    hog.stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let batch = b"GET /big?65536 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(100);
    let mut sent = 0usize;
    let blocked = loop {
        match hog.stream.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true
            }
            Err(e) => panic!("write: {e}"),
        }
        if sent > 64 << 20 {
            break false;
        }
    };
    assert!(
        blocked,
        "server kept reading {sent} bytes of requests it could not answer"
    );
    // 65 KiB per answer: the server answered at most a bounded number.
    let answered = server.total(|s| s.requests.get());
    assert!(
        answered < 200,
        "answered {answered} requests for a peer that reads nothing"
    );
    let mut other = server.connect();
    assert_eq!(
        other.get("/plaintext").status,
        200,
        "the core serves others meanwhile"
    );
}

fn panicking_handler_answers_500_and_core_survives(backend: Backend) {
    let mut cfg = config(backend);
    cfg.workers = Some(1);
    let server = TestServer::start(cfg);
    let mut c = server.connect();
    let r = c.get("/panic");
    assert_eq!(r.status, 500);
    assert!(r.closes());
    assert!(c.closed_within(Duration::from_secs(3)));
    let mut again = server.connect();
    assert_eq!(again.get("/plaintext").status, 200);
    assert_eq!(server.total(|s| s.panics.get()), 1);
}

fn shutdown_answers_in_flight_and_closes_idle(backend: Backend) {
    let server = TestServer::start(config(backend));
    let mut idle = server.connect();
    assert_eq!(idle.get("/plaintext").status, 200);
    let mut partial = server.connect();
    partial.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n");
    let mut unread = server.connect();
    unread.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    let shutdown = server.shutdown.clone();
    shutdown.trigger();
    thread::sleep(Duration::from_millis(100));
    partial.send(b"\r\n");
    let r = partial.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.closes(), "answered with Connection: close");
    assert_eq!(unread.read_response().unwrap().status, 200);
    assert!(idle.closed_within(Duration::from_secs(2)));
    let report = server.stop();
    let forced: usize = report.cores.iter().map(|c| c.forced).sum();
    assert_eq!(forced, 0);
    let mut w = [0u8; 1];
    assert!(matches!(partial.stream.read(&mut w), Ok(0) | Err(_)));
    let _ = partial.stream.flush();
}

/// The SQPOLL experiment knob makes a working ring (a kernel thread submits).
#[test]
fn uring_with_sqpoll_serves() {
    if !common::net::uring_available() {
        return;
    }
    let mut cfg = config(Backend::Uring);
    cfg.sqpoll = Some(20);
    cfg.workers = Some(1);
    let server = TestServer::start(cfg);
    let mut c = server.connect();
    for _ in 0..20 {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    let batch = "GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16);
    c.send(batch.as_bytes());
    for _ in 0..16 {
        assert_eq!(c.read_response().unwrap().status, 200);
    }
}

/// The batched wait knob: a lone request still gets its answer (the wait
/// gives up after --ring-batch-wait), and a burst is served whole.
#[test]
fn uring_with_batched_waits_serves() {
    if !common::net::uring_available() {
        return;
    }
    let mut cfg = config(Backend::Uring);
    cfg.ring_batch = Some((16, Duration::from_micros(100)));
    cfg.workers = Some(1);
    if coreloop::io::uring::probe(&cfg).is_err() {
        eprintln!("skipping: this kernel has no IORING_FEAT_MIN_TIMEOUT");
        return;
    }
    let server = TestServer::start(cfg);
    let mut c = server.connect();
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waits gave up in time"
    );
    let mut clients: Vec<_> = (0..8).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    for c in &mut clients {
        assert_eq!(c.read_response().unwrap().status, 200);
    }
}

/// Only a window of the buffers circulates (32 at first): a burst of
/// large requests on many connections at once may run it dry; it widens
/// (`buf_ring` unit tests) and every byte arrives intact.
#[test]
fn uring_buffer_window_widens_under_a_burst() {
    echo_burst(1024, 4096, 100, 64_000);
}

/// With a tiny provided-buffer ring, receives run the ring dry (ENOBUFS):
/// the server re-arms and slows down, it does not fail or lose bytes.
#[test]
fn uring_survives_a_dry_buffer_ring() {
    echo_burst(2, 512, 40, 20_000);
}

/// `clients` connections each send a POST of `len` bytes at once to one
/// io_uring core with `count` receive buffers of `size` bytes; every body
/// must come back intact.
fn echo_burst(count: u16, size: usize, clients: usize, len: u32) {
    if !common::net::uring_available() {
        return;
    }
    let mut cfg = config(Backend::Uring);
    cfg.workers = Some(1);
    cfg.buf_count = count;
    cfg.buf_size = size;
    let server = TestServer::start(cfg);
    let body: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let mut clients: Vec<Client> = (0..clients).map(|_| server.connect()).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    for c in &mut clients {
        c.send(head.as_bytes());
        c.send(&body);
    }
    for c in &mut clients {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body == body, "body intact");
    }
    eprintln!(
        "receives that found the ring empty: {}",
        server.total(|s| s.ring_no_buffers.get())
    );
}
