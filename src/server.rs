//! Starting the cores: bind one listener per core, start one pinned worker
//! per core, wait for them, and report how each drained.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::access_log::Writer;
use crate::config::{Accept, Backend, Config};
use crate::handler::Handler;
use crate::io::region::HugePages;
use crate::io::{self as backend, Core, CoreReport};
use crate::listener::inherit::{self, Handed, Inherited, Source};
use crate::metrics::{CoreStats, StatsLine};
use crate::notify::Notifier;
use crate::shutdown::Shutdown;
use crate::upgrade::Upgrader;
use crate::{listener, topology};

/// Why the server could not start or did not finish cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid (the message names the flag).
    Config(String),
    /// `--backend uring` was asked for and the kernel refuses it (the
    /// message says why).
    Backend(String),
    /// Listening sockets handed to this process cannot be used (an
    /// upgrade's or systemd's; the message says which and why).
    Inherit(String),
    /// The listening address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A system call needed at start failed.
    Setup {
        /// What was being set up.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A core's event loop failed.
    Core {
        /// Core index.
        id: usize,
        /// Why.
        source: io::Error,
    },
    /// A core's thread panicked outside any handler.
    Panicked {
        /// Core index.
        id: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(msg) => write!(f, "{msg}"),
            Error::Backend(reason) => write!(f, "--backend uring: io_uring unavailable: {reason}"),
            Error::Inherit(msg) => write!(f, "inherited listeners: {msg}"),
            Error::Bind { addr, source } if source.kind() == io::ErrorKind::AddrInUse => write!(
                f,
                "cannot listen on {addr}: {source} (another process listens there; --share-port joins it on purpose)"
            ),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Setup { what, source } => write!(f, "{what}: {source}"),
            Error::Core { id, source } => write!(f, "core {id} failed: {source}"),
            Error::Panicked { id } => write!(f, "core {id} panicked"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bind { source, .. }
            | Error::Setup { source, .. }
            | Error::Core { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A server to be bound: `Server::new(config).bind()?.serve(factory)`.
#[derive(Debug)]
pub struct Server {
    config: Config,
}

/// A server whose listeners are open: connections queue from here on.
#[derive(Debug)]
pub struct Bound {
    /// Epoll or Uring: what the cores run (never Auto).
    backend: Backend,
    config: Arc<Config>,
    /// (CPU to pin to, listeners) per core.
    cores: Vec<(Option<usize>, Vec<TcpListener>)>,
    /// Each listening socket once, for an upgrade.
    sockets: Vec<Handed>,
    local_addr: SocketAddr,
    notifier: Arc<Notifier>,
    shutdown: Shutdown,
    stats: Vec<Arc<CachePadded<CoreStats>>>,
}

/// How the server ended, per core.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per core, in core order.
    pub cores: Vec<CoreReport>,
}

impl Server {
    /// A server with this configuration.
    pub fn new(config: Config) -> Server {
        Server { config }
    }

    /// Validates the configuration, raises the open-files limit, chooses
    /// the CPUs and opens one listener per core, or takes the listeners
    /// this process was handed (an upgrade, systemd socket activation).
    pub fn bind(self) -> Result<Bound, Error> {
        let mut config = self.config;
        config.validate().map_err(Error::Config)?;
        config.numa = config
            .numa
            .resolve(crate::numa::memory_nodes().len(), config.pin);
        // Both read (and remove) their variables before any thread starts.
        let notifier = Arc::new(Notifier::from_env(config.pid_file.clone()));
        let inherited = inherit::take().map_err(|e| Error::Inherit(e.to_string()))?;
        let backend = choose_backend(&config)?;
        if config.huge_pages != HugePages::Off && backend == Backend::Epoll {
            return Err(Error::Config(format!(
                "--huge-pages {} puts io_uring's receive-buffer ring on huge pages; the epoll backend has no such ring (use --backend uring)",
                config.huge_pages.name()
            )));
        }
        let cpus = plan_cpus(&config)?;
        check_nofile(&config, cpus.len());
        let activated = matches!(inherited, Some((Source::Systemd, _)));
        let (sockets, addr) = match inherited {
            Some((source, list)) => adopt(&config, source, list)?,
            None => bind_fresh(&config, cpus.len())?,
        };
        if config.accept == Accept::Cpu {
            steer_by_cpu(&sockets, &cpus)?;
        }
        let handoff = sockets
            .iter()
            .map(|l| Handed {
                fd: l.as_raw_fd(),
                addr,
                reuse_port: socket2::SockRef::from(l).reuse_port().unwrap_or(false),
                activated,
            })
            .collect();
        let per_core = spread(sockets, cpus.len())?;
        let cores: Vec<_> = cpus.into_iter().zip(per_core).collect();
        let stats = cores
            .iter()
            .map(|_| {
                Arc::new(CachePadded::new(CoreStats::with_upstreams(
                    &config.upstreams,
                )))
            })
            .collect();
        Ok(Bound {
            backend,
            config: Arc::new(config),
            cores,
            sockets: handoff,
            local_addr: addr,
            notifier,
            shutdown: Shutdown::new(),
            stats,
        })
    }
}

impl Bound {
    /// The address the cores listen on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend the cores run: `Epoll` or `Uring`, never `Auto`.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A handle that starts the graceful shutdown when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Each core's counters, in core order.
    pub fn stats(&self) -> Vec<Arc<CachePadded<CoreStats>>> {
        self.stats.clone()
    }

    /// Runs every core until shutdown completes. `factory(core)` builds
    /// each core's handler on that core's thread.
    pub fn serve<F, H>(self, factory: F) -> Result<Report, Error>
    where
        F: Fn(usize) -> H + Send + Sync + 'static,
        H: Handler + 'static,
    {
        if self.config.handle_signals {
            let setup = |source| Error::Setup {
                what: "signal handlers",
                source,
            };
            self.shutdown
                .handle_signals(self.config.drain_delay, self.notifier.clone())
                .map_err(setup)?;
            Upgrader::new(
                self.sockets.clone(),
                self.config.upgrade_timeout,
                self.config.shutdown_timeout + Duration::from_secs(1),
                self.notifier.clone(),
            )
            .and_then(|u| u.handle_signal(self.shutdown.clone(), self.config.upgrade_on_hup))
            .map_err(setup)?;
        }
        let (started, started_rx) = std::sync::mpsc::channel();
        let log = match &self.config.access_log {
            Some(settings) => Some(Writer::start(settings, self.config.handle_signals).map_err(
                |source| Error::Setup {
                    what: "access log",
                    source,
                },
            )?),
            None => None,
        };
        let factory = Arc::new(factory);
        let stats_all = self.stats.clone();
        // Ends the stats printer when the cores end without a shutdown
        // (every core failed).
        let cores_done = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (id, ((cpu, listeners), stats)) in self.cores.into_iter().zip(self.stats).enumerate() {
            let core = Core {
                id,
                cpu,
                listeners,
                config: self.config.clone(),
                stats,
                shutdown: self.shutdown.clone(),
                started: Some(started.clone()),
                access_log: log.as_ref().map(|w| w.sink(id)),
            };
            let factory = factory.clone();
            let addr = self.local_addr;
            let backend = self.backend;
            let thread = thread::Builder::new()
                .name(format!("coreloop-{id}"))
                .spawn(move || run_core(core, backend, addr, &*factory))
                .map_err(|source| Error::Setup {
                    what: "worker thread",
                    source,
                })?;
            threads.push(thread);
        }
        drop(started);
        // Each core reports once, just before its loop starts; a core that
        // fails first drops its sender without a word.
        let workers = threads.len();
        if started_rx.iter().take(workers).count() == workers {
            log::info!("ready: {workers} workers accepting on {}", self.local_addr);
            self.notifier.ready();
        }
        let stats_thread = self
            .config
            .stats_interval
            .map(|every| spawn_stats(every, stats_all, self.shutdown.clone(), cores_done.clone()));
        let mut report = Report::default();
        let mut failure = None;
        for (id, thread) in threads.into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(core)) => {
                    log::info!(
                        "core {}: drained {} connections, forced {}",
                        core.id,
                        core.drained,
                        core.forced
                    );
                    report.cores.push(core);
                }
                Ok(Err(source)) => {
                    log::error!("core {id}: {source}");
                    failure.get_or_insert(Error::Core { id, source });
                }
                Err(_) => {
                    log::error!("core {id}: panicked");
                    failure.get_or_insert(Error::Panicked { id });
                }
            }
        }
        cores_done.store(true, Ordering::Relaxed);
        if let Some(Ok(thread)) = stats_thread {
            let _ = thread.join();
        }
        if let Some(log) = log {
            log.finish();
        }
        self.notifier.exiting();
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Binds one listener per worker (port 0: the first bind picks the port,
/// the others join it).
fn bind_fresh(config: &Config, workers: usize) -> Result<(Vec<TcpListener>, SocketAddr), Error> {
    // --accept single: one socket, shared by every core (`spread`).
    let workers = if config.accept == Accept::Single {
        1
    } else {
        workers
    };
    let mut addr = config.addr();
    if addr.port() != 0 && !config.share_port {
        listener::check_free(addr).map_err(|source| Error::Bind { addr, source })?;
    }
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let l =
            listener::bind(addr, config.backlog).map_err(|source| Error::Bind { addr, source })?;
        addr = l.local_addr().map_err(|source| Error::Setup {
            what: "listener address",
            source,
        })?;
        out.push(l);
    }
    Ok((out, addr))
}

/// `--accept cpu`: the group's program maps each core's CPU to that core's
/// socket (socket i is core i's: they were bound in core order).
fn steer_by_cpu(sockets: &[TcpListener], cpus: &[Option<usize>]) -> Result<(), Error> {
    let pinned: Option<Vec<usize>> = cpus.iter().copied().collect();
    let (Some(cpus), Some(first)) = (pinned, sockets.first()) else {
        return Err(Error::Config("--accept cpu needs pinned workers".into()));
    };
    if sockets.len() != cpus.len() {
        return Err(Error::Config(format!(
            "--accept cpu needs one listening socket per worker: {} sockets for {} workers (inherited from an upgrade; restart to change)",
            sockets.len(),
            cpus.len()
        )));
    }
    crate::io::steer_by_cpu(first, &cpus).map_err(|source| Error::Setup {
        what: "--accept cpu: SO_ATTACH_REUSEPORT_CBPF",
        source,
    })?;
    log::info!(
        "accept: each connection goes to the listener of the CPU that took its packets ({cpus:?})"
    );
    Ok(())
}

/// Checks inherited sockets against the configuration: one address, and
/// after an upgrade the configured one (an upgrade cannot move a port).
fn adopt(
    config: &Config,
    source: Source,
    list: Vec<Inherited>,
) -> Result<(Vec<TcpListener>, SocketAddr), Error> {
    let addr = list
        .first()
        .map(|l| l.addr)
        .ok_or_else(|| Error::Inherit("no socket".into()))?;
    if let Some(other) = list.iter().find(|l| l.addr != addr) {
        return Err(Error::Inherit(format!(
            "sockets on {addr} and {} ({}): one address is served",
            other.addr, other.name
        )));
    }
    match source {
        Source::Upgrade => {
            let want = config.addr();
            if want != addr && !(want.port() == 0 && want.ip() == addr.ip()) {
                return Err(Error::Inherit(format!(
                    "the old process listens on {addr}, this configuration on {want}; \
                     an upgrade keeps the address (restart to change it)"
                )));
            }
            log::info!("upgrade: took over {} listeners on {addr}", list.len());
        }
        Source::Systemd => {
            let names: Vec<&str> = list.iter().map(|l| l.name.as_str()).collect();
            log::info!(
                "socket activation: {} sockets on {addr} ({}); --bind and --port are not used",
                list.len(),
                names.join(", ")
            );
        }
    }
    Ok((list.into_iter().map(|l| l.listener).collect(), addr))
}

/// Deals sockets to cores: socket j to core j % workers, so surplus
/// sockets (more than workers, after an upgrade that lowered --workers)
/// keep being served; with fewer sockets than workers, cores share them
/// (each through a descriptor of its own).
fn spread(sockets: Vec<TcpListener>, workers: usize) -> Result<Vec<Vec<TcpListener>>, Error> {
    let n = sockets.len();
    let mut cores: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    if n == 0 {
        return Err(Error::Inherit("no socket".into()));
    }
    if n != workers {
        log::info!(
            "{n} listening sockets for {workers} workers: {}",
            if n > workers {
                "some workers accept from several"
            } else {
                "some are shared by two or more workers"
            }
        );
    }
    for (i, core) in cores.iter_mut().enumerate().skip(n) {
        let dup = sockets[i % n].try_clone().map_err(|source| Error::Setup {
            what: "dup of a listening socket",
            source,
        })?;
        core.push(dup);
    }
    for (j, socket) in sockets.into_iter().enumerate() {
        cores[j % workers].push(socket);
    }
    Ok(cores)
}

/// The `--stats` printer: one line per interval until shutdown begins.
fn spawn_stats(
    every: Duration,
    stats: Vec<Arc<CachePadded<CoreStats>>>,
    shutdown: Shutdown,
    cores_done: Arc<AtomicBool>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("coreloop-stats".into())
        .spawn(move || {
            let mut line = StatsLine::new(&stats);
            let mut last = Instant::now();
            let stop = || shutdown.is_triggered() || cores_done.load(Ordering::Relaxed);
            while !stop() {
                let due = last + every;
                while Instant::now() < due && !stop() {
                    thread::sleep(Duration::from_millis(50).min(every));
                }
                if stop() {
                    break;
                }
                let now = Instant::now();
                let text = line.next(&stats, now - last);
                last = now;
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        })
}

fn run_core<F, H>(
    core: Core,
    backend: Backend,
    addr: SocketAddr,
    factory: &F,
) -> io::Result<CoreReport>
where
    F: Fn(usize) -> H,
    H: Handler,
{
    if let Some(cpu) = core.cpu {
        topology::pin_current_thread(cpu)?;
    }
    place_memory(&core)?;
    // For /metrics' per-core CPU time (read from /proc by whoever asks).
    let tid = u32::try_from(nix::unistd::gettid().as_raw()).unwrap_or(0);
    core.stats
        .tid
        .store(tid, std::sync::atomic::Ordering::Relaxed);
    let cpu = core
        .cpu
        .map_or_else(|| "unpinned".to_string(), |c| format!("cpu {c}"));
    log::info!(
        "core {}: {cpu}, backend {backend}, listening on {addr}",
        core.id
    );
    let handler = factory(core.id);
    match backend {
        Backend::Uring => backend::uring::run(core, handler),
        Backend::Epoll | Backend::Auto => backend::epoll::run(core, handler),
    }
}

/// Sets the calling core thread's memory policy (`--numa`) for the node of
/// its CPU, records that node, and logs the policy as the kernel reads it
/// back.
fn place_memory(core: &Core) -> io::Result<()> {
    let node = core.cpu.and_then(crate::numa::node_of_cpu);
    if let Some(n) = node {
        let plus_one = u32::try_from(n + 1).unwrap_or(0);
        core.stats.cpu_node.store(plus_one, Ordering::Relaxed);
    }
    let policy = core.config.numa;
    if policy == crate::numa::Policy::Off {
        return Ok(());
    }
    let all = crate::numa::memory_nodes();
    let node = node.unwrap_or(all[0]);
    crate::numa::apply(policy, node, &all).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--numa {}: set_mempolicy: {e}", policy.name()),
        )
    })?;
    let back = crate::numa::current().unwrap_or_else(|e| format!("unreadable ({e})"));
    log::info!(
        "core {}: memory policy {back} (--numa {})",
        core.id,
        policy.name()
    );
    Ok(())
}

