//! The epoll backend (through mio): edge-triggered, one `Poll` per core.
//!
//! Each connection is registered once for READABLE | WRITABLE and never
//! re-registered: with edge triggering, a writable edge arrives only after
//! a write met a full socket buffer, so interest never has to change.
//! Reads go into one per-core buffer and are handed straight to `Conn`;
//! a read shorter than the buffer means the socket is drained (TCP), which
//! saves the read that would return EAGAIN. Everything one read produced
//! leaves in one write; file bodies leave through sendfile(2), straight
//! from the page cache.

use std::io::{self, Read, Write};
use std::net::Shutdown as Direction;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use nix::libc;
use slab::Slab;
use socket2::SockRef;

use super::upstream::{Clients, Readiness, Ticket, Upstreams};
use super::wheel::{Armed, Wheel};
use super::{send_file, Core, CoreReport, Deliver, Env, Slot, FILE_BYTES_PER_TURN};
use crate::handler::Handler;
use crate::http::Conn;

const WAKER: Token = Token(usize::MAX - 2);
/// Tokens with this bit (and not `UPSTREAM`) name listener `token & !LISTENERS`.
const LISTENERS: usize = 1 << 61;
/// Tokens with this bit name upstream links: bit 62, the link's
/// generation above bit 32, its key below.
const UPSTREAM: usize = 1 << 62;
/// Events taken per epoll_wait. 1024 keeps a -c1000 load to one wait per
/// turn without a large buffer.
const EVENTS: usize = 1024;
/// Full-buffer reads one connection may take per turn before others get
/// their turn (it goes to the ready list and continues next turn).
const READS_PER_TURN: usize = 16;
/// Files up to this size follow their head in the same TCP segment
/// (MSG_MORE on the head): 4 KiB files cost a quarter less CPU. Larger
/// ones are not corked: measured on loopback, corking a 1 MiB body made
/// delivery twice as fast but cost about 40% more server CPU per response.
const CORK_FILE: u64 = 64 * 1024;
/// How long accept stays paused after EMFILE/ENFILE before it is retried.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// One connection slot.
struct Entry {
    stream: TcpStream,
    conn: Conn,
    gen: u32,
    /// Where its deadline is armed in the wheel (at most one entry per
    /// connection), or `Armed::NONE`.
    armed: Armed,
    /// The kernel may hold bytes we have not read (edge-triggered).
    unread: bool,
    /// The peer shut its side (EPOLLRDHUP): read until 0.
    peer_closed: bool,
    /// The peer's IPv4 address, for X-Forwarded-For; 0: not known (an
    /// IPv6 peer is looked up per forwarded request). Fits in padding.
    peer_v4: u32,
    /// Write side shut; reading and dropping until EOF or this deadline.
    linger_until: Option<Instant>,
}

/// Why accept is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paused {
    No,
    /// The slab holds max_conns; resumes when one closes.
    Full,
    /// The process or system ran out of descriptors; retried at this time.
    NoFiles(Instant),
}

struct Loop<H> {
    id: usize,
    poll: Poll,
    /// Usually one; more when inherited sockets outnumber the workers.
    /// Emptied (deregistered and closed) when the drain begins.
    listeners: Vec<TcpListener>,
    conns: Slab<Entry>,
    wheel: Wheel,
    scratch: Vec<u8>,
    ready: Vec<(usize, u32)>,
    due: Vec<(usize, u32)>,
    env: Env<H>,
    up: Upstreams,
    /// Clients whose pending reply progressed: driven at the end of the turn.
    touched: Vec<Ticket>,
    now: Instant,
    next_gen: u32,
    paused: Paused,
    max_conns: usize,
    linger: Duration,
    shutdown: crate::shutdown::Shutdown,
    shutdown_timeout: Duration,
    drain_deadline: Option<Instant>,
    draining_from: usize,
}

