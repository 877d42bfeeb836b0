//! `coreloop ab`: an A/B experiment on two server command lines. Rounds in
//! random order (A then B, or B then A), the server started fresh for
//! every measurement and pinned to one CPU, `coreloop load` pinned to
//! another; the server's CPU time (utime + stime of it and its children,
//! from /proc) per response; per round the paired ratio B/A, then their
//! median and a bootstrap 95% interval. A against itself (A/A) shows the
//! noise floor an effect must clear.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, Options};

/// One arm: the program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arm {
    /// A short name for the report (`A`, `B`).
    pub name: String,
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// An experiment.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The two arms (the same twice for A/A).
    pub arms: [Arm; 2],
    /// Rounds; each measures both arms once.
    pub rounds: usize,
    /// The CPU the servers run on.
    pub server_cpu: usize,
    /// The load, pointed at the servers' address (its CPUs set).
    pub load: Options,
    /// Load before each measurement, not counted.
    pub warmup: Duration,
    /// Seed of the round order and the bootstrap.
    pub seed: u64,
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Server CPU microseconds per response.
    pub cpu_us: f64,
    /// Responses per second the client got.
    pub rate: f64,
    /// Errors the client counted.
    pub errors: u64,
}

/// Why an experiment stopped.
#[derive(Debug)]
pub enum Error {
    /// A server could not be started, or never accepted.
    Server(String),
    /// The load could not run.
    Load(load::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Server(why) => write!(f, "{why}"),
            Error::Load(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// A small xorshift generator: the round order and the bootstrap need
/// reproducible randomness, not a cryptographic one.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`, mixed first (splitmix64's finalizer):
    /// xorshift's first outputs from a small seed are small, so its low
    /// bits, the AB/BA coin, would repeat.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)).max(1))
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.bits() % n.max(1) as u64) as usize
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A 95% bootstrap interval of the median: `iters` resamples with
/// replacement, their medians' 2.5th and 97.5th percentiles.
pub fn bootstrap(values: &[f64], iters: usize, rng: &mut Rng) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut medians: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let resample: Vec<f64> = (0..values.len())
                .map(|_| values[rng.below(values.len())])
                .collect();
            median(&resample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((medians.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// Runs the rounds; `report` gets each round's two samples in arm order.
pub fn run(
    plan: &Plan,
    mut report: impl FnMut(usize, bool, [Sample; 2]),
) -> Result<Vec<[Sample; 2]>, Error> {
    let mut rng = Rng::new(plan.seed);
    let mut rounds = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        let b_first = rng.below(2) == 1;
        let order = if b_first { [1, 0] } else { [0, 1] };
        let mut samples = [Sample {
            cpu_us: 0.0,
            rate: 0.0,
            errors: 0,
        }; 2];
        for arm in order {
            samples[arm] = measure(plan, &plan.arms[arm])?;
        }
        report(round, b_first, samples);
        rounds.push(samples);
    }
    Ok(rounds)
}

/// Starts the arm's server, loads it, stops it.
fn measure(plan: &Plan, arm: &Arm) -> Result<Sample, Error> {
    let mut server = Server::start(arm, plan.server_cpu, plan.load.target.addr)?;
    let mut warm = plan.load.clone();
    warm.duration = plan.warmup;
    warm.warmup = Duration::ZERO;
    warm.live = false;
    if !plan.warmup.is_zero() {
        load::run(&warm).map_err(Error::Load)?;
    }
    let before = server.cpu();
    let out = load::run(&plan.load).map_err(Error::Load);
    let after = server.cpu();
    server.stop();
    let out = out?;
    let answered = out.tally.responses + out.tally.warmup_responses;
    Ok(Sample {
        cpu_us: (after - before).as_secs_f64() * 1e6 / answered.max(1) as f64,
        rate: out.tally.responses as f64 / out.elapsed.as_secs_f64().max(1e-9),
        errors: out.tally.errors.total(),
    })
}

struct Server {
    child: Child,
}

impl Server {
    /// Spawns the arm pinned to `cpu` (the child inherits this thread's
    /// mask, set for the spawn and put back after) and waits until `addr`
    /// accepts.
    fn start(arm: &Arm, cpu: usize, addr: SocketAddr) -> Result<Server, Error> {
        let mine = crate::topology::allowed_cpus().map_err(|e| Error::Server(e.to_string()))?;
        crate::topology::pin_current_thread(cpu)
            .map_err(|e| Error::Server(format!("cannot pin the server to CPU {cpu}: {e}")))?;
        let spawned = Command::new(&arm.program)
            .args(&arm.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        let _ = crate::topology::set_affinity(&mine);
        let child =
            spawned.map_err(|e| Error::Server(format!("{} {}: {e}", arm.name, arm.program)))?;
        let mut server = Server { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::Server(format!(
                    "{} exited ({status}) before accepting on {addr}",
                    arm.name
                )));
            }
            if Instant::now() > deadline {
                server.stop();
                return Err(Error::Server(format!(
                    "{} did not accept on {addr} within 10 s",
                    arm.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// CPU time of the server and its direct children (nginx's workers).
    fn cpu(&self) -> Duration {
        let pid = self.child.id();
        let mut pids = vec![pid];
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids.into_iter().map(process_cpu).sum()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a process (0 when gone).
fn process_cpu(pid: u32) -> Duration {
    crate::metrics::stat_cpu_seconds(&format!("/proc/{pid}/stat"))
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn bootstrap_brackets_the_median_and_narrows_with_agreement() {
        let mut rng = Rng::new(7);
        let spread = [0.9, 0.95, 1.0, 1.05, 1.1, 0.97, 1.02, 1.0];
        let (lo, hi) = bootstrap(&spread, 2000, &mut rng);
        assert!(lo <= median(&spread) && median(&spread) <= hi, "{lo} {hi}");
        assert!(lo >= 0.9 && hi <= 1.1);
        let (lo, hi) = bootstrap(&[1.2; 6], 500, &mut rng);
        assert_eq!((lo, hi), (1.2, 1.2));
    }

    #[test]
    fn rng_orders_are_mixed_and_reproducible() {
        // Small seeds too: the first coin of seeds 0..64 is not constant.
        let firsts: usize = (0..64).map(|s| Rng::new(s).below(2)).sum();
        assert!((16..48).contains(&firsts), "{firsts}");
        let mut rng = Rng::new(42);
        let ones: usize = (0..1000).map(|_| rng.below(2)).sum();
        assert!((400..600).contains(&ones), "{ones}");
        let a: Vec<u64> = {
            let mut r = Rng::new(9);
            (0..5).map(|_| r.bits()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(9);
            (0..5).map(|_| r.bits()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn own_cpu_time_is_read_from_proc() {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(process_cpu(std::process::id()) >= Duration::from_millis(20));
        assert_eq!(process_cpu(u32::MAX), Duration::ZERO);
    }
}
