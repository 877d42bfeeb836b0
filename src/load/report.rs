//! What `coreloop load` prints: a live line per second, the summary, the
//! JSON document (`--json`) and the histogram in HdrHistogram's
//! percentile-distribution text (`--hgrm`, the `.hgrm` files plotters read).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::worker::{Live, Tally};
use super::Outcome;

/// Percentiles the summary and the JSON give.
const QUANTILES: [(f64, &str); 5] = [
    (0.5, "p50"),
    (0.9, "p90"),
    (0.99, "p99"),
    (0.999, "p99.9"),
    (1.0, "max"),
];

/// The client's busy share above which it warns it may be the bottleneck.
const BUSY: f64 = 0.90;

/// Prints a line per second until every thread has finished.
pub fn live_lines<T>(live: &[Live], start: Instant, end: Duration, threads: &[JoinHandle<T>]) {
    let mut last = 0;
    let mut tick = 1;
    while !threads.iter().all(JoinHandle::is_finished) {
        let due = start + Duration::from_secs(tick);
        let now = Instant::now();
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        let responses: u64 = live
            .iter()
            .map(|l| l.responses.load(Ordering::Relaxed))
            .sum();
        let errors: u64 = live.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
        if Duration::from_secs(tick) <= end + Duration::from_secs(1) {
            let mut out = std::io::stderr().lock();
            let _ = writeln!(
                out,
                "{tick:>5}s  {:>12} responses/s  {errors} errors",
                group(responses - last)
            );
        }
        last = responses;
        tick += 1;
    }
}

