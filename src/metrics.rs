//! Per-core counters. Each core writes only its own `CoreStats` (plain
//! load + store, no locked instruction); anyone may read them with Relaxed
//! loads and sum across cores: the Prometheus text (`prometheus`) and the
//! periodic stats line (`StatsLine`) are both such readers.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::http::Reject;

/// Every core's counters, in core order, as the server hands them out.
pub type AllStats = [Arc<CachePadded<CoreStats>>];

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning core may call this: the load and the store
    /// are separate, which is what makes it cheap.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Lowers the value by `n` (gauges such as active connections).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Deadline kinds, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No complete head in time.
    Head = 0,
    /// Body stalled.
    Body = 1,
    /// Keep-alive idle.
    Idle = 2,
    /// Response made no progress.
    Write = 3,
}

impl Deadline {
    /// Every kind, in index order.
    pub const ALL: [Deadline; 4] = [
        Deadline::Head,
        Deadline::Body,
        Deadline::Idle,
        Deadline::Write,
    ];

    /// Metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Deadline::Head => "head",
            Deadline::Body => "body",
            Deadline::Idle => "idle",
            Deadline::Write => "write",
        }
    }
}

/// Why an upstream exchange failed, as counted and answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection was refused or failed (502).
    Connect = 0,
    /// No connection within the connect timeout (504).
    ConnectTimeout = 1,
    /// No reply head, or a stalled body, within the reply timeout (504).
    ReplyTimeout = 2,
    /// A reply without valid framing or head (502).
    BadReply = 3,
    /// The upstream closed or reset before the reply was complete (502).
    Closed = 4,
    /// Every server at its connection cap and the queue full (503).
    QueueFull = 5,
    /// Waited in the queue past its timeout (503).
    QueueTimeout = 6,
}

impl UpstreamError {
    /// Every cause, in index order.
    pub const ALL: [UpstreamError; 7] = [
        UpstreamError::Connect,
        UpstreamError::ConnectTimeout,
        UpstreamError::ReplyTimeout,
        UpstreamError::BadReply,
        UpstreamError::Closed,
        UpstreamError::QueueFull,
        UpstreamError::QueueTimeout,
    ];

    /// Metrics label.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::ReplyTimeout => "reply_timeout",
            UpstreamError::BadReply => "bad_reply",
            UpstreamError::Closed => "closed",
            UpstreamError::QueueFull => "queue_full",
            UpstreamError::QueueTimeout => "queue_timeout",
        }
    }

    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            UpstreamError::Connect | UpstreamError::BadReply | UpstreamError::Closed => 502,
            UpstreamError::ConnectTimeout | UpstreamError::ReplyTimeout => 504,
            UpstreamError::QueueFull | UpstreamError::QueueTimeout => 503,
        }
    }

    /// The one-line body the client gets.
    pub fn message(self) -> &'static str {
        match self {
            UpstreamError::Connect => "bad gateway: upstream connection failed",
            UpstreamError::ConnectTimeout => "gateway timeout: upstream connect timed out",
            UpstreamError::ReplyTimeout => "gateway timeout: upstream reply timed out",
            UpstreamError::BadReply => "bad gateway: invalid reply from upstream",
            UpstreamError::Closed => "bad gateway: upstream closed the connection",
            UpstreamError::QueueFull => "service unavailable: upstream busy",
            UpstreamError::QueueTimeout => "service unavailable: upstream busy",
        }
    }
}

