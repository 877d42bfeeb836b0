//! Upstream connections of one core: per-server keep-alive pools, a
//! bounded wait queue per group, balancing, passive health, one retry on a
//! pooled connection that turned out closed, and the streaming of replies
//! into the client connections that wait for them.
//!
//! Both backends drive upstream sockets the same way, by readiness: the
//! backend watches each socket edge-triggered in its own poller (an epoll
//! registration, or a multishot poll on the ring) and calls `on_ready`;
//! the reads, writes and connects are plain non-blocking syscalls here.
//! Upstream traffic is one request per connection at a time, so the
//! ring's batching buys little there, and one implementation serves both.
//!
//! Replies reach client connections through `Clients`, keyed by the
//! client's (slab key, generation) ticket: a client that left meanwhile is
//! simply not found. Nothing here is shared with another core.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use super::wheel::{Armed, Wheel};
use crate::config::{Balance, ProxyLimits, UpstreamGroup};
use crate::http::forward::Outgoing;
use crate::http::reply::{parse_reply, ReplyBody, ReplyFraming, ReplyHead};
use crate::metrics::{CoreStats, UpstreamCounters, UpstreamError};

/// A client connection: its slab key and generation.
pub(crate) type Ticket = (usize, u32);

/// What happens to the reply a client waits for.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Head(&'a ReplyHead),
    Body(&'a [u8]),
    End,
    Fail(UpstreamError),
}

/// What a backend asks of the upstreams for one client (`io::upstream_step`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// Send the request `open` took.
    Dispatch(u64),
    /// The client has room: read more of its reply.
    Resume(u64),
}

/// The client side, as the backend gives it.
pub(crate) trait Clients {
    /// Whether the client can take more body bytes now.
    fn room(&self, ticket: Ticket) -> bool;
    /// Hands the client its reply's progress.
    fn deliver(&mut self, ticket: Ticket, event: Event<'_>);
    /// Takes back a sent request's buffer (it came from the core's pool).
    fn recycle(&mut self, buf: Vec<u8>);
}

/// The backend's poller, for upstream sockets.
pub(crate) trait Readiness {
    /// Reports readable/writable edges of `fd` as `on_ready(uid, gen, ..)`.
    fn watch(&mut self, fd: RawFd, uid: usize, gen: u32) -> io::Result<()>;
    /// Stops watching `fd` (called before it is closed).
    fn unwatch(&mut self, fd: RawFd, uid: usize, gen: u32);
}

/// Generations are 24 bits: io_uring's user_data has room for no more.
const GEN_MASK: u32 = 0xff_ffff;

/// While every server of a group is down, one connect probes it this
/// often; requests wait in the queue meanwhile, so a restarting upstream
/// costs a probe per interval, not a refused connect per request.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Bytes one read takes from an upstream.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Idle,
    Busy,
}

/// One upstream connection.
struct Link {
    sock: Socket,
    gen: u32,
    group: usize,
    server: usize,
    state: State,
    /// The exchange it carries (Busy).
    ex: Option<usize>,
    written: usize,
    /// Reply bytes not yet parsed into a head.
    head_buf: Vec<u8>,
    body: Option<ReplyBody>,
    keep_alive: bool,
    /// A reply byte arrived for the current exchange.
    replied: bool,
    /// Taken from the pool (it served an earlier request).
    reused: bool,
    /// Reading stopped until the client has room.
    paused: bool,
    /// Connecting to a server that is down, to see if it is back.
    probe: bool,
    readable: bool,
    writable: bool,
    /// The upstream shut its side: read until EOF, even after a short read.
    hung_up: bool,
    deadline: Option<Instant>,
    armed: Armed,
}

/// One request on its way through an upstream.
struct Exchange {
    ticket: Ticket,
    gen: u32,
    group: usize,
    req: Outgoing,
    link: Option<usize>,
    retried: bool,
    /// Needs a new connection (its pooled one failed).
    fresh: bool,
    /// Queued until this time.
    queued_until: Option<Instant>,
    /// The server last tried, for the counters.
    server: Option<usize>,
    sent_at: Instant,
}