/// The summary for people.
pub fn text(o: &Outcome, url: &str, mode: &str) -> String {
    let t = &o.tally;
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "coreloop load {url}: {mode}, {}, {secs:.1} s measured",
        o.backend
    );
    let _ = writeln!(
        s,
        "  responses   {} ({:.1}/s)",
        group(t.responses),
        t.responses as f64 / secs
    );
    let _ = writeln!(s, "  statuses    {}", statuses(t));
    let open = mode.contains("open loop");
    let latency = if open { "corrected" } else { "latency" };
    let _ = writeln!(s, "  {latency:<11} {}", percentiles(&t.corrected));
    if open {
        let _ = writeln!(s, "  uncorrected {}", percentiles(&t.uncorrected));
        let _ = writeln!(s, "  send lag    {}", percentiles(&t.lag));
    }
    let e = &t.errors;
    let _ = writeln!(
        s,
        "  errors      connect {}, read {}, write {}, timeout {}, framing {}, closed {}",
        e.connect, e.read, e.write, e.timeout, e.framing, e.closed
    );
    let _ = writeln!(
        s,
        "  at the end  {} in flight{}; {} connections opened",
        t.in_flight_end,
        if open {
            format!(", {} due and unsent", t.unsent_end)
        } else {
            String::new()
        },
        t.connects
    );
    let busy = busy_share(o);
    let per = if t.responses + t.warmup_responses == 0 {
        "no responses".to_string()
    } else {
        format!("{:.2} us per response", cpu_per_response(o) * 1e6)
    };
    let _ = writeln!(
        s,
        "  client CPU  {:.2} s, {:.0}% of {} thread(s), {per}",
        t.cpu.as_secs_f64(),
        busy * 100.0,
        o.threads,
    );
    for w in warnings(o, open) {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

/// Client CPU seconds per response (warm-up included on both sides).
pub fn cpu_per_response(o: &Outcome) -> f64 {
    let n = o.tally.responses + o.tally.warmup_responses;
    o.tally.cpu.as_secs_f64() / n.max(1) as f64
}

fn busy_share(o: &Outcome) -> f64 {
    o.tally.cpu.as_secs_f64() / (o.wall.as_secs_f64() * o.threads as f64).max(1e-9)
}

/// What makes the figures suspect.
pub fn warnings(o: &Outcome, open: bool) -> Vec<String> {
    let t = &o.tally;
    let mut out = Vec::new();
    if !open && busy_share(o) >= BUSY {
        out.push(format!(
            "the load threads were busy {:.0}% of the time: the client, not the server, may be the bottleneck (give it more CPUs with --cpus)",
            busy_share(o) * 100.0
        ));
    }
    if open && (t.unsent_end > 0 || t.lag.value_at_quantile(0.99) > 10_000) {
        out.push(format!(
            "the rate was not held: {} requests due were never sent, send lag p99 {}",
            t.unsent_end,
            micros(t.lag.value_at_quantile(0.99))
        ));
    }
    if t.responses == 0 && t.errors.total() > 0 {
        out.push("no response at all: every request or connection failed".into());
    }
    out
}

/// The JSON document (`--json`).
pub fn json(o: &Outcome, url: &str, mode: &str) -> String {
    let t = &o.tally;
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let hist = |h: &Histogram<u64>| {
        let mut s = String::from("{");
        for (i, (q, name)) in QUANTILES.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{name}\":{}", h.value_at_quantile(*q));
        }
        let _ = write!(s, ",\"mean\":{:.1},\"count\":{}}}", h.mean(), h.len());
        s
    };
    let codes: Vec<String> = t
        .statuses
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(code, n)| format!("\"{code}\":{n}"))
        .collect();
    let e = &t.errors;
    format!(
        "{{\"url\":{},\"mode\":{},\"backend\":\"{}\",\"seconds\":{secs:.3},\"threads\":{},\"responses\":{},\
\"responses_per_second\":{:.1},\"statuses\":{{{}}},\"latency_us\":{},\"uncorrected_latency_us\":{},\
\"send_lag_us\":{},\"errors\":{{\"connect\":{},\"read\":{},\"write\":{},\"timeout\":{},\"framing\":{},\"closed\":{}}},\
\"in_flight_at_end\":{},\"unsent_at_end\":{},\"connections_opened\":{},\"warmup_responses\":{},\
\"client_cpu_seconds\":{:.4},\"client_cpu_us_per_response\":{:.4}}}\n",
        quote(url),
        quote(mode),
        o.backend,
        o.threads,
        t.responses,
        t.responses as f64 / secs,
        codes.join(","),
        hist(&t.corrected),
        hist(&t.uncorrected),
        hist(&t.lag),
        e.connect,
        e.read,
        e.write,
        e.timeout,
        e.framing,
        e.closed,
        t.in_flight_end,
        t.unsent_end,
        t.connects,
        t.warmup_responses,
        t.cpu.as_secs_f64(),
        cpu_per_response(o) * 1e6,
    )
}

/// The histogram as HdrHistogram's percentile distribution, values in
/// milliseconds (what HdrHistogram's plotter and wrk2 print).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(s, "{ms:12.3} {q:14.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(s, "{ms:12.3} {q:14.12} {total:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    s
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    QUANTILES
        .iter()
        .map(|(q, name)| format!("{name} {}", micros(h.value_at_quantile(*q))))
        .collect::<Vec<_>>()
        .join("  ")
}

fn statuses(t: &Tally) -> String {
    let list: Vec<String> = t
        .statuses
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(code, &n)| format!("{code}: {}", group(n)))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// `412us`, `3.20ms`, `1.250s`.
fn micros(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.3}s", us as f64 / 1e6),
    }
}

/// `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn quote(s: &str) -> String {
    let mut out = String::new();
    crate::json::push_str(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(100), "100");
        assert_eq!(micros(412), "412us");
        assert_eq!(micros(3200), "3.20ms");
        assert_eq!(micros(1_250_000), "1.250s");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\u000a\"");
    }

    #[test]
    fn hgrm_ends_at_the_total() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        let cols: Vec<&str> = last.split_whitespace().collect();
        assert_eq!(cols[1], "1.000000000000");
        assert_eq!(cols[2], "1000");
        assert!(text.contains("Total count    =         1000"));
    }
}
