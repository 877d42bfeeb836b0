//! The sans-IO HTTP/1.1 connection: bytes in, bytes out, a close decision.
//!
//! `Conn` never touches a socket or a clock. Its methods fall in four
//! families, as in quinn-proto:
//! - `handle_*`: input from the network (`handle_input`, `handle_eof`), the
//!   clock (`handle_timeout`) or the process (`handle_shutdown`);
//! - `on_sent`: the backend reports how many output bytes left;
//! - `poll_*`: what the backend must do next (`poll_transmit`: bytes to send;
//!   `poll_file`: a file range to send when no bytes come before it;
//!   `poll_timeout`: the next deadline);
//! - getters: `wants_read`, `is_done`, `is_idle`.
//!
//! After any `handle_*` or `on_sent` call the backend sends `poll_transmit`,
//! re-arms its timer from `poll_timeout`, and closes the socket once
//! `is_done` (after a lingering read, so the last response is not reset).
//! `now` must never go backwards.
//!
//! Requests are processed straight from the caller's slice when it holds
//! whole requests; only an incomplete tail is copied into the connection's
//! own buffer, which comes from the per-core pool and goes back when empty.

use std::collections::VecDeque;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::body::Chunked;
use super::date::DateCache;
use super::fetch::{FetchError, Reply, Then};
use super::forward::{write_fetch, write_request, Outgoing};
use super::limits::Limits;
use super::parse::{find_head_end, parse_head, Found, Framing, Head, Scan};
use super::proxy_header;
use super::reject::Reject;
use super::reply::{ReplyFraming, ReplyHead};
use super::request::Request;
use super::response::{reason, sends_body, write_response, Body, FileBody, Persist, Response};
use crate::access_log::{Entry, Sink};
use crate::handler::Handler;
use crate::metrics::{CoreStats, Deadline};
use crate::pool::BufPool;

/// What every `Conn` call may need from its core: the time of this loop
/// turn, the cached date, the limits, the buffer pool, the counters and the
/// core's handler.
pub struct Ctx<'a, H: Handler + ?Sized> {
    /// The time this loop turn started.
    pub now: Instant,
    /// The `Date` header value for this second.
    pub date: &'a DateCache,
    /// Limits and deadlines.
    pub limits: &'a Limits,
    /// The core's buffer pool.
    pub pool: &'a mut BufPool,
    /// The core's counters.
    pub stats: &'a CoreStats,
    /// The core's handler.
    pub handler: &'a mut H,
    /// The core's access-log buffer, when the log is on.
    pub log: Option<&'a mut Sink>,
}

impl<H: Handler + ?Sized> std::fmt::Debug for Ctx<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the PROXY protocol header that opens the connection.
    Proxy,
    /// Reading a request head (or waiting for one).
    Head,
    /// Head parsed; waiting for a Content-Length body of this size.
    Length(usize),
    /// Head parsed; decoding a chunked body.
    Chunked,
    /// No more requests: finish sending, then close.
    Closing,
    /// Close now; pending output is dropped.
    Closed,
}

/// 100 Continue, sent when a client waits for it before sending a body.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Output queued ahead of `Conn::out`: what precedes a file body, and the
/// file body itself.
#[derive(Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    File(FileBody),
}

/// What a connection needs only while a request is in progress: the
/// parsed head (with its field spans) and the body decoder. An idle
/// connection holds none; the core's pool lends one for each call that
/// parses a head (`BufPool::take_exchange`), and it stays with the
/// connection only while a body is still arriving.
#[derive(Debug, Default)]
pub struct Exchange {
    head: Head,
    /// In `Chunked`: offset in the request where undecoded body bytes start.
    body_pos: usize,
    chunked: Chunked,
    decoded: Vec<u8>,
}

impl Exchange {
    /// Ready for the next request; a decoded body larger than `keep`
    /// bytes gives its memory back.
    pub fn reset(&mut self, keep: usize) {
        self.body_pos = 0;
        self.chunked = Chunked::default();
        self.decoded.clear();
        if self.decoded.capacity() > keep {
            self.decoded = Vec::new();
        }
    }
}

/// A response that completes later (`Response::forward`): the request for
/// the upstream until the backend takes it, then the reply's progress.
#[derive(Debug)]
struct Awaiting {
    /// The backend's handle for the upstream exchange.
    token: u64,
    outgoing: Option<Outgoing>,
    minor: u8,
    is_head: bool,
    /// Close after the reply (the client asked, or the server drains).
    close: bool,
    /// Set once the reply head is written: how the body is framed.
    body: Option<ToClient>,
    /// A handler's own call: the reply goes to its closure, not the wire.
    call: Option<Box<Call>>,
    /// The request's access-log fields, kept until the reply's status is
    /// known (only while the log is on).
    log: Option<Box<PendingLog>>,
}

/// What the access log needs of a request whose response comes later.
#[derive(Debug)]
struct PendingLog {
    method: String,
    target: Vec<u8>,
    minor: u8,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    since: Instant,
}

impl PendingLog {
    fn new(request: &Request<'_>, now: Instant) -> PendingLog {
        PendingLog {
            method: request.method().to_string(),
            target: request.target().as_bytes().to_vec(),
            minor: request.minor_version(),
            referer: request.header("referer").map(<[u8]>::to_vec),
            user_agent: request.header("user-agent").map(<[u8]>::to_vec),
            since: now,
        }
    }