/// The counters of one core.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// The core thread's id (gettid), 0 until it runs: its CPU time is
    /// read from /proc when metrics are asked for, never on its own path.
    pub tid: std::sync::atomic::AtomicU32,
    /// `--busy-poll` as the kernel read it back for this core's poller
    /// (microseconds; 0: off).
    pub busy_poll_usecs: std::sync::atomic::AtomicU32,
    /// The NUMA node of the core's CPU, plus one (0: unknown or unpinned).
    pub cpu_node: std::sync::atomic::AtomicU32,
    /// The NUMA node the core's receive buffers sit on, plus one (0:
    /// unknown): the read-back of `--numa`.
    pub memory_node: std::sync::atomic::AtomicU32,
    /// Bytes of the core's receive buffers on huge pages: the read-back
    /// of `--huge-pages`.
    pub huge_page_bytes: std::sync::atomic::AtomicU64,
    /// Requests answered by a handler.
    pub requests: Counter,
    /// Bytes received from peers.
    pub bytes_in: Counter,
    /// Bytes sent to peers.
    pub bytes_out: Counter,
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections closed.
    pub closed: Counter,
    /// Connections open now.
    pub active: Counter,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub responses: [Counter; 5],
    /// Rejected requests by kind, indexed by `Reject::index`.
    pub rejects: [Counter; Reject::ALL.len()],
    /// Deadline expiries by kind, indexed by `Deadline as usize`.
    pub deadlines: [Counter; 4],
    /// Handlers that panicked.
    pub panics: Counter,
    /// `--accept cpu`: accepted connections whose packets came in on this
    /// core's CPU.
    pub incoming_cpu_local: Counter,
    /// `--proxy-protocol`: connections from sources it does not allow,
    /// closed at accept.
    pub proxy_refused: Counter,
    /// `--proxy-protocol`: connections that did not open with a valid
    /// PROXY header, closed.
    pub proxy_bad_headers: Counter,
    /// epoll: returns from epoll_wait.
    pub poll_wakeups: Counter,
    /// io_uring: io_uring_enter calls (submit and wait).
    pub ring_enters: Counter,
    /// io_uring: submission queue entries queued.
    pub ring_submissions: Counter,
    /// io_uring: completions reaped.
    pub ring_completions: Counter,
    /// io_uring: receives that found the buffer ring empty.
    pub ring_no_buffers: Counter,
    /// io_uring: receive buffers the ring holds after each turn (the
    /// window of `BufRing`).
    pub ring_window: std::sync::atomic::AtomicU32,
    /// Upstream traffic of this core, all servers together.
    pub upstream: UpstreamCounters,
    /// The same per upstream server (`Config::upstreams`, group by group).
    pub servers: Vec<ServerStats>,
}

/// Counters of upstream traffic (one core; one server or all).
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Requests sent (a retry counts again).
    pub requests: Counter,
    /// Connections opened.
    pub connects: Counter,
    /// Requests sent on a pooled connection.
    pub reuses: Counter,
    /// Requests sent again (a connect failed, or a link closed unanswered).
    pub retries: Counter,
    /// Failures answered 502/503/504, by `UpstreamError as usize`. Queue
    /// failures (no server chosen yet) count in the core's total only.
    pub errors: [Counter; 7],
    /// Connections idle in the pools now.
    pub idle: Counter,
    /// Connections carrying an exchange now.
    pub busy: Counter,
    /// Reply heads received.
    pub replies: Counter,
    /// Summed latency from request to reply head, in microseconds.
    pub reply_us: Counter,
}

/// One upstream server's counters on one core.
#[derive(Debug)]
pub struct ServerStats {
    /// Its group's index in `Config::upstreams`.
    pub group: usize,
    /// Its address, as the `upstream` label.
    pub addr: String,
    /// Its counters.
    pub counters: UpstreamCounters,
}

impl CoreStats {
    /// Counters for a core that forwards to these groups.
    pub fn with_upstreams(groups: &[crate::config::UpstreamGroup]) -> CoreStats {
        let servers = groups
            .iter()
            .enumerate()
            .flat_map(|(group, g)| {
                g.servers.iter().map(move |addr| ServerStats {
                    group,
                    addr: addr.to_string(),
                    counters: UpstreamCounters::default(),
                })
            })
            .collect();
        CoreStats {
            servers,
            ..CoreStats::default()
        }
    }

    /// Counts one response of `status`.
    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }

    /// Requests refused by the parser plus 5xx answers: what the stats
    /// line calls errors.
    pub fn errors(&self) -> u64 {
        let rejects: u64 = self.rejects.iter().map(Counter::get).sum();
        rejects + self.responses[4].get()
    }
}

/// One metric family: name, type, help, and each core's value(s).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(
            out,
            "# HELP coreloop_{name} {help}\n# TYPE coreloop_{name} {kind}"
        );
        Family { out, name }
    }

    fn sample(&mut self, core: usize, label: Option<(&str, &str)>, value: u64) {
        let name = self.name;
        let _ = match label {
            Some((k, v)) => writeln!(
                self.out,
                "coreloop_{name}{{core=\"{core}\",{k}=\"{v}\"}} {value}"
            ),
            None => writeln!(self.out, "coreloop_{name}{{core=\"{core}\"}} {value}"),
        };
    }
}

