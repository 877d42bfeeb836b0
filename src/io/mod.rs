//! Event-loop backends. Each core runs one loop that owns its listener,
//! its poller, its slab of connections, its buffer pool, its timers and its
//! handler, and drives `http::Conn` for every connection:
//!
//! accept -> receive -> hand bytes to `Conn` -> flush `poll_transmit` ->
//! arm the timer from `poll_timeout` -> close when `is_done` (lingering
//! when `lingers`).
//!
//! Every backend exposes `run(Core, handler) -> io::Result<CoreReport>` and
//! keeps these names in this order, so the files can be read side by side.
//! Shutdown: each loop checks the shared flag once per turn and is woken
//! through its waker; it stops accepting (cancels its accepts, or
//! deregisters its listeners) and closes its descriptors of the listeners,
//! reads what idle connections already hold, answers in-flight requests
//! with `Connection: close`, and returns when its slab is empty or the
//! drain deadline passes. In a handoff drain (an upgrade) idle connections
//! get `HANDOFF_IDLE` to send one more request first.

pub mod buf_ring;
pub mod epoll;
pub mod region;
mod resident;
mod sys;
mod upstream;
pub mod uring;
pub mod wheel;

use std::io;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_utils::CachePadded;

use crate::config::{Config, Network};
use crate::handler::Handler;
use crate::http::{Conn, Ctx, DateCache, FileBody, Limits};
use crate::metrics::CoreStats;
use crate::pool::BufPool;
use crate::shutdown::Shutdown;

/// Everything one core's loop starts with.
#[derive(Debug)]
pub struct Core {
    /// Core index, 0-based.
    pub id: usize,
    /// The CPU it is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// The listeners this core accepts from (non-blocking, SO_REUSEPORT):
    /// its own, or more or shared ones when inherited sockets and workers
    /// differ in number.
    pub listeners: Vec<TcpListener>,
    /// The server's configuration.
    pub config: Arc<Config>,
    /// This core's counters.
    pub stats: Arc<CachePadded<CoreStats>>,
    /// The shared shutdown flag.
    pub shutdown: Shutdown,
    /// This core's access-log buffer, when the log is on.
    pub access_log: Option<crate::access_log::Sink>,
    /// Told this core's index once its loop is about to start (every
    /// listener registered or its accept queued), then dropped.
    pub started: Option<std::sync::mpsc::Sender<usize>>,
}

/// In a handoff drain (a binary upgrade), how long an idle connection
/// waits for one more request, answered with `Connection: close`, before
/// it closes. A client sending a stream of requests sends its next one
/// well within this, so it moves to the new process without its
/// connection closing under a request in flight.
pub const HANDOFF_IDLE: Duration = Duration::from_secs(1);

/// Tells a connection the drain began: a handoff (`until`: when an idle
/// one closes) or a plain stop.
fn drain_one(conn: &mut Conn, until: Option<Instant>) {
    match until {
        Some(until) => conn.handle_handoff(until),
        None => conn.handle_shutdown(),
    }
}

/// `--accept cpu` on a SO_REUSEPORT group (through one of its sockets).
pub fn steer_by_cpu(socket: &impl std::os::fd::AsRawFd, cpus: &[usize]) -> io::Result<()> {
    sys::attach_cpu_steering(socket.as_raw_fd(), cpus)
}

/// `--busy-poll` on a core's listeners (accepted sockets inherit it).
fn busy_poll_listeners(
    listeners: &[impl std::os::fd::AsRawFd],
    bp: &crate::config::BusyPoll,
) -> io::Result<()> {
    for l in listeners {
        sys::set_socket_busy_poll(l.as_raw_fd(), bp.usecs, bp.budget, bp.prefer).map_err(|e| {
            let hint = if e.raw_os_error() == Some(nix::libc::EPERM) {
                " (raising SO_BUSY_POLL needs CAP_NET_ADMIN)"
            } else {
                ""
            };
            io::Error::new(
                e.kind(),
                format!("--busy-poll: SO_BUSY_POLL on a listener: {e}{hint}"),
            )
        })?;
    }
    Ok(())
}

/// How a core's loop ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreReport {
    /// Core index.
    pub id: usize,
    /// Connections open when shutdown began that closed gracefully.
    pub drained: usize,
    /// Connections closed by force at the drain deadline.
    pub forced: usize,
}

/// File bytes one connection may send with sendfile per turn before the
/// others get theirs: a fast reader of a large file would otherwise keep
/// the loop in sendfile.
const FILE_BYTES_PER_TURN: usize = 1 << 20;

