//! Requests that race the shutdown signal, on the real binary: bytes the
//! kernel already holds for an idle keep-alive connection when SIGTERM
//! arrives are a request, and must be answered before the close.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::net::{wait_exit, Client, TestServer};
use coreloop::{Backend, Request, Response};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");

/// The race is timing dependent: each backend is tried this many times.
const ROUNDS: usize = 6;
const BUSY: usize = 50;
const IDLE: usize = 20;

per_backend!(
    requests_written_while_stopped_are_answered,
    requests_queued_behind_a_busy_core_are_answered
);

fn requests_written_while_stopped_are_answered(backend: Backend) {
    for round in 0..ROUNDS {
        let lost = one_round(backend);
        assert!(
            lost.is_empty(),
            "round {round}: {} of {IDLE} requests written before SIGTERM went unanswered: {lost:?}",
            lost.len()
        );
    }
}

/// The reproduction: busy keep-alive clients, idle connections
/// answered once, SIGSTOP, one request on each idle connection, SIGTERM,
/// SIGCONT. Returns what each unanswered idle connection saw.
fn one_round(backend: Backend) -> Vec<String> {
    let name = match backend {
        Backend::Uring => "uring",
        _ => "epoll",
    };
    let (mut child, addr) = start(name);
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..BUSY)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || busy_client(addr, &stop))
        })
        .collect();
    let mut idle: Vec<Client> = (0..IDLE).map(|_| Client::connect(addr)).collect();
    for c in &mut idle {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    thread::sleep(Duration::from_millis(200));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    for c in &mut idle {
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    // Let loopback deliver every request into the server's sockets.
    thread::sleep(Duration::from_millis(50));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let mut lost = Vec::new();
    for (i, c) in idle.iter_mut().enumerate() {
        match c.read_response() {
            // A core may answer before it sees the flag (SIGCONT wakes
            // the cores and the signal thread together): then without
            // `Connection: close`, and the close follows as for any idle
            // connection in a drain.
            Ok(r) if r.status == 200 => {}
            Ok(r) => lost.push(format!("#{i}: status {}", r.status)),
            Err(e) => lost.push(format!("#{i}: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        let _ = t.join();
    }
    let code = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "the server drains and exits 0");
    lost
}

/// GETs on one keep-alive connection until the server closes it (the drain
/// answers with `Connection: close`) or the test says stop.
fn busy_client(addr: SocketAddr, stop: &AtomicBool) {
    let mut c = Client::connect(addr);
    while !stop.load(Ordering::Relaxed) {
        if c.stream
            .write_all(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_err()
        {
            return;
        }
        match c.read_response() {
            Ok(r) if !r.closes() => {}
            _ => return,
        }
    }
}

fn start(backend: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--no-pin", "--workers", "2", "--no-files"])
        .args(["--backend", backend, "--shutdown-timeout", "5s"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coreloop");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("startup line")
            .expect("read startup line");
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse().expect("address");
        }
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, addr)
}

/// The same race made deterministic: one core is held inside a handler
/// while requests arrive on more idle connections than one pass through
/// the kernel delivers (io_uring runs at most 20 deferred task-work items
/// per enter), and shutdown is triggered before the core comes back.
fn requests_queued_behind_a_busy_core_are_answered(backend: Backend) {
    const QUEUED: usize = 200;
    let mut config = common::net::config(backend);
    config.workers = Some(1);
    let server = TestServer::start_with(config, |_core, _bound| {
        common::test_router().get("/sleep", |_: &Request<'_>| {
            thread::sleep(Duration::from_millis(300));
            Response::ok("text/plain", b"slept")
        })
    });
    let mut idle: Vec<Client> = (0..QUEUED).map(|_| server.connect()).collect();
    for c in &mut idle {
        assert_eq!(c.get("/plaintext").status, 200);
    }
    let mut sleeper = server.connect();
    sleeper.send(b"GET /sleep HTTP/1.1\r\nHost: t\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    for c in &mut idle {
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    server.shutdown.trigger();
    let lost: Vec<String> = idle
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| match c.read_response() {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("#{i}: status {}", r.status)),
            Err(e) => Some(format!("#{i}: {e}")),
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {QUEUED} requests sent before shutdown went unanswered: {lost:?}",
        lost.len()
    );
    assert_eq!(sleeper.read_response().expect("slept").status, 200);
    let report = server.stop();
    assert_eq!(report.cores.iter().map(|c| c.forced).sum::<usize>(), 0);
}
