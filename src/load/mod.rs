//! `coreloop load`: an HTTP/1.1 load generator with a thread per CPU,
//! pinned, each with its own connections and its own io_uring ring (or
//! epoll instance), measuring per request (not per batch) into one
//! HdrHistogram per thread, merged at the end.
//!
//! - [`client`]: one connection's requests in flight and its response
//!   parsing (the engine's reply parser), without I/O.
//! - [`schedule`]: open-loop send times from a rate profile.
//! - [`worker`]: one thread's policy (closed and open loop, profiles,
//!   timeouts, counts), driven by a backend through the `Wire` trait.
//! - `epoll` and `ring`: the two backends, side by side.
//! - [`report`]: the summary, JSON and `.hgrm` output.

pub mod client;
mod epoll;
pub mod report;
mod ring;
pub mod schedule;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedule::{Schedule, Segment};
use worker::{Live, Plan, Tally};

/// The target, from `http://host[:port][/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The request target.
    pub path: String,
}

impl Target {
    /// Parses and resolves a URL; https and other schemes are refused.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!(
                "invalid URL {url:?}: expected http://host[:port][/path] (https is not supported)"
            )
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.is_empty() || authority.contains('@') || path.contains(char::is_whitespace) {
            return Err(format!(
                "invalid URL {url:?}: expected http://host[:port][/path]"
            ));
        }
        let addr = crate::cli::resolve_authority(authority)
            .map_err(|e| format!("cannot resolve {authority:?}: {e}"))?;
        Ok(Target {
            addr,
            host: authority.to_string(),
            path,
        })
    }
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to send.
    pub target: Target,
    /// The method (GET by default).
    pub method: String,
    /// Extra header lines, `Name: value`.
    pub headers: Vec<String>,
    /// A request body (sent with Content-Length).
    pub body: Option<Vec<u8>>,
    /// Connections in total, spread over the threads.
    pub connections: usize,
    /// One thread per entry, pinned to that CPU (`None`: unpinned).
    pub cpus: Vec<Option<usize>>,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// How long to measure (after the warm-up).
    pub duration: Duration,
    /// How long to run before measuring.
    pub warmup: Duration,
    /// Open loop: the rate profile over the measured part (the warm-up
    /// runs at the first segment's starting rate). `None`: closed loop.
    pub profile: Option<Vec<Segment>>,
    /// Connections over the measured time instead of `connections`
    /// (steps and ramps of counts; the warm-up holds the first).
    pub conn_profile: Option<Vec<Segment>>,
    /// A new connection for every request (`Connection: close`).
    pub conn_per_request: bool,
    /// Close each connection after this many responses.
    pub reconnect_after: Option<u64>,
    /// A request unanswered this long is a timeout error.
    pub timeout: Duration,
    /// Print a line per second while running.
    pub live: bool,
    /// The threads' I/O: `Auto` (io_uring where the kernel allows it),
    /// `Uring` or `Epoll`.
    pub backend: crate::Backend,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum Error {
    /// `--backend uring` on a kernel that refuses it (the reason).
    Uring(String),
    /// A thread could not be set up (pinning, epoll).
    Setup(std::io::Error),
    /// A load thread panicked.
    Thread,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Uring(why) => write!(f, "io_uring unavailable: {why}"),
            Error::Setup(e) => write!(f, "cannot start a load thread: {e}"),
            Error::Thread => write!(f, "a load thread panicked"),
        }
    }
}

impl std::error::Error for Error {}

impl Options {
    /// The request as written on the wire.
    pub fn request(&self) -> Vec<u8> {
        let t = &self.target;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, t.path, t.host
        );
        for h in &self.headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        if self.conn_per_request {
            head.push_str("Connection: close\r\n");
        }
        if let Some(body) = &self.body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_deref().unwrap_or_default());
        out
    }
}

/// What a run measured, all threads merged.
#[derive(Debug)]
pub struct Outcome {
    /// The merged tally.
    pub tally: Tally,
    /// Measured wall time (the warm-up excluded).
    pub elapsed: Duration,
    /// Wall time including the warm-up (for the client's CPU share).
    pub wall: Duration,
    /// Threads run.
    pub threads: usize,
    /// The threads' I/O: `io_uring` or `epoll`.
    pub backend: &'static str,
}

