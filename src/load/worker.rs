//! One load thread's policy, without sockets: its connections' requests
//! in flight, closed loop (each response lets the next request go) or open
//! loop (requests go at their scheduled times), the connection profile,
//! timeouts, and what is counted. The sockets are a `Wire`: epoll
//! (`load::epoll`) or io_uring (`load::ring`) drive a `Load` through the
//! same calls.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::client::{Done, ReadError, Reader, Sent};
use super::schedule::{Schedule, Segment};

/// What one thread does.
#[derive(Debug)]
pub struct Plan {
    /// The server.
    pub addr: SocketAddr,
    /// One request, as sent.
    pub request: Vec<u8>,
    /// The request is HEAD (responses carry no body).
    pub head_only: bool,
    /// Connections this thread keeps open.
    pub conns: usize,
    /// Requests in flight per connection at most.
    pub depth: usize,
    /// Close a connection after this many responses and open a new one.
    pub reconnect_after: Option<u64>,
    /// Open loop: when each request is due. `None`: closed loop.
    pub schedule: Option<Schedule>,
    /// This thread's connections over the measured time (steps and ramps;
    /// the warm-up holds the first value). `None`: `conns` throughout.
    pub conn_profile: Option<Vec<Segment>>,
    /// The run's start, shared by all threads.
    pub start: Instant,
    /// Responses to requests meant before this (ns from the start) are
    /// not counted.
    pub warmup: u64,
    /// When to stop (ns from the start).
    pub end: u64,
    /// A request unanswered this long (ns) is a timeout error; its
    /// connection is closed and replaced.
    pub timeout: u64,
}

/// Errors by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connections refused, unreachable or failed before connecting.
    pub connect: u64,
    /// Failed reads (a reset).
    pub read: u64,
    /// Failed writes.
    pub write: u64,
    /// Requests unanswered within the timeout.
    pub timeout: u64,
    /// Responses the parser refused (bad status line, head or framing),
    /// or responses nobody asked for.
    pub framing: u64,
    /// Requests in flight when the server closed the connection.
    pub closed: u64,
}

impl Errors {
    /// All errors.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.framing + self.closed
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.framing += o.framing;
        self.closed += o.closed;
    }
}

/// What one thread measured.
#[derive(Debug)]
pub struct Tally {
    /// Latency from the intended send time (microseconds): corrected for
    /// coordinated omission in an open loop; the same as `uncorrected` in
    /// a closed one.
    pub corrected: Histogram<u64>,
    /// Latency from the actual send (microseconds).
    pub uncorrected: Histogram<u64>,
    /// Open loop: how late each request went out (microseconds).
    pub lag: Histogram<u64>,
    /// Responses by status code (index = code, 0..600).
    pub statuses: Vec<u64>,
    /// Responses counted (after the warm-up).
    pub responses: u64,
    /// Responses during the warm-up.
    pub warmup_responses: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// Connections opened.
    pub connects: u64,
    /// Requests written and unanswered at the end.
    pub in_flight_end: u64,
    /// Open loop: requests due by the end that never went out.
    pub unsent_end: u64,
    /// The thread's CPU time (user + system).
    pub cpu: Duration,
}

impl Tally {
    /// Histograms of 1 us to 1 hour at 3 significant digits (constant
    /// bounds, which `new_with_bounds` accepts: low >= 1, high >= 2 * low).
    fn new() -> Tally {
        let hist =
            || Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!());
        Tally {
            corrected: hist(),
            uncorrected: hist(),
            lag: hist(),
            statuses: vec![0; 600],
            responses: 0,
            warmup_responses: 0,
            errors: Errors::default(),
            connects: 0,
            in_flight_end: 0,
            unsent_end: 0,
            cpu: Duration::ZERO,
        }
    }

    /// Adds `other`'s counts and histograms.
    pub fn add(&mut self, o: &Tally) {
        let _ = self.corrected.add(&o.corrected);
        let _ = self.uncorrected.add(&o.uncorrected);
        let _ = self.lag.add(&o.lag);
        for (a, b) in self.statuses.iter_mut().zip(&o.statuses) {
            *a += b;
        }
        self.responses += o.responses;
        self.warmup_responses += o.warmup_responses;
        self.errors.add(&o.errors);
        self.connects += o.connects;
        self.in_flight_end += o.in_flight_end;
        self.unsent_end += o.unsent_end;
        self.cpu += o.cpu;
    }

    /// A tally with nothing counted, to add threads' tallies into.
    pub fn empty() -> Tally {
        Tally::new()
    }
}

