//! Zero-downtime binary upgrades under load, on the real binary.
//!
//! Load: connection-per-request churn, 100 keep-alive clients sending GETs
//! and POSTs (the POSTs go through the proxy to a fast upstream), and 20
//! slow responses in flight (proxied to an upstream that waits). During
//! it: 10 upgrades alternating two builds (told apart by `X-Build`), one
//! `--workers` change, and three bad new processes (exits before ready,
//! never ready, crashes right after receiving the sockets). Pass: no failed
//! connection, no reset, no unanswered request, every old process gone by
//! its drain deadline.
//!
//! The negative control runs the same load through the naive upgrade (the
//! new process binds its own sockets with `--share-port`, the old one gets
//! SIGTERM and closes its listeners) and must see failures: that proves
//! the load detects what the handoff avoids.
//!
//! `UPGRADE_SECS` sets the load's length (default 60); `scripts/upgrade.sh`
//! runs it for 10 minutes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::upstream::Upstream;

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");
const SHUTDOWN_TIMEOUT: u64 = 5;
const UPGRADE_TIMEOUT: u64 = 5;

/// Every line the server processes wrote to stderr (all of them share it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn follow(&self, stream: impl Read + Send + 'static) {
        let lines = self.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("UPGRADE_VERBOSE").is_some() {
                    eprintln!("{line}");
                }
                lines.lock().unwrap().push(line);
            }
        });
    }

    /// The first line (from `from` on) that contains `needle`.
    fn wait_for(&self, from: usize, needle: &str, wait: Duration) -> Option<String> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            let lines = self.0.lock().unwrap();
            if let Some(l) = lines[from.min(lines.len())..]
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            drop(lines);
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn dump(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A directory with two builds of the binary (the second has bytes
/// appended, so its hash differs), the slot the server runs from, and the
/// bad "new versions".
struct Builds {
    dir: PathBuf,
}

impl Builds {
    fn new(tag: &str) -> Builds {
        let dir =
            std::env::temp_dir().join(format!("coreloop-upgrade-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = std::fs::read(BIN).unwrap();
        std::fs::write(dir.join("build-a"), &a).unwrap();
        let mut b = a;
        b.extend_from_slice(b"\0coreloop test build b\0");
        std::fs::write(dir.join("build-b"), &b).unwrap();
        let a_path = dir.join("build-a");
        let scripts = [
            ("exits", "#!/bin/sh\nexit 3\n".to_string()),
            ("silent", "#!/bin/sh\nexec sleep 30\n".to_string()),
            ("crash", "#!/bin/sh\nkill -SEGV $$\n".to_string()),
            (
                "fewer",
                format!(
                    "#!/bin/bash\nexec -a \"$0\" {} \"$@\" --workers 1\n",
                    a_path.display()
                ),
            ),
        ];
        for (name, text) in scripts {
            std::fs::write(dir.join(name), text).unwrap();
        }
        for name in ["build-a", "build-b", "exits", "silent", "crash", "fewer"] {
            chmod_x(&dir.join(name));
        }
        let builds = Builds { dir };
        builds.install("build-a");
        builds
    }

    /// Puts `name` at the path the server was started from (a rename, as
    /// a deploy does: the running file is never written).
    fn install(&self, name: &str) {
        let tmp = self.dir.join("coreloop.tmp");
        std::fs::copy(self.dir.join(name), &tmp).unwrap();
        chmod_x(&tmp);
        std::fs::rename(&tmp, self.slot()).unwrap();
    }

    fn slot(&self) -> PathBuf {
        self.dir.join("coreloop")
    }

    /// The `X-Build` a build reports (the server hashes its own file).
    fn id(&self, name: &str) -> String {
        let bytes = std::fs::read(self.dir.join(name)).unwrap();
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("coreloop/{}+{hash:016x}", env!("CARGO_PKG_VERSION"))
    }
}

impl Drop for Builds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Outcomes of the load, shared by its threads.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    churned: AtomicU64,
    slow: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, said in words.
    why: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut why = self.why.lock().unwrap();
        if why.len() < 20 {
            why.push(what);
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
    _fast: Upstream,
    _slow: Upstream,
}

/// Reads one response: (status, whether it says `Connection: close`).
/// Content-Length bodies only (the server frames everything so here).
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            if buf.len() >= end + 4 + len {
                let status = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad status line {head:?}"))?;
                let close = head.contains("\r\nconnection: close");
                buf.drain(..end + 4 + len);
                return Ok((status, close));
            }
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {} bytes of a response", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.set_nodelay(true).unwrap();
    Ok(s)
}

impl Load {
    fn start(addr: SocketAddr, fast: Upstream, slow: Upstream) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        type Count = fn(&Tally) -> &AtomicU64;
        let churn: (&str, &[u8], Count) = (
            "churn",
            b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            |t| &t.churned,
        );
        let slow_reqs: (&str, &[u8], Count) =
            ("slow", b"GET /slow/x HTTP/1.1\r\nHost: t\r\n\r\n", |t| {
                &t.slow
            });
        let clients = std::iter::repeat_n(churn, 3).chain(std::iter::repeat_n(slow_reqs, 20));
        for (what, req, count) in clients {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || {
                one_per_connection(addr, req, &stop, &tally, what, count)
            }));
        }
        for i in 0..100 {
            let (stop, tally) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || keep_alive(i, addr, &stop, &tally)));
        }
        Load {
            stop,
            tally,
            threads,
            _fast: fast,
            _slow: slow,
        }
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally
    }
}

