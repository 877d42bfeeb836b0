//! The checks, one function per concern, each reading through `Host`.

use super::{Finding, Host, Level, Plan};

/// Every check, in the order a reader would go through them.
/// `uring`: whether coreloop's io_uring backend can run here, with the
/// optional features the kernel offers (or why not).
pub fn examine(host: &Host, plan: &Plan, uring: Result<String, String>) -> Vec<Finding> {
    let mut out = Vec::new();
    topology(host, &mut out);
    sysctl_at_least(host, &mut out, "net.core.somaxconn", plan.backlog, Level::Warn,
        "listen(2) caps every listener's backlog (--backlog) at this; bursts of new connections beyond it are dropped");
    sysctl_at_least(host, &mut out, "net.ipv4.tcp_max_syn_backlog", plan.backlog, Level::Advice,
        "half-open connections (SYN received) per listener; below the backlog, SYN floods and bursts fall back to syncookies");
    sysctl_at_least(host, &mut out, "net.core.netdev_max_backlog", 4096, Level::Advice,
        "packets queued per CPU between the NIC and the stack; at high packet rates the default 1000 drops (see softnet drops)");
    softnet(host, &mut out);
    ports(host, &mut out);
    limits(host, plan, &mut out);
    io_uring(host, uring, &mut out);
    busy_poll(host, &mut out);
    numa_balancing(host, &mut out);
    thp(host, &mut out);
    hugetlb(host, plan, &mut out);
    governor(host, &mut out);
    isolation(host, &mut out);
    irqbalance(host, &mut out);
    nics(host, &mut out);
    out
}

fn finding(name: &str, level: Level, current: String) -> Finding {
    Finding {
        name: name.to_string(),
        level,
        current,
        recommended: String::new(),
        why: String::new(),
        fix: String::new(),
    }
}

fn unknown(name: &str, why: String) -> Finding {
    let mut f = finding(name, Level::Unknown, why);
    f.why = "could not be read (not root, a container, or this kernel has no such file)".into();
    f
}

fn sysctl_path(name: &str) -> String {
    format!("proc/sys/{}", name.replace('.', "/"))
}

/// A sysctl that should be at least `want`.
fn sysctl_at_least(
    host: &Host,
    out: &mut Vec<Finding>,
    name: &str,
    want: u64,
    below: Level,
    why: &str,
) {
    match host.number(&sysctl_path(name)) {
        Err(e) => out.push(unknown(name, e)),
        Ok(v) => {
            let mut f = finding(
                name,
                if v >= want { Level::Ok } else { below },
                v.to_string(),
            );
            if v < want {
                f.recommended = want.to_string();
                f.fix = format!("sysctl -w {name}={want}");
            }
            f.why = why.to_string();
            out.push(f);
        }
    }
}

fn topology(host: &Host, out: &mut Vec<Finding>) {
    let online = host.read("sys/devices/system/cpu/online");
    let nodes: Vec<String> = host
        .list("sys/devices/system/node")
        .into_iter()
        .filter(|n| {
            n.strip_prefix("node")
                .is_some_and(|d| d.parse::<u32>().is_ok())
        })
        .collect();
    match online {
        Err(e) => out.push(unknown("cpus", e)),
        Ok(cpus) => {
            let mut per_node = Vec::new();
            for n in &nodes {
                let list = host
                    .read(&format!("sys/devices/system/node/{n}/cpulist"))
                    .unwrap_or_default();
                per_node.push(format!("{n}: {list}"));
            }
            let mut f = finding(
                "cpus",
                Level::Info,
                format!(
                    "online {cpus}; {} NUMA node(s){}{}",
                    nodes.len().max(1),
                    if per_node.is_empty() { "" } else { " (" },
                    if per_node.is_empty() {
                        String::new()
                    } else {
                        per_node.join(", ") + ")"
                    }
                ),
            );
            f.why = "one worker per CPU by default; with more than one NUMA node, keep a worker's CPU on its NIC's node (--cpus)".into();
            out.push(f);
        }
    }
}

