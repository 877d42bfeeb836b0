//! Every knob of the server, its default, and its validation.
//!
//! Defaults are what `cargo run --release` uses. The CLI (`src/cli.rs`)
//! only fills this struct; `Config::validate` is the one place values are
//! checked against each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::http::Limits;

/// Which event-loop backend the cores run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring where the kernel allows it, epoll otherwise.
    Auto,
    /// epoll through mio.
    Epoll,
    /// io_uring; fail at start if the kernel refuses it.
    Uring,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
        })
    }
}

/// The server's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on. Default 127.0.0.1.
    pub bind: IpAddr,
    /// Port to listen on; 0 picks a free one (all cores share it).
    /// Default 8080.
    pub port: u16,
    /// Worker threads, one event loop each. Default: one per CPU in
    /// `cpus` (or in the process's affinity mask).
    pub workers: Option<usize>,
    /// CPUs to run on. Default: the process's affinity mask.
    pub cpus: Option<Vec<usize>>,
    /// Pin each worker to its CPU. Default true; turn off when the
    /// scheduler should place threads (more workers than CPUs, or sharing
    /// the machine with other pinned work).
    pub pin: bool,
    /// Join a SO_REUSEPORT group that another process already listens in
    /// on this address. Default false: a taken port is an error, as it is
    /// for nginx, because the kernel would otherwise split connections
    /// between the two servers. Turn on only when that split is intended.
    pub share_port: bool,
    /// listen(2) backlog per core listener. Default 1024; the kernel caps
    /// it at net.core.somaxconn. Raise it for bursts of new connections.
    pub backlog: i32,
    /// Most connections one core holds. At the limit a core stops
    /// accepting (new connections wait in its backlog) and keeps serving
    /// the ones it has. Default 8192.
    pub max_conns: usize,
    /// Request limits and per-connection deadlines.
    pub limits: Limits,
    /// How long a graceful shutdown may take before the remaining
    /// connections are closed by force. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Between the first SIGTERM/SIGINT and the drain: the server keeps
    /// serving (and accepting) while `Shutdown::is_ready` says false, so
    /// `/readyz` answers 503 and a load balancer stops sending first.
    /// Default 0 (drain at once). Set it to the balancer's health-check
    /// interval times its failure threshold.
    pub drain_delay: Duration,
    /// How long a new process started by an upgrade (SIGUSR2) has to say
    /// that every worker accepts; past it, the new process is stopped and
    /// this one keeps serving. Default 10 s.
    pub upgrade_timeout: Duration,
    /// Where to write the process ID once every worker accepts (replaced
    /// by the new process on an upgrade; removed at exit if still ours).
    /// Default none.
    pub pid_file: Option<std::path::PathBuf>,
    /// After the last response on a closing connection, how long to keep
    /// reading (and dropping) what the peer still sends, so the response is
    /// not destroyed by a TCP reset. Default 2 s.
    pub linger_timeout: Duration,
    /// Per-core read buffer in bytes; one read takes at most this much.
    /// Default 64 KiB.
    pub read_buffer: usize,
    /// Event-loop backend. Default auto.
    pub backend: Backend,
    /// io_uring: submission queue entries per core ring (the completion
    /// queue gets four times as many, for multishot bursts). Default 1024.
    pub ring_entries: u32,
    /// io_uring: bytes per provided receive buffer. Default 4 KiB; a
    /// larger request simply spans several buffers.
    pub buf_size: usize,
    /// io_uring: provided receive buffers per core, a power of two. Default
    /// 1024. When all are in use, receives wait for one to come back.
    pub buf_count: u16,
    /// io_uring: run a kernel submission-polling thread that sleeps after
    /// this many idle milliseconds (IORING_SETUP_SQPOLL). Default off: it
    /// burns a CPU per core; an experiment knob.
    pub sqpoll: Option<u32>,
    /// io_uring: pin the SQPOLL thread to this CPU. Default unpinned.
    pub sqpoll_cpu: Option<u32>,
    /// io_uring: completions one wait asks for, and how long it may hold
    /// out for them before one is enough (IORING_ENTER min_wait, Linux
    /// 6.12). Default `None`: wake on the first completion. `Some((8,
    /// 50us))` trades up to 50 us of latency for fewer sleeps and wake-ups
    /// when connections arrive or become readable one at a time.
    pub ring_batch: Option<(u32, Duration)>,
    /// Install SIGTERM/SIGINT handlers that start a graceful shutdown (a
    /// second signal exits at once). Default true; an embedding program
    /// that handles signals itself turns it off and calls
    /// `Shutdown::trigger`.
    pub handle_signals: bool,
    /// PROXY protocol (v1 and v2) on the listener: connections from these
    /// networks must open with a PROXY header, whose client address is the
    /// one X-Forwarded-For carries; connections from anywhere else, and
    /// ones without a valid header, are closed. Default `None` (off). Turn
    /// on behind an L4 balancer that sends the header.
    pub proxy_protocol: Option<Vec<Network>>,
    /// How new connections reach the cores. Default `ReusePort`.
    pub accept: Accept,
    /// Busy polling: each core's poller (epoll's EPIOCSPARAMS, or the
    /// ring's IORING_REGISTER_NAPI, both Linux 6.9) and its listeners
    /// (SO_BUSY_POLL, inherited by accepted sockets) spin this long for
    /// packets before sleeping. Default `None` (off). An experiment knob:
    /// it burns CPU for latency, and works only for sockets on a NIC with
    /// NAPI (not loopback).
    pub busy_poll: Option<BusyPoll>,
    /// Each worker thread's memory policy (`--numa`). Default `Auto`:
    /// `Local` when the host has more than one node with memory and the
    /// workers are pinned, else `Off`.
    pub numa: crate::numa::Policy,
    /// io_uring: the pages that hold each core's receive-buffer ring
    /// (`--huge-pages`). Default `Off` (small pages).
    pub huge_pages: crate::io::region::HugePages,
    /// The access log: where, and in which format. Default `None` (off).
    pub access_log: Option<crate::access_log::Settings>,
    /// SIGHUP upgrades as SIGUSR2 does (the new process re-reads the
    /// configuration file). Default false: SIGHUP keeps its default action.
    pub upgrade_on_hup: bool,
    /// Print one line of per-core figures (req/s, open connections, new
    /// errors) to stdout at this interval. Default off; for watching a
    /// tuning knob take effect live.
    pub stats_interval: Option<Duration>,
    /// Upstream groups that `Response::forward(i)` sends to (index `i`).
    /// Default none.
    pub upstreams: Vec<UpstreamGroup>,
    /// Pools, queues and deadlines for upstream connections.
    pub proxy: ProxyLimits,
}