/// A client that sends `req` on a new connection each time and reads the
/// one response (a 200) before closing.
fn one_per_connection(
    addr: SocketAddr,
    req: &[u8],
    stop: &AtomicBool,
    tally: &Tally,
    what: &str,
    count: fn(&Tally) -> &AtomicU64,
) {
    while !stop.load(Ordering::Relaxed) {
        let result = connect(addr).and_then(|mut s| {
            s.write_all(req).map_err(|e| format!("write: {e}"))?;
            read_response(&mut s, &mut Vec::new())
        });
        match result {
            Ok((200, _)) => {
                count(tally).fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => tally.fail(format!("{what}: got {other:?}")),
            Err(e) => tally.fail(format!("{what}: {e}")),
        }
    }
}

/// A keep-alive client: GET and POST in turn, 5 ms apart; a response with
/// `Connection: close` means reconnect. A connection that closes before
/// the answer to a request sent on it is an unanswered request.
fn keep_alive(i: usize, addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let mut n = i;
    while !stop.load(Ordering::Relaxed) {
        let (s, buf) = match &mut conn {
            Some(c) => c,
            None => match connect(addr) {
                Ok(s) => conn.insert((s, Vec::new())),
                Err(e) => {
                    tally.fail(format!("keep-alive: {e}"));
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        n += 1;
        let req: &[u8] = if n % 2 == 0 {
            b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
        } else {
            b"POST /api/items HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        };
        let result = s
            .write_all(req)
            .map_err(|e| format!("write: {e}"))
            .and_then(|()| read_response(s, buf));
        match result {
            Ok((200, close)) => {
                tally.answered.fetch_add(1, Ordering::Relaxed);
                if close {
                    conn = None;
                }
            }
            Ok(other) => {
                tally.fail(format!("keep-alive: got {other:?}"));
                conn = None;
            }
            Err(e) => {
                tally.fail(format!("keep-alive (request {n}): {e}"));
                conn = None;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn upstreams() -> (Upstream, Upstream) {
    let fast = Upstream::keep_alive();
    let slow = Upstream::start(|p| {
        while p.request().is_some() {
            thread::sleep(Duration::from_millis(1500));
            if p.ok("slow").is_err() {
                return;
            }
        }
    });
    (fast, slow)
}

fn server_args(backend: &str, fast: SocketAddr, slow: SocketAddr) -> Vec<String> {
    [
        "--port",
        "0",
        "--workers",
        "2",
        "--no-pin",
        "--no-files",
        "--backend",
        backend,
        "--shutdown-timeout",
        &format!("{SHUTDOWN_TIMEOUT}s"),
        "--upgrade-timeout",
        &format!("{UPGRADE_TIMEOUT}s"),
        "--proxy",
        &format!("/api=http://{fast}"),
        "--proxy",
        &format!("/slow=http://{slow}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(path: &Path, args: &[String], logs: &Logs) -> Child {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    logs.follow(child.stderr.take().unwrap());
    child
}

/// The PID in a `coreloop[PID]: ...` line.
fn pid_of(line: &str) -> u32 {
    line.split(['[', ']']).nth(1).unwrap().parse().unwrap()
}

fn addr_of(line: &str) -> SocketAddr {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Gone, or a zombie nobody reaped yet (the exit is what counts).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn build_of(addr: SocketAddr) -> Option<String> {
    let mut s = connect(addr).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("X-Build: "))
        .map(|v| v.trim().to_string())
}

fn load_secs() -> u64 {
    std::env::var("UPGRADE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Kills every server process the test knew of when it ends, so a failed
/// assertion leaves none behind.
#[derive(Clone, Default)]
struct Reaper(Arc<Mutex<Vec<u32>>>);

impl Reaper {
    fn track(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in self.0.lock().unwrap().iter() {
            if !exited(pid) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Old processes and the time by which each must be gone.
#[derive(Default)]
struct Olds(Vec<(u32, Instant)>);

impl Olds {
    /// Old processes still running past their deadline.
    fn late(&self) -> Vec<u32> {
        let now = Instant::now();
        self.0
            .iter()
            .filter(|(pid, by)| now > *by && !exited(*pid))
            .map(|(pid, _)| *pid)
            .collect()
    }
}

fn upgrades_under_load(backend: &str) {
    let builds = Builds::new(backend);
    let (fast, slow) = upstreams();
    let args = server_args(backend, fast.addr, slow.addr);
    let logs = Logs::default();
    let mut first = start(&builds.slot(), &args, &logs);
    let ready = logs
        .wait_for(0, "ready: 2 workers accepting on", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("server did not start:\n{}", logs.dump()));
    let addr = addr_of(&ready);
    let mut current = pid_of(&ready);
    let reaper = Reaper::default();
    reaper.track(current);
    let load = Load::start(addr, fast, slow);
    let started = Instant::now();

    // Per minute of load: 10 alternating builds, one --workers change,
    // three bad processes.
    let round = [
        "build-b", "build-a", "exits", "build-b", "silent", "build-a", "fewer", "build-b", "crash",
        "build-a", "build-b", "build-a", "build-b", "build-a",
    ];
    let rounds = (load_secs() / 60).max(1) as usize;
    let steps: Vec<&str> = round
        .iter()
        .copied()
        .cycle()
        .take(round.len() * rounds)
        .collect();
    let every = Duration::from_secs(load_secs()) / (steps.len() as u32 + 1);
    let mut olds = Olds::default();
    let mut late = Vec::new();
    for (i, &step) in steps.iter().enumerate() {
        while started.elapsed() < every * (i as u32 + 1) {
            late.extend(olds.late());
            thread::sleep(Duration::from_millis(50));
        }
        builds.install(step);
        let mark = logs.len();
        signal(current, nix::sys::signal::Signal::SIGUSR2);
        let me = format!("coreloop[{current}]: ");
        let good = step.starts_with("build") || step == "fewer";
        let wait = Duration::from_secs(UPGRADE_TIMEOUT + SHUTDOWN_TIMEOUT + 5);
        if good {
            let line = logs
                .wait_for(mark, &format!("{me}info: upgrade: process"), wait)
                .unwrap_or_else(|| panic!("step {i} ({step}): no handoff:\n{}", logs.dump()));
            let new = line
                .split("process ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse().ok())
                .unwrap();
            olds.0.push((
                current,
                Instant::now() + Duration::from_secs(SHUTDOWN_TIMEOUT + 2),
            ));
            current = new;
            reaper.track(new);
            let want = builds.id(if step == "fewer" { "build-a" } else { step });
            let seen = (0..100)
                .map(|_| {
                    thread::sleep(Duration::from_millis(20));
                    build_of(addr)
                })
                .find(|b| b.as_deref() == Some(want.as_str()));
            assert!(seen.is_some(), "step {i} ({step}): {want} never answered");
        } else {
            logs.wait_for(mark, &format!("{me}error: upgrade failed"), wait)
                .unwrap_or_else(|| panic!("step {i} ({step}): no rollback:\n{}", logs.dump()));
        }
    }
    while started.elapsed() < every * (steps.len() as u32 + 1) {
        late.extend(olds.late());
        thread::sleep(Duration::from_millis(50));
    }
    let secs = started.elapsed().as_secs_f64();
    let tally = load.finish();
    // Wait out the last drains before the final check.
    thread::sleep(Duration::from_secs(SHUTDOWN_TIMEOUT + 2));
    late.extend(olds.late());
    late.sort_unstable();
    late.dedup();
    signal(current, nix::sys::signal::Signal::SIGTERM);
    let _ = first.wait();
    let gone = (0..200).any(|_| {
        thread::sleep(Duration::from_millis(50));
        exited(current)
    });

    let churned = tally.churned.load(Ordering::SeqCst);
    eprintln!(
        "{backend}: {secs:.0} s, {} upgrades: churn {churned} connections ({:.0}/s), \
         keep-alive {} answered, slow {} answered, {} failed",
        steps.len(),
        churned as f64 / secs,
        tally.answered.load(Ordering::SeqCst),
        tally.slow.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    let why = tally.why.lock().unwrap().clone();
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0, "failures: {why:#?}");
    assert!(
        late.is_empty(),
        "old processes outlived their drain deadline: {late:?}"
    );
    assert!(gone, "the last process did not exit on SIGTERM");
    assert!(
        tally.slow.load(Ordering::SeqCst) > 0,
        "no slow response completed"
    );
    let rollbacks = logs.dump().matches("upgrade failed, still serving").count();
    assert_eq!(rollbacks, 3 * rounds, "one rollback per bad process");
}

/// The naive upgrade: a new process binds its own sockets beside the old
/// ones (`--share-port`), then the old one gets SIGTERM. Must lose some.
fn naive_upgrades_lose_requests(backend: &str) {
    let builds = Builds::new(&format!("naive-{backend}"));
    let (fast, slow) = upstreams();
    let mut args = server_args(backend, fast.addr, slow.addr);
    let logs = Logs::default();
    let mut children = vec![start(&builds.slot(), &args, &logs)];
    let ready = logs
        .wait_for(0, "ready: 2 workers accepting on", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("server did not start:\n{}", logs.dump()));
    let addr = addr_of(&ready);
    let port = addr.port().to_string();
    args[1] = port;
    args.push("--share-port".into());
    let load = Load::start(addr, fast, slow);
    let mut failed = 0;
    let mut stopped = Vec::new();
    for round in 0..8 {
        thread::sleep(Duration::from_secs(2));
        let mark = logs.len();
        children.push(start(&builds.slot(), &args, &logs));
        logs.wait_for(mark, "ready: 2 workers", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("round {round}: new server did not start"));
        let old = children.remove(0);
        signal(old.id(), nix::sys::signal::Signal::SIGTERM);
        stopped.push(old);
        thread::sleep(Duration::from_secs(2));
        failed = load.tally.failed.load(Ordering::SeqCst);
        if failed > 0 && round >= 1 {
            break;
        }
    }
    let tally = load.finish();
    for c in &children {
        signal(c.id(), nix::sys::signal::Signal::SIGTERM);
    }
    for mut c in children.into_iter().chain(stopped) {
        let _ = c.wait();
    }
    eprintln!(
        "{backend} naive: {failed} failed, e.g. {:?}",
        tally.why.lock().unwrap().first()
    );
    assert!(
        failed > 0,
        "the naive upgrade lost nothing: this load cannot tell a good handoff from a bad one"
    );
}

/// Both backends, or the one `UPGRADE_BACKEND` names.
fn backends() -> Vec<&'static str> {
    let only = std::env::var("UPGRADE_BACKEND").unwrap_or_default();
    let mut b = Vec::new();
    if only.is_empty() || only == "epoll" {
        b.push("epoll");
    }
    if (only.is_empty() || only == "uring") && common::net::uring_available() {
        b.push("uring");
    }
    b
}

/// The two tests each load both CPUs: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn upgrades_lose_nothing_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for backend in backends() {
        upgrades_under_load(backend);
    }
}

#[test]
fn negative_control_naive_upgrade_loses_requests() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for backend in backends() {
        naive_upgrades_lose_requests(backend);
    }
}

fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = connect(addr).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    read_response(&mut s, &mut Vec::new())
        .ok()
        .map(|(status, _)| status)
}

/// `--config FILE`: SIGHUP starts a new process that reads the file again;
/// a bad file is refused (the new process exits naming the line) and the
/// old process keeps serving.
#[test]
fn sighup_rereads_the_config_file() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let builds = Builds::new("hup");
    let file = builds.dir.join("coreloop.toml");
    let write = |metrics: &str, extra: &str| {
        let text = format!(
            "# coreloop\nport = 0\nworkers = 1\nno-pin = true\nno-files = true\n\
             metrics-path = \"{metrics}\"\n{extra}"
        );
        std::fs::write(&file, text).unwrap();
    };
    write("/m1", "");
    let logs = Logs::default();
    let args = vec!["--config".to_string(), file.display().to_string()];
    let mut first = start(&builds.slot(), &args, &logs);
    let ready = logs
        .wait_for(0, "ready: 1 workers accepting on", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("server did not start:\n{}", logs.dump()));
    let (addr, old) = (addr_of(&ready), pid_of(&ready));
    let reaper = Reaper::default();
    reaper.track(old);
    assert_eq!(get_status(addr, "/m1"), Some(200));

    // An idle keep-alive connection keeps the old process draining for a
    // moment (HANDOFF_IDLE), long enough for a SIGTERM to land in it.
    let mut idle = connect(addr).unwrap();
    idle.write_all(b"GET /m1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut idle, &mut Vec::new()).map(|r| r.0),
        Ok(200)
    );
    write("/m2", "");
    let mark = logs.len();
    signal(old, nix::sys::signal::Signal::SIGHUP);
    let line = logs
        .wait_for(
            mark,
            &format!("coreloop[{old}]: info: upgrade: process"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no handoff on SIGHUP:\n{}", logs.dump()));
    let new: u32 = line
        .split("process ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    reaper.track(new);
    // SIGTERM during the handoff drain asks for what is under way: the old
    // process still drains and exits 0 (a second signal would cut it short).
    signal(old, nix::sys::signal::Signal::SIGTERM);
    assert!(
        first.wait().unwrap().success(),
        "the old process drains and exits 0"
    );
    drop(idle);
    assert_eq!(
        get_status(addr, "/m2"),
        Some(200),
        "the new file is in force"
    );
    assert_eq!(get_status(addr, "/m1"), Some(404));

    write("/m3", "nonsense = 1\n");
    let mark = logs.len();
    signal(new, nix::sys::signal::Signal::SIGHUP);
    logs.wait_for(
        mark,
        &format!("coreloop[{new}]: error: upgrade failed"),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| panic!("a bad file was not refused:\n{}", logs.dump()));
    assert!(
        logs.wait_for(
            mark,
            "coreloop.toml:7: nonsense: unknown key",
            Duration::from_secs(1)
        )
        .is_some(),
        "the error names the line and key:\n{}",
        logs.dump()
    );
    assert_eq!(
        get_status(addr, "/m2"),
        Some(200),
        "the old configuration still serves"
    );
    signal(new, nix::sys::signal::Signal::SIGTERM);
    assert!((0..200).any(|_| {
        thread::sleep(Duration::from_millis(25));
        exited(new)
    }));
}