/// sendfile(2) of up to `len` bytes of `file` from its offset to `sock`.
/// A file that ends early (truncated while being served) is an error: the
/// response promised its length, so the connection must close.
fn send_file(sock: impl AsFd, file: &FileBody, len: usize) -> io::Result<usize> {
    let mut offset = i64::try_from(file.offset())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file offset past 2^63"))?;
    match nix::sys::sendfile::sendfile64(sock, file.file(), Some(&mut offset), len) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being sent",
        )),
        Ok(n) => Ok(n),
        Err(e) => Err(e.into()),
    }
}

/// The client's address for X-Forwarded-For: an IPv4 address is looked up
/// once per connection (`cached`, 0 until known), an IPv6 one per call.
fn peer_ip(cached: &mut u32, sock: impl AsFd) -> Option<std::net::IpAddr> {
    if *cached != 0 {
        return Some(std::net::Ipv4Addr::from_bits(*cached).into());
    }
    let addr = socket2::SockRef::from(&sock)
        .peer_addr()
        .ok()?
        .as_socket()?;
    let ip = match addr.ip() {
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(ip.into(), Into::into),
        ip => ip,
    };
    if let std::net::IpAddr::V4(v4) = ip {
        *cached = v4.to_bits();
    }
    Some(ip)
}

/// A backend's connection slot, as replies from upstreams reach it.
trait Slot {
    /// What the backend queues to drive the slot after its reply moved.
    type Mark;
    fn gen(&self) -> u32;
    fn conn(&self) -> &crate::http::Conn;
    fn conn_mut(&mut self) -> &mut crate::http::Conn;
    /// The mark to queue for slot `key`, if it is not queued already.
    fn mark(&mut self, key: usize) -> Option<Self::Mark>;
    /// The client's address, for X-Forwarded-For.
    fn peer(&mut self) -> Option<std::net::IpAddr>;
}

/// What a connection waiting on an upstream needs next, if anything: its
/// request handed to the upstreams (to be sent), or more of its reply
/// read now that it has room.
fn upstream_step<E: Slot>(
    e: &mut E,
    key: usize,
    up: &mut upstream::Upstreams,
    now: Instant,
) -> Option<upstream::Step> {
    if let Some(out) = e.conn_mut().take_outgoing() {
        // A PROXY header's client comes first: the peer is its balancer.
        let peer = e.conn().client_addr().map(|a| a.ip()).or_else(|| e.peer());
        let token = up.open((key, e.gen()), out, peer, now);
        e.conn_mut().set_awaiting(token);
        return Some(upstream::Step::Dispatch(token));
    }
    let conn = e.conn();
    conn.awaiting()
        .filter(|_| conn.reply_room())
        .map(upstream::Step::Resume)
}

/// The clients, as the upstreams see them: a backend's slab and core state.
struct Deliver<'a, H, E: Slot> {
    conns: &'a mut slab::Slab<E>,
    env: &'a mut Env<H>,
    now: Instant,
    marks: &'a mut Vec<E::Mark>,
}

impl<H: Handler, E: Slot> upstream::Clients for Deliver<'_, H, E> {
    fn room(&self, (key, gen): upstream::Ticket) -> bool {
        self.conns
            .get(key)
            .filter(|e| e.gen() == gen)
            .is_none_or(|e| e.conn().reply_room())
    }

    fn deliver(&mut self, (key, gen): upstream::Ticket, event: upstream::Event<'_>) {
        let Some(e) = self.conns.get_mut(key).filter(|e| e.gen() == gen) else {
            return;
        };
        deliver(e.conn_mut(), event, &mut self.env.ctx(self.now));
        if let Some(mark) = e.mark(key) {
            self.marks.push(mark);
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        self.env.pool.give(buf);
    }
}

/// Hands a connection its pending reply's progress; the same in both
/// backends.
fn deliver<H: Handler>(
    conn: &mut crate::http::Conn,
    event: upstream::Event<'_>,
    ctx: &mut Ctx<'_, H>,
) {
    match event {
        upstream::Event::Head(head) => conn.handle_reply_head(head, ctx),
        upstream::Event::Body(bytes) => {
            conn.handle_reply_body(bytes, ctx.now, ctx.limits, ctx.pool)
        }
        upstream::Event::End => conn.handle_reply_end(ctx),
        upstream::Event::Fail(cause) => {
            conn.handle_reply_error(cause.status(), cause.message(), ctx)
        }
    }
}