/// Runs one core's loop until shutdown completes.
pub fn run<H: Handler>(mut core: Core, handler: H) -> io::Result<CoreReport> {
    let started = core.started.take();
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    core.shutdown.add_waker(waker);
    let mut listeners = Vec::new();
    for (i, l) in core.listeners.into_iter().enumerate() {
        let mut l = TcpListener::from_std(l);
        poll.registry()
            .register(&mut l, Token(LISTENERS | i), Interest::READABLE)?;
        listeners.push(l);
    }
    let now = Instant::now();
    let config = &core.config;
    if let Some(bp) = &config.busy_poll {
        super::busy_poll_listeners(&listeners, bp)?;
        let back = set_busy_poll(&poll, bp)?;
        log::info!(
            "core {}: busy polling {} us, budget {}, prefer {} (read back from epoll)",
            core.id,
            back.busy_poll_usecs,
            back.busy_poll_budget,
            back.prefer_busy_poll != 0
        );
        core.stats
            .busy_poll_usecs
            .store(back.busy_poll_usecs, std::sync::atomic::Ordering::Relaxed);
    }
    let mut scratch = vec![0; config.read_buffer];
    if config.numa != crate::numa::Policy::Off {
        // calloc'd memory may be untouched: place it now, by this core.
        scratch.fill(1);
    }
    super::record_placement(core.id, config, &core.stats, scratch.as_ptr(), None);
    let mut lp = Loop {
        id: core.id,
        poll,
        listeners,
        conns: Slab::with_capacity(config.max_conns.min(4096)),
        wheel: Wheel::new(now),
        scratch,
        ready: Vec::new(),
        due: Vec::new(),
        up: Upstreams::new(&config.upstreams, &config.proxy, core.stats.clone(), now),
        env: Env::new(
            config,
            core.stats,
            handler,
            core.access_log.take(),
            core.cpu,
        ),
        touched: Vec::new(),
        now,
        next_gen: 0,
        paused: Paused::No,
        max_conns: config.max_conns,
        linger: config.linger_timeout,
        shutdown: core.shutdown,
        shutdown_timeout: config.shutdown_timeout,
        drain_deadline: None,
        draining_from: 0,
    };
    if let Some(started) = started {
        let _ = started.send(lp.id);
    }
    lp.run()
}

/// EPIOCSPARAMS (Linux 6.9): the epoll instance busy-polls its sockets'
/// NAPI instances; returns the parameters as read back.
fn set_busy_poll(poll: &Poll, bp: &crate::config::BusyPoll) -> io::Result<super::sys::EpollParams> {
    super::sys::set_epoll_busy_poll(poll.as_raw_fd(), bp.usecs, bp.budget, bp.prefer).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--busy-poll: epoll busy-poll parameters (EPIOCSPARAMS, Linux 6.9): {e}"),
        )
    })
}

