//! The reverse proxy over real sockets, once per backend, against scripted
//! upstreams: pooling, header rewriting, streaming and re-framing, the
//! keep-alive race, timeouts, the wait queue, client aborts, backpressure
//! and balancing.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::net::{config, eventually, TestServer};
use common::upstream::{closed_port, read_any, read_next, Upstream};
use coreloop::config::{Balance, ProxyLimits, UpstreamGroup};
use coreloop::http::fetch::Fetch;
use coreloop::{Backend, Response, Router};

per_backend!(
    forwards_with_pooled_connections,
    rewrites_hop_by_hop_and_forwarding_fields,
    clients_that_close_still_reuse_upstream_connections,
    streams_chunked_and_close_delimited_replies,
    invalid_framing_is_502_and_the_client_keeps_its_connection,
    keep_alive_race_retries_get_but_never_post,
    upstream_closing_idle_connections_causes_no_errors,
    refused_and_slow_upstreams_get_502_and_504,
    full_queue_answers_503,
    client_abort_cancels_the_upstream_exchange,
    pipelined_requests_behind_a_forward_keep_their_order,
    slow_client_slows_the_upstream,
    balances_and_skips_a_failed_server,
    drain_finishes_pending_replies,
    restarted_upstream_costs_no_request,
    metrics_are_labelled_per_upstream_server,
    a_handler_calls_an_upstream_and_shapes_the_reply,
    upstream_resets_are_retried_or_cut_short,
);

fn proxy(backend: Backend, servers: Vec<SocketAddr>, limits: ProxyLimits) -> TestServer {
    let mut cfg = config(backend);
    cfg.workers = Some(1);
    cfg.upstreams = vec![UpstreamGroup {
        servers,
        host: None,
    }];
    cfg.proxy = limits;
    TestServer::start_with(cfg, |_core, info| {
        Router::builtins()
            .get(
                "/metrics",
                coreloop::handler::metrics(info.stats.clone(), info.backend),
            )
            .get("/local", |_req: &coreloop::Request<'_>| {
                Response::ok("text/plain", b"local")
            })
            .prefix(None, "/up", |_req: &coreloop::Request<'_>| {
                Response::forward(0)
            })
            .get("/call", |_req: &coreloop::Request<'_>| {
                Fetch::get(0, "/inner?x=1")
                    .header("X-Token", "t")
                    .then(|reply| match reply {
                        Ok(r) => Response::text(
                            200,
                            format!(
                                "got {} {} {}",
                                r.status,
                                r.header("x-app").unwrap_or("-"),
                                String::from_utf8_lossy(&r.body)
                            ),
                        ),
                        Err(e) => Response::text(e.status, format!("failed: {}", e.message)),
                    })
            })
    })
}

fn connect(server: &TestServer) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn get(stream: &mut TcpStream, path: &str) -> (String, Vec<u8>) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: front\r\n\r\n").as_bytes())
        .unwrap();
    read_any(stream).expect("response")
}

fn status(head: &str) -> u16 {
    head[9..12].parse().unwrap()
}

fn forwards_with_pooled_connections(backend: Backend) {
    let up = Upstream::keep_alive();
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    for i in 0..50 {
        let (head, body) = get(&mut c, &format!("/up/{i}"));
        assert_eq!(status(&head), 200, "{head}");
        assert_eq!(body, format!("hello /up/{i}").as_bytes());
        assert!(head.contains("X-App: yes"), "{head}");
    }
    assert_eq!(up.conns(), 1, "one upstream connection serves them all");
    assert_eq!(server.total(|s| s.upstream.reuses.get()), 49);
}

