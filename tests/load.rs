//! `coreloop load` against real servers: its counts agree with the
//! server's, the open loop holds its rate, connections per request are
//! real connections, and garbage, closes and unreachable servers end as
//! counted errors, never a hang.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use coreloop::load::{self, schedule, Options, Outcome, Target};
use coreloop::Backend;

use common::net::{config, uring_available, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");

fn options(url: &str) -> Options {
    Options {
        target: Target::parse(url).unwrap(),
        method: "GET".into(),
        headers: Vec::new(),
        body: None,
        connections: 8,
        cpus: vec![None, None],
        pipeline: 1,
        duration: Duration::from_millis(700),
        warmup: Duration::ZERO,
        profile: None,
        conn_profile: None,
        conn_per_request: false,
        reconnect_after: None,
        timeout: Duration::from_secs(5),
        live: false,
        backend: Backend::Epoll,
    }
}

fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Epoll];
    if uring_available() {
        b.push(Backend::Uring);
    }
    b
}

/// Server backends by client backends (io_uring where the kernel allows).
fn pairs() -> Vec<(Backend, Backend)> {
    let b = backends();
    b.iter()
        .flat_map(|&s| b.iter().map(move |&c| (s, c)))
        .collect()
}

/// The server answered every response the client counted, and at most
/// the requests still in flight at the end besides.
fn assert_counts_agree(server: &TestServer, out: &Outcome) {
    let t = &out.tally;
    let served = server.total(|s| s.requests.get());
    let counted = t.responses + t.warmup_responses;
    assert!(
        served >= counted && served <= counted + t.in_flight_end,
        "server {served}, client {counted} + {} in flight",
        t.in_flight_end
    );
}

#[test]
fn closed_loop_pipelined_counts_match_the_server() {
    for (backend, client) in pairs() {
        let server = TestServer::start(config(backend));
        let mut opts = options(&format!("http://{}/plaintext", server.addr));
        opts.backend = client;
        opts.pipeline = 8;
        opts.warmup = Duration::from_millis(200);
        let out = load::run(&opts).unwrap();
        let t = &out.tally;
        assert!(
            t.responses > 1000,
            "{backend:?}/{client:?}: {}",
            t.responses
        );
        assert_eq!(t.errors.total(), 0, "{backend:?}: {:?}", t.errors);
        assert_eq!(t.statuses[200], t.responses);
        assert!(t.warmup_responses > 0);
        assert_eq!(t.connects, 8);
        assert_eq!(t.corrected.len(), t.responses);
        assert_counts_agree(&server, &out);
    }
}

#[test]
fn open_loop_holds_its_rate() {
    for (backend, client) in pairs() {
        let server = TestServer::start(config(backend));
        let mut opts = options(&format!("http://{}/plaintext", server.addr));
        opts.backend = client;
        opts.profile = Some(schedule::parse_profile("2000@1s").unwrap());
        opts.duration = Duration::from_secs(1);
        let out = load::run(&opts).unwrap();
        let t = &out.tally;
        // Every one of the 2000 requests due is answered, in flight at the
        // end, or (a starved client thread: CI runs tests side by side)
        // due and unsent; nearly all of them go out.
        let sent = t.responses + t.in_flight_end;
        assert_eq!(
            sent + t.unsent_end,
            2000,
            "{backend:?}/{client:?}: {sent} sent, {} unsent, {:?}",
            t.unsent_end,
            t.errors
        );
        assert!(sent >= 1800, "{backend:?}/{client:?}: {sent}");
        assert_eq!(
            t.errors.total(),
            0,
            "{backend:?}/{client:?}: {:?}",
            t.errors
        );
        assert_eq!(t.lag.len(), sent);
        // Latency from the intended time is never below latency from the
        // actual send (a request never goes before it is due).
        for q in [0.5, 0.9, 0.99, 1.0] {
            let (c, u) = (
                t.corrected.value_at_quantile(q),
                t.uncorrected.value_at_quantile(q),
            );
            assert!(
                c >= u,
                "{backend:?}/{client:?}: q{q}: corrected {c} < uncorrected {u}"
            );
        }
        assert_eq!(t.corrected.len(), t.uncorrected.len());
        assert_counts_agree(&server, &out);
    }
}