/// Appends every core's counters to `out` in the Prometheus text format
/// (version 0.0.4), one sample per core with a `core` label; sum across
/// cores in the query. `backend` is `epoll` or `uring`.
pub fn prometheus(cores: &AllStats, backend: &str, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP coreloop_backend_info The event-loop backend the cores run.\n\
         # TYPE coreloop_backend_info gauge\ncoreloop_backend_info{{backend=\"{backend}\"}} 1"
    );
    let _ = writeln!(
        out,
        "# HELP coreloop_access_log_dropped_lines_total Access log lines dropped: the writer was behind or its writes failed (a full disk).\n\
         # TYPE coreloop_access_log_dropped_lines_total counter\ncoreloop_access_log_dropped_lines_total {}",
        crate::access_log::DROPPED_LINES.load(std::sync::atomic::Ordering::Relaxed)
    );
    type Get = fn(&CoreStats) -> u64;
    let simple: [(&str, &str, &str, Get); 18] = [
        (
            "connections_accepted_total",
            "counter",
            "Connections accepted.",
            |s| s.accepted.get(),
        ),
        (
            "connections_closed_total",
            "counter",
            "Connections closed.",
            |s| s.closed.get(),
        ),
        (
            "connections_active",
            "gauge",
            "Connections open now.",
            |s| s.active.get(),
        ),
        (
            "requests_total",
            "counter",
            "Requests answered by a handler.",
            |s| s.requests.get(),
        ),
        (
            "received_bytes_total",
            "counter",
            "Bytes received from clients.",
            |s| s.bytes_in.get(),
        ),
        (
            "sent_bytes_total",
            "counter",
            "Bytes sent to clients.",
            |s| s.bytes_out.get(),
        ),
        (
            "handler_panics_total",
            "counter",
            "Handlers that panicked (answered 500).",
            |s| s.panics.get(),
        ),
        (
            "connections_incoming_cpu_local_total",
            "counter",
            "--accept cpu: accepted connections whose packets came in on this core's CPU.",
            |s| s.incoming_cpu_local.get(),
        ),
        (
            "proxy_protocol_refused_total",
            "counter",
            "PROXY protocol: connections from sources not allowed, closed at accept.",
            |s| s.proxy_refused.get(),
        ),
        (
            "proxy_protocol_bad_headers_total",
            "counter",
            "PROXY protocol: connections without a valid header, closed.",
            |s| s.proxy_bad_headers.get(),
        ),
        (
            "poll_wakeups_total",
            "counter",
            "epoll: returns from epoll_wait.",
            |s| s.poll_wakeups.get(),
        ),
        (
            "ring_enters_total",
            "counter",
            "io_uring: io_uring_enter calls.",
            |s| s.ring_enters.get(),
        ),
        (
            "ring_submissions_total",
            "counter",
            "io_uring: submission queue entries queued.",
            |s| s.ring_submissions.get(),
        ),
        (
            "ring_completions_total",
            "counter",
            "io_uring: completions reaped.",
            |s| s.ring_completions.get(),
        ),
        (
            "ring_no_buffers_total",
            "counter",
            "io_uring: receives that found the buffer ring empty.",
            |s| s.ring_no_buffers.get(),
        ),
        (
            "ring_buffer_window",
            "gauge",
            "io_uring: receive buffers kept in the ring (the rest wait, coldest last).",
            |s| u64::from(s.ring_window.load(Relaxed)),
        ),
        (
            "busy_poll_usecs",
            "gauge",
            "Busy polling of each core's poller as the kernel read it back (microseconds; 0: off).",
            |s| u64::from(s.busy_poll_usecs.load(Relaxed)),
        ),
        (
            "core_huge_page_bytes",
            "gauge",
            "Bytes of each core's receive buffers on huge pages (--huge-pages' read-back).",
            |s| s.huge_page_bytes.load(Relaxed),
        ),
    ];
    for (name, kind, help, get) in simple {
        let mut family = Family::new(out, name, kind, help);
        for (core, stats) in cores.iter().enumerate() {
            family.sample(core, None, get(stats));
        }
    }
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    labelled(
        out,
        cores,
        "responses_total",
        "Responses by status class.",
        "class",
        &classes,
        |s| &s.responses,
    );
    let rejects = Reject::ALL.map(Reject::name);
    labelled(
        out,
        cores,
        "parse_errors_total",
        "Requests refused by the parser, by rule.",
        "kind",
        &rejects,
        |s| &s.rejects,
    );
    upstreams(cores, out);
    cpu_seconds(cores, out);
    placement(cores, out);
    let deadlines = Deadline::ALL.map(Deadline::name);
    labelled(
        out,
        cores,
        "deadline_expiries_total",
        "Deadlines that fired, by kind.",
        "kind",
        &deadlines,
        |s| &s.deadlines,
    );
}