struct Server {
    addr: SocketAddr,
    idle: Vec<usize>,
    open: usize,
    outstanding: usize,
    fails: u32,
    down_until: Option<Instant>,
    /// A probe connect is in flight (the server is down).
    probing: bool,
    /// No probe before this time.
    next_probe: Option<Instant>,
}

struct Group {
    servers: Vec<Server>,
    host: Option<String>,
    next: usize,
    queue: VecDeque<usize>,
    /// Where its servers' counters start in `CoreStats::servers`.
    stats_at: usize,
}

/// The upstream side of one core.
pub(crate) struct Upstreams {
    groups: Vec<Group>,
    links: Slab<Link>,
    exchanges: Slab<Exchange>,
    limits: ProxyLimits,
    wheel: Wheel,
    due: Vec<(usize, u32)>,
    scratch: Vec<u8>,
    payload: Vec<u8>,
    /// Reused for each reply head's fields.
    fields: Vec<u8>,
    next_gen: u32,
    draining: bool,
    stats: Arc<CachePadded<CoreStats>>,
}

impl Upstreams {
    pub(crate) fn new(
        groups: &[UpstreamGroup],
        limits: &ProxyLimits,
        stats: Arc<CachePadded<CoreStats>>,
        now: Instant,
    ) -> Upstreams {
        let mut stats_at = 0;
        let groups = groups
            .iter()
            .map(|g| Group {
                stats_at: {
                    stats_at += g.servers.len();
                    stats_at - g.servers.len()
                },
                servers: g
                    .servers
                    .iter()
                    .map(|&addr| Server {
                        addr,
                        idle: Vec::new(),
                        open: 0,
                        outstanding: 0,
                        fails: 0,
                        down_until: None,
                        probing: false,
                        next_probe: None,
                    })
                    .collect(),
                host: g.host.clone(),
                next: 0,
                queue: VecDeque::new(),
            })
            .collect();
        Upstreams {
            groups,
            links: Slab::new(),
            exchanges: Slab::new(),
            limits: limits.clone(),
            wheel: Wheel::new(now),
            due: Vec::new(),
            scratch: Vec::new(),
            payload: Vec::new(),
            fields: Vec::new(),
            next_gen: 0,
            draining: false,
            stats,
        }
    }

    /// Takes a client's request; returns the token the client keeps (see
    /// `Conn::set_awaiting`). Nothing is sent before `dispatch(token)`.
    pub(crate) fn open(
        &mut self,
        ticket: Ticket,
        mut req: Outgoing,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> u64 {
        let group = req.group;
        let host = self.groups.get(group).and_then(|g| match &g.host {
            Some(h) => Some(h.clone()),
            None if req.host.is_empty() => g.servers.first().map(|s| s.addr.to_string()),
            None => None,
        });
        req.finish(peer, host.as_deref());
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let gen = self.next_gen;
        let key = self.exchanges.insert(Exchange {
            ticket,
            gen,
            group,
            req,
            link: None,
            retried: false,
            fresh: false,
            queued_until: None,
            server: None,
            sent_at: now,
        });
        token(key, gen)
    }

    /// Does what `step` asks.
    pub(crate) fn advance(
        &mut self,
        step: Step,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        match step {
            Step::Dispatch(token) => self.dispatch(token, now, r, c),
            Step::Resume(token) => self.resume(token, now, r, c),
        }
    }

    /// Starts the exchange `open` returned.
    fn dispatch(&mut self, token: u64, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        if let Some(ex) = self.exchange(token) {
            self.assign(ex, now, r, c);
        }
    }

    /// The client went away: its exchange ends, and the connection that
    /// carried it is closed (its reply is unread).
    pub(crate) fn cancel(
        &mut self,
        token: u64,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let Some(ex) = self.exchange(token) else {
            return;
        };
        let e = self.exchanges.remove(ex);
        let Some(uid) = e.link else {
            if let Some(g) = self.groups.get_mut(e.group) {
                g.queue.retain(|&q| q != ex);
            }
            return;
        };
        let (g, s) = (self.links[uid].group, self.links[uid].server);
        self.groups[g].servers[s].outstanding -= 1;
        self.tally(g, s, |c| c.busy.sub(1));
        self.close(uid, r);
        self.serve_queue(g, now, r, c);
    }

    /// The client made room: reading its reply resumes.
    fn resume(&mut self, token: u64, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let Some(link) = self.exchange(token).and_then(|ex| self.exchanges[ex].link) else {
            return;
        };
        if self.links[link].paused {
            self.links[link].paused = false;
            self.progress(link, now, r, c);
        }
    }

    /// A watched socket is ready; `hung_up`: the upstream shut its side
    /// (so a short read is not the end of what it sent: EOF follows).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_ready(
        &mut self,
        uid: usize,
        gen: u32,
        readable: bool,
        writable: bool,
        hung_up: bool,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let Some(link) = self.links.get_mut(uid).filter(|l| l.gen == gen) else {
            return;
        };
        link.readable |= readable || hung_up;
        link.writable |= writable;
        link.hung_up |= hung_up;
        self.progress(uid, now, r, c);
    }

