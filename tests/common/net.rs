//! Real servers on 127.0.0.1 (ephemeral ports) and a small blocking client.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use coreloop::http::Limits;
use coreloop::metrics::CoreStats;
use coreloop::server::{Error, Report};
use coreloop::{Backend, Config, Handler, Server, Shutdown};
use crossbeam_utils::CachePadded;

use super::Parsed;

/// Whether this kernel lets us run the io_uring backend; prints why not.
pub fn uring_available() -> bool {
    match coreloop::io::uring::probe(&Config::default()) {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("skipping io_uring case: {reason}");
            false
        }
    }
}

/// What a handler factory may need from the bound server.
pub struct BoundInfo {
    pub stats: Vec<Arc<CachePadded<CoreStats>>>,
    pub backend: Backend,
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub stats: Vec<Arc<CachePadded<CoreStats>>>,
    thread: Option<JoinHandle<Result<Report, Error>>>,
}

/// Test defaults: two unpinned workers on an ephemeral port, no signal
/// handlers (the test process owns its signals).
pub fn config(backend: Backend) -> Config {
    Config {
        port: 0,
        workers: Some(2),
        pin: false,
        backend,
        handle_signals: false,
        limits: Limits::default(),
        linger_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        TestServer::start_with(config, |_core, _bound| super::test_router())
    }

    /// A server whose cores run `factory(core, &bound)`'s handler; `bound`
    /// gives the factory the stats and backend (as the binary's site uses).
    pub fn start_with<F, H>(config: Config, factory: F) -> TestServer
    where
        F: Fn(usize, &BoundInfo) -> H + Send + Sync + 'static,
        H: Handler + 'static,
    {
        let bound = Server::new(config).bind().expect("bind");
        let addr = bound.local_addr();
        let shutdown = bound.shutdown_handle();
        let stats = bound.stats();
        let info = BoundInfo {
            stats: stats.clone(),
            backend: bound.backend(),
        };
        let thread = thread::spawn(move || bound.serve(move |core| factory(core, &info)));
        TestServer {
            addr,
            shutdown,
            stats,
            thread: Some(thread),
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Triggers shutdown and waits for the report.
    pub fn stop(mut self) -> Report {
        self.shutdown.trigger();
        let thread = self.thread.take().expect("running");
        thread.join().expect("serve thread").expect("serve result")
    }

    pub fn total(&self, f: impl Fn(&CoreStats) -> u64) -> u64 {
        self.stats.iter().map(|s| f(s)).sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.trigger();
            let _ = thread.join();
        }
    }
}

/// A blocking HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn get(&mut self, path: &str) -> Parsed {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response().expect("response")
    }

    /// Reads one response (Content-Length framed; no body for 204/304).
    pub fn read_response(&mut self) -> io::Result<Parsed> {
        loop {
            if let Some((parsed, used)) = try_parse(&self.buf)? {
                self.buf.drain(..used);
                if (100..200).contains(&parsed.status) {
                    continue;
                }
                return Ok(parsed);
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("eof after {} bytes", self.buf.len()),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one response head and no body (the answer to HEAD).
    pub fn read_head(&mut self) -> io::Result<Parsed> {
        loop {
            let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
            if let Some((parsed, used)) = super::parse_head(&self.buf).map_err(invalid)? {
                self.buf.drain(..used);
                return Ok(parsed);
            }
            let mut chunk = [0u8; 4096];
            let n = match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True if the server closed the connection (EOF or reset) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 4096];
        let deadline = Instant::now() + wait;
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
            if Instant::now() > deadline {
                return false;
            }
        }
    }
}

fn try_parse(buf: &[u8]) -> io::Result<Option<(Parsed, usize)>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let Some((mut parsed, len)) = super::parse_head(buf).map_err(invalid)? else {
        return Ok(None);
    };
    let status = parsed.status;
    let body_len = if (100..200).contains(&status) || status == 204 || status == 304 {
        0
    } else {
        parsed
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| invalid("no Content-Length".into()))?
    };
    if buf.len() < len + body_len {
        return Ok(None);
    }
    parsed.body = buf[len..len + body_len].to_vec();
    Ok(Some((parsed, len + body_len)))
}

/// Polls `cond` until true or `wait` passes.
pub fn eventually(wait: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits up to `within` for a child process to exit and returns its exit
/// code; kills it and returns `None` when it is still running.
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}