/// How new connections are spread over the cores (`--accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// One SO_REUSEPORT listener per core; the kernel picks one by a hash
    /// of the connection's addresses.
    ReusePort,
    /// As `ReusePort`, with a BPF program that picks the listener of the
    /// CPU that processed the connection's packets (needs pinned workers).
    Cpu,
    /// One listener that every core accepts from: the cores spread the
    /// connections by who gets there first.
    Single,
}

/// `--busy-poll`'s settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// Microseconds to spin before sleeping.
    pub usecs: u32,
    /// Packets per poll; 0 lets the kernel choose.
    pub budget: u16,
    /// Prefer busy polling over interrupts (SO_PREFER_BUSY_POLL).
    pub prefer: bool,
}

/// An IP network: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts
    /// as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                net.to_bits() & mask == ip.to_bits() & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let bad = || format!("{text:?}: expected an address or ADDRESS/PREFIX, e.g. 10.0.0.0/8");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

/// One group of upstream servers that requests are balanced across.
#[derive(Clone, Debug)]
pub struct UpstreamGroup {
    /// The servers (plain HTTP/1.1).
    pub servers: Vec<SocketAddr>,
    /// Sent as Host instead of the client's. Default none: the client's
    /// Host passes (or the server's address, if the client sent none).
    pub host: Option<String>,
}

/// How a group picks a server for each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Each server in turn.
    RoundRobin,
    /// The server with the fewest requests in progress on this core; ties
    /// go round robin. Sends less to a server that answers slowly.
    LeastOutstanding,
}

