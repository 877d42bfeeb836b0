//! `coreloop load URL`: flags to `load::Options`, the run, the report.
//! Exit 0 after a run with responses, 1 when nothing was answered (an
//! unreachable server), 2 for bad flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::load::{self, report, schedule, Options, Target};
use crate::topology;

/// An HTTP/1.1 load generator: a thread per CPU, pinned, closed loop
/// (-c, --pipeline) or open loop at a fixed rate (-R, --profile), per
/// request latency in HdrHistograms.
#[derive(Parser, Debug)]
#[command(name = "coreloop load")]
struct LoadArgs {
    /// The target, http://host[:port][/path].
    #[arg(default_value = "http://127.0.0.1:8080/plaintext")]
    url: String,
    /// Connections in total, spread over the threads.
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Threads, one per CPU of --cpus (default: every CPU this process may
    /// use, e.g. under taskset).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// CPUs to pin the threads to, e.g. 1 or 2-3 (default: the affinity mask).
    #[arg(long, value_name = "LIST", value_parser = |t: &str| topology::parse_cpu_list(t).map(Cpus))]
    cpus: Option<Cpus>,
    /// Do not pin the threads.
    #[arg(long)]
    no_pin: bool,
    /// Requests in flight per connection (each timed on its own).
    #[arg(long, default_value_t = 1, value_name = "DEPTH")]
    pipeline: usize,
    /// How long to measure.
    #[arg(short = 'd', long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    duration: Duration,
    /// Run this long first, not measured.
    #[arg(long, default_value = "0s", value_parser = crate::cli::parse_duration)]
    warmup: Duration,
    /// Open loop: requests per second in total (a float), sent at planned
    /// times; latency counts from the planned time.
    #[arg(short = 'R', long, value_parser = schedule::parse_rate)]
    rate: Option<f64>,
    /// Open loop with a rate profile instead of -R and -d: steps and ramps,
    /// e.g. 1000@10s,1000..5000@5s,5000@10s.
    #[arg(long, conflicts_with = "rate", value_parser = |t: &str| schedule::parse_profile(t).map(Profile))]
    profile: Option<Profile>,
    /// Connections over time instead of -c and -d: steps and ramps of
    /// counts, e.g. 16@10s,16..512@20s,512@10s (closed or open loop).
    #[arg(long, conflicts_with = "connections", value_parser = |t: &str| schedule::parse_profile(t).map(Profile))]
    conn_profile: Option<Profile>,
    /// A new connection for every request (sends Connection: close).
    #[arg(long, conflicts_with = "reconnect_after")]
    conn_per_request: bool,
    /// Close each connection after N responses and open a new one.
    #[arg(long, value_name = "N")]
    reconnect_after: Option<u64>,
    /// A request unanswered this long is a timeout error.
    #[arg(long, default_value = "10s", value_parser = crate::cli::parse_duration)]
    timeout: Duration,
    /// The method.
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// An extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "LINE")]
    headers: Vec<String>,
    /// A request body.
    #[arg(long)]
    body: Option<String>,
    /// The threads' I/O: auto (io_uring where the kernel allows it, else
    /// epoll), uring or epoll.
    #[arg(long, value_enum, default_value_t = LoadBackend::Auto)]
    backend: LoadBackend,
    /// Write the results as JSON to FILE (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the latency histogram (.hgrm percentile distribution) to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// No line per second.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LoadBackend {
    Auto,
    Epoll,
    Uring,
}

/// Newtypes, so clap sees one value where the parser returns a list.
#[derive(Clone, Debug)]
struct Cpus(Vec<usize>);
#[derive(Clone, Debug)]
struct Profile(Vec<schedule::Segment>);

/// Runs `coreloop load` with `argv` (starting at the program name).
pub fn main(argv: &[OsString]) -> ExitCode {
    let args = LoadArgs::parse_from(argv[1..].iter());
    let opts = match options(&args) {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("coreloop load: error: {msg}");
            return ExitCode::from(2);
        }
    };
    let mode = describe(&opts);
    let outcome = match load::run(&opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("coreloop load: error: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", report::text(&outcome, &args.url, &mode));
    if let Some(path) = &args.json {
        let doc = report::json(&outcome, &args.url, &mode);
        if let Err(e) = write_out(path, &doc) {
            eprintln!("coreloop load: error: --json {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &args.hgrm {
        if let Err(e) = write_out(path, &report::hgrm(&outcome.tally.corrected)) {
            eprintln!("coreloop load: error: --hgrm {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if outcome.tally.responses == 0 {
        let e = &outcome.tally.errors;
        eprintln!(
            "coreloop load: error: no response from {}: {} connect errors, {} other errors",
            args.url,
            e.connect,
            e.total() - e.connect
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Load options from `coreloop load`'s flags (`argv` without the
/// program name), as `coreloop ab` takes them.
pub(super) fn parse_options(argv: &[String]) -> Result<Options, String> {
    let args = LoadArgs::try_parse_from(
        std::iter::once("coreloop load".to_string()).chain(argv.iter().cloned()),
    )
    .map_err(|e| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or("bad load flags")
            .to_string()
    })?;
    options(&args)
}

fn write_out(path: &PathBuf, text: &str) -> std::io::Result<()> {
    if path.as_os_str() == "-" {
        print!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text)
    }
}

fn options(a: &LoadArgs) -> Result<Options, String> {
    let target = Target::parse(&a.url)?;
    if a.connections == 0 || a.connections > 1_000_000 {
        return Err(format!(
            "-c {} must be between 1 and 1000000",
            a.connections
        ));
    }
    if a.pipeline == 0 || a.pipeline > 4096 {
        return Err(format!(
            "--pipeline {} must be between 1 and 4096",
            a.pipeline
        ));
    }
    if a.conn_per_request && a.pipeline > 1 {
        return Err("--conn-per-request sends one request per connection: drop --pipeline".into());
    }
    if a.reconnect_after == Some(0) {
        return Err("--reconnect-after must be at least 1".into());
    }
    if a.duration.is_zero() && a.profile.is_none() {
        return Err("-d must be above 0".into());
    }
    if a.timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    if !a.method.bytes().all(|b| b.is_ascii_uppercase()) || a.method.is_empty() {
        return Err(format!("invalid method {:?}: expected e.g. GET", a.method));
    }
    for h in &a.headers {
        let ok = h.split_once(':').is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !ok || h.contains(['\r', '\n']) {
            return Err(format!("invalid header {h:?}: expected Name: value"));
        }
    }
    let cpus = threads(a)?;
    if a.conn_profile.as_ref().is_some_and(|Profile(p)| {
        p.iter()
            .any(|s| s.from < 1.0 || s.to < 1.0 || s.from.max(s.to) > 1e6)
    }) {
        return Err("--conn-profile counts must be between 1 and 1000000".into());
    }
    let profile = match (&a.profile, a.rate) {
        (Some(Profile(p)), _) => Some(p.clone()),
        (None, Some(r)) => Some(vec![schedule::Segment {
            from: r,
            to: r,
            length: a.duration,
        }]),
        (None, None) => None,
    };
    let conn_profile = a.conn_profile.as_ref().map(|Profile(p)| p.clone());
    let duration = profile
        .as_deref()
        .or(conn_profile.as_deref())
        .map_or(a.duration, schedule::length);
    let connections = conn_profile.as_ref().map_or(a.connections, |p| {
        p.iter()
            .map(|s| s.from.max(s.to).round() as usize)
            .max()
            .unwrap_or(1)
    });
    Ok(Options {
        target,
        method: a.method.clone(),
        headers: a.headers.clone(),
        body: a.body.as_ref().map(|b| b.clone().into_bytes()),
        connections,
        cpus,
        pipeline: a.pipeline,
        duration,
        warmup: a.warmup,
        profile,
        conn_profile,
        conn_per_request: a.conn_per_request,
        reconnect_after: a.reconnect_after,
        timeout: a.timeout,
        live: !a.quiet,
        backend: match a.backend {
            LoadBackend::Auto => crate::Backend::Auto,
            LoadBackend::Epoll => crate::Backend::Epoll,
            LoadBackend::Uring => crate::Backend::Uring,
        },
    })
}

/// One entry per thread: its CPU, or `None` unpinned. Never more threads
/// than connections.
fn threads(a: &LoadArgs) -> Result<Vec<Option<usize>>, String> {
    let allowed = topology::allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    let cpus = match &a.cpus {
        Some(Cpus(list)) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--cpus: CPU {bad} is not in this process's affinity mask {allowed:?}"
                ));
            }
            list.clone()
        }
        None => allowed,
    };
    let n = a.threads.unwrap_or(cpus.len()).min(a.connections);
    if n == 0 || n > 1024 {
        return Err("-t must be between 1 and 1024".into());
    }
    Ok((0..n)
        .map(|i| (!a.no_pin).then(|| cpus[i % cpus.len()]))
        .collect())
}

fn describe(o: &Options) -> String {
    let loop_kind = match &o.profile {
        Some(p) if p.len() == 1 && p[0].from == p[0].to => format!("open loop at {}/s", p[0].from),
        Some(p) => format!("open loop, profile of {} segments", p.len()),
        None => "closed loop".into(),
    };
    let cpus: Vec<String> = o
        .cpus
        .iter()
        .map(|c| c.map_or_else(|| "unpinned".into(), |c| format!("cpu {c}")))
        .collect();
    let per = if o.conn_per_request {
        ", a connection per request".to_string()
    } else {
        o.reconnect_after
            .map_or_else(String::new, |n| format!(", reconnect after {n}"))
    };
    let conns = match &o.conn_profile {
        Some(p) => format!("connections by a profile of {} segments", p.len()),
        None => format!("{} connections", o.connections),
    };
    format!(
        "{loop_kind}, {conns}, pipeline {}{per}, {} thread(s) ({})",
        o.pipeline,
        o.cpus.len(),
        cpus.join(", ")
    )
}