/// Where each core's memory sits: its CPU's NUMA node and its receive
/// buffers' node (cores whose node is unknown have no sample).
fn placement(cores: &AllStats, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    node_family(
        out,
        cores,
        "core_numa_node",
        "The NUMA node of each core's CPU.",
        |s| s.cpu_node.load(Relaxed),
    );
    node_family(
        out,
        cores,
        "core_memory_node",
        "The NUMA node each core's receive buffers sit on (--numa's read-back).",
        |s| s.memory_node.load(Relaxed),
    );
}

/// A node per core, stored plus one (0: unknown, no sample).
fn node_family(
    out: &mut String,
    cores: &AllStats,
    name: &'static str,
    help: &str,
    get: impl Fn(&CoreStats) -> u32,
) {
    let mut family = Family::new(out, name, "gauge", help);
    for (core, s) in cores.iter().enumerate() {
        if let Some(node) = get(s).checked_sub(1) {
            family.sample(core, None, u64::from(node));
        }
    }
}

/// Each core thread's CPU time (user + system), read from
/// /proc/self/task/TID/stat: uneven values show imbalance between cores.
fn cpu_seconds(cores: &AllStats, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP coreloop_core_cpu_seconds_total CPU time of each core's thread (user + system).\n\
         # TYPE coreloop_core_cpu_seconds_total counter"
    );
    for (core, s) in cores.iter().enumerate() {
        // A core whose thread has not started yet has used no CPU.
        let secs =
            thread_cpu_seconds(s.tid.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "coreloop_core_cpu_seconds_total{{core=\"{core}\"}} {secs:.2}"
        );
    }
}

/// utime + stime of thread `tid` of this process, in seconds; `None`
/// when it is unknown or has exited.
pub fn thread_cpu_seconds(tid: u32) -> Option<f64> {
    if tid == 0 {
        return None;
    }
    stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

/// utime + stime, in seconds, from a /proc `stat` file (a process's or a
/// thread's); `None` when it cannot be read.
pub fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let mut rest = stat.rsplit_once(") ")?.1.split_whitespace();
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // /proc counts in USER_HZ, 100 per second on every Linux architecture.
    Some((utime + stime) as f64 / 100.0)
}

