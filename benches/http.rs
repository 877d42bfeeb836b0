//! Micro-benchmarks of the sans-IO HTTP engine: head parsing (against bare
//! httparse), a 16-deep pipelined batch through `Conn`, and response
//! serialization.
//!
//! Run: `taskset -c 1 cargo bench --bench http`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use coreloop::http::{
    find_head_end, parse_head, write_response, Body, Conn, Ctx, DateCache, Found, Head, Limits,
    Persist, Response, Scan,
};
use coreloop::metrics::CoreStats;
use coreloop::pool::BufPool;
use coreloop::Router;

/// A Chrome navigation request head: 526 bytes, 11 fields.
const BROWSER: &[u8] = b"GET /articles/thread-per-core?ref=home HTTP/1.1\r\n\
Host: www.example.com\r\n\
Connection: keep-alive\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=4f2a9c1e7b3d; theme=dark\r\n\
\r\n";

/// One wrk-style plaintext request.
const PLAINTEXT_REQ: &[u8] = b"GET /plaintext HTTP/1.1\r\n\
Host: localhost\r\n\
User-Agent: wrk\r\n\
Accept: text/plain\r\n\
\r\n";

const PIPELINE: usize = 16;

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

fn parse_head_benches(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse_head");
    group.throughput(Throughput::Bytes(BROWSER.len() as u64));

    // Sanity check outside the timed loop.
    {
        let mut scan = Scan::default();
        let mut head = Head::default();
        let end = match find_head_end(BROWSER, &mut scan, &limits) {
            Ok(Found::Complete(end)) => end,
            other => panic!("head not complete: {other:?}"),
        };
        assert_eq!(end, BROWSER.len());
        assert_eq!(parse_head(BROWSER, end, &mut head, &limits), Ok(true));
        assert_eq!(head.headers.len(), 11);
        assert_eq!(head.len, BROWSER.len());
    }

    let mut head = Head::default();
    group.bench_function("browser", |b| {
        b.iter(|| {
            let buf = black_box(BROWSER);
            let mut scan = Scan::default();
            let end = match find_head_end(buf, &mut scan, &limits) {
                Ok(Found::Complete(end)) => end,
                _ => unreachable!(),
            };
            let ok = parse_head(buf, end, &mut head, &limits);
            let _ = black_box((ok, &head));
        })
    });

    group.bench_function("httparse_only", |b| {
        b.iter(|| {
            let buf = black_box(BROWSER);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(buf);
            black_box((&status, &req));
        })
    });
    group.finish();
}

fn pipeline_benches(c: &mut Criterion) {
    let batch: Vec<u8> = PLAINTEXT_REQ.repeat(PIPELINE);
    let limits = Limits::default();
    let date = DateCache::new(SystemTime::now());
    let stats = CoreStats::default();
    let mut pool = BufPool::default();
    let mut router = Router::builtins();
    let now = Instant::now();
    let mut conn = Conn::new(now, &limits);

    // Check once, outside the timed loop, that the batch yields 16 x 200.
    {
        let mut ctx = Ctx {
            now,
            date: &date,
            limits: &limits,
            pool: &mut pool,
            stats: &stats,
            handler: &mut router,
            log: None,
        };
        conn.handle_input(&batch, &mut ctx);
        let out = conn.poll_transmit();
        let oks = out
            .windows(17)
            .filter(|w| *w == b"HTTP/1.1 200 OK\r\n")
            .count();
        let statuses = out.windows(9).filter(|w| *w == b"HTTP/1.1 ").count();
        assert_eq!(
            (oks, statuses),
            (PIPELINE, PIPELINE),
            "{}",
            String::from_utf8_lossy(out)
        );
        let n = out.len();
        conn.on_sent(n, now, &limits, &mut pool);
        assert!(conn.poll_transmit().is_empty() && conn.is_idle());
    }

    let mut group = c.benchmark_group("pipeline16");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    group.bench_function("plaintext", |b| {
        b.iter(|| {
            let mut ctx = Ctx {
                now,
                date: &date,
                limits: &limits,
                pool: &mut pool,
                stats: &stats,
                handler: &mut router,
                log: None,
            };
            conn.handle_input(black_box(&batch), &mut ctx);
            let n = black_box(conn.poll_transmit()).len();
            conn.on_sent(n, now, &limits, &mut pool);
        })
    });
    group.finish();
}

fn serialize_benches(c: &mut Criterion) {
    let date = DateCache::new(SystemTime::now());
    let plaintext = Response::ok("text/plain", b"Hello, World!");
    let json = Response::new(200)
        .with_content_type("application/json")
        .with_header("Cache-Control", "no-store")
        .with_header("X-Request-Id", "7f3a9c2e-51b4-4d8e-9a61-0c2f5e8d1b47")
        .with_body(Body::Bytes(br#"{"message":"Hello, World!"}"#.to_vec()));
    let mut out = Vec::with_capacity(4096);

    let mut group = c.benchmark_group("serialize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("plaintext", |b| {
        b.iter(|| {
            out.clear();
            write_response(
                &mut out,
                black_box(&plaintext),
                date.as_bytes(),
                Persist::Default,
                false,
            );
            black_box(&out);
        })
    });
    group.bench_function("json_with_headers", |b| {
        b.iter(|| {
            out.clear();
            write_response(
                &mut out,
                black_box(&json),
                date.as_bytes(),
                Persist::Default,
                false,
            );
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse_head_benches, pipeline_benches, serialize_benches
}
criterion_main!(benches);