impl<H: Handler> Loop<H> {
    fn run(&mut self) -> io::Result<CoreReport> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.env.stats.poll_wakeups.inc();
            self.now = Instant::now();
            self.env.date.update(SystemTime::now());
            self.env.tick(self.now);
            if self.drain_deadline.is_none() && self.shutdown.is_triggered() {
                self.begin_drain();
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(t) if t & UPSTREAM != 0 => self.on_upstream(t, event),
                    Token(t) if t & LISTENERS != 0 => self.accept(t & !LISTENERS),
                    Token(key) => self.on_event(key, event),
                }
            }
            self.run_ready();
            self.expire();
            self.run_touched();
            if let Paused::NoFiles(at) = self.paused {
                if self.now >= at {
                    self.accept_all();
                }
            }
            if let Some(report) = self.drain_done() {
                return Ok(report);
            }
        }
    }

    /// How long epoll_wait may sleep: until the next timer, the accept
    /// retry or the drain deadline; zero when connections wait their turn.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut timeout = self.wheel.next_timeout(self.now);
        if let Some(d) = self.up.next_timeout(self.now) {
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        let mut consider = |at: Instant| {
            let d = at.saturating_duration_since(self.now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        };
        if let Paused::NoFiles(at) = self.paused {
            consider(at);
        }
        if let Some(at) = self.drain_deadline {
            consider(at);
        }
        if let Some(at) = self.env.log_due() {
            consider(at);
        }
        // mio rounds up to whole milliseconds, so a due timer never spins.
        timeout
    }

    /// After a pause: every listener may hold connections (their edges
    /// came while paused).
    fn accept_all(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn accept(&mut self, i: usize) {
        // Connections known to wait: the event promises one; when they run
        // out, the queue length is asked (one getsockopt per batch) instead
        // of paying for an accept that fails with EAGAIN.
        let mut waiting = 1;
        loop {
            if self.conns.len() >= self.max_conns {
                self.pause(Paused::Full);
                return;
            }
            let Some(listener) = self.listeners.get(i) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    let fd = listener.as_raw_fd();
                    self.add(stream, peer);
                    waiting -= 1;
                    if waiting == 0 {
                        // An arrival after this check is a new edge.
                        waiting = super::sys::accept_queue_len(fd).unwrap_or(1);
                        if waiting == 0 {
                            self.paused = Paused::No;
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.paused = Paused::No;
                    return;
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    self.pause(Paused::NoFiles(self.now + ACCEPT_RETRY));
                    log::debug!("core {}: accept: {e}", self.id);
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("core {}: accept failed: {e}", self.id);
                    return;
                }
            }
        }
    }

    fn pause(&mut self, why: Paused) {
        if self.paused == Paused::No {
            match why {
                Paused::Full => log::warn!(
                    "core {}: {} connections open (--max-conns): not accepting until one closes",
                    self.id,
                    self.conns.len()
                ),
                _ => log::warn!(
                    "core {}: out of file descriptors: accept paused, retrying every {} ms",
                    self.id,
                    ACCEPT_RETRY.as_millis()
                ),
            }
        }
        self.paused = why;
    }

    /// Registers an accepted connection (TCP_NODELAY came from the listener).
    fn add(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        let Some(conn) = self.env.new_conn(self.now, || Some(peer.ip())) else {
            return;
        };
        self.env.count_incoming(stream.as_raw_fd());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("core {}: register connection: {e}", self.id);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        entry.insert(Entry {
            stream,
            conn,
            gen: self.next_gen,
            armed: Armed::NONE,
            unread: true,
            peer_closed: false,
            peer_v4: match peer.ip() {
                std::net::IpAddr::V4(ip) => ip.to_bits(),
                std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().map_or(0, |ip| ip.to_bits()),
            },
            linger_until: None,
        });
        self.env.stats.accepted.inc();
        self.env.stats.active.inc();
        self.arm(key);
    }

    fn on_event(&mut self, key: usize, event: &mio::event::Event) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let closed = event.is_read_closed() || event.is_error();
        let readable = event.is_readable() || closed;
        let writable = event.is_writable();
        if readable {
            entry.unread = true;
        }
        // A FIN that came with the last bytes ends this edge: the short
        // read that drains them must not be taken as "nothing more".
        entry.peer_closed |= closed;
        if entry.linger_until.is_some() {
            self.linger_read(key);
            return;
        }
        if readable || writable {
            self.drive(key);
        }
    }

    /// Reads, hands bytes to the connection, flushes, and repeats while the
    /// connection can take more; then closes it or re-arms its timer.
    fn drive(&mut self, key: usize) {
        let mut reads = 0;
        loop {
            let Some(entry) = self.conns.get_mut(key) else {
                return;
            };
            if entry.unread && entry.conn.wants_read() {
                if reads == READS_PER_TURN {
                    self.ready.push((key, entry.gen));
                    break;
                }
                reads += 1;
                if self.receive(key).is_err() {
                    self.close(key);
                    return;
                }
            }
            match self.flush(key) {
                Err(_) => {
                    self.close(key);
                    return;
                }
                Ok(true) => continue,
                Ok(false) => {}
            }
            let Some(entry) = self.conns.get_mut(key) else {
                return;
            };
            if !(entry.unread && entry.conn.wants_read()) {
                break;
            }
        }
        self.forward(key);
        self.settle(key);
    }

    /// Sends a request the connection forwards, or reads more of its
    /// reply once the connection has room for it.
    fn forward(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(step) = super::upstream_step(e, key, &mut self.up, self.now) {
            self.with_upstreams(|up, r, c, now| up.advance(step, now, r, c));
        }
    }

    /// Runs `f` on the upstreams with this loop's poller and clients.
    fn with_upstreams(
        &mut self,
        f: impl FnOnce(&mut Upstreams, &mut dyn Readiness, &mut dyn Clients, Instant),
    ) {
        let mut r = Watch(self.poll.registry());
        let mut c = Deliver {
            conns: &mut self.conns,
            env: &mut self.env,
            now: self.now,
            marks: &mut self.touched,
        };
        f(&mut self.up, &mut r, &mut c, self.now);
    }

    fn on_upstream(&mut self, token: usize, event: &mio::event::Event) {
        let uid = token & 0xffff_ffff;
        // NOTE(cast): the 30 bits above bit 32 hold the generation.
        let gen = ((token & !UPSTREAM) >> 32) as u32;
        let hung_up = event.is_read_closed() || event.is_error();
        let (readable, writable) = (event.is_readable(), event.is_writable() || event.is_error());
        self.with_upstreams(|up, r, c, now| {
            up.on_ready(uid, gen, readable, writable, hung_up, now, r, c)
        });
    }

    /// Drives the clients whose replies progressed.
    fn run_touched(&mut self) {
        while !self.touched.is_empty() {
            let touched = std::mem::take(&mut self.touched);
            for &(key, gen) in &touched {
                if self.conns.get(key).is_some_and(|e| e.gen == gen) {
                    self.drive(key);
                }
            }
            if self.touched.is_empty() {
                self.touched = touched;
                self.touched.clear();
            }
        }
    }

    /// One read into the core's buffer, handed to the connection.
    fn receive(&mut self, key: usize) -> io::Result<()> {
        let Some(entry) = self.conns.get_mut(key) else {
            return Ok(());
        };
        loop {
            match entry.stream.read(&mut self.scratch) {
                Ok(0) => {
                    entry.unread = false;
                    entry.conn.handle_eof();
                    return Ok(());
                }
                Ok(n) => {
                    entry.unread = n == self.scratch.len() || entry.peer_closed;
                    entry
                        .conn
                        .handle_input(&self.scratch[..n], &mut self.env.ctx(self.now));
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    entry.unread = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what the connection has pending. Ok(true) when the
    /// connection resumed processing buffered requests and should be
    /// driven again.
    fn flush(&mut self, key: usize) -> io::Result<bool> {
        let Some(entry) = self.conns.get_mut(key) else {
            return Ok(false);
        };
        let mut file_sent = 0;
        loop {
            let out = entry.conn.poll_transmit();
            let from_file = out.is_empty();
            let (len, wrote) = if !out.is_empty() {
                let wrote = if entry
                    .conn
                    .file_behind()
                    .is_some_and(|f| f.len() <= CORK_FILE)
                {
                    // Corked until sendfile adds the body: head and a small
                    // file leave in one segment.
                    SockRef::from(&entry.stream)
                        .send_with_flags(out, libc::MSG_MORE | libc::MSG_NOSIGNAL)
                } else {
                    entry.stream.write(out)
                };
                (out.len(), wrote)
            } else if let Some(file) = entry.conn.poll_file() {
                if file_sent >= FILE_BYTES_PER_TURN {
                    self.ready.push((key, entry.gen));
                    return Ok(false);
                }
                let len = usize::try_from(file.len())
                    .map_or(FILE_BYTES_PER_TURN, |l| l.min(FILE_BYTES_PER_TURN));
                let wrote = send_file(&entry.stream, file, len);
                file_sent += len;
                (len, wrote)
            } else {
                return Ok(false);
            };
            match wrote {
                Ok(n) => {
                    self.env.stats.bytes_out.add(n as u64);
                    let env = &mut self.env;
                    if entry.conn.on_sent(n, self.now, &env.limits, &mut env.pool) {
                        entry.conn.handle_input(&[], &mut env.ctx(self.now));
                        return Ok(true);
                    }
                    if n < len && !from_file {
                        // The socket buffer is full: a writable edge follows.
                        // (A short sendfile may instead mean the file ended:
                        // the next call says which, EAGAIN or 0.)
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// After a connection was driven: close it, start lingering, or arm
    /// its next deadline.
    fn settle(&mut self, key: usize) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        if !entry.conn.is_done() {
            self.arm(key);
            return;
        }
        if !entry.conn.lingers() {
            self.close(key);
            return;
        }
        let _ = entry.stream.shutdown(Direction::Write);
        entry.linger_until = Some(self.now + self.linger);
        self.linger_read(key);
    }

    /// Reads and drops what a closing peer still sends; closes at EOF.
    fn linger_read(&mut self, key: usize) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            match entry.stream.read(&mut self.scratch) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    entry.unread = false;
                    self.arm(key);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close(key);
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let entry = self.conns.remove(key);
        self.wheel.remove(entry.armed, key, entry.gen);
        if let Some(token) = entry.conn.awaiting() {
            self.with_upstreams(|up, r, c, now| up.cancel(token, now, r, c));
        }
        drop(entry.stream);
        self.env.stats.closed.inc();
        self.env.stats.active.sub(1);
        if self.paused == Paused::Full {
            self.paused = Paused::No;
            self.accept_all();
        }
    }

    /// Puts the entry in the wheel if its deadline is earlier than what is
    /// armed (later deadlines are found when the armed tick fires).
    fn arm(&mut self, key: usize) {
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = entry.linger_until.or_else(|| entry.conn.poll_timeout());
        let Some(at) = deadline else { return };
        let tick = self.wheel.tick_of(at);
        if tick < entry.armed.tick() {
            self.wheel.remove(entry.armed, key, entry.gen);
            entry.armed = self.wheel.insert(at, key, entry.gen);
        }
    }

    fn expire(&mut self) {
        self.with_upstreams(|up, r, c, now| up.expire(now, r, c));
        self.wheel.expire(self.now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for &(key, gen) in &due {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            if entry.gen != gen {
                continue;
            }
            if !self.wheel.holds(entry.armed, key, gen) {
                entry.armed = Armed::NONE;
            }
            match entry.linger_until {
                Some(at) if self.now >= at => self.close(key),
                Some(_) => self.arm(key),
                None => {
                    entry.conn.handle_timeout(&mut self.env.ctx(self.now));
                    self.drive(key);
                }
            }
        }
        self.due = due;
        self.due.clear();
    }

    fn run_ready(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for &(key, gen) in &ready {
            if self.conns.get(key).is_some_and(|e| e.gen == gen) {
                self.drive(key);
            }
        }
        if self.ready.is_empty() {
            self.ready = ready;
            self.ready.clear();
        }
    }

    /// Shutdown began: stop accepting, then give every connection one last
    /// read (a request that raced the signal gets answered) and close the
    /// idle ones.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(self.now + self.shutdown_timeout);
        self.up.drain(&mut Watch(self.poll.registry()));
        // Deregistered first: after a handoff the new process holds the
        // same sockets, so closing our descriptors loses nothing queued.
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.draining_from = self.conns.len();
        let until = self
            .shutdown
            .is_handoff()
            .then(|| self.now + super::HANDOFF_IDLE);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            super::drain_one(&mut entry.conn, until);
            if entry.linger_until.is_none() {
                entry.unread = true;
                self.drive(key);
            }
        }
    }

    /// The report once draining is over: every connection gone, or the
    /// deadline passed (the rest are closed by force and counted).
    fn drain_done(&mut self) -> Option<CoreReport> {
        let deadline = self.drain_deadline?;
        if !self.conns.is_empty() && self.now < deadline {
            return None;
        }
        let forced = self.conns.len();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        self.up.close_all(&mut Watch(self.poll.registry()));
        Some(CoreReport {
            id: self.id,
            drained: self.draining_from.saturating_sub(forced),
            forced,
        })
    }
}

/// Upstream sockets in this loop's epoll, edge-triggered like the clients.
struct Watch<'a>(&'a mio::Registry);

impl Readiness for Watch<'_> {
    fn watch(&mut self, fd: std::os::fd::RawFd, uid: usize, gen: u32) -> io::Result<()> {
        let token = Token(UPSTREAM | (gen as usize & 0x3fff_ffff) << 32 | uid);
        self.0.register(
            &mut mio::unix::SourceFd(&fd),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn unwatch(&mut self, fd: std::os::fd::RawFd, _uid: usize, _gen: u32) {
        let _ = self.0.deregister(&mut mio::unix::SourceFd(&fd));
    }
}

impl Slot for Entry {
    type Mark = Ticket;

    fn gen(&self) -> u32 {
        self.gen
    }

    fn conn(&self) -> &Conn {
        &self.conn
    }

    fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    fn mark(&mut self, key: usize) -> Option<Ticket> {
        Some((key, self.gen))
    }

    fn peer(&mut self) -> Option<std::net::IpAddr> {
        super::peer_ip(&mut self.peer_v4, &self.stream)
    }
}