/// Counters the live line reads while the threads run.
#[derive(Debug, Default)]
pub struct Live {
    /// Responses so far (warm-up included).
    pub responses: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
}

/// How often timeouts, reconnects and the live counters are looked at.
pub(super) const TICK: u64 = 10_000_000;
/// Before reconnecting after a failed connect.
const RETRY: u64 = 100_000_000;

/// The socket side: connects, closes and sends for a `Load`.
pub trait Wire {
    /// Opens a new socket for slot `id` and starts connecting it; the
    /// backend calls `Load::connected` or `Load::connect_failed` later.
    fn connect(&mut self, id: usize) -> io::Result<()>;
    /// Closes slot `id`'s socket; what is still due for it is dropped.
    fn close(&mut self, id: usize);
    /// Sends `out`'s bytes, taking the ones it sent or now owns (the rest
    /// stays for the next flush). `Err`: the connection failed.
    fn send(&mut self, id: usize, out: &mut Vec<u8>) -> io::Result<()>;
}

#[derive(Debug)]
struct Conn {
    /// A socket is open (connecting or connected).
    open: bool,
    connected: bool,
    reader: Reader,
    out: Vec<u8>,
    /// Requests written on this connection.
    written: u64,
    /// Closed loop: requests to write at the next flush.
    owed: usize,
    /// Open loop: in the list of connections that can take a request.
    listed: bool,
    touched: bool,
    /// When to connect again (ns), if waiting to.
    retry_at: Option<u64>,
    /// Above the connection profile's count: takes no more requests and
    /// closes once its last response is in.
    retired: bool,
}

impl Conn {
    fn new(head_only: bool) -> Conn {
        Conn {
            open: false,
            connected: false,
            reader: Reader::new(head_only),
            out: Vec::new(),
            written: 0,
            owed: 0,
            listed: false,
            touched: false,
            retry_at: None,
            retired: false,
        }
    }
}

/// One thread's connections and counts; the backends drive it.
#[derive(Debug)]
pub struct Load<'a> {
    plan: Plan,
    conns: Vec<Conn>,
    touched: Vec<usize>,
    idle: Vec<usize>,
    tally: Tally,
    live: &'a Live,
}

