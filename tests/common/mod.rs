//! Drives a `Conn` in memory on a fixed clock, and reads its output back as
//! responses. Shared by the engine tests.
#![allow(dead_code)]

pub mod net;
pub mod upstream;

use std::time::{Duration, Instant, UNIX_EPOCH};

use coreloop::http::{Conn, Ctx, DateCache, FileBody, Limits};
use coreloop::metrics::CoreStats;
use coreloop::pool::BufPool;
use coreloop::{Body, Request, Response, Router};

/// A connection with everything a core would give it.
pub struct Harness {
    pub conn: Conn,
    pub limits: Limits,
    pub date: DateCache,
    pub pool: BufPool,
    pub stats: CoreStats,
    pub router: Router,
    pub now: Instant,
    /// Everything the connection asked to send, in order.
    pub wire: Vec<u8>,
}

/// Bytes of a file body the harness "sends" per step: small, so file
/// bodies take several steps like they do over a socket.
pub const FILE_STEP: u64 = 1000;

/// Appends the next step of `file`'s range to `wire`; returns its length.
pub fn read_file_step(file: &FileBody, wire: &mut Vec<u8>) -> usize {
    use std::os::unix::fs::FileExt;
    let len = file.len().min(FILE_STEP) as usize;
    let mut buf = vec![0; len];
    file.file()
        .read_exact_at(&mut buf, file.offset())
        .expect("read file body");
    wire.extend_from_slice(&buf);
    len
}

/// Runs each listed test once per backend this machine supports.
/// io_uring cases are skipped, saying so, where the kernel refuses it.
#[allow(unused_macros)]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod epoll {
            $( #[test] fn $name() { super::$name(coreloop::Backend::Epoll) } )*
        }
        mod uring {
            $( #[test] fn $name() {
                if common::net::uring_available() {
                    super::$name(coreloop::Backend::Uring)
                }
            } )*
            use super::common;
        }
    };
}

/// The router the tests use: the built-ins plus a few probes.
pub fn test_router() -> Router {
    Router::builtins()
        .post("/echo", |r: &Request<'_>| {
            Response::new(200)
                .with_content_type("application/octet-stream")
                .with_body(Body::Bytes(r.body().to_vec()))
        })
        .route("PUT", "/echo", |r: &Request<'_>| {
            Response::new(201).with_body(Body::Bytes(r.body().to_vec()))
        })
        .get("/target", |r: &Request<'_>| {
            let text = format!("{}|{}|{}", r.path(), r.query().unwrap_or("-"), r.target());
            Response::new(200).with_body(Body::Bytes(text.into_bytes()))
        })
        .get("/panic", |_: &Request<'_>| -> Response {
            panic!("handler bug")
        })
        .get("/bye", |_: &Request<'_>| {
            Response::ok("text/plain", b"bye").with_close()
        })
        .route("BREW", "/pot", |_: &Request<'_>| Response::new(418))
        .get("/big", |r: &Request<'_>| {
            let size = r
                .query()
                .and_then(|q| q.parse::<usize>().ok())
                .unwrap_or(1 << 20);
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            Response::new(200).with_body(Body::Bytes(body))
        })
        .get("/empty", |_: &Request<'_>| Response::new(204))
        .prefix(None, "/fwd", |_: &Request<'_>| Response::forward(0))
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Harness {
        let now = Instant::now();
        Harness {
            conn: Conn::new(now, &limits),
            date: DateCache::new(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            limits,
            pool: BufPool::new(4096, 16),
            stats: CoreStats::default(),
            router: test_router(),
            now,
            wire: Vec::new(),
        }
    }

    /// The connection and a context over the harness's core state.
    pub fn split(&mut self) -> (&mut Conn, Ctx<'_, Router>) {
        let ctx = Ctx {
            now: self.now,
            date: &self.date,
            limits: &self.limits,
            pool: &mut self.pool,
            stats: &self.stats,
            handler: &mut self.router,
            log: None,
        };
        (&mut self.conn, ctx)
    }

    /// Feeds `data` without sending anything.
    pub fn input(&mut self, data: &[u8]) {
        let (conn, mut ctx) = self.split();
        conn.handle_input(data, &mut ctx);
    }

    /// Acknowledges `n` sent bytes; true when processing should resume.
    pub fn ack(&mut self, n: usize) -> bool {
        self.conn.on_sent(n, self.now, &self.limits, &mut self.pool)
    }

    /// Feeds `data` and collects (and acknowledges) whatever is to be sent.
    pub fn feed(&mut self, data: &[u8]) {
        self.input(data);
        self.flush();
    }

    /// Sends all pending output, resuming request processing when asked.
    /// File bodies are read the way a backend sends them: from the
    /// range `poll_file` names, at most `FILE_STEP` bytes per step.
    pub fn flush(&mut self) {
        loop {
            let out = self.conn.poll_transmit();
            let n = if !out.is_empty() {
                self.wire.extend_from_slice(out);
                out.len()
            } else if let Some(file) = self.conn.poll_file() {
                read_file_step(file, &mut self.wire)
            } else {
                return;
            };
            if self.ack(n) {
                self.input(&[]);
            }
        }
    }

    /// Moves the clock and fires due deadlines, without sending.
    pub fn expire(&mut self, by: Duration) {
        self.now += by;
        let (conn, mut ctx) = self.split();
        conn.handle_timeout(&mut ctx);
    }

    /// Moves the clock, fires due deadlines and sends what they produced.
    pub fn advance(&mut self, by: Duration) {
        self.expire(by);
        self.flush();
    }

    pub fn responses(&self) -> Vec<Parsed> {
        parse_responses(&self.wire).expect("server output is well framed")
    }
}

/// One response read back from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads a response head (status line and fields, no body) at the start of
/// `buf`: `Ok(None)` while it is incomplete, else the response and the
/// head's length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Parsed, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad head {e}: {:?}", String::from_utf8_lossy(buf))),
    };
    let headers = res
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let status = res.code.ok_or("no status")?;
    Ok(Some((
        Parsed {
            status,
            headers,
            body: Vec::new(),
        },
        len,
    )))
}

