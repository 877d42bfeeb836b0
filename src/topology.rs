//! CPUs: which ones the process may use, the `--cpus` list syntax, and
//! pinning a worker thread to one.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// CPUs in the calling thread's affinity mask, ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(std::io::Error::from)?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to `cpu` (sched_setaffinity(2)).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    set_affinity(&[cpu])
}

/// Lets the calling thread run on `cpus` only (sched_setaffinity(2)).
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(std::io::Error::from)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

/// Parses a CPU list such as `0,2-3` (the kernel's cpuset syntax).
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let bad = || format!("invalid CPU list {text:?}: expected e.g. 0,2-3");
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<usize>().map_err(|_| bad())?,
                hi.trim().parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let cpu = part.parse::<usize>().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if lo > hi || hi >= CpuSet::count() {
            return Err(bad());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse_cpu_list("3,1,1"), Ok(vec![1, 3]));
        for bad in ["", "a", "3-1", "1-", "-1", "0,,1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn this_process_has_cpus() {
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