    fn record(
        &self,
        log: &mut Sink,
        client: Option<IpAddr>,
        status: u16,
        bytes: Option<u64>,
        now: Instant,
    ) {
        log.record(
            &Entry {
                client,
                method: &self.method,
                target: &self.target,
                minor: self.minor,
                status,
                bytes,
                duration: now.saturating_duration_since(self.since),
                referer: self.referer.as_deref(),
                user_agent: self.user_agent.as_deref(),
            },
            now,
        );
    }
}

/// A handler's upstream call (`Fetch::then`): the reply is gathered here,
/// then handed to the closure.
struct Call {
    then: Then,
    status: u16,
    fields: Vec<u8>,
    body: Vec<u8>,
    /// The body outgrew `Limits::max_body`: the closure gets an error.
    too_large: bool,
}

impl Call {
    fn new(then: Then) -> Box<Call> {
        Box::new(Call {
            then,
            status: 0,
            fields: Vec::new(),
            body: Vec::new(),
            too_large: false,
        })
    }

    fn reply(&mut self) -> Result<Reply, FetchError> {
        if self.too_large {
            return Err(FetchError {
                status: 502,
                message: "upstream reply larger than the body limit".into(),
            });
        }
        let headers = self
            .fields
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r")?;
                let colon = line.iter().position(|&b| b == b':')?;
                let name = String::from_utf8_lossy(&line[..colon]).into_owned();
                let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned();
                Some((name, value))
            })
            .collect();
        Ok(Reply {
            status: self.status,
            headers,
            body: mem::take(&mut self.body),
        })
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// How a streamed reply body is framed toward the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ToClient {
    /// No body, or the upstream's Content-Length: bytes pass as they are.
    Plain,
    /// Re-chunked: the length is unknown and the client speaks HTTP/1.1.
    Chunked,
}

/// One HTTP/1.1 connection's protocol state.
#[derive(Debug)]
pub struct Conn {
    phase: Phase,
    /// Bytes of the current request that arrived in earlier calls. Starts
    /// at the request's first byte.
    input: Vec<u8>,
    /// Output that goes before `out`; empty unless a file body is queued,
    /// so the in-memory path never touches it.
    queue: VecDeque<Chunk>,
    /// Bytes (file bytes included) in `queue`.
    queued: u64,
    /// Responses not yet sent, after `queue`. `sent` counts what went out
    /// of the first byte chunk: the front of `queue`, else `out`.
    out: Vec<u8>,
    sent: usize,
    /// Bytes moved out by `take_transmit` and not yet acknowledged.
    in_flight: usize,
    scan: Scan,
    /// Lent by the pool while a request body is still arriving.
    exchange: Option<Box<Exchange>>,
    /// A response that completes later; requests behind it wait.
    awaiting: Option<Box<Awaiting>>,
    draining: bool,
    /// Draining for a handoff: an idle connection waits for its next
    /// request until its (shortened) idle or head deadline.
    handing_off: bool,
    /// Bytes were dropped or may still come after the close decision:
    /// the backend must drain them before closing (see `lingers`).
    linger: bool,
    /// The peer sent EOF.
    peer_done: bool,
    max_pending: usize,
    deadlines: [Option<Instant>; 4],
    /// The client a PROXY header named (boxed: most connections have none,
    /// and it keeps `Conn` one word larger, not four).
    client: Option<Box<SocketAddr>>,
}

impl Conn {
    /// A connection accepted at `now`. The head deadline runs from accept.
    pub fn new(now: Instant, limits: &Limits) -> Conn {
        let mut conn = Conn {
            phase: Phase::Head,
            input: Vec::new(),
            queue: VecDeque::new(),
            queued: 0,
            out: Vec::new(),
            sent: 0,
            in_flight: 0,
            scan: Scan::default(),
            exchange: None,
            awaiting: None,
            draining: false,
            handing_off: false,
            linger: false,
            peer_done: false,
            max_pending: limits.max_pending_output,
            deadlines: [None; 4],
            client: None,
        };
        conn.deadlines[Deadline::Head as usize] = Some(now + limits.head_timeout);
        conn
    }

    /// The connection must open with a PROXY protocol header (v1 or v2);
    /// anything else closes it, without a response. Call before any input.
    pub fn expect_proxy_header(&mut self) {
        if self.phase == Phase::Head {
            self.phase = Phase::Proxy;
        }
    }

