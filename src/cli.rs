//! Command-line flags: parsed with clap into a `Config`. A bad value prints
//! one line and exits 2 (clap's convention, kept for our own checks too).

mod ab;
mod file;
mod load;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::config::{
    Accept, Backend, Balance, BusyPoll, Config, Network, ProxyLimits, UpstreamGroup,
};
use crate::handler::{self, FilesConfig, SiteConfig};
use crate::http::Limits;
use crate::io::region::HugePages;
use crate::server::{Error, Server};
use crate::{access_log, logging, numa, topology};

/// A thread-per-core HTTP/1.1 server.
#[derive(Parser, Debug)]
// A flag given twice takes its last value, so a wrapper can append
// overrides to the arguments it passes on (`exec coreloop "$@" --workers 4`).
#[command(name = "coreloop", version, about, long_about = None, args_override_self = true)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port to listen on (0 picks a free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Worker threads (default: one per CPU in --cpus or the affinity mask).
    #[arg(long)]
    workers: Option<usize>,
    /// CPUs to run on, e.g. 0,2-3 (default: the affinity mask).
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<CpuList>,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Listen even if another process listens on the same address (its
    /// SO_REUSEPORT group is joined and connections are split between the
    /// two); without it a taken port is an error.
    #[arg(long)]
    share_port: bool,
    /// listen(2) backlog of each core's listener.
    #[arg(long, default_value_t = 1024)]
    backlog: i32,
    /// Most connections per core; at the limit a core stops accepting.
    #[arg(long, default_value_t = 8192)]
    max_conns: usize,
    /// Time allowed from a request's first byte to the end of its head.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    head_timeout: Duration,
    /// Longest pause between reads of a request body.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// How long a keep-alive connection may stay idle.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Longest time a response may make no progress towards the client.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// How long to drain a closing connection's input after the last response.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    linger_timeout: Duration,
    /// Longest request line (414 beyond), e.g. 8k.
    #[arg(long, default_value = "8k", value_parser = parse_size)]
    max_request_line: u64,
    /// Longest request head (431 beyond), e.g. 16k.
    #[arg(long, default_value = "16k", value_parser = parse_size)]
    max_head: u64,
    /// Most header fields per request (431 beyond), at most 256.
    #[arg(long, default_value_t = 100)]
    max_headers: usize,
    /// Largest request body (413 beyond), e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    max_body: u64,
    /// Per-core read buffer, e.g. 64k.
    #[arg(long, default_value = "64k", value_parser = parse_size)]
    read_buffer: u64,
    /// How long a graceful shutdown may take before connections are forced.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// On SIGTERM, answer /readyz with 503 and keep serving normally this
    /// long before draining, so a load balancer stops sending first.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// How long a new process started by SIGUSR2 has to report that every
    /// worker accepts; past it, it is stopped and this one keeps serving.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    upgrade_timeout: Duration,
    /// Write the process ID here once every worker accepts (for
    /// `kill -USR2 $(cat FILE)`); an upgrade's new process replaces it.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Event-loop backend: auto tries io_uring and falls back to epoll.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// io_uring: submission queue entries per core (power of two).
    #[arg(long, default_value_t = 1024)]
    ring_entries: u32,
    /// io_uring: bytes per provided receive buffer, e.g. 4k.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    buf_size: u64,
    /// io_uring: provided receive buffers per core (power of two).
    #[arg(long, default_value_t = 1024)]
    buf_count: u16,
    /// io_uring: kernel submission polling; the thread sleeps after IDLE_MS.
    #[arg(long, value_name = "IDLE_MS", num_args = 0..=1, default_missing_value = "1000")]
    sqpoll: Option<u32>,
    /// io_uring: pin the SQPOLL thread to this CPU.
    #[arg(long)]
    sqpoll_cpu: Option<u32>,
    /// io_uring: wait for N completions per wake-up (at most
    /// --ring-batch-wait, then one is enough). Linux 6.12+.
    #[arg(long, value_name = "N")]
    ring_batch: Option<u32>,
    /// io_uring: the longest a wake-up waits to fill --ring-batch.
    #[arg(long, default_value = "50us", value_parser = parse_duration, requires = "ring_batch")]
    ring_batch_wait: Duration,
    /// Directory whose files answer GET and HEAD for paths no route claims.
    #[arg(long, value_name = "DIR", default_value = ".")]
    root: PathBuf,
    /// Do not serve static files (other paths answer 404).
    #[arg(long, conflicts_with_all = ["serve_hidden", "dir_listing"])]
    no_files: bool,
    /// Serve dotfiles and dot-directories (.git, .env); 404 by default.
    #[arg(long)]
    serve_hidden: bool,
    /// Answer a directory without index.html with an HTML listing.
    #[arg(long)]
    dir_listing: bool,
    /// Open files cached per core (revalidated every second); 0 disables.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    file_cache: usize,
    /// Path of the Prometheus metrics endpoint.
    #[arg(long, value_name = "PATH", default_value = "/metrics")]
    metrics_path: String,
    /// Do not serve metrics.
    #[arg(long, conflicts_with = "metrics_path")]
    no_metrics: bool,
    /// Print per-core req/s, open connections and errors every SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    stats: Option<Duration>,
    /// Forward requests whose path starts with PREFIX to these upstreams
    /// (http only), e.g. /api=http://127.0.0.1:3000,http://10.0.0.2:3000.
    /// Repeatable; the longest prefix wins.
    #[arg(long, value_name = "PREFIX=URL[,URL...]", value_parser = parse_proxy)]
    proxy: Vec<ProxyRoute>,
    /// Send this Host to upstreams instead of the client's.
    #[arg(long, value_name = "HOST")]
    proxy_host: Option<String>,
    /// Upstream: connections per core per server (busy and idle); beyond,
    /// requests queue.
    #[arg(long, default_value_t = 256)]
    upstream_max_conns: usize,
    /// Upstream: idle keep-alive connections kept per core per server.
    #[arg(long, default_value_t = 64)]
    upstream_idle: usize,
    /// Upstream: close an idle connection after this (keep it below the
    /// upstream's own keep-alive timeout).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    upstream_idle_timeout: Duration,
    /// Upstream: requests one core queues per group when every server is
    /// at its connection cap (503 beyond).
    #[arg(long, default_value_t = 1024)]
    upstream_queue: usize,
    /// Upstream: longest wait in the queue (then 503).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    upstream_queue_timeout: Duration,
    /// Upstream: connect timeout (then 504).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    upstream_connect_timeout: Duration,
    /// Upstream: time allowed for the reply head and between body reads
    /// (then 504).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Upstream: consecutive failures before a server is skipped.
    #[arg(long, default_value_t = 1)]
    upstream_max_fails: u32,
    /// Upstream: how long a failed server is skipped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    upstream_fail_timeout: Duration,
    /// Upstream: how each request picks a server of its group.
    #[arg(long, value_enum, default_value_t = BalanceArg::LeastOutstanding)]
    upstream_balance: BalanceArg,
    /// PROXY protocol (v1 and v2) from these networks only, e.g.
    /// 10.0.0.0/8,192.168.1.10: their connections must open with a PROXY
    /// header; connections from elsewhere are closed.
    #[arg(long, value_name = "NETS", value_parser = parse_networks)]
    proxy_protocol: Option<Networks>,
    /// How new connections reach the cores: reuseport (a listener per core,
    /// the kernel hashes), cpu (a listener per core, a BPF program picks
    /// the one of the CPU that took the packets; pinned workers), single
    /// (one listener every core accepts from).
    #[arg(long, value_enum, default_value_t = AcceptArg::Reuseport)]
    accept: AcceptArg,
    /// Busy polling: microseconds each core's poller and sockets spin for
    /// packets before sleeping (Linux 6.9; refused where the kernel lacks
    /// it). Off by default.
    #[arg(long, value_name = "USECS")]
    busy_poll: Option<u32>,
    /// Packets per busy poll (0: the kernel's default).
    #[arg(long, default_value_t = 0, requires = "busy_poll")]
    busy_poll_budget: u16,
    /// Prefer busy polling over interrupts (SO_PREFER_BUSY_POLL).
    #[arg(long, requires = "busy_poll")]
    prefer_busy_poll: bool,
    /// Memory policy of each core: local (prefer its CPU's node), bind
    /// (only that node), interleave (all nodes), off (inherited); auto is
    /// local on a host with more than one node, else off.
    #[arg(long, value_enum, default_value_t = NumaArg::Auto)]
    numa: NumaArg,
    /// io_uring: pages for each core's receive-buffer ring: off (4 KiB),
    /// thp (transparent huge pages, madvised), hugetlb (reserved with
    /// vm.nr_hugepages; refused when too few are free).
    #[arg(long, value_enum, default_value_t = HugePagesArg::Off)]
    huge_pages: HugePagesArg,
    /// Write an access log line per response to this file (or `-`, standard
    /// output); SIGUSR1 reopens the file.
    #[arg(long, value_name = "PATH")]
    access_log: Option<PathBuf>,
    /// Access log format: combined (plus duration and core) or json.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Combined)]
    access_log_format: LogFormatArg,
    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Read flags from this TOML file (keys are the long flags: `port =
    /// 8080`, `no-files = true`); flags on the command line win. SIGHUP
    /// then re-reads it through an upgrade (a bad file is refused and this
    /// process keeps serving).
    #[arg(long = "config", value_name = "FILE")]
    config_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BalanceArg {
    RoundRobin,
    LeastOutstanding,
}

/// One `--proxy` flag.
#[derive(Clone, Debug)]
struct ProxyRoute {
    prefix: String,
    servers: Vec<SocketAddr>,
}

fn parse_proxy(text: &str) -> Result<ProxyRoute, String> {
    let (prefix, urls) = text
        .split_once('=')
        .ok_or_else(|| format!("--proxy {text:?}: expected PREFIX=URL[,URL...]"))?;
    if !prefix.starts_with('/') || prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "--proxy prefix {prefix:?} must start with / and hold no spaces"
        ));
    }
    let servers = urls
        .split(',')
        .map(parse_upstream_url)
        .collect::<Result<_, _>>()?;
    Ok(ProxyRoute {
        prefix: prefix.to_string(),
        servers,
    })
}