/// Upstream connection pools and deadlines. Everything is per core:
/// each core owns its upstream connections, so a server sees up to
/// `workers x max_conns` connections from this process.
#[derive(Clone, Debug)]
pub struct ProxyLimits {
    /// `--upstream-max-conns`: connections one core opens to one server,
    /// busy and idle together. Default 256. Requests beyond it wait in
    /// the queue.
    pub max_conns: usize,
    /// `--upstream-idle`: idle keep-alive connections one core keeps per
    /// server. Default 64; set at least the concurrency one core sends.
    pub max_idle: usize,
    /// `--upstream-idle-timeout`: an idle connection is closed after this.
    /// Default 1 s, below common app-server keep-alive timeouts (gunicorn
    /// 2 s, Node 5 s), so the upstream rarely closes a connection first.
    pub idle_timeout: Duration,
    /// `--upstream-queue`: requests one core holds per group while every
    /// server is at `max_conns`. Default 1024; beyond it, 503.
    pub queue: usize,
    /// `--upstream-queue-timeout`: how long a request may wait in the
    /// queue before it is answered 503. Default 1 s.
    pub queue_timeout: Duration,
    /// `--upstream-connect-timeout`: then 504. Default 2 s.
    pub connect_timeout: Duration,
    /// `--upstream-timeout`: for the reply head, and between reads of its
    /// body; then 504. Default 30 s.
    pub reply_timeout: Duration,
    /// `--upstream-max-fails`: consecutive failures (refused, reset,
    /// timed out, bad reply) after which a server is skipped. Default 1,
    /// as nginx's. While every server of a group is skipped, requests wait
    /// in the queue (up to `queue_timeout`, then 502) and one connect
    /// every 50 ms probes for a server's return.
    pub max_fails: u32,
    /// `--upstream-fail-timeout`: how long a failed server is skipped.
    /// Default 5 s.
    pub fail_timeout: Duration,
    /// `--upstream-balance`. Default least outstanding.
    pub balance: Balance,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_conns: 256,
            max_idle: 64,
            idle_timeout: Duration::from_secs(1),
            queue: 1024,
            queue_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(30),
            max_fails: 1,
            fail_timeout: Duration::from_secs(5),
            balance: Balance::LeastOutstanding,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            workers: None,
            cpus: None,
            pin: true,
            share_port: false,
            backlog: 1024,
            max_conns: 8192,
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            upgrade_timeout: Duration::from_secs(10),
            pid_file: None,
            linger_timeout: Duration::from_secs(2),
            read_buffer: 64 * 1024,
            backend: Backend::Auto,
            ring_entries: 1024,
            buf_size: 4096,
            buf_count: 1024,
            sqpoll: None,
            sqpoll_cpu: None,
            ring_batch: None,
            handle_signals: true,
            proxy_protocol: None,
            accept: Accept::ReusePort,
            busy_poll: None,
            numa: crate::numa::Policy::Auto,
            huge_pages: crate::io::region::HugePages::Off,
            access_log: None,
            upgrade_on_hup: false,
            stats_interval: None,
            upstreams: Vec::new(),
            proxy: ProxyLimits::default(),
        }
    }
}

impl Config {
    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// Checks the values; the message names the flag and the value.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()?;
        match self.workers {
            Some(0) => return Err("--workers must be at least 1".into()),
            Some(w) if w > 1024 => return Err(format!("--workers {w} is above the maximum 1024")),
            _ => {}
        }
        if self.cpus.as_ref().is_some_and(Vec::is_empty) {
            return Err("--cpus names no CPU".into());
        }
        if self.accept == Accept::Cpu && !self.pin {
            return Err(
                "--accept cpu steers each connection to the listener of the CPU that took its packets: it needs pinned workers (drop --no-pin)".into(),
            );
        }
        if matches!(
            self.numa,
            crate::numa::Policy::Local | crate::numa::Policy::Bind
        ) && !self.pin
        {
            return Err(format!(
                "--numa {} places each core's memory on its CPU's node: it needs pinned workers (drop --no-pin)",
                self.numa.name()
            ));
        }
        if self.backlog < 1 {
            return Err(format!("--backlog {} must be at least 1", self.backlog));
        }
        if self.max_conns == 0 {
            return Err("--max-conns must be at least 1".into());
        }
        if self.read_buffer < 1024 {
            return Err(format!(
                "read buffer {} is below the minimum 1024",
                self.read_buffer
            ));
        }
        if !self.ring_entries.is_power_of_two() || !(8..=32768).contains(&self.ring_entries) {
            return Err(format!(
                "--ring-entries {} must be a power of two in 8..=32768",
                self.ring_entries
            ));
        }
        if !self.buf_count.is_power_of_two() || self.buf_count > 32768 {
            return Err(format!(
                "--buf-count {} must be a power of two up to 32768",
                self.buf_count
            ));
        }
        if !(512..=1 << 20).contains(&self.buf_size) {
            return Err(format!(
                "--buf-size {} must be between 512 and 1 MiB",
                self.buf_size
            ));
        }
        if let Some((n, wait)) = self.ring_batch {
            if n < 2 || n > self.ring_entries {
                return Err(format!(
                    "--ring-batch {n} must be between 2 and --ring-entries ({})",
                    self.ring_entries
                ));
            }
            if wait.is_zero() || wait > Duration::from_secs(1) {
                return Err("--ring-batch-wait must be above 0 and at most 1s".into());
            }
        }
        if self.sqpoll_cpu.is_some() && self.sqpoll.is_none() {
            return Err("--sqpoll-cpu needs --sqpoll".into());
        }
        if self
            .stats_interval
            .is_some_and(|i| i < Duration::from_millis(100))
        {
            return Err("--stats interval must be at least 100ms".into());
        }
        let p = &self.proxy;
        if p.max_conns == 0 || p.max_fails == 0 {
            return Err("--upstream-max-conns and --upstream-max-fails must be at least 1".into());
        }
        if self.upstreams.iter().any(|g| g.servers.is_empty()) {
            return Err("an upstream group names no server".into());
        }
        if self.linger_timeout.is_zero() {
            return Err("--linger-timeout must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Network;

    #[test]
    fn networks_contain_their_addresses() {
        let net: Network = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.3.4".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.1.1".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Network = "192.168.1.10".parse().unwrap();
        assert!(one.contains("192.168.1.10".parse().unwrap()));
        assert!(!one.contains("192.168.1.11".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "ten", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }
}