#[test]
fn connection_per_request_opens_a_connection_each_time() {
    for (backend, client) in pairs() {
        let server = TestServer::start(config(backend));
        let mut opts = options(&format!("http://{}/plaintext", server.addr));
        opts.backend = client;
        opts.conn_per_request = true;
        opts.connections = 4;
        opts.duration = Duration::from_millis(400);
        let out = load::run(&opts).unwrap();
        let t = &out.tally;
        assert!(t.responses > 100, "{}", t.responses);
        assert_eq!(
            t.errors.total(),
            0,
            "{backend:?}/{client:?}: {:?}",
            t.errors
        );
        assert!(t.connects >= t.responses, "{} connects", t.connects);
        let accepted = server.total(|s| s.accepted.get());
        assert!(accepted >= t.responses, "{accepted} accepted");
        assert_counts_agree(&server, &out);
    }
}

#[test]
fn reconnect_after_n_responses() {
    let server = TestServer::start(config(Backend::Epoll));
    let mut opts = options(&format!("http://{}/plaintext", server.addr));
    opts.reconnect_after = Some(10);
    opts.pipeline = 4;
    let out = load::run(&opts).unwrap();
    let t = &out.tally;
    assert_eq!(t.errors.total(), 0, "{:?}", t.errors);
    let per_conn = t.responses as f64 / t.connects as f64;
    assert!((9.0..=10.0).contains(&per_conn), "{per_conn}");
}

#[test]
fn connection_profile_opens_and_retires_connections() {
    for client in backends() {
        let server = TestServer::start(config(Backend::Epoll));
        let mut opts = options(&format!("http://{}/plaintext", server.addr));
        opts.backend = client;
        opts.cpus = vec![None];
        opts.conn_profile = Some(schedule::parse_profile("2@300ms,8@300ms,3@300ms").unwrap());
        opts.duration = Duration::from_millis(900);
        let out = load::run(&opts).unwrap();
        let t = &out.tally;
        assert_eq!(t.errors.total(), 0, "{client:?}: {:?}", t.errors);
        // 2 at first, 6 more for the second step; the third step retires 5.
        assert_eq!(t.connects, 8, "{client:?}");
        assert!(t.in_flight_end <= 3, "{}", t.in_flight_end);
        let closed = || server.total(|s| s.closed.get());
        assert!(
            common::net::eventually(Duration::from_secs(2), || closed() >= 5),
            "{client:?}: {} closed",
            closed()
        );
        assert_counts_agree(&server, &out);
    }
}

/// A server that answers every read with `reply` and then does `after`.
fn scripted(reply: &'static [u8], close: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(reply).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn garbage_and_closes_are_counted_errors_not_hangs() {
    let cases: [(&[u8], bool); 3] = [
        (b"SSH-2.0-nope\r\n\r\n", false),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
        ),
        (b"", true),
    ];
    let runs = cases
        .into_iter()
        .flat_map(|c| backends().into_iter().map(move |b| (c, b)));
    for ((reply, close), client) in runs {
        let addr = scripted(reply, close);
        let mut opts = options(&format!("http://{addr}/"));
        opts.backend = client;
        opts.duration = Duration::from_millis(300);
        let started = Instant::now();
        let out = load::run(&opts).unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        let e = &out.tally.errors;
        assert_eq!(out.tally.responses, 0);
        if close {
            assert!(e.closed > 0, "{e:?}");
        } else {
            assert!(e.framing > 0, "{e:?}");
        }
    }
}

