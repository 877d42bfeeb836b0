//! The real binary: flags, startup lines, and SIGTERM while clients are
//! mid-request.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::net::{eventually, wait_exit, Client};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");

/// Starts the binary on an ephemeral port and returns it with its address,
/// read from the startup lines; the rest of stderr goes to the channel.
fn start(args: &[&str]) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut command = Command::new(BIN);
    command.args(["--workers", "2"]);
    start_with(command, args)
}

fn start_with(mut command: Command, args: &[&str]) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    command.args(["--port", "0", "--no-pin"]).args(args);
    spawn(command)
}

/// Spawns `command` as is and reads its address from the startup lines.
fn spawn(mut command: Command) -> (Child, SocketAddr, mpsc::Receiver<String>) {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coreloop");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut listening = 0;
    let mut addr = None;
    while listening == 0 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("startup line");
        if let Some(a) = line.split("listening on ").nth(1) {
            listening += 1;
            addr = Some(a.trim().parse().expect("address"));
        }
    }
    (child, addr.expect("address"), rx)
}

#[test]
fn sigterm_with_fifty_clients_mid_request() {
    let (mut child, addr, rx) = start(&["--shutdown-timeout", "5s"]);
    let mut full: Vec<Client> = (0..25).map(|_| Client::connect(addr)).collect();
    let mut halves: Vec<Client> = (0..25).map(|_| Client::connect(addr)).collect();
    for (i, c) in full.iter_mut().enumerate() {
        c.send(
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nc{i:04}")
                .as_bytes(),
        );
    }
    for c in &mut halves {
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n");
    }
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/healthz").status, 200);
    thread::sleep(Duration::from_millis(100));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    thread::sleep(Duration::from_millis(100));
    for c in &mut halves {
        c.send(b"\r\n");
    }
    for c in &mut full {
        // The echo route is not built in: static files answer POST with
        // 405, a complete answer with a body.
        let r = c
            .read_response()
            .expect("complete response to a request sent before the signal");
        assert_eq!(r.status, 405);
        assert_eq!(r.body, b"method not allowed\n");
    }
    for c in &mut halves {
        let r = c
            .read_response()
            .expect("complete response to a request in progress at the signal");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"Hello, World!"[..]));
        assert!(r.closes(), "drain answers with Connection: close");
    }
    assert!(
        idle.closed_within(Duration::from_secs(3)),
        "idle keep-alive connection closed"
    );
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(8)),
        Some(0),
        "exit 0 within the timeout"
    );
    let log: Vec<String> = rx.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("drained") && l.contains("forced 0")),
        "{log:?}"
    );
}

#[test]
fn second_signal_exits_at_once() {
    let (mut child, addr, _rx) = start(&["--shutdown-timeout", "30s"]);
    let mut stuck = Client::connect(addr);
    stuck.send(b"GET /plaintext HTTP/1.1\r\n");
    // Let the server accept it: connections still in the backlog at the
    // signal are not the server's yet (they are reset with the listener).
    thread::sleep(Duration::from_millis(200));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("signal");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(child.try_wait().expect("wait"), None, "still draining");
    kill(pid, Signal::SIGTERM).expect("signal");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(3)),
        Some(128 + 15)
    );
}

/// --drain-delay: after SIGTERM /readyz says 503 at once, while the
/// server keeps accepting and serving normally for the delay; then it
/// drains and exits 0.
#[test]
fn drain_delay_serves_on_while_readyz_says_503() {
    let (mut child, addr, _rx) = start(&["--drain-delay", "1500ms", "--no-files"]);
    let mut probe = Client::connect(addr);
    let r = probe.get("/readyz");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ready\n"[..]));
    let signalled = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    assert!(
        eventually(Duration::from_secs(1), || probe.get("/readyz").status
            == 503),
        "/readyz turns 503 on the signal"
    );
    let mut late = Client::connect(addr);
    let r = late.get("/plaintext");
    assert_eq!(r.status, 200, "a new connection during the delay is served");
    assert!(!r.closes(), "and kept alive: the drain has not begun");
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(8)), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "the drain waited for the delay"
    );
}

#[test]
fn second_signal_during_the_drain_delay_exits_at_once() {
    let (mut child, addr, _rx) = start(&["--drain-delay", "30s"]);
    let mut probe = Client::connect(addr);
    assert_eq!(probe.get("/readyz").status, 200);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("signal");
    assert!(eventually(Duration::from_secs(1), || probe
        .get("/readyz")
        .status
        == 503));
    kill(pid, Signal::SIGTERM).expect("signal");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(3)),
        Some(128 + 15)
    );
}

