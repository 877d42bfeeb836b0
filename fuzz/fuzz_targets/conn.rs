//! Coverage-guided fuzz target for the sans-IO `Conn`: random bytes cut at
//! random points, interleaved with clock jumps, timeouts, EOF, shutdown,
//! abort, short and taken sends, on the contract a backend keeps.
//!
//! Input format (so seeds stay readable): byte 0 picks the limits and the
//! ending; then a stream of operations, each an op byte `KA` (kind `K` =
//! high nibble, argument `A` = low nibble) and its operands:
//!
//! | op     | does                                                          |
//! |--------|---------------------------------------------------------------|
//! | `0A n` | feed the next `A*256+n` bytes                                 |
//! | `1A`   | feed all remaining bytes, in pieces of `2^(A&7 - 1)` (A&7 = 0:|
//! |        | one piece), flushing between pieces when `A & 8`; ends ops    |
//! | `2A n` | advance the clock by `n << A` ms, then `handle_timeout`       |
//! | `3A`   | `handle_eof`                                                  |
//! | `4A n` | `handle_shutdown`, then (as a backend does) read `A*256+n`    |
//! | `5A`   | `handle_abort` when `A == 15`, else `handle_input(&[])`       |
//! | `6A n` | send (and acknowledge) some output: `A == 0` all of           |
//! |        | `poll_transmit` (or one `poll_file` step), else `n << (A-1)`  |
//! |        | bytes; acknowledges the taken buffer first if there is one    |
//! | `7A n` | `take_transmit` (appending a small `file_behind` when `A` is  |
//! |        | odd, as io_uring does), or acknowledge part of the taken one  |
//! | `8A`   | send everything, as `Harness::flush` does                     |
//! | `9A`   | jump the clock to `poll_timeout` + `A` ms, `handle_timeout`   |
//! | `A..F` | feed the next `A+1` bytes                                     |
//!
//! Invariants checked after every operation: no panic outside handlers;
//! while not done, `poll_timeout` is set and lies after `now` (so neither a
//! connection without a deadline nor a busy timer loop); pending output
//! stays bounded; once `is_done`, it stays done and nothing more is answered
//! (a backend stops sending, and feeds input only to a closing connection,
//! to linger); once closing, no new response is queued. At the end:
//! everything still owed is sent, and the whole output must parse as
//! HTTP/1.1 responses in request order, each with the status and body its
//! handler returned (no body for HEAD), Content-Length framing, one Date and
//! Server, at most one 100 Continue before each (a body that never comes
//! leaves it unanswered), nothing after `Connection: close`, and at most one
//! extra final response, a rejection that closes. Then, at the peer's EOF
//! or by letting every deadline pass, the connection must reach `is_done`.
//!
//! Run: `cargo fuzz run --sanitizer none conn -- -dict=conn.dict` from
//! `fuzz/` (docs/TESTING.md). `CONN_FUZZ_TRACE=1` on the built binary with
//! an input file prints each operation and the output.
#![no_main]

use std::cell::Cell;
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use coreloop::http::{Conn, Ctx, DateCache, FileBody, Limits};
use coreloop::metrics::CoreStats;
use coreloop::pool::BufPool;
use coreloop::{Body, Handler, Request, Response, Router};
use libfuzzer_sys::fuzz_target;

/// Largest `/big` body, so one request cannot ask for gigabytes.
const BIG_MAX: usize = 64 * 1024;
/// Bytes of a file body sent per step (as `tests/common`).
const FILE_STEP: usize = 1000;
/// Largest file `7A` appends to a taken buffer (io_uring's small-file path).
const SMALL_FILE: u64 = 4096;
/// Statuses the engine rejects requests with (see src/http/reject.rs).
const REJECTS: [u16; 8] = [400, 408, 413, 414, 417, 431, 501, 505];

fuzz_target!(|data: &[u8]| run(data));

thread_local! {
    /// True while a handler runs: its panics are caught by `Conn`.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

/// Keeps libFuzzer's abort-on-panic hook for every panic except those of
/// handlers (the `/panic` route), which `Conn` must catch and answer 500.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_HANDLER.with(Cell::get) {
                fuzzer_hook(info);
            }
        }));
    });
}

