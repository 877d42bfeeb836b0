//! `/metrics` over real sockets, once per backend: counts match a known
//! load exactly, and every family the issue names is there.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::net::{config, eventually, TestServer};
use coreloop::handler::{site, SiteConfig};
use coreloop::Backend;

per_backend!(
    counts_a_known_load,
    off_switch_and_custom_path,
    cpu_time_per_core
);

fn serve(backend: Backend, site_config: SiteConfig) -> TestServer {
    TestServer::start_with(config(backend), move |_core, info| {
        site(&site_config, info.stats.clone(), info.backend)
    })
}

fn no_files() -> SiteConfig {
    SiteConfig {
        files: None,
        ..SiteConfig::default()
    }
}

/// `name{labels}` -> value, summed over the `core` label (fractions, as
/// in CPU seconds, are cut to whole numbers).
fn scrape(text: &str) -> HashMap<String, u64> {
    let mut sums = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value = value.parse::<f64>().expect("a number") as u64;
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let rest: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.starts_with("core="))
                    .collect();
                if rest.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{}}}", rest.join(","))
                }
            }
            None => series.to_string(),
        };
        *sums.entry(key).or_insert(0) += value;
    }
    sums
}

fn counts_a_known_load(backend: Backend) {
    let server = serve(backend, no_files());
    let mut conns: Vec<_> = (0..4).map(|_| server.connect()).collect();
    for c in &mut conns {
        for _ in 0..10 {
            assert_eq!(c.get("/plaintext").status, 200);
        }
        assert_eq!(c.get("/nope").status, 404);
    }
    let mut bad = server.connect();
    bad.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(bad.read_response().unwrap().status, 400);
    drop(conns);
    assert!(eventually(std::time::Duration::from_secs(5), || {
        server.total(|s| s.closed.get()) == 5
    }));

    let mut scraper = server.connect();
    let r = scraper.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body).unwrap();
    let m = scrape(&text);
    // The scrape itself is counted after its handler ran.
    assert_eq!(m["coreloop_requests_total"], 44, "{text}");
    assert_eq!(m["coreloop_responses_total{class=\"2xx\"}"], 40);
    assert_eq!(m["coreloop_responses_total{class=\"4xx\"}"], 5);
    assert_eq!(m["coreloop_responses_total{class=\"5xx\"}"], 0);
    assert_eq!(
        m["coreloop_parse_errors_total{kind=\"duplicate_host\"}"], 1,
        "{text}"
    );
    assert_eq!(m["coreloop_connections_accepted_total"], 6);
    assert_eq!(m["coreloop_connections_closed_total"], 5);
    assert_eq!(m["coreloop_connections_active"], 1);
    assert_eq!(m["coreloop_deadline_expiries_total{kind=\"idle\"}"], 0);
    assert!(m["coreloop_received_bytes_total"] > 40 * 30);
    assert!(m["coreloop_sent_bytes_total"] > 40 * 100);
    let name = backend.to_string();
    assert_eq!(
        m[&format!("coreloop_backend_info{{backend=\"{name}\"}}")],
        1
    );
    // One sample per core for every per-core family.
    let per_core = text
        .lines()
        .filter(|l| l.starts_with("coreloop_requests_total{"))
        .count();
    assert_eq!(per_core, 2);
    match backend {
        Backend::Uring => {
            assert!(m["coreloop_ring_submissions_total"] > 0);
            assert!(m["coreloop_ring_completions_total"] > 0);
            assert_eq!(m["coreloop_poll_wakeups_total"], 0);
            // Two cores, each keeping at least 32 of its 1024 buffers in
            // the ring and at most all of them.
            let window = m["coreloop_ring_buffer_window"];
            assert!((64..=2048).contains(&window), "window {window}");
        }
        _ => {
            assert!(m["coreloop_poll_wakeups_total"] > 0);
            assert_eq!(m["coreloop_ring_submissions_total"], 0);
            assert_eq!(m["coreloop_ring_buffer_window"], 0);
        }
    }
}

fn off_switch_and_custom_path(backend: Backend) {
    let off = SiteConfig {
        metrics_path: None,
        ..no_files()
    };
    let server = serve(backend, off);
    assert_eq!(server.connect().get("/metrics").status, 404);
    drop(server);
    let moved = SiteConfig {
        metrics_path: Some("/_/stats".into()),
        ..no_files()
    };
    let server = serve(backend, moved);
    let mut c = server.connect();
    assert_eq!(c.get("/metrics").status, 404);
    let r = c.get("/_/stats");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains("coreloop_requests_total{core=\"0\"} "));
}

/// Each core's thread CPU time, for imbalance: one sample per core, and
/// it grows under load.
fn cpu_time_per_core(backend: Backend) {
    let server = serve(backend, no_files());
    let cpu = |server: &TestServer| -> Vec<f64> {
        let r = server.connect().get("/metrics");
        let text = String::from_utf8(r.body).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("coreloop_core_cpu_seconds_total{core=\""))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect()
    };
    assert_eq!(cpu(&server).len(), 2, "one sample per core");
    let before: f64 = cpu(&server).iter().sum();
    let mut conns: Vec<_> = (0..8).map(|_| server.connect()).collect();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_millis(700) {
        for c in &mut conns {
            c.send(&b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16));
            for _ in 0..16 {
                assert_eq!(c.read_response().unwrap().status, 200);
            }
        }
    }
    let after: f64 = cpu(&server).iter().sum();
    assert!(
        after > before,
        "CPU time grew under load: {before} -> {after}"
    );
}