    /// The poller stopped watching link `uid` by itself (io_uring ended a
    /// multishot poll): watch it again, or close it if that fails.
    pub(crate) fn rewatch(&mut self, uid: usize, gen: u32, r: &mut dyn Readiness) {
        let Some(link) = self.links.get(uid).filter(|l| l.gen == gen) else {
            return;
        };
        if r.watch(link.sock.as_raw_fd(), uid, gen).is_err() {
            self.close(uid, r);
        }
    }

    /// Fires due deadlines: connects, replies, idle links, queued requests.
    pub(crate) fn expire(&mut self, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        self.wheel.expire(now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for &(uid, gen) in &due {
            let Some(link) = self.links.get_mut(uid).filter(|l| l.gen == gen) else {
                continue;
            };
            if !self.wheel.holds(link.armed, uid, gen) {
                link.armed = Armed::NONE;
            }
            match link.deadline {
                Some(at) if at <= now => self.timed_out(uid, now, r, c),
                Some(_) => self.arm(uid),
                None => {}
            }
        }
        self.due = due;
        self.due.clear();
        for g in 0..self.groups.len() {
            let due = self.groups[g].servers.iter().any(|s| {
                s.down_until.is_some_and(|t| t > now)
                    && !s.probing
                    && s.next_probe.is_some_and(|t| t <= now)
            });
            if due && !self.groups[g].queue.is_empty() {
                self.serve_queue(g, now, r, c);
            }
            while let Some(&ex) = self.groups[g].queue.front() {
                if self.exchanges[ex].queued_until.is_some_and(|at| at > now) {
                    break;
                }
                self.groups[g].queue.pop_front();
                // Waiting on servers that are all down is a bad gateway,
                // not a busy one.
                let cause = if self.all_down(g, now) {
                    UpstreamError::Connect
                } else {
                    UpstreamError::QueueTimeout
                };
                self.fail(ex, cause, c);
            }
        }
    }

    /// How long until the next deadline.
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let mut t = self.wheel.next_timeout(now);
        for g in self.groups.iter().filter(|g| !g.queue.is_empty()) {
            let queued = g
                .queue
                .front()
                .and_then(|&ex| self.exchanges[ex].queued_until);
            let probes = g
                .servers
                .iter()
                .filter(|s| !s.probing && s.down_until.is_some_and(|t| t > now))
                .filter_map(|s| s.next_probe);
            for at in queued.into_iter().chain(probes) {
                let d = at.saturating_duration_since(now);
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        }
        t
    }

    /// Shutdown: idle links close now, busy ones after their reply.
    pub(crate) fn drain(&mut self, r: &mut dyn Readiness) {
        self.draining = true;
        let idle: Vec<usize> = self
            .links
            .iter()
            .filter(|(_, l)| l.state == State::Idle)
            .map(|(k, _)| k)
            .collect();
        for uid in idle {
            self.close(uid, r);
        }
    }

    /// Closes every link (the loop is ending).
    pub(crate) fn close_all(&mut self, r: &mut dyn Readiness) {
        let all: Vec<usize> = self.links.iter().map(|(k, _)| k).collect();
        for uid in all {
            self.close(uid, r);
        }
    }

    /// Counts on the core's total and on server `s` of group `g`.
    fn tally(&self, g: usize, s: usize, count: impl Fn(&UpstreamCounters)) {
        count(&self.stats.upstream);
        let at = self.groups.get(g).map_or(usize::MAX, |g| g.stats_at + s);
        if let Some(server) = self.stats.servers.get(at) {
            count(&server.counters);
        }
    }

    fn exchange(&self, token: u64) -> Option<usize> {
        let (key, gen) = untoken(token);
        self.exchanges
            .get(key)
            .filter(|e| e.gen == gen)
            .map(|_| key)
    }

    /// Puts an exchange on a pooled link, a new link, or the queue.
    fn assign(&mut self, ex: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let e = &self.exchanges[ex];
        let (g, fresh) = (e.group, e.fresh);
        if g >= self.groups.len() {
            self.fail(ex, UpstreamError::Connect, c);
            return;
        }
        let s = self.pick(g, now);
        let server = &mut self.groups[g].servers[s];
        let probe = server.down_until.is_some_and(|t| t > now);
        if probe {
            if server.probing || server.next_probe.is_some_and(|t| t > now) {
                self.enqueue(ex, now, c);
                return;
            }
            server.probing = true;
        } else if !fresh {
            if let Some(uid) = server.idle.pop() {
                self.tally(g, s, |c| {
                    c.idle.sub(1);
                    c.reuses.inc();
                });
                self.bind(ex, uid, now, r, c);
                return;
            }
        }
        if probe || server.open < self.limits.max_conns {
            match self.connect(g, s, now, r) {
                Ok(uid) => {
                    self.links[uid].probe = probe;
                    self.bind(ex, uid, now, r, c);
                }
                Err(_) if probe => {
                    self.exchanges[ex].server = Some(s);
                    self.probe_failed(g, s, now);
                    self.enqueue(ex, now, c);
                }
                Err(_) => {
                    self.exchanges[ex].server = Some(s);
                    self.server_failed(g, s, now);
                    self.retry_or_fail(ex, UpstreamError::Connect, now, r, c);
                }
            }
            return;
        }
        self.enqueue(ex, now, c);
    }

    /// Queues an exchange until a link frees up (503 if the queue is full).
    fn enqueue(&mut self, ex: usize, now: Instant, c: &mut dyn Clients) {
        let g = self.exchanges[ex].group;
        if self.groups[g].queue.len() >= self.limits.queue {
            self.fail(ex, UpstreamError::QueueFull, c);
            return;
        }
        let e = &mut self.exchanges[ex];
        // A request back from a failed probe keeps its place in time.
        e.queued_until
            .get_or_insert(now + self.limits.queue_timeout);
        self.groups[g].queue.push_back(ex);
    }

    /// A probe connect failed: the next one waits an interval.
    fn probe_failed(&mut self, g: usize, s: usize, now: Instant) {
        let server = &mut self.groups[g].servers[s];
        server.probing = false;
        server.next_probe = Some(now + PROBE_INTERVAL);
    }

    /// A probe connected: the server is back, and the queue goes to it.
    fn probe_succeeded(
        &mut self,
        g: usize,
        s: usize,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let server = &mut self.groups[g].servers[s];
        server.probing = false;
        server.next_probe = None;
        server.down_until = None;
        server.fails = 0;
        let waiting = self.groups[g].queue.len();
        for _ in 0..waiting {
            self.serve_queue(g, now, r, c);
        }
    }

    /// The server for the next request: round robin, or the fewest in
    /// progress with ties in turn; servers marked down are skipped unless
    /// all are.
    fn pick(&mut self, g: usize, now: Instant) -> usize {
        let group = &mut self.groups[g];
        let n = group.servers.len();
        let start = group.next % n;
        group.next = group.next.wrapping_add(1);
        let up = |s: &Server| s.down_until.is_none_or(|t| t <= now);
        let candidates = (0..n).map(|i| (start + i) % n);
        let best = match self.limits.balance {
            Balance::RoundRobin => candidates.clone().find(|&i| up(&group.servers[i])),
            Balance::LeastOutstanding => candidates
                .clone()
                .filter(|&i| up(&group.servers[i]))
                .min_by_key(|&i| group.servers[i].outstanding),
        };
        best.unwrap_or(start)
    }

    fn connect(
        &mut self,
        g: usize,
        s: usize,
        now: Instant,
        r: &mut dyn Readiness,
    ) -> io::Result<usize> {
        let addr = self.groups[g].servers[s].addr;
        let sock = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        sock.set_tcp_nodelay(true)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        self.next_gen = (self.next_gen + 1) & GEN_MASK;
        let gen = self.next_gen;
        let fd = sock.as_raw_fd();
        let uid = self.links.insert(Link {
            sock,
            gen,
            group: g,
            server: s,
            state: State::Connecting,
            ex: None,
            written: 0,
            head_buf: Vec::new(),
            body: None,
            keep_alive: false,
            replied: false,
            reused: false,
            paused: false,
            probe: false,
            readable: false,
            writable: false,
            hung_up: false,
            deadline: Some(now + self.limits.connect_timeout),
            armed: Armed::NONE,
        });
        if let Err(e) = r.watch(fd, uid, gen) {
            self.links.remove(uid);
            return Err(e);
        }
        self.groups[g].servers[s].open += 1;
        self.tally(g, s, |c| c.connects.inc());
        self.arm(uid);
        Ok(uid)
    }

    /// Starts exchange `ex` on link `uid`.
    fn bind(
        &mut self,
        ex: usize,
        uid: usize,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let link = &mut self.links[uid];
        let e = &mut self.exchanges[ex];
        e.link = Some(uid);
        e.sent_at = now;
        link.ex = Some(ex);
        link.written = 0;
        link.replied = false;
        link.paused = false;
        link.body = None;
        link.head_buf.clear();
        if link.state == State::Idle {
            link.state = State::Busy;
            link.reused = true;
            link.deadline = Some(now + self.limits.reply_timeout);
        }
        let (g, s) = (link.group, link.server);
        self.groups[g].servers[s].outstanding += 1;
        self.exchanges[ex].server = Some(s);
        self.tally(g, s, |c| {
            c.busy.inc();
            c.requests.inc();
        });
        self.arm(uid);
        self.progress(uid, now, r, c);
    }

    /// Does what the link's state and readiness allow.
    fn progress(&mut self, uid: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let Some(link) = self.links.get_mut(uid) else {
            return;
        };
        match link.state {
            State::Connecting => {
                if !link.writable {
                    return;
                }
                match link.sock.take_error() {
                    Ok(None) => {
                        link.state = State::Busy;
                        link.deadline = Some(now + self.limits.reply_timeout);
                        let (probe, g, s) = (link.probe, link.group, link.server);
                        link.probe = false;
                        self.arm(uid);
                        if probe {
                            self.probe_succeeded(g, s, now, r, c);
                        }
                    }
                    _ => {
                        self.link_failed(uid, UpstreamError::Connect, now, r, c);
                        return;
                    }
                }
            }
            State::Idle => {
                if link.readable {
                    // An idle upstream speaks only to close (EOF, RST, or
                    // a 408 before closing): the link is done.
                    self.close(uid, r);
                }
                return;
            }
            State::Busy => {}
        }
        if let Err(e) = self.write(uid) {
            let cause = if e.kind() == io::ErrorKind::WouldBlock {
                return;
            } else {
                UpstreamError::Closed
            };
            self.link_failed(uid, cause, now, r, c);
            return;
        }
        self.read(uid, now, r, c);
    }

    /// Writes what is left of the request. WouldBlock: wait for writable.
    fn write(&mut self, uid: usize) -> io::Result<()> {
        let link = &mut self.links[uid];
        let Some(ex) = link.ex else { return Ok(()) };
        let bytes = &self.exchanges[ex].req.bytes;
        while link.written < bytes.len() {
            if !link.writable && link.written > 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            match (&link.sock).write(&bytes[link.written..]) {
                Ok(n) => link.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.writable = false;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the reply while the socket has bytes and the client room.
    fn read(&mut self, uid: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let mut scratch = std::mem::take(&mut self.scratch);
        if scratch.len() < READ_CHUNK {
            scratch.resize(READ_CHUNK, 0);
        }
        while let Some(link) = self.links.get_mut(uid) {
            let Some(ex) = link.ex else { break };
            if !link.readable {
                break;
            }
            if link.body.is_some() && !c.room(self.exchanges[ex].ticket) {
                link.paused = true;
                link.deadline = None;
                break;
            }
            match (&link.sock).read(&mut scratch) {
                Ok(0) => {
                    link.readable = false;
                    self.on_eof(uid, now, r, c);
                    break;
                }
                Ok(n) => {
                    link.replied = true;
                    link.deadline = Some(now + self.limits.reply_timeout);
                    if n < scratch.len() && !link.hung_up {
                        link.readable = false;
                    }
                    if !self.on_bytes(uid, &scratch[..n], now, r, c) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    link.readable = false;
                    self.on_eof(uid, now, r, c);
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Feeds reply bytes; false once the exchange ended or failed.
    fn on_bytes(
        &mut self,
        uid: usize,
        mut data: &[u8],
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) -> bool {
        let link = &mut self.links[uid];
        let Some(ex) = link.ex else { return false };
        let ticket = self.exchanges[ex].ticket;
        let mut joined = Vec::new();
        if link.body.is_none() {
            let head_only = self.exchanges[ex].req.head_only;
            let buf: &[u8] = if link.head_buf.is_empty() {
                data
            } else {
                link.head_buf.extend_from_slice(data);
                joined = std::mem::take(&mut link.head_buf);
                &joined
            };
            match parse_reply(buf, head_only, &mut self.fields) {
                Ok(None) => {
                    if link.head_buf.is_empty() && joined.is_empty() {
                        link.head_buf.extend_from_slice(data);
                    } else {
                        link.head_buf = joined;
                    }
                    return true;
                }
                Err(_) => {
                    self.link_failed(uid, UpstreamError::BadReply, now, r, c);
                    return false;
                }
                Ok(Some((used, head))) => {
                    link.body = Some(ReplyBody::new(head.framing));
                    link.keep_alive = head.keep_alive;
                    let server = &mut self.groups[link.group].servers[link.server];
                    server.fails = 0;
                    server.down_until = None;
                    let waited = now.saturating_duration_since(self.exchanges[ex].sent_at);
                    let us = waited
                        .as_secs()
                        .saturating_mul(1_000_000)
                        .saturating_add(u64::from(waited.subsec_micros()));
                    let (g, s) = (link.group, link.server);
                    self.tally(g, s, |c| {
                        c.replies.inc();
                        c.reply_us.add(us);
                    });
                    c.deliver(ticket, Event::Head(&head));
                    self.fields = head.fields;
                    if joined.is_empty() {
                        data = &data[used..];
                    } else {
                        let rest = joined[used..].to_vec();
                        return self.body_bytes(uid, ex, &rest, now, r, c);
                    }
                }
            }
        }
        self.body_bytes(uid, ex, data, now, r, c)
    }

    fn body_bytes(
        &mut self,
        uid: usize,
        ex: usize,
        data: &[u8],
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) -> bool {
        let ticket = self.exchanges[ex].ticket;
        let link = &mut self.links[uid];
        let Some(body) = link.body.as_mut() else {
            return false;
        };
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        let used = match body.decode(data, &mut payload) {
            Ok(n) => n,
            Err(_) => {
                self.payload = payload;
                self.link_failed(uid, UpstreamError::BadReply, now, r, c);
                return false;
            }
        };
        let done = body.is_done();
        if used < data.len() {
            // Bytes past the reply's end: the link cannot be trusted.
            link.keep_alive = false;
        }
        if !payload.is_empty() {
            c.deliver(ticket, Event::Body(&payload));
        }
        self.payload = payload;
        if done {
            self.finish(uid, now, r, c);
            return false;
        }
        true
    }

    /// The upstream closed (or reset) the link.
    fn on_eof(&mut self, uid: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let link = &mut self.links[uid];
        if link.body.as_ref().map(ReplyBody::framing) == Some(ReplyFraming::Close) {
            link.keep_alive = false;
            self.finish(uid, now, r, c);
            return;
        }
        self.link_failed(uid, UpstreamError::Closed, now, r, c);
    }

    /// The reply is complete: the client is told, the link goes back to
    /// the pool (or closes), and a queued request may take it.
    fn finish(&mut self, uid: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        let link = &mut self.links[uid];
        let Some(ex) = link.ex.take() else { return };
        let e = self.exchanges.remove(ex);
        let (g, s) = (link.group, link.server);
        let server = &mut self.groups[g].servers[s];
        server.outstanding -= 1;
        let reusable = link.keep_alive && !self.draining;
        self.tally(g, s, |c| c.busy.sub(1));
        c.deliver(e.ticket, Event::End);
        c.recycle(e.req.bytes);
        if !reusable {
            self.close(uid, r);
            self.serve_queue(g, now, r, c);
            return;
        }
        let Some(link) = self.links.get_mut(uid) else {
            return;
        };
        link.body = None;
        link.head_buf.clear();
        if let Some(next) = self.groups[g].queue.pop_front() {
            self.bind(next, uid, now, r, c);
            return;
        }
        let server = &mut self.groups[g].servers[s];
        if server.idle.len() >= self.limits.max_idle {
            self.close(uid, r);
            return;
        }
        link.state = State::Idle;
        link.deadline = Some(now + self.limits.idle_timeout);
        let readable = link.readable;
        server.idle.push(uid);
        self.tally(g, s, |c| c.idle.inc());
        self.arm(uid);
        if readable {
            self.close(uid, r);
        }
    }

    /// A link failed while carrying (or connecting for) an exchange.
    fn link_failed(
        &mut self,
        uid: usize,
        cause: UpstreamError,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let link = &mut self.links[uid];
        let ex = link.ex.take();
        let (g, s, probe) = (link.group, link.server, link.probe);
        // The keep-alive race: a pooled link closed as the request went
        // out. That says nothing of the server's health.
        let race = cause == UpstreamError::Closed && link.reused && !link.replied;
        let unanswered = cause == UpstreamError::Closed && !link.replied;
        if ex.is_some() {
            self.groups[g].servers[s].outstanding -= 1;
            self.tally(g, s, |c| c.busy.sub(1));
        }
        self.close(uid, r);
        if !race {
            self.server_failed(g, s, now);
        }
        if probe {
            self.probe_failed(g, s, now);
        }
        if let Some(ex) = ex {
            self.exchanges[ex].link = None;
            if probe {
                self.enqueue(ex, now, c);
                return;
            }
            // Nothing came back: an idempotent request goes once more, on
            // a new link.
            let e = &mut self.exchanges[ex];
            if unanswered && e.req.idempotent && !e.retried {
                e.retried = true;
                e.fresh = true;
                self.tally(g, s, |c| c.retries.inc());
                self.assign(ex, now, r, c);
            } else {
                self.retry_or_fail(ex, cause, now, r, c);
            }
        }
        self.serve_queue(g, now, r, c);
    }

    /// A connect failure sent nothing: any request may try once more, and
    /// once every server of its group is down it waits in the queue for
    /// one to come back (a restarting upstream).
    fn retry_or_fail(
        &mut self,
        ex: usize,
        cause: UpstreamError,
        now: Instant,
        r: &mut dyn Readiness,
        c: &mut dyn Clients,
    ) {
        let all_down = self.all_down(self.exchanges[ex].group, now);
        let e = &mut self.exchanges[ex];
        if cause == UpstreamError::Connect && (!e.retried || all_down) {
            let first = !e.retried;
            e.retried = true;
            e.fresh = true;
            let (g, s) = (e.group, e.server);
            if first {
                match s {
                    Some(s) => self.tally(g, s, |c| c.retries.inc()),
                    None => self.stats.upstream.retries.inc(),
                }
            }
            self.assign(ex, now, r, c);
        } else {
            self.fail(ex, cause, c);
        }
    }

    fn all_down(&self, g: usize, now: Instant) -> bool {
        self.groups[g]
            .servers
            .iter()
            .all(|s| s.down_until.is_some_and(|t| t > now))
    }

    fn fail(&mut self, ex: usize, cause: UpstreamError, c: &mut dyn Clients) {
        let e = self.exchanges.remove(ex);
        let i = cause as usize;
        let queued = matches!(
            cause,
            UpstreamError::QueueFull | UpstreamError::QueueTimeout
        );
        match e.server.filter(|_| !queued) {
            Some(s) => self.tally(e.group, s, |c| c.errors[i].inc()),
            None => self.stats.upstream.errors[i].inc(),
        }
        c.deliver(e.ticket, Event::Fail(cause));
        c.recycle(e.req.bytes);
    }

    fn timed_out(&mut self, uid: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        match self.links[uid].state {
            State::Idle => self.close(uid, r),
            State::Connecting => self.link_failed(uid, UpstreamError::ConnectTimeout, now, r, c),
            State::Busy => self.link_failed(uid, UpstreamError::ReplyTimeout, now, r, c),
        }
    }

    fn server_failed(&mut self, g: usize, s: usize, now: Instant) {
        let server = &mut self.groups[g].servers[s];
        let was_down = server.down_until.is_some_and(|t| t > now);
        server.fails += 1;
        if was_down || server.fails >= self.limits.max_fails {
            server.fails = 0;
            server.down_until = Some(now + self.limits.fail_timeout);
        }
        if !was_down && server.down_until.is_some_and(|t| t > now) {
            log::warn!(
                "upstream {}: {} failure(s) in a row, skipped for {:?}",
                server.addr,
                self.limits.max_fails,
                self.limits.fail_timeout
            );
        }
    }

    /// A link closed or freed: the oldest queued request may go now.
    fn serve_queue(&mut self, g: usize, now: Instant, r: &mut dyn Readiness, c: &mut dyn Clients) {
        if let Some(ex) = self.groups.get_mut(g).and_then(|g| g.queue.pop_front()) {
            self.assign(ex, now, r, c);
        }
    }

    fn close(&mut self, uid: usize, r: &mut dyn Readiness) {
        let Some(link) = self.links.try_remove(uid) else {
            return;
        };
        self.wheel.remove(link.armed, uid, link.gen);
        r.unwatch(link.sock.as_raw_fd(), uid, link.gen);
        let (g, s) = (link.group, link.server);
        let server = &mut self.groups[g].servers[s];
        server.open -= 1;
        if link.state == State::Idle {
            if let Some(i) = server.idle.iter().position(|&u| u == uid) {
                server.idle.swap_remove(i);
                self.tally(g, s, |c| c.idle.sub(1));
            }
        }
    }

    fn arm(&mut self, uid: usize) {
        let link = &mut self.links[uid];
        let Some(at) = link.deadline else { return };
        let tick = self.wheel.tick_of(at);
        if tick < link.armed.tick() {
            self.wheel.remove(link.armed, uid, link.gen);
            link.armed = self.wheel.insert(at, uid, link.gen);
        }
    }
}

fn token(key: usize, gen: u32) -> u64 {
    // NOTE(cast): slab keys stay far below 2^32.
    (key as u64) << 32 | u64::from(gen)
}

fn untoken(token: u64) -> (usize, u32) {
    // NOTE(cast): the halves of a token built by `token`.
    ((token >> 32) as usize, token as u32)
}