/// The file behind `/file` and `/file0`: its bytes, and the open file.
fn file() -> &'static (Vec<u8>, Arc<std::fs::File>) {
    static FILE: OnceLock<(Vec<u8>, Arc<std::fs::File>)> = OnceLock::new();
    FILE.get_or_init(|| {
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("coreloop-fuzz-file-{}", std::process::id()));
        std::fs::write(&path, &data).expect("write the fuzz file");
        let file = std::fs::File::open(&path).expect("open the fuzz file");
        let _ = std::fs::remove_file(&path);
        (data, Arc::new(file))
    })
}

/// The bytes of a file range, from the copy kept in memory.
fn file_bytes(f: &FileBody, len: usize) -> &'static [u8] {
    let data = &file().0;
    let start = usize::try_from(f.offset()).expect("offset fits");
    assert!(
        start + len <= data.len(),
        "file range {start}+{len} past the file"
    );
    &data[start..start + len]
}

/// The routes of `tests/common::test_router`, `/big` capped, plus files.
fn router() -> Router {
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
                .unwrap_or(BIG_MAX)
                .min(BIG_MAX);
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            Response::new(200).with_body(Body::Bytes(body))
        })
        .get("/empty", |_: &Request<'_>| Response::new(204))
        .get("/file", |_: &Request<'_>| {
            let f = FileBody::new(file().1.clone(), 100, 2000);
            Response::new(200).with_body(Body::File(f))
        })
        .get("/file0", |_: &Request<'_>| {
            let f = FileBody::new(file().1.clone(), 7, 0);
            Response::new(200).with_body(Body::File(f))
        })
}

/// What one handler call returned, to check its response on the wire.
struct Expected {
    head: bool,
    status: u16,
    body: Vec<u8>,
}

/// The router, logging every call in order.
struct Recorder {
    router: Router,
    log: Vec<Expected>,
}

struct HandlerGuard;

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        IN_HANDLER.with(|f| f.set(false));
    }
}

impl Handler for Recorder {
    fn call(&mut self, req: &Request<'_>) -> Response {
        // What `Conn` answers when the handler panics.
        let panicked = Response::text(500, "internal server error");
        self.log.push(Expected {
            head: req.method() == "HEAD",
            status: 500,
            body: panicked.body().as_bytes().to_vec(),
        });
        IN_HANDLER.with(|f| f.set(true));
        let guard = HandlerGuard;
        let res = self.router.call(req);
        drop(guard);
        let last = self.log.last_mut().expect("pushed above");
        last.status = res.status();
        last.body = match res.body() {
            Body::File(f) => file_bytes(f, f.len() as usize).to_vec(),
            b => b.as_bytes().to_vec(),
        };
        res
    }
}

/// The fuzz input, read front to back; reads past its end give zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// A connection and everything its core would give it.
struct Run {
    conn: Conn,
    limits: Limits,
    date: DateCache,
    pool: BufPool,
    stats: CoreStats,
    handler: Recorder,
    now: Instant,
    /// Everything sent, in order.
    wire: Vec<u8>,
    /// A buffer from `take_transmit` (plus any file bytes appended) and how
    /// much of it was acknowledged.
    taken: Option<(Vec<u8>, usize)>,
    /// Bytes fed in total: bounds what the output may hold.
    fed: usize,
    /// `is_done` was seen: the backend has closed the socket.
    done: bool,
    /// `handle_abort` dropped whatever output was pending.
    aborted: bool,
    /// Responses counted when the connection was first seen closing.
    responses_at_close: Option<u64>,
}

fn limits_for(config: u8) -> Limits {
    match config & 3 {
        0 => Limits::default(),
        // Small everything: every limit is reachable with a few bytes.
        1 => Limits {
            max_request_line: 64,
            max_head: 256,
            max_headers: 8,
            max_body: 64,
            max_chunk_line: 8,
            max_pending_output: 512,
            head_timeout: Duration::from_millis(1500),
            body_timeout: Duration::from_millis(2500),
            idle_timeout: Duration::from_millis(3500),
            write_timeout: Duration::from_millis(4500),
        },
        // Backpressure on every response.
        2 => Limits {
            max_pending_output: 1,
            ..Limits::default()
        },
        _ => Limits {
            max_body: 1024,
            max_pending_output: 4096,
            head_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(100),
            write_timeout: Duration::from_millis(100),
            ..Limits::default()
        },
    }
}