/// Records, and logs, where a core's receive buffers landed: the node of
/// their first page (`--numa`'s read-back) and, for io_uring's ring, the
/// bytes on huge pages (`--huge-pages`' read-back).
fn record_placement(
    id: usize,
    config: &Config,
    stats: &CoreStats,
    first: *const u8,
    ring: Option<&region::Region>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let node = crate::numa::node_of_page(first);
    if let Some(n) = node {
        let plus_one = u32::try_from(n + 1).unwrap_or(0);
        stats.memory_node.store(plus_one, Relaxed);
    }
    let huge = ring.map(|r| r.huge_bytes().unwrap_or(0));
    stats.huge_page_bytes.store(huge.unwrap_or(0), Relaxed);
    let wanted = config.huge_pages;
    if wanted != region::HugePages::Off && huge == Some(0) {
        log::warn!(
            "core {}: --huge-pages {}: the kernel gave no huge pages for the receive buffers (see /sys/kernel/mm/transparent_hugepage/enabled)",
            id,
            wanted.name()
        );
    }
    if config.numa != crate::numa::Policy::Off || wanted != region::HugePages::Off {
        let node = node.map_or_else(|| "unknown".to_string(), |n| n.to_string());
        let huge = huge.map_or_else(String::new, |b| format!(", {} KiB on huge pages", b / 1024));
        log::info!("core {id}: receive buffers on node {node}{huge}");
    }
}

/// The per-core state every `Conn` call borrows, the same in both backends.
struct Env<H> {
    date: DateCache,
    limits: Limits,
    pool: BufPool,
    stats: Arc<CachePadded<CoreStats>>,
    handler: H,
    /// `--proxy-protocol`: the networks whose connections must open with
    /// a PROXY header; `None`: the protocol is off.
    proxy_from: Option<Vec<Network>>,
    /// The access log's buffer for this core, when it is on.
    log: Option<crate::access_log::Sink>,
    /// `--accept cpu`: this core's CPU, to count connections whose packets
    /// came in on it (SO_INCOMING_CPU, one getsockopt per connection).
    local_cpu: Option<usize>,
}

impl<H: Handler> Env<H> {
    fn new(
        config: &Config,
        stats: Arc<CachePadded<CoreStats>>,
        handler: H,
        log: Option<crate::access_log::Sink>,
        cpu: Option<usize>,
    ) -> Env<H> {
        Env {
            date: DateCache::new(SystemTime::now()),
            limits: config.limits.clone(),
            pool: BufPool::default(),
            stats,
            handler,
            proxy_from: config.proxy_protocol.clone(),
            log,
            local_cpu: cpu.filter(|_| config.accept == crate::config::Accept::Cpu),
        }
    }

    /// A connection was accepted: with `--accept cpu`, counts whether its
    /// packets came in on this core's CPU (the steering's effect).
    fn count_incoming(&self, fd: std::os::fd::RawFd) {
        if let Some(cpu) = self.local_cpu {
            if sys::incoming_cpu(fd) == Some(cpu) {
                self.stats.incoming_cpu_local.inc();
            }
        }
    }

    /// The `Conn` of a connection just accepted, or `None` when it must be
    /// closed at once: `--proxy-protocol` is on and `peer` is not in an
    /// allowed network. `peer` is looked up only for those checks and for
    /// the access log (which then keeps it in the `Conn`).
    fn new_conn(&self, now: Instant, peer: impl FnOnce() -> Option<IpAddr>) -> Option<Conn> {
        let mut conn = Conn::new(now, &self.limits);
        if self.proxy_from.is_none() && self.log.is_none() {
            return Some(conn);
        }
        let peer = peer();
        if let Some(nets) = &self.proxy_from {
            if !peer.is_some_and(|ip| nets.iter().any(|n| n.contains(ip))) {
                self.stats.proxy_refused.inc();
                return None;
            }
            conn.expect_proxy_header();
        }
        if self.log.is_some() {
            conn.set_peer(peer);
        }
        Some(conn)
    }

    /// When the access log wants a turn (to hand over old lines).
    fn log_due(&self) -> Option<Instant> {
        self.log.as_ref().and_then(|l| l.due())
    }

    /// Once per loop turn: lets the access log hand over old lines.
    fn tick(&mut self, now: Instant) {
        if let Some(log) = &mut self.log {
            log.tick(now, self.date.unix_secs());
        }
    }

    fn ctx(&mut self, now: Instant) -> Ctx<'_, H> {
        Ctx {
            now,
            date: &self.date,
            limits: &self.limits,
            pool: &mut self.pool,
            stats: &self.stats,
            handler: &mut self.handler,
            log: self.log.as_mut(),
        }
    }
}