/// /proc/net/softnet_stat: column 2 counts packets dropped because a
/// CPU's backlog was full.
fn softnet(host: &Host, out: &mut Vec<Finding>) {
    let name = "softnet drops";
    match host.read("proc/net/softnet_stat") {
        Err(e) => out.push(unknown(name, e)),
        Ok(text) => {
            let dropped: u64 = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|h| u64::from_str_radix(h, 16).ok())
                .sum();
            let mut f = finding(
                name,
                if dropped == 0 { Level::Ok } else { Level::Warn },
                format!("{dropped} packets dropped since boot"),
            );
            f.why =
                "packets dropped between the NIC and the stack because a CPU's backlog was full"
                    .into();
            if dropped > 0 {
                f.recommended =
                    "0 (raise net.core.netdev_max_backlog, spread IRQs or RPS over more CPUs)"
                        .into();
                f.fix = "sysctl -w net.core.netdev_max_backlog=16384".into();
            }
            out.push(f);
        }
    }
}

/// Outgoing connections: the load generator's side of a benchmark.
fn ports(host: &Host, out: &mut Vec<Finding>) {
    let name = "net.ipv4.ip_local_port_range";
    match host.read(&sysctl_path(name)) {
        Err(e) => out.push(unknown(name, e)),
        Ok(text) => {
            let nums: Vec<u64> = text
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            let span = match nums[..] {
                [lo, hi] if hi >= lo => hi - lo + 1,
                _ => 0,
            };
            let mut f = finding(
                name,
                if span >= 28_000 {
                    Level::Ok
                } else {
                    Level::Advice
                },
                format!("{text} ({span} ports)"),
            );
            f.why = "each outgoing connection to one server address takes a local port (TIME_WAIT holds it 60 s): a load generator's connection-per-request rate, and the proxy's upstream connections, are bounded by this".into();
            if span < 28_000 {
                f.recommended = "1024 65535".into();
                f.fix = format!("sysctl -w {name}=\"1024 65535\"");
            }
            out.push(f);
        }
    }
    let name = "net.ipv4.tcp_tw_reuse";
    match host.number(&sysctl_path(name)) {
        Err(e) => out.push(unknown(name, e)),
        Ok(v) => {
            let mut f = finding(
                name,
                if v == 1 { Level::Ok } else { Level::Info },
                v.to_string(),
            );
            f.why = "1 lets new outgoing connections reuse TIME_WAIT ports (load generators on this host); 2, the default, only for loopback".into();
            if v != 1 {
                f.recommended = "1 on a load-generating host".into();
                f.fix = format!("sysctl -w {name}=1");
            }
            out.push(f);
        }
    }
}

/// `Max open files` and `Max locked memory` from /proc/self/limits.
fn limits(host: &Host, plan: &Plan, out: &mut Vec<Finding>) {
    let text = match host.read("proc/self/limits") {
        Ok(t) => t,
        Err(e) => {
            out.push(unknown("open files limit", e));
            return;
        }
    };
    let row = |label: &str| -> Option<(String, String)> {
        let line = text.lines().find(|l| l.starts_with(label))?;
        let mut cols = line[label.len()..].split_whitespace();
        Some((cols.next()?.to_string(), cols.next()?.to_string()))
    };
    let need = plan.max_conns * plan.workers + 64;
    match row("Max open files") {
        None => out.push(unknown(
            "open files limit",
            "no 'Max open files' row".into(),
        )),
        Some((_soft, hard)) => {
            let hard_n = if hard == "unlimited" {
                u64::MAX
            } else {
                hard.parse().unwrap_or(0)
            };
            let ok = hard_n >= need;
            let mut f = finding(
                "open files limit",
                if ok { Level::Ok } else { Level::Warn },
                format!("hard {hard} (coreloop raises the soft limit to it)"),
            );
            f.why = format!("one descriptor per connection: --max-conns {} x {} workers + listeners and files needs {need}", plan.max_conns, plan.workers);
            if !ok {
                f.recommended = format!(">= {need}");
                f.fix = format!("ulimit -Hn {need} (as root), LimitNOFILE={need} in the systemd unit, or nofile in /etc/security/limits.conf");
            }
            out.push(f);
        }
    }
    match row("Max locked memory") {
        None => out.push(unknown(
            "locked memory limit",
            "no 'Max locked memory' row".into(),
        )),
        Some((soft, _)) => {
            let bytes = if soft == "unlimited" {
                u64::MAX
            } else {
                soft.parse().unwrap_or(0)
            };
            // Kernels before 5.12 charge io_uring rings and buffers here.
            let ok = bytes >= 64 << 20;
            let mut f = finding(
                "locked memory limit",
                if ok { Level::Ok } else { Level::Info },
                soft.clone(),
            );
            f.why = "kernels before 5.12 charge io_uring rings and registered buffers to RLIMIT_MEMLOCK; newer ones to the memory cgroup".into();
            if !ok {
                f.recommended = "unlimited, or >= 64 MiB, on kernels before 5.12".into();
                f.fix = "LimitMEMLOCK=infinity in the systemd unit, or ulimit -l unlimited".into();
            }
            out.push(f);
        }
    }
}