/// Splits server output into responses, checking the framing of each:
/// exactly one Content-Length except on 1xx/204/304, Date and Server on
/// every final response, and no bytes left over. `head_requests` is not
/// needed: HEAD responses are recognised by the test that sends them.
pub fn parse_responses(mut wire: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let Some((mut parsed, len)) = parse_head(wire)? else {
            return Err(format!(
                "truncated head: {:?}",
                String::from_utf8_lossy(wire)
            ));
        };
        let status = parsed.status;
        wire = &wire[len..];
        if (100..200).contains(&status) {
            continue;
        }
        if parsed.count("date") != 1 || parsed.count("server") != 1 {
            return Err(format!("{status}: Date/Server missing or repeated"));
        }
        if parsed.count("transfer-encoding") != 0 {
            return Err("Transfer-Encoding in a response".into());
        }
        let lengths = parsed.count("content-length");
        let bodiless = status == 204 || status == 304;
        if bodiless {
            if lengths != 0 {
                return Err(format!("{status} with Content-Length"));
            }
        } else {
            if lengths != 1 {
                return Err(format!("{status} with {lengths} Content-Length fields"));
            }
            let n: usize = parsed
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .ok_or("bad Content-Length")?;
            if wire.len() < n {
                return Err(format!("body cut: want {n}, have {}", wire.len()));
            }
            parsed.body = wire[..n].to_vec();
            wire = &wire[n..];
        }
        out.push(parsed);
    }
    Ok(out)
}

/// A small deterministic generator for split points (no extra crate).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

/// Feeds `raw` to a fresh harness cut at the given lengths.
pub fn run_split(raw: &[u8], cuts: &[usize], limits: &Limits) -> Harness {
    let mut h = Harness::with_limits(limits.clone());
    let mut pos = 0;
    for &len in cuts {
        let end = (pos + len).min(raw.len());
        h.feed(&raw[pos..end]);
        pos = end;
    }
    if pos < raw.len() {
        h.feed(&raw[pos..]);
    }
    h
}

/// What a run ended with: the final responses and the close decision.
pub fn outcome(h: &Harness) -> (Vec<Parsed>, bool) {
    (h.responses(), h.conn.is_closing())
}