/// `http://host[:port][/]`: resolved once, at start.
fn parse_upstream_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--proxy upstream {url:?}: only http:// URLs are supported"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "--proxy upstream {url:?}: expected http://host[:port], with no path"
        ));
    }
    resolve_authority(authority).map_err(|e| format!("--proxy upstream {url:?}: {e}"))
}

/// `host[:port]` of an http URL (port 80 when absent; `[v6]` hosts) to
/// its first address. Used by `--proxy` and `coreloop load`.
pub(crate) fn resolve_authority(authority: &str) -> Result<SocketAddr, String> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_string())
}

/// A parsed `--proxy-protocol` list (a newtype: clap sees one value).
#[derive(Clone, Debug)]
struct Networks(Vec<Network>);

fn parse_networks(text: &str) -> Result<Networks, String> {
    text.split(',')
        .map(str::parse)
        .collect::<Result<Vec<Network>, String>>()
        .map(Networks)
}

/// A parsed `--cpus` list. A newtype, so clap sees one value, not many.
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn parse_cpus(text: &str) -> Result<CpuList, String> {
    topology::parse_cpu_list(text).map(CpuList)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AcceptArg {
    Reuseport,
    Cpu,
    Single,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NumaArg {
    Auto,
    Local,
    Bind,
    Interleave,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HugePagesArg {
    Off,
    Thp,
    Hugetlb,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormatArg {
    Combined,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Epoll,
    Uring,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Args {
    /// The configuration these flags describe.
    pub fn config(&self) -> Result<Config, String> {
        let size = |flag: &str, v: u64| {
            usize::try_from(v).map_err(|_| format!("--{flag} {v} is too large"))
        };
        let config = Config {
            bind: self.bind,
            port: self.port,
            workers: self.workers,
            cpus: self.cpus.as_ref().map(|c| c.0.clone()),
            pin: !self.no_pin,
            share_port: self.share_port,
            backlog: self.backlog,
            max_conns: self.max_conns,
            limits: Limits {
                max_request_line: size("max-request-line", self.max_request_line)?,
                max_head: size("max-head", self.max_head)?,
                max_headers: self.max_headers,
                max_body: self.max_body,
                head_timeout: self.head_timeout,
                body_timeout: self.body_timeout,
                idle_timeout: self.idle_timeout,
                write_timeout: self.write_timeout,
                ..Limits::default()
            },
            shutdown_timeout: self.shutdown_timeout,
            drain_delay: self.drain_delay,
            upgrade_timeout: self.upgrade_timeout,
            pid_file: self.pid_file.clone(),
            linger_timeout: self.linger_timeout,
            read_buffer: size("read-buffer", self.read_buffer)?,
            backend: match self.backend {
                BackendArg::Auto => Backend::Auto,
                BackendArg::Epoll => Backend::Epoll,
                BackendArg::Uring => Backend::Uring,
            },
            ring_entries: self.ring_entries,
            buf_size: size("buf-size", self.buf_size)?,
            buf_count: self.buf_count,
            sqpoll: self.sqpoll,
            sqpoll_cpu: self.sqpoll_cpu,
            ring_batch: self.ring_batch.map(|n| (n, self.ring_batch_wait)),
            handle_signals: true,
            upgrade_on_hup: self.config_file.is_some(),
            proxy_protocol: self.proxy_protocol.as_ref().map(|n| n.0.clone()),
            accept: match self.accept {
                AcceptArg::Reuseport => Accept::ReusePort,
                AcceptArg::Cpu => Accept::Cpu,
                AcceptArg::Single => Accept::Single,
            },
            busy_poll: self.busy_poll.map(|usecs| BusyPoll {
                usecs,
                budget: self.busy_poll_budget,
                prefer: self.prefer_busy_poll,
            }),
            numa: match self.numa {
                NumaArg::Auto => numa::Policy::Auto,
                NumaArg::Local => numa::Policy::Local,
                NumaArg::Bind => numa::Policy::Bind,
                NumaArg::Interleave => numa::Policy::Interleave,
                NumaArg::Off => numa::Policy::Off,
            },
            huge_pages: match self.huge_pages {
                HugePagesArg::Off => HugePages::Off,
                HugePagesArg::Thp => HugePages::Thp,
                HugePagesArg::Hugetlb => HugePages::Hugetlb,
            },
            access_log: self.access_log.as_ref().map(|p| access_log::Settings {
                path: (p.as_os_str() != "-").then(|| p.clone()),
                format: match self.access_log_format {
                    LogFormatArg::Combined => access_log::Format::Combined,
                    LogFormatArg::Json => access_log::Format::Json,
                },
            }),
            stats_interval: self.stats,
            upstreams: self
                .proxy
                .iter()
                .map(|p| UpstreamGroup {
                    servers: p.servers.clone(),
                    host: self.proxy_host.clone(),
                })
                .collect(),
            proxy: ProxyLimits {
                max_conns: self.upstream_max_conns,
                max_idle: self.upstream_idle,
                idle_timeout: self.upstream_idle_timeout,
                queue: self.upstream_queue,
                queue_timeout: self.upstream_queue_timeout,
                connect_timeout: self.upstream_connect_timeout,
                reply_timeout: self.upstream_timeout,
                max_fails: self.upstream_max_fails,
                fail_timeout: self.upstream_fail_timeout,
                balance: match self.upstream_balance {
                    BalanceArg::RoundRobin => Balance::RoundRobin,
                    BalanceArg::LeastOutstanding => Balance::LeastOutstanding,
                },
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// What the binary serves besides the built-in routes.
    pub fn site(&self) -> Result<SiteConfig, String> {
        let site = SiteConfig {
            files: (!self.no_files).then(|| FilesConfig {
                root: self.root.clone(),
                serve_hidden: self.serve_hidden,
                dir_listing: self.dir_listing,
                cache_entries: self.file_cache,
            }),
            metrics_path: (!self.no_metrics).then(|| self.metrics_path.clone()),
            proxies: self
                .proxy
                .iter()
                .enumerate()
                .map(|(group, p)| (p.prefix.clone(), group))
                .collect(),
        };
        site.validate()?;
        Ok(site)
    }

    fn log_level(&self) -> log::LevelFilter {
        match self.log_level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The binary: flags -> config -> serve the built-in routes. Exit 0 after a
/// graceful shutdown, 2 for bad flags, 1 when the server fails.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "doctor") {
        return doctor(&argv);
    }
    if argv.get(1).is_some_and(|a| a == "load") {
        return load::main(&argv);
    }
    if argv.get(1).is_some_and(|a| a == "ab") {
        return ab::main(&argv);
    }
    let args = match parse(argv) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("coreloop: error: {msg}");
            return ExitCode::from(2);
        }
    };
    logging::init(args.log_level());
    let (config, site) = match args.config().and_then(|c| Ok((c, args.site()?))) {
        Ok(both) => both,
        Err(msg) => {
            eprintln!("coreloop: error: {msg}");
            return ExitCode::from(2);
        }
    };
    handler::build_id();
    let result = Server::new(config).bind().and_then(|bound| {
        let (stats, backend) = (bound.stats(), bound.backend());
        let shutdown = bound.shutdown_handle();
        bound.serve(move |_core| {
            handler::site(&site, stats.clone(), backend)
                .get("/readyz", handler::readiness(shutdown.clone()))
        })
    });
    match result {
        Ok(report) => {
            let (drained, forced) = report
                .cores
                .iter()
                .fold((0, 0), |(d, f), c| (d + c.drained, f + c.forced));
            log::info!("stopped: {drained} connections drained, {forced} forced");
            ExitCode::SUCCESS
        }
        Err(e @ (Error::Config(_) | Error::Backend(_))) => {
            eprintln!("coreloop: error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("coreloop: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `coreloop doctor`: a read-only report on the host.
#[derive(Parser, Debug)]
#[command(
    name = "coreloop doctor",
    about = "Reads the host's kernel and network settings that matter to coreloop and says what to change (read-only)."
)]
struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    json: bool,
    /// The --backlog the server will use (compared with somaxconn).
    #[arg(long, default_value_t = 1024)]
    backlog: u64,
    /// The --max-conns per core the server will use.
    #[arg(long, default_value_t = 8192)]
    max_conns: u64,
    /// Workers the server will run (default: CPUs in the affinity mask).
    #[arg(long)]
    workers: Option<u64>,
}

fn doctor(argv: &[OsString]) -> ExitCode {
    let args = DoctorArgs::parse_from(argv[1..].iter());
    let workers = args
        .workers
        .unwrap_or_else(|| topology::allowed_cpus().map_or(1, |c| c.len() as u64));
    let plan = crate::doctor::Plan {
        backlog: args.backlog,
        max_conns: args.max_conns,
        workers,
    };
    let uring =
        crate::io::uring::probe(&Config::default()).and_then(|()| crate::io::uring::features());
    let findings = crate::doctor::examine(&crate::doctor::Host::system(), &plan, uring);
    let report = if args.json {
        crate::doctor::json(&findings)
    } else {
        crate::doctor::text(&findings)
    };
    print!("{report}");
    ExitCode::SUCCESS
}

/// The flags, with `--config FILE`'s in front of the command line's.
/// Clap's own errors (and --help, --version) exit here, as `Args::parse`.
pub fn parse(argv: Vec<OsString>) -> Result<Args, String> {
    let matches = Args::command().get_matches_from(&argv);
    let Some(path) = matches.get_one::<PathBuf>("config_file") else {
        return Args::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let merged = file::merge(&argv, &matches, path)?;
    Ok(Args::parse_from(merged))
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}: use us, ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("duration {text:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4096`, `16k`, `1m`, `1g` (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(n) if t.ends_with('k') => (n, 1u64 << 10),
        Some(n) if t.ends_with('m') => (n, 1 << 20),
        Some(n) => (n, 1 << 30),
        None => (t.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {text:?}: expected e.g. 4096, 16k or 1m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999g").is_err());
    }
}