fn io_uring(host: &Host, uring: Result<String, String>, out: &mut Vec<Finding>) {
    let name = "kernel.io_uring_disabled";
    match host.number(&sysctl_path(name)) {
        Err(_) => {} // older kernels have no such knob: io_uring is on
        Ok(v) => {
            let mut f = finding(
                name,
                if v == 0 { Level::Ok } else { Level::Warn },
                v.to_string(),
            );
            f.why =
                "1 limits io_uring to a group, 2 turns it off: coreloop then falls back to epoll"
                    .into();
            if v != 0 {
                f.recommended = "0".into();
                f.fix = format!("sysctl -w {name}=0");
            }
            out.push(f);
        }
    }
    let mut f = match uring {
        Ok(features) if features.is_empty() => finding(
            "io_uring",
            Level::Ok,
            "usable: every operation coreloop needs is offered".into(),
        ),
        Ok(features) => finding(
            "io_uring",
            Level::Info,
            format!("usable: every operation coreloop needs is offered; {features}"),
        ),
        Err(why) => finding("io_uring", Level::Warn, format!("not usable: {why}")),
    };
    f.why = "the io_uring backend needs multishot accept and receive, provided buffer rings and the operations it submits; without them --backend auto runs epoll".into();
    out.push(f);
}

fn busy_poll(host: &Host, out: &mut Vec<Finding>) {
    for name in ["net.core.busy_read", "net.core.busy_poll"] {
        match host.number(&sysctl_path(name)) {
            Err(e) => out.push(unknown(name, e)),
            Ok(v) => {
                let mut f = finding(
                    name,
                    Level::Info,
                    if v == 0 {
                        "0 (off)".into()
                    } else {
                        format!("{v} us")
                    },
                );
                f.why = "system-wide busy polling of sockets (microseconds): trades a CPU spinning for latency; an experiment knob, off by default".into();
                out.push(f);
            }
        }
    }
}

fn numa_balancing(host: &Host, out: &mut Vec<Finding>) {
    let name = "kernel.numa_balancing";
    let nodes = host
        .list("sys/devices/system/node")
        .iter()
        .filter(|n| n.starts_with("node"))
        .count();
    match host.number(&sysctl_path(name)) {
        Err(_) if nodes <= 1 => {}
        Err(e) => out.push(unknown(name, e)),
        Ok(v) => {
            let multi = nodes > 1;
            let level = if v != 0 && multi {
                Level::Advice
            } else {
                Level::Ok
            };
            let mut f = finding(name, level, format!("{v} ({nodes} node(s))"));
            f.why = "automatic NUMA balancing migrates pages of pinned workers and adds page faults; with pinned per-core memory it only costs".into();
            if level == Level::Advice {
                f.recommended = "0".into();
                f.fix = format!("sysctl -w {name}=0");
            }
            out.push(f);
        }
    }
}

fn thp(host: &Host, out: &mut Vec<Finding>) {
    let name = "transparent hugepages";
    match host.read("sys/kernel/mm/transparent_hugepage/enabled") {
        Err(e) => out.push(unknown(name, e)),
        Ok(text) => {
            let mode = text
                .split_whitespace()
                .find(|w| w.starts_with('['))
                .map_or(text.clone(), |w| w.trim_matches(['[', ']']).to_string());
            let mut f = finding(
                name,
                if mode == "always" {
                    Level::Advice
                } else {
                    Level::Ok
                },
                mode.clone(),
            );
            f.why = "'always' can stall a core on compaction when it touches new memory (latency spikes); 'madvise' leaves the choice to programs".into();
            if mode == "always" {
                f.recommended = "madvise".into();
                f.fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".into();
            }
            out.push(f);
        }
    }
}