/// The upstream families: one sample per core and server (labels `group`
/// and `upstream`); errors by cause, and the queue's failures (no server
/// chosen) with `upstream="queue"`.
fn upstreams(cores: &AllStats, out: &mut String) {
    if cores.iter().all(|c| c.servers.is_empty()) {
        return;
    }
    type Get = fn(&UpstreamCounters) -> u64;
    let families: [(&str, &str, &str, Get); 8] = [
        (
            "upstream_requests_total",
            "counter",
            "Requests sent upstream (retries count again).",
            |c| c.requests.get(),
        ),
        (
            "upstream_connects_total",
            "counter",
            "Upstream connections opened.",
            |c| c.connects.get(),
        ),
        (
            "upstream_reuses_total",
            "counter",
            "Upstream requests sent on a pooled connection.",
            |c| c.reuses.get(),
        ),
        (
            "upstream_retries_total",
            "counter",
            "Upstream requests sent again.",
            |c| c.retries.get(),
        ),
        (
            "upstream_idle",
            "gauge",
            "Idle upstream connections in the pools.",
            |c| c.idle.get(),
        ),
        (
            "upstream_busy",
            "gauge",
            "Upstream connections carrying a request.",
            |c| c.busy.get(),
        ),
        (
            "upstream_replies_total",
            "counter",
            "Upstream reply heads received.",
            |c| c.replies.get(),
        ),
        (
            "upstream_reply_microseconds_total",
            "counter",
            "Summed latency from request to reply head; divide by upstream_replies_total.",
            |c| c.reply_us.get(),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(
            out,
            "# HELP coreloop_{name} {help}\n# TYPE coreloop_{name} {kind}"
        );
        for (core, stats) in cores.iter().enumerate() {
            for s in &stats.servers {
                let _ = writeln!(
                    out,
                    "coreloop_{name}{{core=\"{core}\",group=\"{}\",upstream=\"{}\"}} {}",
                    s.group,
                    s.addr,
                    get(&s.counters)
                );
            }
        }
    }
    let name = "upstream_errors_total";
    let _ = writeln!(
        out,
        "# HELP coreloop_{name} Upstream exchanges answered 502/503/504, by cause.\n# TYPE coreloop_{name} counter"
    );
    for (core, stats) in cores.iter().enumerate() {
        for cause in UpstreamError::ALL {
            let i = cause as usize;
            let mut rest = stats.upstream.errors[i].get();
            for s in &stats.servers {
                let n = s.counters.errors[i].get();
                rest = rest.saturating_sub(n);
                let _ = writeln!(
                    out,
                    "coreloop_{name}{{core=\"{core}\",group=\"{}\",upstream=\"{}\",cause=\"{}\"}} {n}",
                    s.group,
                    s.addr,
                    cause.name()
                );
            }
            if matches!(
                cause,
                UpstreamError::QueueFull | UpstreamError::QueueTimeout
            ) || rest > 0
            {
                let _ = writeln!(
                    out,
                    "coreloop_{name}{{core=\"{core}\",upstream=\"queue\",cause=\"{}\"}} {rest}",
                    cause.name()
                );
            }
        }
    }
}

/// A counter family with one sample per core and `label`: `names[i]`
/// labels the i-th counter of `counters(core)`.
fn labelled(
    out: &mut String,
    cores: &AllStats,
    name: &'static str,
    help: &str,
    label: &str,
    names: &[&str],
    counters: fn(&CoreStats) -> &[Counter],
) {
    let mut family = Family::new(out, name, "counter", help);
    for (core, stats) in cores.iter().enumerate() {
        for (value, counter) in names.iter().zip(counters(stats)) {
            family.sample(core, Some((label, value)), counter.get());
        }
    }
}

/// `--stats SECS`: one line per interval with each core's request rate,
/// open connections and new errors, from the difference of two readings.
#[derive(Debug)]
pub struct StatsLine {
    last: Vec<(u64, u64)>,
    cpu: Vec<f64>,
}

fn core_cpu(stats: &CoreStats) -> Option<f64> {
    thread_cpu_seconds(stats.tid.load(std::sync::atomic::Ordering::Relaxed))
}

impl StatsLine {
    /// Starts from the counters' current values.
    pub fn new(cores: &AllStats) -> StatsLine {
        StatsLine {
            last: cores
                .iter()
                .map(|s| (s.requests.get(), s.errors()))
                .collect(),
            cpu: cores.iter().map(|s| core_cpu(s).unwrap_or(0.0)).collect(),
        }
    }

    /// The line for the `elapsed` since the previous call, e.g.
    /// `stats: 61234 req/s 64 conns 0 err | core0 30617 req/s 32 conns 0 err 48% cpu | ...`.
    pub fn next(&mut self, cores: &AllStats, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut parts = String::new();
        let (mut rate, mut conns, mut errs) = (0.0, 0, 0);
        for (core, ((stats, last), cpu)) in cores
            .iter()
            .zip(&mut self.last)
            .zip(&mut self.cpu)
            .enumerate()
        {
            let now = (stats.requests.get(), stats.errors());
            let core_rate = now.0.wrapping_sub(last.0) as f64 / secs;
            let core_errs = now.1.wrapping_sub(last.1);
            let active = stats.active.get();
            *last = now;
            rate += core_rate;
            conns += active;
            errs += core_errs;
            let _ = write!(
                parts,
                " | core{core} {core_rate:.0} req/s {active} conns {core_errs} err"
            );
            if let Some(now_cpu) = core_cpu(stats) {
                let busy = (now_cpu - *cpu) / secs * 100.0;
                *cpu = now_cpu;
                let _ = write!(parts, " {busy:.0}% cpu");
            }
        }
        format!("stats: {rate:.0} req/s {conns} conns {errs} err{parts}")
    }
}