impl Run {
    fn new(limits: Limits) -> Run {
        let now = Instant::now();
        Run {
            conn: Conn::new(now, &limits),
            limits,
            date: DateCache::new(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            pool: BufPool::new(4096, 16),
            stats: CoreStats::default(),
            handler: Recorder {
                router: router(),
                log: Vec::new(),
            },
            now,
            wire: Vec::new(),
            taken: None,
            fed: 0,
            done: false,
            aborted: false,
            responses_at_close: None,
        }
    }

    fn ctx(&mut self) -> (&mut Conn, Ctx<'_, Recorder>) {
        let ctx = Ctx {
            now: self.now,
            date: &self.date,
            limits: &self.limits,
            pool: &mut self.pool,
            stats: &self.stats,
            handler: &mut self.handler,
        };
        (&mut self.conn, ctx)
    }

    /// Feeds bytes the way a backend reads: only while the connection
    /// wants them, or to drain a closing one.
    fn feed(&mut self, data: &[u8]) {
        let closing = self.conn.is_closing();
        if self.done && !closing {
            return;
        }
        if !self.conn.wants_read() && !closing && !data.is_empty() {
            return;
        }
        self.fed += data.len();
        let (conn, mut ctx) = self.ctx();
        conn.handle_input(data, &mut ctx);
    }

    fn timeout(&mut self) {
        let (conn, mut ctx) = self.ctx();
        conn.handle_timeout(&mut ctx);
    }

    /// Reports `n` sent bytes; resumes processing when asked to.
    fn sent(&mut self, n: usize) {
        if self.conn.on_sent(n, self.now, &self.limits, &mut self.pool) {
            let (conn, mut ctx) = self.ctx();
            conn.handle_input(&[], &mut ctx);
        }
    }

    /// Acknowledges up to `want` bytes of the taken buffer.
    fn ack_taken(&mut self, want: usize) {
        let Some((buf, acked)) = self.taken.as_mut() else {
            return;
        };
        let n = want.min(buf.len() - *acked);
        self.wire.extend_from_slice(&buf[*acked..*acked + n]);
        *acked += n;
        if *acked == buf.len() {
            self.taken = None;
        }
        self.sent(n);
    }

    /// Sends up to `want` bytes, the way a backend does. Returns the bytes
    /// sent, or `None` when nothing is pending.
    fn send(&mut self, want: usize) -> Option<usize> {
        if self.done {
            return None;
        }
        if let Some((buf, acked)) = &self.taken {
            let n = want.min(buf.len() - acked);
            self.ack_taken(n);
            return Some(n);
        }
        let out = self.conn.poll_transmit();
        let n = if !out.is_empty() {
            let n = want.min(out.len());
            self.wire.extend_from_slice(&out[..n]);
            n
        } else if let Some(f) = self.conn.poll_file() {
            let n = want.min(FILE_STEP).min(f.len() as usize);
            self.wire.extend_from_slice(file_bytes(f, n));
            n
        } else {
            return None;
        };
        self.sent(n);
        Some(n)
    }

    /// Sends everything still owed.
    fn flush(&mut self) {
        for _ in 0..1_000_000 {
            if self.send(usize::MAX).is_none() {
                return;
            }
        }
        panic!("flush makes no progress");
    }

    /// The io_uring way: take the pending bytes, with a small file behind
    /// them read into the same buffer when `with_file`.
    fn take(&mut self, with_file: bool) {
        if self.done || self.taken.is_some() {
            return;
        }
        let Some(mut buf) = self.conn.take_transmit() else {
            return;
        };
        if with_file {
            if let Some(f) = self.conn.file_behind() {
                if f.len() <= SMALL_FILE {
                    buf.extend_from_slice(file_bytes(f, f.len() as usize));
                }
            }
        }
        self.taken = Some((buf, 0));
    }

    fn responses(&self) -> u64 {
        self.stats.responses.iter().map(|c| c.get()).sum()
    }

    /// Output visible to the backend: the taken buffer (which may hold the
    /// start of the file range), or the next file range, plus the bytes
    /// `poll_transmit` offers.
    fn pending_bytes(&self) -> usize {
        let first = match &self.taken {
            Some((b, acked)) => b.len() - acked,
            None => self.conn.poll_file().map_or(0, |f| f.len() as usize),
        };
        self.conn.poll_transmit().len() + first
    }

    /// The invariants that hold between any two operations.
    fn check(&mut self, op: u8) {
        let responses = self.responses();
        if let Some(before) = self.responses_at_close {
            assert_eq!(
                responses, before,
                "op {op:#04x}: a response was queued after the close decision"
            );
        } else if self.conn.is_closing() {
            self.responses_at_close = Some(responses);
        }
        if self.done {
            assert!(
                self.conn.is_done(),
                "op {op:#04x}: a done connection came back"
            );
            return;
        }
        if self.conn.is_done() {
            self.done = true;
            self.responses_at_close.get_or_insert(responses);
            return;
        }
        match self.conn.poll_timeout() {
            None => panic!("op {op:#04x}: a live connection has no deadline"),
            Some(t) => assert!(
                t > self.now,
                "op {op:#04x}: deadline {:?} not after now: the timer would spin",
                t.duration_since(self.now)
            ),
        }
        let bound = self.limits.max_pending_output + 2 * BIG_MAX + 4096 + self.fed;
        let pending = self.pending_bytes();
        assert!(
            pending <= bound,
            "op {op:#04x}: {pending} bytes pending, over {bound}"
        );
    }

    /// One operation; false once the input is used up.
    fn step(&mut self, input: &mut Input<'_>) -> bool {
        let Some(&op) = input.data.first() else {
            return false;
        };
        input.byte();
        let arg = op & 15;
        match op >> 4 {
            0x0 => {
                let n = usize::from(arg) * 256 + usize::from(input.byte());
                let data = input.take(n);
                self.feed(data);
            }
            0x1 => {
                let piece = match arg & 7 {
                    0 => usize::MAX,
                    k => 1 << (k - 1),
                };
                let rest = input.take(usize::MAX);
                for chunk in rest.chunks(piece.min(rest.len().max(1))) {
                    self.feed(chunk);
                    if arg & 8 != 0 {
                        self.flush();
                    }
                    self.check(op);
                }
            }
            0x2 => {
                let ms = u64::from(input.byte()) << arg;
                self.now += Duration::from_millis(ms);
                self.timeout();
            }
            0x3 => self.conn.handle_eof(),
            0x4 => {
                self.conn.handle_shutdown();
                let n = usize::from(arg) * 256 + usize::from(input.byte());
                let data = input.take(n);
                self.feed(data);
            }
            0x5 if arg == 15 => {
                self.conn.handle_abort();
                self.taken = None;
                self.aborted = true;
            }
            0x5 => self.feed(&[]),
            0x6 => {
                let b = input.byte();
                let want = if arg == 0 {
                    usize::MAX
                } else {
                    usize::from(b) << (arg - 1)
                };
                self.send(want);
            }
            0x7 => {
                let b = input.byte();
                if self.taken.is_some() {
                    self.ack_taken(usize::from(b) << (arg / 2));
                } else {
                    self.take(arg & 1 == 1);
                }
            }
            0x8 => self.flush(),
            0x9 => {
                if let Some(t) = self.conn.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.now += Duration::from_millis(u64::from(arg));
                self.timeout();
            }
            _ => {
                let data = input.take(usize::from(arg) + 1);
                self.feed(data);
            }
        }
        if tracing() {
            eprintln!(
                "op {op:#04x}: sent {} closing {} done {} pending {}",
                self.wire.len(),
                self.conn.is_closing(),
                self.conn.is_done(),
                self.pending_bytes()
            );
        }
        self.check(op);
        true
    }
}

/// Reads the output back: see the module comment. `whole` when nothing
/// was dropped, so every response must be there in full.
fn check_wire(wire: &[u8], log: &[Expected], whole: bool) {
    let mut rest = wire;
    let mut finals = 0;
    let mut interim = false;
    let mut closed = false;
    while !rest.is_empty() {
        assert!(!closed, "bytes after Connection: close: {:?}", show(rest));
        let prefix = &b"HTTP/1.1 "[..rest.len().min(9)];
        assert!(
            rest.starts_with(prefix),
            "not a status line: {:?}",
            show(rest)
        );
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut fields);
        let len = match res.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if !whole => return,
            other => panic!("bad response head {other:?}: {:?}", show(rest)),
        };
        assert!(
            rest[9..12].iter().all(u8::is_ascii_digit) && rest[12] == b' ',
            "status code: {:?}",
            show(rest)
        );
        let status = res.code.expect("complete head has a code");
        let count = |name: &str| {
            res.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        let value = |name: &str| {
            res.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        rest = &rest[len..];
        if (100..200).contains(&status) {
            assert_eq!(status, 100, "only 100 Continue is sent");
            assert!(!interim, "two 100 Continue for one request");
            interim = true;
            continue;
        }
        interim = false;
        assert_eq!(count("date"), 1, "{status}: Date");
        assert_eq!(count("server"), 1, "{status}: Server");
        assert_eq!(count("transfer-encoding"), 0, "{status}: Transfer-Encoding");
        let closes = value("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        let expected = log.get(finals);
        if expected.is_none() {
            assert!(
                REJECTS.contains(&status) && closes,
                "response {finals} ({status}) answers no request and is no rejection"
            );
        }
        if let Some(e) = expected {
            assert_eq!(status, e.status, "response {finals}: status");
        }
        let body_len = if status == 204 || status == 304 {
            assert_eq!(count("content-length"), 0, "{status} with Content-Length");
            0
        } else {
            assert_eq!(count("content-length"), 1, "{status}: Content-Length");
            let n: usize = value("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .expect("numeric Content-Length");
            if let Some(e) = expected {
                assert_eq!(n, e.body.len(), "response {finals}: Content-Length");
            }
            if expected.is_some_and(|e| e.head) {
                0
            } else {
                n
            }
        };
        if rest.len() < body_len {
            assert!(!whole, "body cut: want {body_len}, have {}", rest.len());
            return;
        }
        if let Some(e) = expected.filter(|e| !e.head) {
            assert!(
                rest[..body_len] == e.body[..],
                "response {finals}: body differs"
            );
        }
        rest = &rest[body_len..];
        closed = closes;
        finals += 1;
    }
    if whole {
        assert!(
            finals >= log.len(),
            "{} requests answered, {finals} responses sent",
            log.len()
        );
    }
}

/// `CONN_FUZZ_TRACE=1` prints each operation and the output, to read what
/// an input does (run the binary on the file).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("CONN_FUZZ_TRACE").is_some())
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

fn run(data: &[u8]) {
    install_panic_hook();
    let mut input = Input { data };
    let config = input.byte();
    let mut run = Run::new(limits_for(config));
    while run.step(&mut input) {}
    // Send everything still owed; the output must read back in full unless
    // the connection dropped it (abort, write or idle deadline).
    run.flush();
    let whole = run.pending_bytes() == 0 && !run.aborted;
    if tracing() {
        eprintln!(
            "output (whole: {whole}):\n{}",
            String::from_utf8_lossy(&run.wire)
        );
    }
    check_wire(&run.wire, &run.handler.log, whole);
    // Then the connection must end: at the peer's EOF, or when the peer
    // goes silent and stops reading, by its deadlines alone.
    if config & 4 == 0 {
        run.conn.handle_eof();
        run.flush();
        run.check(0x30);
    } else {
        for _ in 0..4 {
            if run.conn.is_done() {
                break;
            }
            run.now += Duration::from_secs(86_400);
            run.timeout();
            run.check(0x20);
        }
    }
    assert!(run.conn.is_done(), "the connection never ends");
}