/// Reserved huge pages against what `--huge-pages hugetlb` takes: the
/// default receive-buffer ring (1024 x 4 KiB) is two 2 MiB pages a core.
fn hugetlb(host: &Host, plan: &Plan, out: &mut Vec<Finding>) {
    let name = "vm.nr_hugepages";
    let free = match host.read("proc/meminfo") {
        Err(e) => return out.push(unknown(name, e)),
        Ok(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|n| n.trim().parse::<u64>().ok()),
    };
    let Some(free) = free else {
        return out.push(unknown(name, "no HugePages_Free in /proc/meminfo".into()));
    };
    let needed = 2 * plan.workers;
    let mut f = finding(name, Level::Info, format!("{free} huge pages free"));
    f.why = "only for --huge-pages hugetlb (io_uring): each core maps its receive-buffer ring on reserved huge pages, 2 per core at the default buffer sizes; with too few the server refuses to start. --huge-pages thp needs none".into();
    if free < needed {
        f.recommended = format!("{needed} free for {} workers", plan.workers);
        f.fix = format!("sysctl -w vm.nr_hugepages={needed}");
    }
    out.push(f);
}

fn governor(host: &Host, out: &mut Vec<Finding>) {
    let name = "cpu frequency governor";
    let govs: Vec<String> = host
        .list("sys/devices/system/cpu")
        .iter()
        .filter(|c| {
            c.strip_prefix("cpu")
                .is_some_and(|d| d.parse::<u32>().is_ok())
        })
        .filter_map(|c| {
            host.read(&format!(
                "sys/devices/system/cpu/{c}/cpufreq/scaling_governor"
            ))
            .ok()
        })
        .collect();
    if govs.is_empty() {
        let mut f = finding(
            name,
            Level::Unknown,
            "no cpufreq (a VM, or the firmware owns frequency)".into(),
        );
        f.why =
            "frequency scaling changes CPU time per request between runs; benchmarks want it fixed"
                .into();
        out.push(f);
        return;
    }
    let mut kinds = govs.clone();
    kinds.sort();
    kinds.dedup();
    let all_perf = kinds == ["performance"];
    let mut f = finding(
        name,
        if all_perf { Level::Ok } else { Level::Advice },
        kinds.join(", "),
    );
    f.why = "frequency scaling changes CPU time per request between runs; benchmarks want it fixed"
        .into();
    if !all_perf {
        f.recommended = "performance (for benchmarks)".into();
        f.fix = "cpupower frequency-set -g performance".into();
    }
    out.push(f);
}

fn isolation(host: &Host, out: &mut Vec<Finding>) {
    for (name, path) in [
        ("isolated cpus", "sys/devices/system/cpu/isolated"),
        ("nohz_full cpus", "sys/devices/system/cpu/nohz_full"),
    ] {
        match host.read(path) {
            Err(_) => {}
            Ok(v) => {
                let shown = if v.is_empty() { "none".to_string() } else { v };
                let mut f = finding(name, Level::Info, shown);
                f.why = "CPUs kept from the scheduler (isolcpus) or from the tick (nohz_full): pin workers there with --cpus, and keep the load generator elsewhere".into();
                out.push(f);
            }
        }
    }
}

fn irqbalance(host: &Host, out: &mut Vec<Finding>) {
    let running = host
        .list("proc")
        .iter()
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .any(|p| {
            host.read(&format!("proc/{p}/comm"))
                .is_ok_and(|c| c == "irqbalance")
        });
    let mut f = finding(
        "irqbalance",
        Level::Info,
        if running {
            "running".into()
        } else {
            "not running".into()
        },
    );
    f.why = "irqbalance moves NIC interrupts between CPUs; for a pinned experiment, stop it and set each queue's smp_affinity_list by hand".into();
    if running {
        f.fix = "systemctl stop irqbalance".into();
    }
    out.push(f);
}

/// A CPU mask file (`rps_cpus`, `xps_cpus`: hex, comma-separated words)
/// with any CPU in it.
fn mask_set(mask: &str) -> bool {
    mask.chars().any(|c| c.is_ascii_hexdigit() && c != '0')
}