impl<'a> Load<'a> {
    /// A thread's load, its connections not yet opened.
    pub fn new(plan: Plan, live: &'a Live) -> Load<'a> {
        let conns = (0..plan.conns).map(|_| Conn::new(plan.head_only)).collect();
        Load {
            plan,
            conns,
            touched: Vec::new(),
            idle: Vec::new(),
            tally: Tally::new(),
            live,
        }
    }

    /// The counts, once the run is over.
    pub fn finish(mut self) -> Tally {
        let mut tally = self.tally;
        if self.plan.schedule.is_none() {
            tally.uncorrected = tally.corrected.clone();
        }
        tally.in_flight_end = self.conns.iter().map(|c| c.reader.in_flight() as u64).sum();
        if let Some(s) = &mut self.plan.schedule {
            while s.peek().is_some_and(|t| t < self.plan.end) {
                tally.unsent_end += 1;
                s.advance();
            }
        }
        tally.cpu = thread_cpu();
        tally
    }

    /// Whether this is an open loop.
    pub fn open_loop(&self) -> bool {
        self.plan.schedule.is_some()
    }

    /// When to stop (ns from the start).
    pub fn end(&self) -> u64 {
        self.plan.end
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.plan.addr
    }

    /// Opens every connection of the plan.
    pub fn start(&mut self, wire: &mut impl Wire) {
        let now = self.now();
        for id in 0..self.conns.len() {
            self.open(id, now, wire);
        }
    }

    /// Before the backend waits, and between events in an open loop:
    /// sends what is due and owed.
    pub fn send_due(&mut self, now: u64, wire: &mut impl Wire) {
        self.dispatch(now);
        self.flush(now, wire);
    }

    /// At the end: requests that fell due just before it still go out
    /// (and count as in flight); only those no connection could take are
    /// left unsent.
    pub fn stop(&mut self, wire: &mut impl Wire) {
        let now = self.now();
        self.dispatch(now.min(self.plan.end.saturating_sub(1)));
        self.flush(now, wire);
        self.tick(now, wire);
    }

    /// Nanoseconds since the run's start.
    pub fn now(&self) -> u64 {
        super::nanos(self.plan.start.elapsed())
    }

    /// Whether slot `id` has connected.
    pub fn is_connected(&self, id: usize) -> bool {
        self.conns.get(id).is_some_and(|c| c.connected)
    }

    /// Slot `id` connected: it may take requests.
    pub fn connected(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.connected = true;
        self.tally.connects += 1;
        self.ready(id);
        self.mark(id);
    }

    /// Slot `id`'s connect failed: count it, retry later.
    pub fn connect_failed(&mut self, id: usize, now: u64, wire: &mut impl Wire) {
        self.tally.errors.connect += 1;
        self.replace(id, now, true, wire);
    }

    /// Slot `id` is writable again: flush what waits.
    pub fn writable(&mut self, id: usize) {
        if id < self.conns.len() {
            self.mark(id);
        }
    }

    /// Bytes arrived on slot `id`. Returns false when the connection was
    /// replaced (the backend stops reading its old socket).
    pub fn received(&mut self, id: usize, bytes: &[u8], now: u64, wire: &mut impl Wire) -> bool {
        let (tally, warmup) = (&mut self.tally, self.plan.warmup);
        let open = self.plan.schedule.is_some();
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        let mut completed = 0;
        let fed = c.reader.feed(bytes, |d| {
            completed += 1;
            record(tally, d, now, warmup, open);
        });
        if let Err(e) = fed {
            self.tally.errors.framing += 1;
            if e == ReadError::Framing {
                self.tally.errors.closed += c.reader.in_flight() as u64;
            }
            self.replace(id, now, false, wire);
            return false;
        }
        if completed > 0 && self.answered(id, now, wire) {
            return false;
        }
        self.mark(id);
        true
    }

    /// A read on slot `id` failed (a reset).
    pub fn read_failed(&mut self, id: usize, now: u64, wire: &mut impl Wire) {
        if let Some(c) = self.conns.get(id) {
            self.tally.errors.read += 1;
            self.tally.errors.closed += c.reader.in_flight() as u64;
            self.replace(id, now, false, wire);
        }
    }

    /// A write on slot `id` failed.
    pub fn write_failed(&mut self, id: usize, now: u64, wire: &mut impl Wire) {
        if let Some(c) = self.conns.get(id) {
            self.tally.errors.write += 1;
            self.tally.errors.closed += c.reader.in_flight() as u64;
            self.replace(id, now, false, wire);
        }
    }

    /// The server closed slot `id`: a body framed by the close ends; what
    /// was still in flight is lost.
    pub fn eof(&mut self, id: usize, now: u64, wire: &mut impl Wire) {
        let (tally, warmup) = (&mut self.tally, self.plan.warmup);
        let open = self.plan.schedule.is_some();
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.reader.eof(|d| record(tally, d, now, warmup, open));
        self.tally.errors.closed += c.reader.in_flight() as u64;
        self.replace(id, now, false, wire);
    }

    /// How long to block: until the next tick, or (open loop) the next
    /// due request (at once when one is due and a connection is free).
    /// Both backends spin instead when this is under a millisecond.
    pub fn wait(&mut self, now: u64, next_tick: u64) -> Duration {
        let mut until = next_tick.min(self.plan.end);
        if let Some(s) = &mut self.plan.schedule {
            if let Some(t) = s.peek() {
                if t > now || !self.idle.is_empty() {
                    until = until.min(t);
                }
            }
        }
        Duration::from_nanos(until.saturating_sub(now))
    }

    fn open(&mut self, id: usize, now: u64, wire: &mut impl Wire) {
        let c = &mut self.conns[id];
        c.retry_at = None;
        match wire.connect(id) {
            Ok(()) => c.open = true,
            Err(_) => {
                self.tally.errors.connect += 1;
                c.retry_at = Some(now + RETRY);
            }
        }
    }

    /// Drops connection `id` and opens a new one now (`retry`: later; a
    /// retired one stays closed).
    fn replace(&mut self, id: usize, now: u64, retry: bool, wire: &mut impl Wire) {
        let c = &mut self.conns[id];
        if c.open {
            wire.close(id);
        }
        c.open = false;
        c.connected = false;
        c.reader.reset();
        c.out.clear();
        c.written = 0;
        c.owed = 0;
        c.retry_at = None;
        if c.retired {
            return;
        }
        if retry {
            c.retry_at = Some(now + RETRY);
        } else {
            self.open(id, now, wire);
        }
    }

    /// A connection can take requests: closed loop, top its pipeline up
    /// once half of it (or all of it) has been answered, so one write
    /// carries several requests and one read several responses; open
    /// loop, list it.
    fn ready(&mut self, id: usize) {
        let room = self.room(id);
        let batch = self.plan.depth.div_ceil(2);
        let c = &mut self.conns[id];
        if self.plan.schedule.is_none() {
            if c.owed + room >= batch || c.reader.in_flight() == 0 {
                c.owed += room;
            }
        } else if room > 0 && !c.listed {
            c.listed = true;
            self.idle.push(id);
        }
    }

    /// Requests connection `id` may still take now.
    fn room(&self, id: usize) -> usize {
        let c = &self.conns[id];
        if !c.connected || c.reader.closing() || c.retired {
            return 0;
        }
        let mut room = self
            .plan
            .depth
            .saturating_sub(c.reader.in_flight() + c.owed);
        if let Some(limit) = self.plan.reconnect_after {
            let left = limit.saturating_sub(c.written + c.owed as u64);
            room = room.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        room
    }

    fn mark(&mut self, id: usize) {
        let c = &mut self.conns[id];
        if !c.touched {
            c.touched = true;
            self.touched.push(id);
        }
    }

    /// Responses came in on `id`: replace it when it is done (server
    /// closing, or `--reconnect-after`; returns true), else let more
    /// requests go.
    fn answered(&mut self, id: usize, now: u64, wire: &mut impl Wire) -> bool {
        let c = &self.conns[id];
        if c.reader.in_flight() == 0 {
            let spent = self.plan.reconnect_after.is_some_and(|n| c.written >= n);
            if c.reader.closing() || spent || c.retired {
                self.replace(id, now, false, wire);
                return true;
            }
        }
        self.ready(id);
        false
    }

    /// Open loop: hands each due request to a connection with room.
    fn dispatch(&mut self, now: u64) {
        let Some(mut s) = self.plan.schedule.take() else {
            return;
        };
        while let Some(t) = s.peek().filter(|&t| t <= now) {
            let Some(id) = self.idle.last().copied() else {
                break;
            };
            if self.room(id) == 0 {
                self.idle.pop();
                self.conns[id].listed = false;
                continue;
            }
            s.advance();
            let c = &mut self.conns[id];
            c.reader.sent(Sent {
                intended: t,
                actual: now,
            });
            c.out.extend_from_slice(&self.plan.request);
            c.written += 1;
            if t >= self.plan.warmup {
                self.tally.lag.saturating_record((now - t) / 1000);
            }
            self.mark(id);
        }
        self.plan.schedule = Some(s);
    }

    /// Writes what every touched connection owes, one send each.
    fn flush(&mut self, now: u64, wire: &mut impl Wire) {
        while let Some(id) = self.touched.pop() {
            let c = &mut self.conns[id];
            c.touched = false;
            for _ in 0..c.owed {
                c.reader.sent(Sent {
                    intended: now,
                    actual: now,
                });
                c.out.extend_from_slice(&self.plan.request);
            }
            c.written += c.owed as u64;
            c.owed = 0;
            if !c.connected || c.out.is_empty() {
                continue;
            }
            if wire.send(id, &mut c.out).is_err() {
                self.write_failed(id, now, wire);
            }
        }
    }

    /// Opens or retires connections to match the profile at `now`.
    fn follow(&mut self, now: u64, wire: &mut impl Wire) {
        let Some(profile) = &self.plan.conn_profile else {
            return;
        };
        let target = conns_at(profile, now.saturating_sub(self.plan.warmup));
        let mut active = self.conns.iter().filter(|c| !c.retired).count();
        let mut id = 0;
        while active < target {
            match self.conns[id..].iter().position(|c| c.retired && !c.open) {
                Some(i) => id += i,
                None => {
                    id = self.conns.len();
                    self.conns.push(Conn::new(self.plan.head_only));
                }
            }
            self.conns[id].retired = false;
            self.open(id, now, wire);
            active += 1;
        }
        for id in (0..self.conns.len()).rev() {
            if active <= target {
                break;
            }
            if self.conns[id].retired {
                continue;
            }
            self.conns[id].retired = true;
            active -= 1;
            if self.conns[id].reader.in_flight() == 0 {
                self.replace(id, now, false, wire);
            }
        }
    }

    /// Timeouts, due reconnects, the connection profile and the live
    /// counters.
    pub fn tick(&mut self, now: u64, wire: &mut impl Wire) {
        self.follow(now, wire);
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            if c.retry_at.is_some_and(|t| t <= now) {
                self.open(id, now, wire);
                continue;
            }
            let late = c
                .reader
                .oldest()
                .is_some_and(|s| now.saturating_sub(s.actual) > self.plan.timeout);
            if late {
                self.tally.errors.timeout += c.reader.in_flight() as u64;
                self.replace(id, now, false, wire);
            }
        }
        let t = &self.tally;
        self.live
            .responses
            .store(t.responses + t.warmup_responses, Ordering::Relaxed);
        self.live.errors.store(t.errors.total(), Ordering::Relaxed);
    }
}

/// The connection count a profile asks for `at` ns into it (the first
/// value before it, the last after it), at least 1.
pub fn conns_at(profile: &[Segment], at: u64) -> usize {
    let mut start = 0.0;
    let t = at as f64 / 1e9;
    let mut value = profile.first().map_or(1.0, |s| s.from);
    for s in profile {
        let len = s.length.as_secs_f64();
        if t < start + len {
            value = s.from + (s.to - s.from) * ((t - start) / len).max(0.0);
            break;
        }
        value = s.to;
        start += len;
    }
    (value.round() as usize).max(1)
}

fn record(t: &mut Tally, d: Done, now: u64, warmup: u64, open: bool) {
    if d.sent.intended < warmup {
        t.warmup_responses += 1;
        return;
    }
    t.responses += 1;
    t.corrected
        .saturating_record(now.saturating_sub(d.sent.intended) / 1000);
    // In a closed loop the two are one (copied at the end).
    if open {
        t.uncorrected
            .saturating_record(now.saturating_sub(d.sent.actual) / 1000);
    }
    if let Some(n) = t.statuses.get_mut(usize::from(d.status)) {
        *n += 1;
    }
}

/// The calling thread's CPU time (getrusage(RUSAGE_THREAD)).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD)
        .map(|u| {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
            };
            tv(u.user_time()) + tv(u.system_time())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counts_follow_steps_and_ramps() {
        let p = crate::load::schedule::parse_profile("4@1s,4..24@2s,2@1s").unwrap();
        let at = |ms: u64| conns_at(&p, ms * 1_000_000);
        assert_eq!(at(0), 4);
        assert_eq!(at(999), 4);
        assert_eq!(at(2000), 14);
        assert_eq!(at(3500), 2);
        assert_eq!(at(9000), 2);
        let low = crate::load::schedule::parse_profile("0.2@1s").unwrap();
        assert_eq!(conns_at(&low, 0), 1);
    }
}