    /// The client's address from the PROXY header, if one named it (the
    /// socket's peer is then the balancer), or the peer given `set_peer`.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client.as_deref().copied()
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client.as_deref().map(SocketAddr::ip)
    }

    /// The socket's peer, for the access log (a PROXY header replaces it).
    pub fn set_peer(&mut self, peer: Option<IpAddr>) {
        self.client = peer.map(|ip| Box::new(SocketAddr::new(ip, 0)));
    }

    /// Feeds bytes received from the peer; answers every complete request.
    /// Takes all of `data` (a tail that is not yet a whole request is kept).
    /// Call with an empty slice to resume after `on_sent` returned true.
    pub fn handle_input<H: Handler + ?Sized>(&mut self, data: &[u8], ctx: &mut Ctx<'_, H>) {
        ctx.stats.bytes_in.add(data.len() as u64);
        if matches!(self.phase, Phase::Closing | Phase::Closed) {
            self.linger |= !data.is_empty();
            return;
        }
        let mut ex = self
            .exchange
            .take()
            .unwrap_or_else(|| ctx.pool.take_exchange());
        if self.input.is_empty() {
            let used = self.process(data, &mut ex, ctx);
            if used < data.len() && !self.is_closing() {
                self.keep(&data[used..], &mut ex, ctx.pool);
            }
        } else {
            self.input.extend_from_slice(data);
            let input = mem::take(&mut self.input);
            let used = self.process(&input, &mut ex, ctx);
            self.input = input;
            if self.is_closing() {
                self.input.clear();
            } else {
                self.input.drain(..used);
                self.compact(&mut ex);
            }
        }
        self.park_exchange(ex, ctx.pool);
        if self.input.is_empty() && self.input.capacity() > 0 {
            ctx.pool.give(mem::take(&mut self.input));
        }
        self.close_if_peer_done();
        self.rearm(ctx.now, ctx.limits, !data.is_empty());
    }

    /// The peer will send no more. Complete requests still waiting behind
    /// unsent output are answered first (`handle_input(&[], ..)` after
    /// `on_sent` says so); a partial request can never complete. Then the
    /// connection finishes what it owes and closes.
    pub fn handle_eof(&mut self) {
        self.peer_done = true;
        self.linger = false;
        self.close_if_peer_done();
    }

    /// The transport failed (reset, send error): drop all output and close
    /// at once, without lingering.
    pub fn handle_abort(&mut self) {
        self.phase = Phase::Closed;
        self.queue.clear();
        self.queued = 0;
        self.out.clear();
        self.sent = 0;
        self.in_flight = 0;
        self.linger = false;
    }

    /// Fires every deadline at or before `now`. Early calls do nothing.
    pub fn handle_timeout<H: Handler + ?Sized>(&mut self, ctx: &mut Ctx<'_, H>) {
        for kind in Deadline::ALL {
            if self.deadlines[kind as usize].is_none_or(|d| d > ctx.now) {
                continue;
            }
            self.deadlines[kind as usize] = None;
            if matches!(self.phase, Phase::Closed) {
                return;
            }
            ctx.stats.deadlines[kind as usize].inc();
            match kind {
                // No HTTP response before the PROXY header: just close.
                Deadline::Head if self.phase == Phase::Proxy => self.phase = Phase::Closed,
                Deadline::Head if self.has_partial_request() => {
                    self.reject(Reject::HeadTimeout, ctx)
                }
                Deadline::Body => self.reject(Reject::BodyTimeout, ctx),
                Deadline::Head | Deadline::Idle | Deadline::Write => self.phase = Phase::Closed,
            }
        }
        self.release_exchange(ctx.pool);
        self.rearm(ctx.now, ctx.limits, false);
    }

    /// The server is shutting down. An idle connection is done at once
    /// (`is_done`); a request in progress, or one still arriving, is answered
    /// with `Connection: close`. The backend should read what the kernel
    /// already holds for the connection first, so a request that raced the
    /// signal is answered rather than reset.
    pub fn handle_shutdown(&mut self) {
        self.draining = true;
    }

    /// The server hands its sockets to a new process. As `handle_shutdown`,
    /// except that an idle connection (before its first request or between
    /// two) stays open until `until` and its next request is answered with
    /// `Connection: close`: a client in the middle of a stream of requests
    /// moves over without its connection closing under a request it just
    /// sent, which a plain drain cannot promise.
    pub fn handle_handoff(&mut self, until: Instant) {
        self.draining = true;
        self.handing_off = true;
        if self.has_partial_request() {
            return;
        }
        for kind in [Deadline::Head, Deadline::Idle] {
            if let Some(d) = &mut self.deadlines[kind as usize] {
                *d = (*d).min(until);
            }
        }
    }

    /// The upstream request of a response that completes later, once:
    /// the backend sends it and reports the reply through `handle_reply_*`.
    pub fn take_outgoing(&mut self) -> Option<Outgoing> {
        self.awaiting.as_mut()?.outgoing.take()
    }

    /// The token the backend gave the pending reply, if one is pending.
    pub fn awaiting(&self) -> Option<u64> {
        self.awaiting.as_ref().map(|a| a.token)
    }

    /// Names the pending reply's upstream exchange (see `awaiting`).
    pub fn set_awaiting(&mut self, token: u64) {
        if let Some(a) = self.awaiting.as_mut() {
            a.token = token;
        }
    }

    /// Whether reply body bytes may be added now. While false, the
    /// backend stops reading the upstream: a slow client slows it.
    pub fn reply_room(&self) -> bool {
        self.pending() < self.max_pending
            || self.awaiting.as_ref().is_some_and(|a| a.call.is_some())
    }

    /// The pending reply's head arrived: writes the client's head.
    pub fn handle_reply_head<H: Handler + ?Sized>(
        &mut self,
        head: &ReplyHead,
        ctx: &mut Ctx<'_, H>,
    ) {
        let Some(a) = self.awaiting.as_mut() else {
            return;
        };
        if let Some(call) = a.call.as_mut() {
            call.status = head.status;
            call.fields.clone_from(&head.fields);
            return;
        }
        let body = match head.framing {
            ReplyFraming::None | ReplyFraming::Length(_) => ToClient::Plain,
            _ if a.is_head => ToClient::Plain,
            ReplyFraming::Chunked | ReplyFraming::Close if a.minor >= 1 => ToClient::Chunked,
            ReplyFraming::Chunked | ReplyFraming::Close => {
                // An HTTP/1.0 client learns the end from the close.
                a.close = true;
                ToClient::Plain
            }
        };
        a.close |= self.draining;
        a.body = Some(body);
        if let (Some(pending), Some(log)) = (a.log.take(), ctx.log.as_deref_mut()) {
            let bytes = match head.framing {
                _ if a.is_head => Some(0),
                ReplyFraming::Length(n) => Some(n),
                ReplyFraming::None => Some(0),
                _ => None,
            };
            let client = self.client.as_deref().map(SocketAddr::ip);
            pending.record(log, client, head.status, bytes, ctx.now);
        }
        let (close, minor, a_is_head) = (a.close, a.minor, a.is_head);
        self.ensure_out(ctx.pool);
        let out = &mut self.out;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(head.status).as_bytes());
        out.extend_from_slice(b"\r\nServer: coreloop\r\nDate: ");
        out.extend_from_slice(ctx.date.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&head.fields);
        match (head.framing, body) {
            (ReplyFraming::Length(n), _) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            // HEAD: the length the upstream announced, with no body.
            (ReplyFraming::None, _) if head_with_length(a_is_head, head.status) => {
                if let Some(n) = head.length {
                    out.extend_from_slice(b"Content-Length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            (ReplyFraming::None, _) => {}
            (_, ToClient::Chunked) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
            _ => {}
        }
        out.extend_from_slice(match (close, minor) {
            (true, _) => b"Connection: close\r\n\r\n".as_slice(),
            (false, 0) => b"Connection: keep-alive\r\n\r\n",
            (false, _) => b"\r\n",
        });
        ctx.stats.response(head.status);
        self.rearm(ctx.now, ctx.limits, false);
    }

    /// Body bytes of the pending reply (after its head).
    pub fn handle_reply_body(
        &mut self,
        data: &[u8],
        now: Instant,
        limits: &Limits,
        pool: &mut BufPool,
    ) {
        if let Some(call) = self.awaiting.as_mut().and_then(|a| a.call.as_mut()) {
            // NOTE(cast): usize fits in u64 on every Linux target.
            if (call.body.len() + data.len()) as u64 > limits.max_body {
                call.too_large = true;
                call.body = Vec::new();
            } else if !call.too_large {
                call.body.extend_from_slice(data);
            }
            return;
        }
        let Some(body) = self.awaiting.as_ref().and_then(|a| a.body) else {
            return;
        };
        if data.is_empty() || self.awaiting.as_ref().is_some_and(|a| a.is_head) {
            return;
        }
        self.ensure_out(pool);
        if body == ToClient::Chunked {
            let mut hex = [0u8; 16];
            let n = hex_len(data.len(), &mut hex);
            self.out.extend_from_slice(&hex[16 - n..]);
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(data);
        }
        self.rearm(now, limits, false);
    }

    /// The pending reply is complete: requests behind it are answered.
    pub fn handle_reply_end<H: Handler + ?Sized>(&mut self, ctx: &mut Ctx<'_, H>) {
        let Some(mut a) = self.awaiting.take() else {
            return;
        };
        if let Some(mut call) = a.call.take() {
            let reply = call.reply();
            self.finish_call(&a, call.then, reply, ctx);
            return;
        }
        if a.body == Some(ToClient::Chunked) {
            self.ensure_out(ctx.pool);
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        self.resume_after_reply(a.close, ctx);
    }

    /// The pending reply failed. Before its head, the client gets `status`
    /// with `message`; after it, the connection closes once what was
    /// received is sent, so the client sees a truncated body.
    pub fn handle_reply_error<H: Handler + ?Sized>(
        &mut self,
        status: u16,
        message: &str,
        ctx: &mut Ctx<'_, H>,
    ) {
        let Some(mut a) = self.awaiting.take() else {
            return;
        };
        if let Some(call) = a.call.take() {
            let reply = Err(FetchError {
                status,
                message: message.to_string(),
            });
            self.finish_call(&a, call.then, reply, ctx);
            return;
        }
        if a.body.is_some() {
            self.resume_after_reply(true, ctx);
            return;
        }
        let close = a.close || self.draining;
        let persist = match (close, a.minor) {
            (true, _) => Persist::Close,
            (false, 0) => Persist::KeepAlive,
            (false, _) => Persist::Default,
        };
        let res = Response::text(status, message);
        self.ensure_out(ctx.pool);
        write_response(&mut self.out, &res, ctx.date.as_bytes(), persist, a.is_head);
        ctx.stats.response(status);
        if let (Some(pending), Some(log)) = (a.log.take(), ctx.log.as_deref_mut()) {
            let bytes = if a.is_head { 0 } else { message.len() as u64 };
            let client = self.client_ip();
            pending.record(log, client, status, Some(bytes), ctx.now);
        }
        self.resume_after_reply(close, ctx);
    }

    fn resume_after_reply<H: Handler + ?Sized>(&mut self, close: bool, ctx: &mut Ctx<'_, H>) {
        if close && !self.is_closing() {
            self.phase = Phase::Closing;
            self.linger |= !self.input.is_empty();
            if self.input.capacity() > 0 {
                ctx.pool.give(mem::take(&mut self.input));
            }
        }
        if self.is_closing() {
            self.rearm(ctx.now, ctx.limits, false);
        } else {
            self.handle_input(&[], ctx);
        }
    }

    /// Records that the first `n` bytes of `poll_transmit` (or, when that
    /// is empty, of `poll_file`) were sent. Returns true when output had
    /// blocked request processing and has now drained enough: call
    /// `handle_input(&[], ..)` to resume.
    pub fn on_sent(&mut self, n: usize, now: Instant, limits: &Limits, pool: &mut BufPool) -> bool {
        let was_blocked = self.pending() >= self.max_pending;
        let taken = n.min(self.in_flight);
        self.in_flight -= taken;
        // Bytes past a taken buffer are the file range behind it: a backend
        // may read a small file into the same buffer (`file_behind`).
        if n > taken {
            self.advance(n - taken, pool);
        }
        if self.queue.is_empty() && self.sent == self.out.len() && self.out.capacity() > 0 {
            self.sent = 0;
            pool.give(mem::take(&mut self.out));
        }
        if n > 0 {
            self.deadlines[Deadline::Write as usize] = None;
        }
        self.rearm(now, limits, false);
        was_blocked && self.pending() < self.max_pending && !self.input.is_empty()
    }

    /// Bytes waiting to be sent, oldest first. Empty when nothing is
    /// pending or when a file body comes first (see `poll_file`).
    pub fn poll_transmit(&self) -> &[u8] {
        match self.queue.front() {
            Some(Chunk::Bytes(b)) => &b[self.sent..],
            Some(Chunk::File(_)) => &[],
            None => &self.out[self.sent..],
        }
    }

    /// The file range to send next, once every byte before it is sent
    /// (and, after `take_transmit`, acknowledged).
    pub fn poll_file(&self) -> Option<&FileBody> {
        match self.queue.front() {
            Some(Chunk::File(f)) if self.in_flight == 0 => Some(f),
            _ => None,
        }
    }

    /// The next file range when only bytes come before it: those that
    /// `poll_transmit` offers, or those `take_transmit` moved out. A
    /// backend may send both together (append the file's first bytes to
    /// the taken buffer, or cork the bytes until the file follows); bytes
    /// acknowledged past the taken buffer count against this range.
    pub fn file_behind(&self) -> Option<&FileBody> {
        match (self.queue.front(), self.queue.get(1)) {
            (Some(Chunk::File(f)), _) | (Some(Chunk::Bytes(_)), Some(Chunk::File(f))) => Some(f),
            _ => None,
        }
    }

    /// Moves the pending output into a buffer the caller owns until the
    /// kernel is done with it (io_uring: the buffer must not move while a
    /// send is in flight). The bytes still count as pending until
    /// acknowledged with `on_sent`; new responses go to a fresh buffer.
    /// Call only when nothing taken earlier is still unacknowledged.
    pub fn take_transmit(&mut self) -> Option<Vec<u8>> {
        if self.in_flight > 0 {
            return None;
        }
        match self.queue.front() {
            Some(Chunk::Bytes(_)) => {
                let Some(Chunk::Bytes(mut out)) = self.queue.pop_front() else {
                    return None;
                };
                // NOTE(cast): usize fits in u64 on every Linux target.
                self.queued -= out.len() as u64;
                out.drain(..self.sent);
                self.sent = 0;
                self.in_flight = out.len();
                return Some(out);
            }
            Some(Chunk::File(_)) => return None,
            None => {}
        }
        if self.sent == self.out.len() {
            return None;
        }
        if self.sent > 0 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        let out = mem::take(&mut self.out);
        self.in_flight = out.len();
        Some(out)
    }

    /// The earliest deadline, if any. Changes after any `handle_*` or
    /// `on_sent` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Whether the backend should read more from the peer: false once the
    /// connection is closing or has too much unsent output.
    pub fn wants_read(&self) -> bool {
        !self.is_closing()
            && self.pending() < self.max_pending
            && (self.awaiting.is_none() || self.input.len() < self.max_pending)
    }

    /// Whether the socket can be closed: nothing more will be sent.
    pub fn is_done(&self) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Closing => self.pending() == 0,
            Phase::Head => self.draining && !self.handing_off && self.is_idle(),
            _ => false,
        }
    }

    /// Whether the backend should shut down its write side and drain what
    /// the peer still sends before closing: true when request bytes were
    /// dropped (a rejection, requests pipelined after a close), since
    /// closing a socket with unread input resets the connection and can
    /// destroy the last response. False after a clean exchange, after the
    /// peer's EOF, and for aborts (write stall, idle timeout).
    pub fn lingers(&self) -> bool {
        self.phase == Phase::Closing && self.linger
    }

    /// Whether the connection has decided to close (possibly after sending).
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing | Phase::Closed)
    }

    /// Between requests with nothing buffered and nothing to send: holds
    /// no buffer.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Head
            && !self.has_partial_request()
            && self.pending() == 0
            && self.awaiting.is_none()
    }

    fn pending(&self) -> usize {
        // `sent` counts into the first byte chunk, which is either the
        // queue's front or `out`: subtract it from the total.
        // NOTE(cast): usize fits in u64; a total over usize::MAX (32-bit
        // targets only) saturates.
        let total = self.in_flight as u64 + self.queued + self.out.len() as u64;
        usize::try_from(total - self.sent as u64).unwrap_or(usize::MAX)
    }

    /// After the peer's EOF, nothing more can arrive: close once no
    /// complete request waits in `input` for output to drain.
    fn close_if_peer_done(&mut self) {
        let waits_on_output = self.phase == Phase::Head
            && !self.input.is_empty()
            && self.pending() >= self.max_pending;
        if self.peer_done && !waits_on_output && self.phase != Phase::Closed {
            self.phase = Phase::Closing;
            // A partial request can never complete now, and is dropped
            // unanswered: no head or body deadline may answer it with 408.
            // (`rearm` clears them too; `handle_eof` has no clock to call it.)
            self.deadlines[Deadline::Head as usize] = None;
            self.deadlines[Deadline::Body as usize] = None;
            self.deadlines[Deadline::Idle as usize] = None;
        }
    }

    /// Moves `n` sent bytes past the front of the output.
    fn advance(&mut self, n: usize, pool: &mut BufPool) {
        match self.queue.front_mut() {
            Some(Chunk::Bytes(b)) => {
                self.sent = (self.sent + n).min(b.len());
                if self.sent == b.len() {
                    // NOTE(cast): usize fits in u64 on every Linux target.
                    self.queued -= b.len() as u64;
                    self.sent = 0;
                    if let Some(Chunk::Bytes(b)) = self.queue.pop_front() {
                        pool.give(b);
                    }
                }
            }
            Some(Chunk::File(f)) => {
                let before = f.len();
                f.advance(n as u64);
                self.queued -= before - f.len();
                if f.is_empty() {
                    self.queue.pop_front();
                }
            }
            None => self.sent = (self.sent + n).min(self.out.len()),
        }
    }

    /// Gives the exchange back to the pool unless a body is still arriving.
    fn release_exchange(&mut self, pool: &mut BufPool) {
        if let Some(ex) = self.exchange.take() {
            self.park_exchange(ex, pool);
        }
    }

    /// Keeps the exchange while a body is still arriving, else returns it.
    fn park_exchange(&mut self, ex: Box<Exchange>, pool: &mut BufPool) {
        if matches!(self.phase, Phase::Length(_) | Phase::Chunked) {
            self.exchange = Some(ex);
        } else {
            pool.give_exchange(ex);
        }
    }

    fn has_partial_request(&self) -> bool {
        !self.input.is_empty() || self.scan.started()
    }

    /// Answers every complete request at the front of `buf`; returns how
    /// many bytes those requests used.
    fn process<H: Handler + ?Sized>(
        &mut self,
        buf: &[u8],
        ex: &mut Exchange,
        ctx: &mut Ctx<'_, H>,
    ) -> usize {
        let mut pos = 0;
        loop {
            if self.pending() >= self.max_pending || self.awaiting.is_some() {
                return pos;
            }
            let req = &buf[pos..];
            let step = match self.phase {
                Phase::Proxy if req.is_empty() => return pos,
                Phase::Proxy => match self.read_proxy_header(req, ctx) {
                    Some(used) => Ok(Some(used)),
                    None if self.phase == Phase::Closed => return buf.len(),
                    None => return pos,
                },
                Phase::Head if req.is_empty() => return pos,
                Phase::Head => self.read_head(req, ex, ctx),
                Phase::Length(n) => Ok(self.read_length_body(req, n, ex, ctx)),
                Phase::Chunked => self.read_chunked_body(req, ex, ctx),
                Phase::Closing | Phase::Closed => {
                    self.linger |= pos < buf.len();
                    return buf.len();
                }
            };
            match step {
                Ok(Some(used)) => pos += used,
                Ok(None) => return pos,
                Err(reject) => {
                    self.reject(reject, ctx);
                    return buf.len();
                }
            }
        }
    }

    /// Takes the PROXY header if it is complete (its length); `None` to
    /// wait for more, or with the connection closed when it is not one.
    fn read_proxy_header<H: Handler + ?Sized>(
        &mut self,
        req: &[u8],
        ctx: &mut Ctx<'_, H>,
    ) -> Option<usize> {
        match proxy_header::parse(req) {
            Ok(None) => None,
            Ok(Some((addr, used))) => {
                self.client = addr.map(Box::new);
                self.phase = Phase::Head;
                Some(used)
            }
            Err(_) => {
                ctx.stats.proxy_bad_headers.inc();
                self.phase = Phase::Closed;
                None
            }
        }
    }

    /// Parses a head if one is complete. Returns the bytes used when the
    /// request was answered (no body), `None` to wait for more.
    fn read_head<H: Handler + ?Sized>(
        &mut self,
        req: &[u8],
        ex: &mut Exchange,
        ctx: &mut Ctx<'_, H>,
    ) -> Result<Option<usize>, Reject> {
        // httparse skips leading empty lines (RFC 9112 §2.2), so an empty
        // line found first is not the end of a head: keep scanning.
        loop {
            let end = match find_head_end(req, &mut self.scan, ctx.limits)? {
                Found::Complete(end) => end,
                Found::Partial => return Ok(None),
            };
            if parse_head(req, end, &mut ex.head, ctx.limits)? {
                break;
            }
        }
        let head_len = ex.head.len;
        match ex.head.framing {
            Some(Framing::Length(n)) => {
                // NOTE(cast): n <= max_body, which a usize holds on 64-bit.
                self.phase = Phase::Length(n as usize);
                self.send_continue(&ex.head, req.len() == head_len, ctx.pool);
                Ok(self.read_length_body(req, n as usize, ex, ctx))
            }
            Some(Framing::Chunked) => {
                self.phase = Phase::Chunked;
                ex.body_pos = head_len;
                self.send_continue(&ex.head, req.len() == head_len, ctx.pool);
                self.read_chunked_body(req, ex, ctx)
            }
            _ => {
                self.dispatch(&req[..head_len], &ex.head, &[], ctx);
                Ok(Some(head_len))
            }
        }
    }

    fn read_length_body<H: Handler + ?Sized>(
        &mut self,
        req: &[u8],
        n: usize,
        ex: &mut Exchange,
        ctx: &mut Ctx<'_, H>,
    ) -> Option<usize> {
        let head_len = ex.head.len;
        let end = head_len + n;
        if req.len() < end {
            return None;
        }
        self.dispatch(&req[..head_len], &ex.head, &req[head_len..end], ctx);
        Some(end)
    }

    fn read_chunked_body<H: Handler + ?Sized>(
        &mut self,
        req: &[u8],
        ex: &mut Exchange,
        ctx: &mut Ctx<'_, H>,
    ) -> Result<Option<usize>, Reject> {
        let limits = ctx.limits;
        let used = ex.chunked.decode(
            &req[ex.body_pos..],
            &mut ex.decoded,
            limits.max_body,
            limits.max_chunk_line,
        );
        ex.body_pos += used?;
        if !ex.chunked.is_done() {
            return Ok(None);
        }
        let end = ex.body_pos;
        self.dispatch(&req[..ex.head.len], &ex.head, &ex.decoded, ctx);
        ex.reset(usize::MAX);
        Ok(Some(end))
    }

    /// Calls the handler and queues its response; a panic becomes a 500.
    fn dispatch<H: Handler + ?Sized>(
        &mut self,
        raw: &[u8],
        head: &Head,
        body: &[u8],
        ctx: &mut Ctx<'_, H>,
    ) {
        let request = Request::new(raw, head, body);
        let handler = &mut *ctx.handler;
        let (res, panicked) = match catch_unwind(AssertUnwindSafe(|| handler.call(&request))) {
            Ok(res) => (res, false),
            Err(_) => {
                ctx.stats.panics.inc();
                (Response::text(500, "internal server error"), true)
            }
        };
        if !panicked {
            if let Some(group) = res.forwards_to() {
                let mut outgoing = Outgoing {
                    group,
                    bytes: ctx.pool.take(),
                    ..Outgoing::default()
                };
                write_request(&request, &mut outgoing);
                let log = ctx
                    .log
                    .is_some()
                    .then(|| Box::new(PendingLog::new(&request, ctx.now)));
                self.await_reply(outgoing, head, None, log, ctx);
                return;
            }
            if let Some(mut fetch) = res.take_fetch() {
                let mut outgoing = Outgoing {
                    group: fetch.group,
                    bytes: ctx.pool.take(),
                    ..Outgoing::default()
                };
                write_fetch(&fetch, &mut outgoing);
                let call = fetch.then.take().map(Call::new);
                let log = ctx
                    .log
                    .is_some()
                    .then(|| Box::new(PendingLog::new(&request, ctx.now)));
                self.await_reply(outgoing, head, call, log, ctx);
                return;
            }
        }
        let close = panicked || !head.keep_alive || res.wants_close() || self.draining;
        let persist = match (close, head.minor) {
            (true, _) => Persist::Close,
            (false, 0) => Persist::KeepAlive,
            (false, _) => Persist::Default,
        };
        self.ensure_out(ctx.pool);
        write_response(
            &mut self.out,
            &res,
            ctx.date.as_bytes(),
            persist,
            head.is_head,
        );
        if let Body::File(file) = res.body() {
            if sends_body(&res, head.is_head) && !file.is_empty() {
                self.queue_file(file.clone());
            }
        }
        ctx.stats.requests.inc();
        ctx.stats.response(res.status());
        if let Some(log) = ctx.log.as_deref_mut() {
            let bytes = if sends_body(&res, head.is_head) {
                body_len(res.body())
            } else {
                0
            };
            let took = Instant::now().saturating_duration_since(ctx.now);
            let entry = Entry::of(&request, self.client_ip(), res.status(), Some(bytes), took);
            log.record(&entry, ctx.now);
        }
        self.phase = if close { Phase::Closing } else { Phase::Head };
        self.next_request();
    }

    /// Parks the request's place in the output order until the reply is in.
    fn await_reply<H: Handler + ?Sized>(
        &mut self,
        outgoing: Outgoing,
        head: &Head,
        call: Option<Box<Call>>,
        log: Option<Box<PendingLog>>,
        ctx: &mut Ctx<'_, H>,
    ) {
        self.awaiting = Some(Box::new(Awaiting {
            log,
            token: 0,
            outgoing: Some(outgoing),
            minor: head.minor,
            is_head: head.is_head,
            close: !head.keep_alive || self.draining,
            body: None,
            call,
        }));
        ctx.stats.requests.inc();
        self.phase = Phase::Head;
        self.next_request();
    }

    /// A handler's upstream call ended: its closure builds the response.
    fn finish_call<H: Handler + ?Sized>(
        &mut self,
        a: &Awaiting,
        then: Then,
        reply: Result<Reply, FetchError>,
        ctx: &mut Ctx<'_, H>,
    ) {
        let res = match catch_unwind(AssertUnwindSafe(move || then(reply))) {
            Ok(res) if !res.is_deferred() => Ok(res),
            Ok(_) => Err("a response that completes later cannot follow an upstream call"),
            Err(_) => Err("internal server error"),
        };
        let res = res.unwrap_or_else(|why| {
            ctx.stats.panics.inc();
            Response::text(500, why).with_close()
        });
        let close = a.close || res.wants_close() || self.draining;
        let persist = match (close, a.minor) {
            (true, _) => Persist::Close,
            (false, 0) => Persist::KeepAlive,
            (false, _) => Persist::Default,
        };
        self.ensure_out(ctx.pool);
        write_response(&mut self.out, &res, ctx.date.as_bytes(), persist, a.is_head);
        if let Body::File(file) = res.body() {
            if sends_body(&res, a.is_head) && !file.is_empty() {
                self.queue_file(file.clone());
            }
        }
        ctx.stats.response(res.status());
        self.resume_after_reply(close, ctx);
    }

    /// Queues the error response for `reject` and stops reading requests.
    fn reject<H: Handler + ?Sized>(&mut self, reject: Reject, ctx: &mut Ctx<'_, H>) {
        ctx.stats.rejects[reject.index()].inc();
        ctx.stats.response(reject.status());
        let res = Response::text(reject.status(), reject.message());
        if let Some(log) = ctx.log.as_deref_mut() {
            let entry = Entry::unread(self.client_ip(), reject.status(), body_len(res.body()));
            log.record(&entry, ctx.now);
        }
        self.ensure_out(ctx.pool);
        write_response(
            &mut self.out,
            &res,
            ctx.date.as_bytes(),
            Persist::Close,
            false,
        );
        self.phase = Phase::Closing;
        self.linger = true;
        self.next_request();
    }

    /// Queues a file body behind everything written so far; later
    /// responses go to a fresh `out`.
    fn queue_file(&mut self, file: FileBody) {
        let head = mem::take(&mut self.out);
        // NOTE(cast): usize fits in u64 on every Linux target.
        self.queued += head.len() as u64 + file.len();
        self.queue.push_back(Chunk::Bytes(head));
        self.queue.push_back(Chunk::File(file));
    }

    fn send_continue(&mut self, head: &Head, no_body_yet: bool, pool: &mut BufPool) {
        if head.expect_continue && no_body_yet {
            self.ensure_out(pool);
            self.out.extend_from_slice(CONTINUE);
        }
    }

    fn next_request(&mut self) {
        self.scan = Scan::default();
        self.deadlines[Deadline::Head as usize] = None;
        self.deadlines[Deadline::Body as usize] = None;
    }

    fn ensure_out(&mut self, pool: &mut BufPool) {
        if self.out.capacity() == 0 {
            self.out = pool.take();
        }
    }

    /// Keeps the unanswered tail of a request from the caller's slice. For a
    /// chunked body only the head and the undecoded bytes are kept.
    fn keep(&mut self, req: &[u8], ex: &mut Exchange, pool: &mut BufPool) {
        self.input = pool.take();
        if self.phase == Phase::Chunked {
            self.input.extend_from_slice(&req[..ex.head.len]);
            self.input.extend_from_slice(&req[ex.body_pos..]);
            ex.body_pos = ex.head.len;
        } else {
            self.input.extend_from_slice(req);
        }
    }

    /// Drops decoded chunk bytes from the kept input, so a body sent in tiny
    /// chunks costs its decoded size, not its framing.
    fn compact(&mut self, ex: &mut Exchange) {
        if self.phase == Phase::Chunked && ex.body_pos > ex.head.len {
            self.input.drain(ex.head.len..ex.body_pos);
            ex.body_pos = ex.head.len;
        }
    }

    /// Sets or clears each deadline for the current state.
    fn rearm(&mut self, now: Instant, limits: &Limits, got_input: bool) {
        let pending = self.pending() > 0;
        // Too much unsent output: requests are not read (`wants_read`), so
        // the time they take to arrive is not the peer's; the write
        // deadline guards a peer that stops reading.
        let blocked = self.pending() >= self.max_pending;
        let d = &mut self.deadlines;
        let closing = matches!(self.phase, Phase::Closing | Phase::Closed);
        let in_head = matches!(self.phase, Phase::Head | Phase::Proxy) && self.awaiting.is_none();
        // A connection owes its PROXY header at once: the head deadline runs.
        let partial = !self.input.is_empty() || self.scan.started() || self.phase == Phase::Proxy;
        let in_body = matches!(self.phase, Phase::Length(_) | Phase::Chunked);

        let head = &mut d[Deadline::Head as usize];
        if !in_head || closing || blocked {
            *head = None;
        } else if partial && head.is_none() {
            *head = Some(now + limits.head_timeout);
        }
        let body = &mut d[Deadline::Body as usize];
        if !in_body {
            *body = None;
        } else if got_input || body.is_none() {
            *body = Some(now + limits.body_timeout);
        }
        let waiting_first = d[Deadline::Head as usize].is_some();
        let idle = &mut d[Deadline::Idle as usize];
        if in_head && !partial && !pending && !closing && !waiting_first {
            if idle.is_none() {
                *idle = Some(now + limits.idle_timeout);
            }
        } else {
            *idle = None;
        }
        let write = &mut d[Deadline::Write as usize];
        if !pending {
            *write = None;
        } else if write.is_none() {
            *write = Some(now + limits.write_timeout);
        }
    }
}

/// A body's length in bytes, as sent.
fn body_len(body: &Body) -> u64 {
    match body {
        Body::Empty => 0,
        Body::Static(b) => b.len() as u64,
        Body::Bytes(b) => b.len() as u64,
        Body::File(f) => f.len(),
    }
}

/// Whether a bodiless reply is the answer to HEAD of a status that could
/// carry a body (so its Content-Length is passed on).
fn head_with_length(is_head: bool, status: u16) -> bool {
    is_head && !matches!(status, 100..=199 | 204 | 304)
}

/// Writes `n` in hex at the end of `buf`; returns the digits used.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> usize {
    let mut i = 16;
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return 16 - i;
        }
    }
}