/// Per NIC: its NUMA-local CPUs, receive queues with their RPS masks, and
/// the affinity of its interrupts.
fn nics(host: &Host, out: &mut Vec<Finding>) {
    let interrupts = host.read("proc/interrupts").unwrap_or_default();
    for nic in host.list("sys/class/net") {
        if nic == "lo" {
            continue;
        }
        let base = format!("sys/class/net/{nic}");
        // Virtual interfaces (bridges, ifb, veth) have no device.
        if host.list(&format!("{base}/device")).is_empty() {
            continue;
        }
        let local = host
            .read(&format!("{base}/device/local_cpulist"))
            .unwrap_or_else(|_| "unknown".into());
        let rx: Vec<String> = host
            .list(&format!("{base}/queues"))
            .into_iter()
            .filter(|q| q.starts_with("rx-"))
            .collect();
        let rps: Vec<String> = rx
            .iter()
            .map(|q| {
                host.read(&format!("{base}/queues/{q}/rps_cpus"))
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        let rps_on = rps.iter().any(|m| mask_set(m));
        let tx: Vec<String> = host
            .list(&format!("{base}/queues"))
            .into_iter()
            .filter(|q| q.starts_with("tx-"))
            .collect();
        let xps_on = tx.iter().any(|q| {
            host.read(&format!("{base}/queues/{q}/xps_cpus"))
                .is_ok_and(|m| mask_set(&m))
        });
        let irqs: Vec<String> = interrupts
            .lines()
            .filter(|l| l.contains(nic.as_str()))
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
            .filter(|n| n.parse::<u32>().is_ok())
            .map(|n| {
                let aff = host
                    .read(&format!("proc/irq/{n}/smp_affinity_list"))
                    .unwrap_or_else(|_| "?".into());
                format!("{n}->{aff}")
            })
            .collect();
        let mut f = finding(
            &format!("nic {nic}"),
            Level::Info,
            format!(
                "local CPUs {local}; {} rx queue(s), RPS {}; {} tx queue(s), XPS {}; IRQs {}",
                rx.len(),
                if rps_on { "on" } else { "off" },
                tx.len(),
                if xps_on { "on" } else { "off" },
                if irqs.is_empty() {
                    "none found".into()
                } else {
                    irqs.join(" ")
                }
            ),
        );
        f.why = "workers on the NIC's local CPUs, one rx queue per worker with its IRQ on that worker's CPU, avoid cross-CPU and cross-node hops; with fewer queues than workers, RPS spreads packets".into();
        if rx.len() == 1 && !rps_on {
            f.level = Level::Advice;
            f.recommended = "RPS over the workers' CPUs when the NIC has one queue".into();
            f.fix = format!(
                "echo <hex mask of worker CPUs> > /sys/class/net/{nic}/queues/rx-0/rps_cpus"
            );
        }
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn fixture(tag: &str) -> std::path::PathBuf {
        let root =
            std::env::temp_dir().join(format!("coreloop-doctor-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    const PLAN: Plan = Plan {
        backlog: 1024,
        max_conns: 8192,
        workers: 4,
    };

    fn get<'a>(f: &'a [Finding], name: &str) -> &'a Finding {
        f.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name} in {f:#?}"))
    }

    #[test]
    fn a_tuned_host_and_an_untuned_one() {
        let root = fixture("hosts");
        write(&root, "proc/sys/net/core/somaxconn", "128\n");
        write(&root, "proc/sys/net/ipv4/tcp_max_syn_backlog", "4096\n");
        write(&root, "proc/sys/net/core/netdev_max_backlog", "1000\n");
        write(
            &root,
            "proc/net/softnet_stat",
            "00000010 0000000a 00\n00000010 00000005 00\n",
        );
        write(
            &root,
            "proc/sys/net/ipv4/ip_local_port_range",
            "32768\t60999\n",
        );
        write(&root, "proc/sys/net/ipv4/tcp_tw_reuse", "2\n");
        write(&root, "proc/self/limits", "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 4096                 files\nMax locked memory         8388608              8388608              bytes\n");
        write(&root, "proc/sys/kernel/io_uring_disabled", "2\n");
        write(
            &root,
            "proc/meminfo",
            "MemTotal: 100 kB\nHugePages_Free:        3\n",
        );
        write(
            &root,
            "sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        );
        write(&root, "sys/devices/system/cpu/online", "0-3\n");
        write(
            &root,
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "powersave\n",
        );
        write(&root, "sys/devices/system/node/node0/cpulist", "0-1\n");
        write(&root, "sys/devices/system/node/node1/cpulist", "2-3\n");
        write(&root, "proc/sys/kernel/numa_balancing", "1\n");
        write(&root, "proc/42/comm", "irqbalance\n");
        write(&root, "sys/class/net/eth0/device/local_cpulist", "2-3\n");
        write(&root, "sys/class/net/eth0/queues/rx-0/rps_cpus", "0\n");
        write(&root, "sys/class/net/eth0/queues/tx-0/xps_cpus", "2\n");
        write(
            &root,
            "proc/interrupts",
            "           CPU0\n 30:  5  PCI-MSI  eth0-rx-0\n",
        );
        write(&root, "proc/irq/30/smp_affinity_list", "1\n");
        let f = examine(
            &Host::at(&root),
            &PLAN,
            Err("kernel.io_uring_disabled=2".into()),
        );
        assert_eq!(get(&f, "net.core.somaxconn").level, Level::Warn);
        assert_eq!(
            get(&f, "net.core.somaxconn").fix,
            "sysctl -w net.core.somaxconn=1024"
        );
        assert_eq!(get(&f, "net.ipv4.tcp_max_syn_backlog").level, Level::Ok);
        assert_eq!(
            get(&f, "softnet drops").current,
            "15 packets dropped since boot"
        );
        assert_eq!(
            get(&f, "net.ipv4.ip_local_port_range").current,
            "32768\t60999 (28232 ports)"
        );
        assert_eq!(
            get(&f, "open files limit").level,
            Level::Warn,
            "8192 x 4 + 64 > 4096"
        );
        assert_eq!(get(&f, "kernel.io_uring_disabled").level, Level::Warn);
        assert_eq!(get(&f, "io_uring").level, Level::Warn);
        assert_eq!(get(&f, "transparent hugepages").current, "always");
        let huge = get(&f, "vm.nr_hugepages");
        assert_eq!(huge.current, "3 huge pages free");
        assert_eq!(
            huge.fix,
            format!("sysctl -w vm.nr_hugepages={}", 2 * PLAN.workers)
        );
        assert_eq!(get(&f, "cpu frequency governor").level, Level::Advice);
        assert_eq!(
            get(&f, "kernel.numa_balancing").level,
            Level::Advice,
            "two nodes"
        );
        assert_eq!(get(&f, "irqbalance").current, "running");
        let nic = get(&f, "nic eth0");
        assert_eq!(
            nic.current,
            "local CPUs 2-3; 1 rx queue(s), RPS off; 1 tx queue(s), XPS on; IRQs 30->1"
        );
        assert_eq!(nic.level, Level::Advice);
        assert!(get(&f, "cpus")
            .current
            .contains("2 NUMA node(s) (node0: 0-1, node1: 2-3)"));
        let text = super::super::text(&f);
        assert!(text.starts_with("coreloop doctor: "), "{text}");
        let json = super::super::json(&f);
        assert!(
            json.contains(
                "\"name\": \"net.core.somaxconn\", \"level\": \"warn\", \"current\": \"128\""
            ),
            "{json}"
        );
        assert!(json.contains("32768\\u000960999"), "tabs escaped: {json}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_and_odd_files_are_said_not_guessed() {
        let root = fixture("empty");
        write(&root, "proc/sys/net/core/somaxconn", "lots\n");
        write(
            &root,
            "proc/sys/net/ipv4/ip_local_port_range",
            "60999 32768\n",
        );
        let f = examine(&Host::at(&root), &PLAN, Ok(String::new()));
        let s = get(&f, "net.core.somaxconn");
        assert_eq!(s.level, Level::Unknown);
        assert!(
            s.current.contains("not a number: \"lots\""),
            "{}",
            s.current
        );
        assert_eq!(
            get(&f, "net.ipv4.ip_local_port_range").current,
            "60999 32768 (0 ports)"
        );
        assert!(get(&f, "softnet drops").current.contains("not present"));
        assert_eq!(get(&f, "cpu frequency governor").level, Level::Unknown);
        assert_eq!(get(&f, "io_uring").level, Level::Ok);
        assert!(
            f.iter().all(|f| !f.name.starts_with("nic ")),
            "no NICs in the tree"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