#[test]
fn unanswered_requests_time_out() {
    for client in backends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = options(&format!("http://{addr}/"));
        opts.backend = client;
        opts.connections = 2;
        opts.timeout = Duration::from_millis(100);
        opts.duration = Duration::from_millis(500);
        // The backlog completes the handshakes; nobody ever reads.
        let out = load::run(&opts).unwrap();
        assert!(
            out.tally.errors.timeout >= 2,
            "{client:?}: {:?}",
            out.tally.errors
        );
        drop(listener);
    }
}

#[test]
fn the_binary_reports_and_exits_by_outcome() {
    let server = TestServer::start(config(Backend::Epoll));
    let url = format!("http://{}/plaintext", server.addr);
    let dir = std::env::temp_dir().join(format!("coreloop-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hgrm = dir.join("out.hgrm");
    let cpu = coreloop::topology::allowed_cpus().unwrap()[0].to_string();
    let out = Command::new(BIN)
        .args(["load", &url, "-c", "4", "-q", "--cpus", &cpu])
        .args(["--profile", "100@200ms,100..300@200ms"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("open loop, profile of 2 segments"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("1 thread(s) (cpu {cpu})")),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["load", &url, "-c", "4", "-d", "300ms", "-q", "--no-pin"])
        .args(["--json", "-", "--hgrm"])
        .arg(&hgrm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("closed loop, 4 connections"), "{stdout}");
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("json line");
    assert!(json.contains("\"statuses\":{\"200\":"), "{json}");
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(text.contains("Total count"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();

    // Nothing listens there: exit 1, one line naming the cause.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(BIN)
        .args([
            "load",
            &format!("http://{dead}/"),
            "-d",
            "300ms",
            "-q",
            "-c",
            "2",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no response from") && stderr.contains("connect errors"),
        "{stderr}"
    );

    for bad in [
        &["load", "https://x/"][..],
        &["load", "-c", "0"],
        &["load", "--pipeline", "0"],
        &["load", "-R", "0"],
        &["load", "-R", "fast"],
        &["load", "--profile", "10"],
        &["load", "--conn-per-request", "--pipeline", "4"],
        &["load", "-H", "no colon"],
        &["load", "-d", "soon"],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.lines().next().unwrap_or("").contains("error"),
            "{bad:?}: {stderr}"
        );
    }
}

/// `coreloop ab`: an A/A run of two short rounds reports both rounds, the
/// ratios and the reading; bad flags exit 2, a server that dies exits 1.
#[test]
fn ab_runs_rounds_and_reads_them() {
    let cpus = coreloop::topology::allowed_cpus().unwrap();
    let (server_cpu, client_cpu) = (cpus[0], *cpus.last().unwrap());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "ab",
            "--a",
            "--backend epoll --no-files",
            "--aa",
            "--rounds",
            "2",
        ])
        .args([
            "-d", "300ms", "--warmup", "100ms", "--load", "-c 8", "--seed", "5",
        ])
        .args(["--port", &port.to_string(), "--json", "-"])
        .args(["--server-cpu", &server_cpu.to_string()])
        .args(["--client-cpu", &client_cpu.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("round  1") && stdout.contains("round  2"),
        "{stdout}"
    );
    assert!(stdout.contains("B/A median"), "{stdout}");
    let json = stdout
        .lines()
        .find(|l| l.starts_with("{\"a_us\""))
        .expect("json");
    let ratios = json
        .split("\"ratios\":[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    assert_eq!(ratios.split(',').count(), 2, "{json}");
    for r in ratios.split(',') {
        let r: f64 = r.parse().unwrap();
        assert!(r > 0.2 && r < 5.0, "{json}");
    }

    for bad in [
        &["ab", "--rounds", "0"][..],
        &["ab", "--load", "-c 0"],
        &["ab", "--path", "plaintext"],
        &["ab", "--server-cpu", "4000"],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args([
            "ab",
            "--a-cmd",
            "exit 3",
            "--aa",
            "--rounds",
            "1",
            "--port",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited"), "{stderr}");
}