fn rewrites_hop_by_hop_and_forwarding_fields(backend: Backend) {
    let up = Upstream::start(|p| {
        while p.request().is_some() {
            let reply = "HTTP/1.1 200 OK\r\nConnection: X-Up-Secret\r\nX-Up-Secret: 1\r\n\
                         Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok";
            if p.send(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    let req =
        "POST /up/form?q=1 HTTP/1.1\r\nHost: front.example\r\nConnection: keep-alive, X-Secret\r\n\
               X-Secret: drop me\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\n\
               X-Forwarded-For: 10.0.0.1\r\nTransfer-Encoding: chunked\r\nX-Keep: me\r\n\r\n\
               5\r\nhello\r\n0\r\n\r\n";
    c.write_all(req.as_bytes()).unwrap();
    let (head, body) = read_any(&mut c).unwrap();
    assert_eq!(status(&head), 200);
    assert_eq!(body, b"ok");
    assert!(
        !head.contains("X-Up-Secret") && !head.contains("Keep-Alive"),
        "{head}"
    );
    let seen = up.seen.last_head();
    let lower = seen.to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "te:",
        "proxy-authorization",
        "transfer-encoding",
        "connection",
    ] {
        assert!(!lower.contains(gone), "{gone} forwarded:\n{seen}");
    }
    assert!(seen.starts_with("POST /up/form?q=1 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("Host: front.example\r\n"), "{seen}");
    assert!(seen.contains("X-Keep: me\r\n"), "{seen}");
    assert!(seen.contains("Content-Length: 5\r\n"), "{seen}");
    assert!(
        seen.contains("X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("X-Forwarded-Proto: http\r\n"), "{seen}");
    assert!(seen.contains("Via: 1.1 coreloop\r\n"), "{seen}");
    let reqs = up.seen.requests.lock().unwrap();
    assert_eq!(
        reqs.last().unwrap().1,
        b"hello",
        "the decoded body, re-framed"
    );
}

fn clients_that_close_still_reuse_upstream_connections(backend: Backend) {
    let up = Upstream::keep_alive();
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    for i in 0..20 {
        let mut c = connect(&server);
        c.write_all(
            format!("GET /up/{i} HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let (head, _) = read_any(&mut c).unwrap();
        assert_eq!(status(&head), 200);
        assert!(head.contains("Connection: close"), "{head}");
    }
    assert_eq!(
        up.conns(),
        1,
        "the upstream connection outlives each client's"
    );
}

fn streams_chunked_and_close_delimited_replies(backend: Backend) {
    let up = Upstream::start(|p| {
        while let Some((head, _)) = p.request() {
            if head.contains("/up/chunked") {
                let _ =
                    p.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
                thread::sleep(Duration::from_millis(50));
                let _ = p.send(b"6\r\n world\r\n0\r\n\r\n");
            } else {
                let _ = p.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
                return;
            }
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    let (head, body) = get(&mut c, "/up/chunked");
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(body, b"hello world");
    let (head, body) = get(&mut c, "/up/close");
    assert!(
        head.contains("Transfer-Encoding: chunked"),
        "re-chunked for 1.1: {head}"
    );
    assert_eq!(body, b"until the end");
    let (head, _) = get(&mut c, "/local");
    assert_eq!(status(&head), 200, "the client connection stays usable");
    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    let mut c = connect(&server);
    c.write_all(b"GET /up/close HTTP/1.0\r\n\r\n").unwrap();
    let (head, body) = read_any(&mut c).unwrap();
    assert!(
        !head.contains("chunked") && head.contains("Connection: close"),
        "{head}"
    );
    assert_eq!(body, b"until the end");
}

fn invalid_framing_is_502_and_the_client_keeps_its_connection(backend: Backend) {
    let up = Upstream::start(|p| {
        if let Some((head, _)) = p.request() {
            let reply: &[u8] = if head.contains("/up/both") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            } else if head.contains("/up/two") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            } else if head.contains("/up/chunk") {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
            } else {
                b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
            };
            let _ = p.send(reply);
        }
    });
    let server = proxy(
        backend,
        vec![up.addr],
        ProxyLimits {
            max_fails: 100,
            ..ProxyLimits::default()
        },
    );
    let mut c = connect(&server);
    for path in ["/up/both", "/up/two", "/up/garbage"] {
        let (head, body) = get(&mut c, path);
        assert_eq!(status(&head), 502, "{path}: {head}");
        assert!(
            String::from_utf8_lossy(&body).contains("invalid reply"),
            "{path}"
        );
    }
    let (head, _) = get(&mut c, "/local");
    assert_eq!(status(&head), 200);
    // Bad chunk framing after the head: the client's body is cut short
    // and its connection closed, never a well-formed lie.
    c.write_all(b"GET /up/chunk HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    assert!(read_any(&mut c).is_err(), "a truncated chunked body");
    assert_eq!(server.total(|s| s.upstream.errors[3].get()), 4);
}

/// Each upstream connection answers one request, then reads the next and
/// closes without a reply: the race of a pooled connection closing.
fn one_shot_upstream() -> Upstream {
    Upstream::start(|p| {
        while p.request().is_some() {
            if p.served > 1 {
                return;
            }
            if p.ok("fresh").is_err() {
                return;
            }
        }
    })
}

fn keep_alive_race_retries_get_but_never_post(backend: Backend) {
    let up = one_shot_upstream();
    let limits = ProxyLimits {
        idle_timeout: Duration::from_secs(30),
        max_fails: 100,
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![up.addr], limits);
    let mut c = connect(&server);
    for _ in 0..3 {
        let (head, body) = get(&mut c, "/up/get");
        assert_eq!(status(&head), 200, "{head}");
        assert_eq!(body, b"fresh");
    }
    assert!(server.total(|s| s.upstream.retries.get()) >= 2);
    let gets = up.seen.count("GET");
    c.write_all(b"POST /up/post HTTP/1.1\r\nHost: f\r\nContent-Length: 4\r\n\r\ndata")
        .unwrap();
    let (head, _) = read_any(&mut c).unwrap();
    assert_eq!(
        status(&head),
        502,
        "a POST that may have been seen is not resent"
    );
    assert_eq!(up.seen.count("POST"), 1, "the POST went out exactly once");
    assert_eq!(up.seen.count("GET"), gets);
}

fn upstream_closing_idle_connections_causes_no_errors(backend: Backend) {
    // The upstream closes connections idle for 200 ms, long before the
    // proxy's own idle timeout: the close is seen and the link dropped.
    let up = Upstream::start(|p| {
        p.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while p.request().is_some() {
            if p.ok("ok").is_err() {
                return;
            }
        }
    });
    let limits = ProxyLimits {
        idle_timeout: Duration::from_secs(30),
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![up.addr], limits);
    let mut c = connect(&server);
    for _ in 0..4 {
        let (head, _) = get(&mut c, "/up/x");
        assert_eq!(status(&head), 200, "{head}");
        c.write_all(b"POST /up/p HTTP/1.1\r\nHost: f\r\nContent-Length: 1\r\n\r\nx")
            .unwrap();
        let (head, _) = read_any(&mut c).unwrap();
        assert_eq!(status(&head), 200, "{head}");
        thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(up.seen.count("POST"), 4, "no POST sent twice");
    assert_eq!(
        server.total(|s| s.upstream.errors.iter().map(|e| e.get()).sum()),
        0
    );
}

fn refused_and_slow_upstreams_get_502_and_504(backend: Backend) {
    let server = proxy(backend, vec![closed_port()], ProxyLimits::default());
    let mut c = connect(&server);
    let (head, _) = get(&mut c, "/up/x");
    assert_eq!(status(&head), 502, "{head}");
    let (head, _) = get(&mut c, "/local");
    assert_eq!(status(&head), 200, "the client connection stays usable");

    let slow = Upstream::start(|p| {
        if p.request().is_some() {
            thread::sleep(Duration::from_secs(2));
            let _ = p.ok("late");
        }
    });
    let limits = ProxyLimits {
        reply_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![slow.addr], limits);
    let mut c = connect(&server);
    let started = Instant::now();
    let (head, _) = get(&mut c, "/up/x");
    assert_eq!(status(&head), 504, "{head}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

fn full_queue_answers_503(backend: Backend) {
    let up = Upstream::start(|p| {
        while p.request().is_some() {
            thread::sleep(Duration::from_millis(600));
            if p.ok("slow").is_err() {
                return;
            }
        }
    });
    let limits = ProxyLimits {
        max_conns: 1,
        queue: 1,
        queue_timeout: Duration::from_millis(200),
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![up.addr], limits);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    for c in &mut clients {
        c.write_all(b"GET /up/q HTTP/1.1\r\nHost: f\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(30));
    }
    let mut statuses: Vec<u16> = clients
        .iter_mut()
        .map(|c| status(&read_any(c).unwrap().0))
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 503, 503],
        "one served, one over the queue, one timed out"
    );
    assert_eq!(
        server.total(|s| s.upstream.errors[5].get()),
        1,
        "queue full"
    );
    assert_eq!(
        server.total(|s| s.upstream.errors[6].get()),
        1,
        "queue timeout"
    );
    assert_eq!(up.conns(), 1, "the connection cap held");
}

fn client_abort_cancels_the_upstream_exchange(backend: Backend) {
    let closed = Arc::new(AtomicUsize::new(0));
    let seen_close = closed.clone();
    let up = Upstream::start(move |p| {
        if p.request().is_some() && p.closed_within(Duration::from_secs(3)) {
            seen_close.fetch_add(1, Ordering::SeqCst);
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    c.write_all(b"GET /up/long HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || up.seen.total() == 1));
    drop(c);
    assert!(
        eventually(Duration::from_secs(2), || closed.load(Ordering::SeqCst)
            == 1),
        "the upstream connection closes with the client"
    );
    assert_eq!(
        server.total(|s| s.upstream.busy.get()),
        0,
        "and no longer counts as busy"
    );
    // The next request is served, on a new link.
    let mut c = connect(&server);
    c.write_all(b"GET /up/next HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || up.seen.total() == 2));
}

fn pipelined_requests_behind_a_forward_keep_their_order(backend: Backend) {
    let up = Upstream::start(|p| {
        while let Some((head, _)) = p.request() {
            thread::sleep(Duration::from_millis(30));
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            if p.ok(&path).is_err() {
                return;
            }
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    c.write_all(
        b"GET /up/a HTTP/1.1\r\nHost: f\r\n\r\nGET /local HTTP/1.1\r\nHost: f\r\n\r\n\
          GET /up/b HTTP/1.1\r\nHost: f\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: f\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let bodies: Vec<Vec<u8>> = (0..4)
        .map(|_| read_next(&mut c, &mut buf).unwrap().1)
        .collect();
    assert_eq!(
        bodies,
        [&b"/up/a"[..], b"local", b"/up/b", b"Hello, World!"].map(<[u8]>::to_vec)
    );
}

fn slow_client_slows_the_upstream(backend: Backend) {
    const TOTAL: usize = 64 << 20;
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let up = Upstream::start(move |p| {
        if p.request().is_none() {
            return;
        }
        let _ = p.send(format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes());
        let block = vec![b'x'; 64 << 10];
        for _ in 0..TOTAL / block.len() {
            if p.send(&block).is_err() {
                return;
            }
            count.fetch_add(block.len(), Ordering::SeqCst);
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    c.write_all(b"GET /up/big HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    let stalled = written.load(Ordering::SeqCst);
    assert!(
        stalled < TOTAL / 2,
        "the upstream was read ahead of the client: {stalled} bytes"
    );
    let (head, body) = read_any(&mut c).unwrap();
    assert_eq!(status(&head), 200);
    assert_eq!(body.len(), TOTAL);
}

fn balances_and_skips_a_failed_server(backend: Backend) {
    let a = Upstream::keep_alive();
    let b = Upstream::keep_alive();
    let dead = closed_port();
    let limits = ProxyLimits {
        balance: Balance::RoundRobin,
        max_fails: 1,
        fail_timeout: Duration::from_secs(30),
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![a.addr, b.addr, dead], limits);
    // Separate clients in parallel, so requests overlap and spread.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                (0..10)
                    .map(|_| status(&get(&mut c, "/up/x").0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        assert!(
            h.join().unwrap().iter().all(|&s| s == 200),
            "a refused connect is retried elsewhere"
        );
    }
    let (na, nb) = (a.seen.total(), b.seen.total());
    assert_eq!(na + nb, 60);
    assert!(
        na >= 10 && nb >= 10,
        "both live servers got a share: {na} / {nb}"
    );
    assert!(server.total(|s| s.upstream.errors[0].get()) == 0);
}

fn drain_finishes_pending_replies(backend: Backend) {
    let up = Upstream::start(|p| {
        if p.request().is_some() {
            thread::sleep(Duration::from_millis(300));
            let _ = p.ok("finished");
        }
    });
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    c.write_all(b"GET /up/x HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || up.seen.total() == 1));
    server.shutdown.trigger();
    let (head, body) = read_any(&mut c).unwrap();
    assert_eq!(status(&head), 200);
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(body, b"finished");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

fn restarted_upstream_costs_no_request(backend: Backend) {
    let first = Upstream::keep_alive();
    let addr = first.addr;
    let server = proxy(backend, vec![addr], ProxyLimits::default());
    let mut c = connect(&server);
    assert_eq!(status(&get(&mut c, "/up/before").0), 200);
    first.stop();
    // Requests sent while nothing listens wait for the upstream to return
    // (one probe connect per 50 ms), rather than fail.
    let waiting: Vec<_> = (0..8)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                status(&get(&mut c, &format!("/up/during/{i}")).0)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let second = Upstream::start_at(addr, |p| {
        while p.request().is_some() {
            if p.ok("back").is_err() {
                return;
            }
        }
    });
    let statuses: Vec<u16> = waiting.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses, [200; 8],
        "requests during the restart were served after it"
    );
    assert_eq!(status(&get(&mut c, "/up/after").0), 200);
    // One probe per 50 ms while down (about 6), then a link per waiter.
    let connects = server.total(|s| s.upstream.connects.get());
    assert!(connects < 40, "probes are paced: {connects} connects");
    assert!(second.conns() <= 9);
}

fn metrics_are_labelled_per_upstream_server(backend: Backend) {
    let a = Upstream::keep_alive();
    let b = Upstream::keep_alive();
    let limits = ProxyLimits {
        balance: Balance::RoundRobin,
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![a.addr, b.addr], limits);
    let mut c = connect(&server);
    for _ in 0..4 {
        assert_eq!(status(&get(&mut c, "/up/x").0), 200);
    }
    let (_, text) = get(&mut c, "/metrics");
    let text = String::from_utf8(text).unwrap();
    for addr in [a.addr, b.addr] {
        let line = format!(
            "coreloop_upstream_requests_total{{core=\"0\",group=\"0\",upstream=\"{addr}\"}} 2"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
        let idle =
            format!("coreloop_upstream_idle{{core=\"0\",group=\"0\",upstream=\"{addr}\"}} 1");
        assert!(text.contains(&idle), "missing {idle}");
    }
    assert!(text.contains(
        "coreloop_upstream_errors_total{core=\"0\",upstream=\"queue\",cause=\"queue_full\"} 0"
    ));
}

fn a_handler_calls_an_upstream_and_shapes_the_reply(backend: Backend) {
    let up = Upstream::keep_alive();
    let server = proxy(backend, vec![up.addr], ProxyLimits::default());
    let mut c = connect(&server);
    c.write_all(b"GET /call HTTP/1.1\r\nHost: f\r\n\r\nGET /local HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_next(&mut c, &mut buf).unwrap();
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, b"got 200 yes hello /inner?x=1\n");
    assert_eq!(
        read_next(&mut c, &mut buf).unwrap().1,
        b"local",
        "in order behind it"
    );
    let seen = up.seen.last_head();
    assert!(seen.starts_with("GET /inner?x=1 HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains(&format!("Host: {}\r\n", up.addr)), "{seen}");
    assert!(seen.contains("X-Token: t\r\n"), "{seen}");

    let server = proxy(backend, vec![closed_port()], ProxyLimits::default());
    let mut c = connect(&server);
    let (head, body) = get(&mut c, "/call");
    assert_eq!(status(&head), 502, "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("failed: bad gateway"));
    assert_eq!(status(&get(&mut c, "/local").0), 200);
}

/// Closes with a TCP reset (SO_LINGER 0) instead of a FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn upstream_resets_are_retried_or_cut_short(backend: Backend) {
    // Every connection resets when a request arrives; "/up/partial" first
    // gets half of its body.
    let up = Upstream::start(|p| {
        if let Some((head, _)) = p.request() {
            if head.contains("/up/partial") {
                let _ = p.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
                thread::sleep(Duration::from_millis(50));
            }
            reset(&p.stream);
        }
    });
    let limits = ProxyLimits {
        max_fails: 100,
        ..ProxyLimits::default()
    };
    let server = proxy(backend, vec![up.addr], limits);
    let mut c = connect(&server);
    let (head, _) = get(&mut c, "/up/get");
    assert_eq!(status(&head), 502, "{head}");
    assert_eq!(
        up.seen.count("GET"),
        2,
        "a GET that met a reset is sent once more, not again"
    );
    c.write_all(b"POST /up/post HTTP/1.1\r\nHost: f\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    let (head, _) = read_any(&mut c).unwrap();
    assert_eq!(status(&head), 502, "{head}");
    assert_eq!(
        up.seen.count("POST"),
        1,
        "a POST that met a reset is never sent again"
    );
    // A reset in the middle of a body: the client gets the head and the
    // bytes that came, then the connection closes: a short body, never a
    // padded or re-framed one.
    c.write_all(b"GET /up/partial HTTP/1.1\r\nHost: f\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: 10\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n12345"), "{text}");
}
