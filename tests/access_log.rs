//! `--access-log` on the built binary, once per backend: a line per
//! response (combined and JSON, proxied replies and rejections too), the
//! file reopened on SIGUSR1 (logrotate), and a full disk that drops lines
//! (counted in /metrics) while every request is still answered.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::net::eventually;
use common::upstream::Upstream;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");

fn backends() -> Vec<&'static str> {
    let mut b = vec!["epoll"];
    if common::net::uring_available() {
        b.push("uring");
    }
    b
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("coreloop-access-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the binary; returns it and its address.
fn start(backend: &str, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--port", "0", "--workers", "1", "--no-pin", "--no-files"])
        .args(["--backend", backend])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("a startup line").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// Sends `raw` on a new connection and reads until the server closes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(3), || lines(path).len() >= n);
    lines(path)
}

fn stop(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_line_per_response_and_sigusr1_reopens() {
    for backend in backends() {
        let d = dir(backend);
        let log = d.join("access.log");
        let (child, addr) = start(backend, &["--access-log", log.to_str().unwrap()]);
        let r = exchange(
            addr,
            b"GET /plaintext?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: t/1 \"q\"\r\n\
              Referer: http://r/\r\n\r\nHEAD /plaintext HTTP/1.0\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(
            addr,
            b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, b"BAD\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let got = wait_lines(&log, 4);
        assert_eq!(got.len(), 4, "{got:#?}");
        let first = &got[0];
        assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
        assert!(
            first.contains(
                "+0000] \"GET /plaintext?x=1 HTTP/1.1\" 200 13 \"http://r/\" \"t/1 \\x22q\\x22\" 0."
            ),
            "{first}"
        );
        assert!(first.ends_with(" 0"), "core 0: {first}");
        assert!(
            got[1].contains("\"HEAD /plaintext HTTP/1.0\" 200 0 \"-\" \"-\""),
            "{}",
            got[1]
        );
        assert!(got[2].contains("\"GET /nope HTTP/1.1\" 404 "), "{}", got[2]);
        assert!(got[3].contains("\"-\" 400 "), "{}", got[3]);

        // logrotate: move the file, SIGUSR1, and the next line goes to a
        // new file at the old path.
        let rotated = d.join("access.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGUSR1).unwrap();
        assert!(eventually(Duration::from_secs(3), || {
            exchange(
                addr,
                b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            !lines(&log).is_empty()
        }));
        assert!(lines(&log)[0].contains("\"GET /json HTTP/1.1\" 200 27 "));
        // Requests made before the reopen took effect went to the old file.
        assert!(lines(&rotated).len() >= 4);
        // A line written just before SIGTERM is in the file once the
        // process has exited (the writer drains before the exit).
        exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        stop(child);
        let after = lines(&log);
        let last = after.last().cloned().unwrap_or_default();
        assert!(
            last.contains("\"GET /healthz HTTP/1.1\" 200 3 "),
            "{after:#?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn json_lines_for_proxied_replies() {
    for backend in backends() {
        let up = Upstream::keep_alive();
        let d = dir(&format!("json-{backend}"));
        let log = d.join("access.json");
        let route = format!("/up=http://{}", up.addr);
        let dead = format!("/dead=http://{}", common::upstream::closed_port());
        let (child, addr) = start(
            backend,
            &[
                "--access-log",
                log.to_str().unwrap(),
                "--access-log-format",
                "json",
                "--proxy",
                &route,
                "--proxy",
                &dead,
            ],
        );
        let r = exchange(
            addr,
            b"GET /up/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(
            addr,
            b"GET /dead/y HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 502"), "{r}");
        let got = wait_lines(&log, 2);
        assert_eq!(got.len(), 2, "{got:#?}");
        for (line, want) in got.iter().zip([
            "\"method\":\"GET\",\"target\":\"/up/x\",\"status\":200,\"bytes\":11,",
            "\"method\":\"GET\",\"target\":\"/dead/y\",\"status\":502,",
        ]) {
            assert!(line.starts_with("{\"time\":\""), "{line}");
            assert!(line.contains("\"client\":\"127.0.0.1\""), "{line}");
            assert!(line.contains(want), "{want} in {line}");
            assert!(line.ends_with(",\"core\":0}"), "{line}");
        }
        stop(child);
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_full_disk_drops_lines_and_every_request_is_answered() {
    for backend in backends() {
        let (child, addr) = start(backend, &["--access-log", "/dev/full"]);
        for _ in 0..50 {
            let r = exchange(
                addr,
                b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        let dropped = || {
            let m = exchange(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            m.lines()
                .find_map(|l| l.strip_prefix("coreloop_access_log_dropped_lines_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(
            eventually(Duration::from_secs(3), || dropped() >= 50),
            "dropped {}",
            dropped()
        );
        stop(child);
    }
}