/// Resolves `auto` by probing io_uring; `uring` fails with the probe's
/// reason, `auto` falls back to epoll and says why in one line.
fn choose_backend(config: &Config) -> Result<Backend, Error> {
    match config.backend {
        Backend::Epoll => Ok(Backend::Epoll),
        Backend::Uring => backend::uring::probe(config)
            .map(|()| Backend::Uring)
            .map_err(Error::Backend),
        Backend::Auto => match backend::uring::probe(config) {
            Ok(()) => Ok(Backend::Uring),
            Err(reason) => {
                log::warn!("io_uring unavailable ({reason}): falling back to epoll");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// One entry per worker: the CPU it is pinned to, or None when unpinned.
fn plan_cpus(config: &Config) -> Result<Vec<Option<usize>>, Error> {
    let allowed = topology::allowed_cpus().map_err(|source| Error::Setup {
        what: "sched_getaffinity",
        source,
    })?;
    let cpus = match &config.cpus {
        Some(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(Error::Config(format!(
                    "--cpus: CPU {bad} is not in this process's affinity mask {allowed:?}"
                )));
            }
            list.clone()
        }
        None => allowed,
    };
    let workers = config.workers.unwrap_or(cpus.len());
    if !config.pin {
        return Ok(vec![None; workers]);
    }
    if workers > cpus.len() {
        return Err(Error::Config(format!(
            "--workers {workers} needs {workers} CPUs to pin to, only {} available ({cpus:?}); add --no-pin",
            cpus.len()
        )));
    }
    Ok(cpus.into_iter().take(workers).map(Some).collect())
}

/// Raises RLIMIT_NOFILE to its hard limit and says so when that is still
/// below what --max-conns on every core needs.
fn check_nofile(config: &Config, workers: usize) {
    match listener::raise_nofile() {
        Ok((soft, _)) => {
            let needed = (config.max_conns * workers + 64) as u64;
            if soft < needed {
                log::warn!(
                    "open-files limit is {soft}, below the {needed} that --max-conns {} on {workers} cores needs; \
                     accept pauses when descriptors run out",
                    config.max_conns
                );
            }
        }
        Err(e) => log::warn!("cannot raise the open-files limit: {e}"),
    }
}
