//! `coreloop ab`: flags to `ab::Plan`, the rounds, the reading.
//! Exit 0 after the rounds, 1 when a server or the load failed, 2 for bad
//! flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::ab::{self, Arm, Plan, Sample};

/// An A/B experiment: two coreloop flag sets (or two server commands),
/// rounds in random order, the server restarted and pinned for every
/// measurement, `coreloop load` on another CPU; server CPU per response,
/// paired ratio B/A per round, median and bootstrap 95% interval.
#[derive(Parser, Debug)]
#[command(name = "coreloop ab")]
struct AbArgs {
    /// Flags for coreloop as A, e.g. "--backend epoll" (may be empty).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    a: String,
    /// Flags for coreloop as B.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    b: String,
    /// A whole server command as A instead (run by sh -c; it must listen on --port).
    #[arg(long, value_name = "CMD", conflicts_with = "a")]
    a_cmd: Option<String>,
    /// A whole server command as B instead.
    #[arg(long, value_name = "CMD", conflicts_with = "b")]
    b_cmd: Option<String>,
    /// A/A control: B is A again (shows the noise floor).
    #[arg(long, conflicts_with_all = ["b", "b_cmd"])]
    aa: bool,
    /// Rounds (each measures A and B once, in random order).
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// The servers' CPU.
    #[arg(long, default_value_t = 0)]
    server_cpu: usize,
    /// The load generator's CPU.
    #[arg(long, default_value_t = 1)]
    client_cpu: usize,
    /// The port the servers listen on.
    #[arg(long, default_value_t = 18280)]
    port: u16,
    /// The path requested.
    #[arg(long, default_value = "/plaintext")]
    path: String,
    /// Measured load per arm and round.
    #[arg(short = 'd', long, default_value = "5s", value_parser = crate::cli::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, default_value = "1s", value_parser = crate::cli::parse_duration)]
    warmup: Duration,
    /// `coreloop load` flags, e.g. "-c 64 --pipeline 16" or "-R 40000".
    #[arg(long, default_value = "-c 64", allow_hyphen_values = true)]
    load: String,
    /// Seed of the round order (default: the time).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the rounds and the reading as JSON to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs `coreloop ab` with `argv` (starting at the program name).
pub fn main(argv: &[OsString]) -> ExitCode {
    let args = AbArgs::parse_from(argv[1..].iter());
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("coreloop ab: error: {msg}");
            return ExitCode::from(2);
        }
    };
    println!(
        "coreloop ab: A = {}, B = {}; {} rounds of {:?} on CPU {} (server) / {} (load), load \"{}\", seed {}",
        shown(&plan.arms[0]),
        shown(&plan.arms[1]),
        plan.rounds,
        args.duration,
        args.server_cpu,
        args.client_cpu,
        args.load,
        plan.seed
    );
    let rounds = ab::run(&plan, |i, b_first, [a, b]| {
        println!(
            "round {:>2} ({}): A {:.3} us/resp at {:.0}/s{}, B {:.3} us/resp at {:.0}/s{}, B/A {:.3}",
            i + 1,
            if b_first { "B first" } else { "A first" },
            a.cpu_us,
            a.rate,
            errors(a),
            b.cpu_us,
            b.rate,
            errors(b),
            b.cpu_us / a.cpu_us
        );
    });
    let rounds = match rounds {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coreloop ab: error: {e}");
            return ExitCode::from(1);
        }
    };
    let reading = reading(&rounds, plan.seed);
    print!("{}", reading.text);
    if let Some(path) = &args.json {
        let doc = reading.json;
        let written = if path.as_os_str() == "-" {
            print!("{doc}");
            Ok(())
        } else {
            std::fs::write(path, doc)
        };
        if let Err(e) = written {
            eprintln!("coreloop ab: error: --json {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn errors(s: Sample) -> String {
    if s.errors == 0 {
        String::new()
    } else {
        format!(" ({} errors)", s.errors)
    }
}

fn shown(arm: &Arm) -> String {
    format!("\"{}\"", arm.args.join(" "))
}

fn plan(a: &AbArgs) -> Result<Plan, String> {
    if a.rounds == 0 || a.rounds > 1000 {
        return Err(format!("--rounds {} must be between 1 and 1000", a.rounds));
    }
    if a.duration.is_zero() {
        return Err("-d must be above 0".into());
    }
    let allowed = crate::topology::allowed_cpus().map_err(|e| format!("sched_getaffinity: {e}"))?;
    for (flag, cpu) in [
        ("--server-cpu", a.server_cpu),
        ("--client-cpu", a.client_cpu),
    ] {
        if !allowed.contains(&cpu) {
            return Err(format!(
                "{flag} {cpu} is not in this process's affinity mask {allowed:?}"
            ));
        }
    }
    if !a.path.starts_with('/') {
        return Err(format!("--path {:?} must start with /", a.path));
    }
    let url = format!("http://127.0.0.1:{}{}", a.port, a.path);
    let mut load_argv: Vec<String> = vec![url];
    load_argv.extend(a.load.split_whitespace().map(String::from));
    let duration = format!("{}us", a.duration.as_micros());
    let cpu = a.client_cpu.to_string();
    load_argv.extend(["-q", "-d", duration.as_str(), "--cpus", cpu.as_str()].map(String::from));
    let load = super::load::parse_options(&load_argv).map_err(|e| format!("--load: {e}"))?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's path: {e}"))?
        .to_string_lossy()
        .into_owned();
    let arm = |name: &str, flags: &str, cmd: &Option<String>| match cmd {
        Some(cmd) => Arm {
            name: name.into(),
            program: "sh".into(),
            args: vec!["-c".into(), cmd.clone()],
        },
        None => {
            let mut args: Vec<String> = [
                "--port",
                &a.port.to_string(),
                "--workers",
                "1",
                "--cpus",
                &a.server_cpu.to_string(),
                "--log-level",
                "warn",
            ]
            .map(String::from)
            .to_vec();
            args.extend(flags.split_whitespace().map(String::from));
            Arm {
                name: name.into(),
                program: exe.clone(),
                args,
            }
        }
    };
    let first = arm("A", &a.a, &a.a_cmd);
    let second = if a.aa {
        Arm {
            name: "B".into(),
            ..first.clone()
        }
    } else {
        arm("B", &a.b, &a.b_cmd)
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    Ok(Plan {
        arms: [first, second],
        rounds: a.rounds,
        server_cpu: a.server_cpu,
        load,
        warmup: a.warmup,
        seed,
    })
}

struct Reading {
    text: String,
    json: String,
}

fn reading(rounds: &[[Sample; 2]], seed: u64) -> Reading {
    let ratios: Vec<f64> = rounds.iter().map(|[a, b]| b.cpu_us / a.cpu_us).collect();
    let a: Vec<f64> = rounds.iter().map(|[a, _]| a.cpu_us).collect();
    let b: Vec<f64> = rounds.iter().map(|[_, b]| b.cpu_us).collect();
    let med = ab::median(&ratios);
    let (lo, hi) = ab::bootstrap(&ratios, 10_000, &mut ab::Rng::new(seed ^ 0x9e37_79b9));
    let verdict = if lo > 1.0 {
        "B costs more server CPU per response than A (the interval is above 1)"
    } else if hi < 1.0 {
        "B costs less server CPU per response than A (the interval is below 1)"
    } else {
        "no difference resolved: the interval holds 1 (more rounds, a quieter host, or compare with an A/A run)"
    };
    let text = format!(
        "server CPU per response: A median {:.3} us, B median {:.3} us; B/A median {med:.3}, 95% interval [{lo:.3}, {hi:.3}] over {} rounds\n{verdict}\n",
        ab::median(&a),
        ab::median(&b),
        ratios.len()
    );
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let json = format!(
        "{{\"a_us\":[{}],\"b_us\":[{}],\"ratios\":[{}],\"median\":{med:.4},\"low\":{lo:.4},\"high\":{hi:.4}}}\n",
        list(&a),
        list(&b),
        list(&ratios)
    );
    Reading { text, json }
}
