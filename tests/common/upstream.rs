//! A scripted upstream for proxy tests: a listener on an ephemeral port
//! whose every connection runs a script, and a log of what it saw.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the upstream saw, shared with the test.
#[derive(Default)]
pub struct Seen {
    /// Connections accepted.
    pub conns: AtomicUsize,
    /// Requests read, as (head, body).
    pub requests: Mutex<Vec<(String, Vec<u8>)>>,
    /// Connections whose peer closed while the script waited.
    pub peer_closed: AtomicUsize,
}

impl Seen {
    pub fn count(&self, method: &str) -> usize {
        let reqs = self.requests.lock().unwrap();
        reqs.iter()
            .filter(|(h, _)| h.starts_with(&format!("{method} ")))
            .count()
    }

    pub fn last_head(&self) -> String {
        let reqs = self.requests.lock().unwrap();
        reqs.last().map(|(h, _)| h.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// One accepted connection, as a script sees it.
pub struct Peer {
    pub stream: TcpStream,
    buf: Vec<u8>,
    seen: Arc<Seen>,
    /// Requests read on this connection so far.
    pub served: usize,
}

impl Peer {
    /// Reads one request (Content-Length bodies); None at EOF or error.
    pub fn request(&mut self) -> Option<(String, Vec<u8>)> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    self.served += 1;
                    let req = (head, body);
                    self.seen.requests.lock().unwrap().push(req.clone());
                    return Some(req);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    self.seen.peer_closed.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A 200 with this body and Content-Length.
    pub fn ok(&mut self, body: &str) -> io::Result<()> {
        self.send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-App: yes\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    }

    /// Waits up to `wait` for the peer to close; true if it did.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1024];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => return e.kind() == io::ErrorKind::ConnectionReset,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A running upstream; it lives as long as the test process, or until
/// `stop`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// A clone of each open connection (for `stop`), removed when its
    /// script ends, so a long test does not pile up descriptors.
    streams: Arc<Mutex<HashMap<usize, TcpStream>>>,
}

impl Upstream {
    /// Every accepted connection runs `script` on its own thread.
    pub fn start<F>(script: F) -> Upstream
    where
        F: Fn(&mut Peer) + Send + Sync + 'static,
    {
        Upstream::start_at("127.0.0.1:0".parse().unwrap(), script)
    }

    /// As `start`, on a given address (to restart one on the same port).
    pub fn start_at<F>(addr: SocketAddr, script: F) -> Upstream
    where
        F: Fn(&mut Peer) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let script = Arc::new(script);
        let shared = seen.clone();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(HashMap::new()));
        let (stop, open) = (stopped.clone(), streams.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let id = shared.conns.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    open.lock().unwrap().insert(id, clone);
                }
                let (script, seen, open) = (script.clone(), shared.clone(), open.clone());
                thread::spawn(move || {
                    let mut peer = Peer {
                        stream,
                        buf: Vec::new(),
                        seen,
                        served: 0,
                    };
                    script(&mut peer);
                    // `stop` holds a clone: dropping ours would not close.
                    let _ = peer.stream.shutdown(std::net::Shutdown::Both);
                    open.lock().unwrap().remove(&id);
                });
            }
        });
        Upstream {
            addr,
            seen,
            stopped,
            streams,
        }
    }

    /// Closes the listener and every connection, as a process exit would.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for (_, s) in self.streams.lock().unwrap().drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // The listener is dropped once the accept loop sees the flag.
        thread::sleep(Duration::from_millis(50));
    }

    /// Answers every request 200 with a small body, keeping connections.
    pub fn keep_alive() -> Upstream {
        Upstream::start(|p| {
            while let Some((head, _)) = p.request() {
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                if p.ok(&format!("hello {path}")).is_err() {
                    return;
                }
            }
        })
    }

    pub fn conns(&self) -> usize {
        self.seen.conns.load(Ordering::SeqCst)
    }
}

/// An address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads one whole response off `stream` (Content-Length, chunked, or to
/// EOF) and returns (head, decoded body). Bytes after it are dropped: use
/// `read_next` when responses are pipelined.
pub fn read_any(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    read_next(stream, &mut Vec::new())
}

/// As `read_any`, keeping bytes past the response in `buf` for the next.
pub fn read_next(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<(String, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut more = |buf: &mut Vec<u8>| -> io::Result<bool> {
        loop {
            match stream.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    let head_end = loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            break e + 4;
        }
        if !more(buf)? {
            return Err(eof());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    if let Some(len) = field("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < head_end + len {
            if !more(buf)? {
                return Err(eof());
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        return Ok((head, body));
    }
    if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut pos = head_end;
        loop {
            let Some(line_end) = find(&buf[pos..], b"\r\n") else {
                if !more(buf)? {
                    return Err(eof());
                }
                continue;
            };
            let size_text = std::str::from_utf8(&buf[pos..pos + line_end]).unwrap_or("");
            let size = usize::from_str_radix(size_text.trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            let need = pos + line_end + 2 + size + 2;
            while buf.len() < need {
                if !more(buf)? {
                    return Err(eof());
                }
            }
            body.extend_from_slice(&buf[pos + line_end + 2..pos + line_end + 2 + size]);
            pos = need;
            if size == 0 {
                buf.drain(..pos);
                return Ok((head, body));
            }
        }
    }
    while more(buf)? {}
    let body = buf[head_end..].to_vec();
    buf.clear();
    Ok((head, body))
}