/// Runs the load and returns the merged measurements.
pub fn run(opts: &Options) -> Result<Outcome, Error> {
    let uring = backend(opts.backend)?;
    let threads = opts.cpus.len().max(1);
    let start = Instant::now();
    let warmup = nanos(opts.warmup);
    let end = warmup + nanos(opts.duration);
    let request = opts.request();
    let live: Arc<Vec<Live>> = Arc::new((0..threads).map(|_| Live::default()).collect());
    let mut handles = Vec::new();
    for (i, cpu) in opts.cpus.iter().copied().enumerate() {
        let conn_profile = opts.conn_profile.as_ref().map(|p| {
            p.iter()
                .map(|s| Segment {
                    from: s.from / threads as f64,
                    to: s.to / threads as f64,
                    length: s.length,
                })
                .collect::<Vec<_>>()
        });
        let conns = match &conn_profile {
            Some(p) => worker::conns_at(p, 0),
            None => opts.connections / threads + usize::from(i < opts.connections % threads),
        };
        let schedule = opts.profile.as_ref().map(|p| {
            let mut segments = Vec::with_capacity(p.len() + 1);
            if !opts.warmup.is_zero() {
                segments.push(Segment {
                    from: p[0].from,
                    to: p[0].from,
                    length: opts.warmup,
                });
            }
            segments.extend_from_slice(p);
            Schedule::new(segments, 1.0 / threads as f64, i as f64 / threads as f64)
        });
        let plan = Plan {
            addr: opts.target.addr,
            request: request.clone(),
            head_only: opts.method.eq_ignore_ascii_case("HEAD"),
            conns,
            depth: if opts.conn_per_request {
                1
            } else {
                opts.pipeline
            },
            reconnect_after: if opts.conn_per_request {
                Some(1)
            } else {
                opts.reconnect_after
            },
            schedule,
            conn_profile,
            start,
            warmup,
            end,
            timeout: nanos(opts.timeout),
        };
        let live = live.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    crate::topology::pin_current_thread(cpu)?;
                }
                if uring {
                    ring::run(plan, &live[i])
                } else {
                    epoll::run(plan, &live[i])
                }
            })
            .map_err(Error::Setup)?;
        handles.push(handle);
    }
    if opts.live {
        report::live_lines(&live, start, Duration::from_nanos(end), &handles);
    }
    let mut tally = Tally::empty();
    for h in handles {
        let t = h.join().map_err(|_| Error::Thread)?.map_err(Error::Setup)?;
        tally.add(&t);
    }
    Ok(Outcome {
        tally,
        elapsed: opts.duration,
        wall: start.elapsed(),
        threads,
        backend: if uring { "io_uring" } else { "epoll" },
    })
}

/// Whether the threads run on io_uring: `Auto` probes it (and falls back
/// to epoll), `Uring` insists.
pub fn backend(choice: crate::Backend) -> Result<bool, Error> {
    match choice {
        crate::Backend::Epoll => Ok(false),
        crate::Backend::Uring => ring::probe().map(|()| true).map_err(Error::Uring),
        crate::Backend::Auto => Ok(ring::probe().is_ok()),
    }
}

/// A duration in nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/plaintext?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/plaintext?x=1")
        );
        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[::1]:81?q").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (81, "/?q"));
        assert_eq!(Target::parse("http://localhost:9/").unwrap().addr.port(), 9);
        for bad in [
            "https://x/",
            "127.0.0.1:80",
            "http://",
            "http://a b/",
            "http://u@h/",
            "http://h:99999/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_framed() {
        let opts = Options {
            target: Target::parse("http://127.0.0.1:1/p").unwrap(),
            method: "POST".into(),
            headers: vec!["X-A: 1".into()],
            body: Some(b"abc".to_vec()),
            connections: 1,
            cpus: vec![None],
            pipeline: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            profile: None,
            conn_profile: None,
            conn_per_request: true,
            reconnect_after: None,
            timeout: Duration::from_secs(1),
            live: false,
            backend: crate::Backend::Epoll,
        };
        assert_eq!(
            opts.request(),
            b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:1\r\nX-A: 1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
        );
    }
}