#[test]
fn serves_builtins_with_no_routes_configured() {
    let (mut child, addr, _rx) = start(&[]);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/json").body, br#"{"message":"Hello, World!"}"#);
    assert_eq!(c.get("/nothing-here").status, 404);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("signal");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
}

/// `--root` serves a directory; `--stats` prints one line per interval
/// with a figure per core, on stdout.
#[test]
fn root_and_stats_line() {
    let dir = std::env::temp_dir().join(format!("coreloop-bin-root-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("note.txt"), b"from the root\n").unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["--workers", "2", "--stats", "200ms", "--root"])
        .arg(&dir)
        .stdout(Stdio::piped());
    let (mut child, addr, _rx) = start_with(command, &[]);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/note.txt").body, b"from the root\n");
    assert_eq!(c.get("/metrics").status, 200);
    let line = lines
        .recv_timeout(Duration::from_secs(5))
        .expect("a stats line within 5 s");
    assert!(line.starts_with("stats: "), "{line}");
    for part in ["req/s", "conns", "err", "| core0 ", "| core1 "] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_fails(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_print_one_line_and_exit_2() {
    for args in [
        &["--workers", "0"][..],
        &["--port", "70000"],
        &["--cpus", "a-b"],
        &["--max-body", "lots"],
        &["--head-timeout", "0s"],
        &["--max-headers", "1000"],
        &["--backlog", "-5"],
        &["--bind", "not-an-ip"],
        &["--no-such-flag"],
        &["--ring-entries", "1000"],
        &["--buf-count", "3"],
        &["--sqpoll-cpu", "1"],
        &["--cpus", "4000"],
        &["--stats", "0"],
        &["--stats", "soon"],
        &["--root", "/nonexistent-coreloop-root"],
        &["--root", "/etc/passwd"],
        &["--metrics-path", "metrics"],
        &["--metrics-path", "/a b"],
        &["--no-metrics", "--metrics-path", "/m"],
        &["--no-files", "--dir-listing"],
        &["--ring-batch", "1"],
        &["--ring-batch-wait", "10us"],
        &["--ring-batch", "8", "--ring-batch-wait", "2s"],
        &["--busy-poll-budget", "8"],
        &["--accept", "cpu", "--no-pin"],
        &["--accept", "round-robin"],
        &["--prefer-busy-poll"],
        &["--busy-poll", "-1"],
        &["--proxy-protocol", "10.0.0.0/33"],
        &["--access-log-format", "xml", "--access-log", "-"],
        &["--config", "/nonexistent-coreloop.toml"],
        &["--numa", "bind", "--no-pin"],
        &["--numa", "everywhere"],
        &["--huge-pages", "1g"],
        &["--huge-pages", "thp", "--backend", "epoll"],
    ] {
        let (code, stderr) = run_fails(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(first.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, stderr) = run_fails(&["--port", &port, "--no-pin"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:") && stderr.contains("in use"),
        "{stderr}"
    );
}

/// SO_REUSEPORT would let a second server join the first one's port and
/// take half its connections: refused unless --share-port says so.
#[test]
fn second_server_on_a_taken_port_is_refused() {
    let (mut first, addr, _rx) = start(&["--no-files"]);
    let port = addr.port().to_string();
    let mut second = Command::new(BIN)
        .args(["--port", &port, "--no-pin", "--workers", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Today's failure mode was a second server that starts: bound the wait.
    let code = wait_exit(&mut second, Duration::from_secs(5));
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.contains(&format!("cannot listen on {addr}"))
            && line.contains("in use")
            && line.contains("--share-port"),
        "{stderr}"
    );
    let mut joined = Command::new(BIN)
        .args([
            "--port",
            &port,
            "--no-pin",
            "--workers",
            "1",
            "--share-port",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = joined.stderr.take().expect("stderr");
    let started = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(started, "--share-port joins the group");
    for child in [&mut joined, &mut first] {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
        assert_eq!(wait_exit(child, Duration::from_secs(5)), Some(0));
    }
}

/// With only 40 descriptors, accept fails with EMFILE: the server logs it
/// once, keeps serving the connections it has, and accepts again once
/// descriptors free up. (prlimit, from util-linux, sets the hard limit, so
/// the server's raise to the hard limit cannot lift it.)
#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    let mut command = Command::new("prlimit");
    command.args(["--nofile=40:40", BIN, "--workers", "1"]);
    let (mut child, addr, rx) = start_with(command, &["--log-level", "debug"]);
    let mut clients: Vec<Client> = (0..60).map(|_| Client::connect(addr)).collect();
    let mut served = 0;
    for c in clients.iter_mut().take(20) {
        assert_eq!(c.get("/plaintext").status, 200);
        served += 1;
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        clients[0].get("/healthz").status,
        200,
        "established connections keep working"
    );
    drop(clients.drain(..20));
    // The remaining 40 were waiting in the backlog; with descriptors freed
    // the server accepts them in turn (each one closed frees the next).
    for mut c in clients.drain(..) {
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(
            c.read_response().expect("served after recovery").status,
            200
        );
        served += 1;
    }
    assert_eq!(served, 60);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    let log: Vec<String> = rx.try_iter().collect();
    let warned = log
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(warned >= 1, "logged: {log:?}");
    assert!(
        warned <= 3,
        "logged once per episode, not per retry: {warned}"
    );
}

/// `auto` falls back to epoll and says why in one line; `uring` refuses to
/// start, with the same reason, exit 2. The probe failure is injected with
/// the documented CORELOOP_NO_URING switch.
#[test]
fn io_uring_refused_falls_back_or_fails() {
    let mut command = Command::new(BIN);
    command.env("CORELOOP_NO_URING", "test");
    let (mut child, addr, rx) = start_with(command, &["--workers", "1"]);
    assert_eq!(Client::connect(addr).get("/plaintext").status, 200);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    drop(rx);

    let child = Command::new(BIN)
        .env("CORELOOP_NO_URING", "test")
        .args([
            "--port",
            "0",
            "--backend",
            "auto",
            "--workers",
            "1",
            "--no-pin",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "io_uring unavailable (disabled by CORELOOP_NO_URING=test): falling back to epoll"
        ),
        "{log}"
    );
    assert!(log.contains("backend epoll"), "{log}");

    let refused = Command::new(BIN)
        .env("CORELOOP_NO_URING", "test")
        .args(["--port", "0", "--backend", "uring", "--no-pin"])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--backend uring: io_uring unavailable: disabled by CORELOOP_NO_URING=test"),
        "{err}"
    );
}

/// Every closed connection gives its descriptor back (io_uring closes
/// through the ring): after 200 connections come and go, the process holds
/// as many descriptors as before.
#[test]
fn closed_connections_release_their_descriptors() {
    let backends: &[&str] = if common::net::uring_available() {
        &["epoll", "uring"]
    } else {
        &["epoll"]
    };
    for backend in backends {
        let (mut child, addr, _rx) = start(&["--backend", backend, "--no-files"]);
        let fds = || {
            std::fs::read_dir(format!("/proc/{}/fd", child.id()))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let mut warm = Client::connect(addr);
        assert_eq!(warm.get("/healthz").status, 200);
        drop(warm);
        thread::sleep(Duration::from_millis(200));
        let before = fds();
        for i in 0..200 {
            let mut c = Client::connect(addr);
            if i % 2 == 0 {
                c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                assert_eq!(c.read_response().expect("response").status, 200);
                assert!(
                    c.closed_within(Duration::from_secs(5)),
                    "{backend}: not closed"
                );
            } else {
                assert_eq!(c.get("/plaintext").status, 200);
            }
        }
        let settled = common::net::eventually(Duration::from_secs(5), || fds() <= before);
        assert!(settled, "{backend}: {} descriptors, {before} before", fds());
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
        assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    }
}

/// With every core failed at start (too few descriptors for a poller),
/// the process exits 1 even with the --stats printer running.
#[test]
fn failed_cores_end_the_process_with_stats_on() {
    let mut child = Command::new("prlimit")
        .args([
            "--nofile=6:6",
            BIN,
            "--port",
            "0",
            "--no-pin",
            "--workers",
            "1",
        ])
        .args(["--backend", "epoll", "--stats", "1", "--no-files"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn under prlimit");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(1));
}

#[test]
fn doctor_reports_and_changes_nothing() {
    let out = Command::new(BIN)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.trim_start().starts_with('[') && json.trim_end().ends_with(']'),
        "{json}"
    );
    for name in [
        "\"name\": \"net.core.somaxconn\"",
        "\"name\": \"io_uring\"",
        "\"name\": \"open files limit\"",
    ] {
        assert!(json.contains(name), "{name} in {json}");
    }
    let out = Command::new(BIN)
        .args(["doctor", "--backlog", "100000000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("coreloop doctor: "), "{text}");
    assert!(
        text.contains("warn    net.core.somaxconn")
            && text.contains("change: sysctl -w net.core.somaxconn=100000000"),
        "a backlog above somaxconn is a warning with its fix: {text}"
    );
    let out = Command::new(BIN)
        .args(["doctor", "--nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad flag exits 2");
}

/// `--busy-poll` on each backend: the kernel's read-back shows in
/// /metrics, or the start fails with a message naming the flag and the
/// kernel feature (where the kernel lacks it: then nothing to check here).
#[test]
fn busy_poll_reads_back_or_is_refused_by_name() {
    for backend in ["epoll", "uring"] {
        let mut child = Command::new(BIN)
            .args([
                "--port",
                "0",
                "--workers",
                "2",
                "--no-pin",
                "--no-files",
                "--backend",
                backend,
            ])
            .args([
                "--busy-poll",
                "50",
                "--busy-poll-budget",
                "8",
                "--prefer-busy-poll",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut addr = None;
        let mut refused = None;
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(a) = line.split("listening on ").nth(1) {
                addr = Some(a.trim().parse::<SocketAddr>().expect("address"));
            }
            if line.contains("--busy-poll:") || line.contains("io_uring unavailable") {
                refused = Some(line);
                break;
            }
            if line.contains("ready: 2 workers") {
                break;
            }
        }
        if let Some(why) = refused {
            eprintln!("{backend}: busy polling refused here: {why}");
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        let mut c = Client::connect(addr.expect("started"));
        assert_eq!(c.get("/plaintext").status, 200);
        let text = String::from_utf8(c.get("/metrics").body).unwrap();
        for core in 0..2 {
            let want = format!("coreloop_busy_poll_usecs{{core=\"{core}\"}} 50");
            assert!(text.contains(&want), "{backend}: {want} in\n{text}");
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
        assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    }
}

/// Runs `f` on a thread pinned to `cpu` (the client's packets are then
/// processed on that CPU, loopback being synchronous).
fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn(move || {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).expect("cpu in range");
        nix::sched::sched_setaffinity(Pid::from_raw(0), &set).expect("pin the client");
        f()
    })
    .join()
    .expect("client thread")
}

fn per_core(text: &str, name: &str) -> Vec<u64> {
    let mut v: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}{{core=\"")))
        .map(|l| {
            let (core, rest) = l.split_once('"').unwrap();
            (
                core.parse().unwrap(),
                rest.rsplit_once(' ').unwrap().1.parse().unwrap(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// `--accept cpu`: a client pinned to the second worker's CPU has every
/// connection accepted by that worker, and each counted as arriving on its
/// CPU. `--accept single`: one listener, shared by both workers.
#[test]
fn accept_modes_steer_or_share() {
    let cpus: Vec<usize> = {
        let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    };
    if cpus.len() < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    for backend in ["epoll", "uring"] {
        let mut command = Command::new(BIN);
        command.args([
            "--workers",
            "2",
            "--port",
            "0",
            "--accept",
            "cpu",
            "--backend",
            backend,
        ]);
        let (mut child, addr, rx) = spawn(command);
        let text = on_cpu(cpus[1], move || {
            for _ in 0..20 {
                assert_eq!(Client::connect(addr).get("/plaintext").status, 200);
            }
            String::from_utf8(Client::connect(addr).get("/metrics").body).unwrap()
        });
        let accepted = per_core(&text, "coreloop_connections_accepted_total");
        let local = per_core(&text, "coreloop_connections_incoming_cpu_local_total");
        assert_eq!(
            accepted,
            vec![0, 21],
            "{backend}: all on the second core\n{text}"
        );
        assert_eq!(local, vec![0, 21], "{backend}: each arrived on its CPU");
        drop(rx);
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
        assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
    }
    // --accept single: the lines up to "ready" say one socket, two workers.
    let mut child = Command::new(BIN)
        .args([
            "--workers",
            "2",
            "--port",
            "0",
            "--no-pin",
            "--accept",
            "single",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let startup: Vec<String> = stderr
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("ready:"))
        .collect();
    assert!(
        startup
            .iter()
            .any(|l| l.contains("1 listening sockets for 2 workers")),
        "{startup:#?}"
    );
    let addr: SocketAddr = startup
        .iter()
        .find_map(|l| l.split("listening on ").nth(1))
        .expect("address")
        .trim()
        .parse()
        .expect("address");
    for _ in 0..20 {
        assert_eq!(Client::connect(addr).get("/plaintext").status, 200);
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(5)), Some(0));
}

/// `--numa` on both backends: each core's policy is read back into the
/// log, and its receive buffers sit on its CPU's node (/metrics).
#[test]
fn numa_policy_places_buffers_on_the_cores_node() {
    for backend in ["epoll", "uring"] {
        for policy in ["local", "bind", "interleave"] {
            let mut child = KillOnDrop(
                Command::new(BIN)
                    .args(["--workers", "2", "--port", "0", "--no-files"])
                    .args(["--backend", backend, "--numa", policy])
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn"),
            );
            let stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
            let mut addr = None;
            let mut read_back = Vec::new();
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on ").nth(1) {
                    addr = Some(a.trim().parse::<SocketAddr>().expect("address"));
                }
                if line.contains("memory policy") {
                    read_back.push(line);
                } else if line.contains("ready: 2 workers") {
                    break;
                }
            }
            let addr = addr.expect("started");
            assert_eq!(read_back.len(), 2, "{read_back:?}");
            let want = if policy == "local" {
                "preferred"
            } else {
                policy
            };
            for line in &read_back {
                assert!(line.contains(&format!("memory policy {want} ")), "{line}");
            }
            let mut c = Client::connect(addr);
            assert_eq!(c.get("/plaintext").status, 200);
            let text = String::from_utf8(c.get("/metrics").body).unwrap();
            let cpu_nodes = per_core(&text, "coreloop_core_numa_node");
            assert_eq!(cpu_nodes.len(), 2, "{text}");
            if policy != "interleave" {
                let memory = per_core(&text, "coreloop_core_memory_node");
                assert_eq!(
                    memory, cpu_nodes,
                    "{backend} {policy}: buffers off their node"
                );
            }
            kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("signal");
            assert_eq!(wait_exit(&mut child.0, Duration::from_secs(5)), Some(0));
        }
    }
}

/// Waits for the line saying every core has set up (and filled in its
/// start-up gauges).
fn wait_ready(rx: &mpsc::Receiver<String>) {
    while !rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ready line")
        .contains("ready: ")
    {}
}

/// A child process killed when a failed assertion unwinds past it (left
/// running, it would hold the test harness's output open).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--huge-pages` on io_uring: THP is read back from /proc/self/smaps
/// into /metrics (where the kernel has it on); hugetlb either works or is
/// refused, naming the sysctl, when too few huge pages are reserved.
#[test]
fn huge_pages_read_back_or_are_refused() {
    if !common::net::uring_available() {
        return;
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let thp_on = !thp.is_empty() && !thp.contains("[never]");
    let mut command = Command::new(BIN);
    command.args(["--workers", "2", "--port", "0", "--no-pin", "--no-files"]);
    command.args(["--backend", "uring", "--huge-pages", "thp"]);
    let (child, addr, rx) = spawn(command);
    let mut child = KillOnDrop(child);
    wait_ready(&rx);
    let mut c = Client::connect(addr);
    let text = String::from_utf8(c.get("/metrics").body).unwrap();
    let huge = per_core(&text, "coreloop_core_huge_page_bytes");
    assert_eq!(huge.len(), 2, "{text}");
    if thp_on {
        // 1024 buffers of 4 KiB: two 2 MiB pages per core.
        assert!(huge.iter().all(|&b| b == 4 << 20), "{huge:?}");
    } else {
        assert!(huge.iter().all(|&b| b == 0), "{huge:?}");
    }
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("signal");
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(5)), Some(0));

    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let args = ["--workers", "2", "--port", "0", "--no-pin", "--no-files"];
    let hugetlb = ["--backend", "uring", "--huge-pages", "hugetlb"];
    if free >= 4 {
        let mut command = Command::new(BIN);
        command.args(args).args(hugetlb);
        let (child, addr, rx) = spawn(command);
        let mut child = KillOnDrop(child);
        wait_ready(&rx);
        let text = String::from_utf8(Client::connect(addr).get("/metrics").body).unwrap();
        let huge = per_core(&text, "coreloop_core_huge_page_bytes");
        assert!(huge.iter().all(|&b| b >= 4 << 20), "{huge:?}");
        kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("signal");
        assert_eq!(wait_exit(&mut child.0, Duration::from_secs(5)), Some(0));
    } else {
        let out = Command::new(BIN)
            .args(args)
            .args(hugetlb)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("--huge-pages hugetlb") && stderr.contains("vm.nr_hugepages"),
            "{stderr}"
        );
    }
}
