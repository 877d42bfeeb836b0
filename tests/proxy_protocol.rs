//! `--proxy-protocol` over real sockets, once per backend: the header (v1
//! and v2, whole, split, or with requests behind it) names the client that
//! X-Forwarded-For carries; a connection without one, or from a source
//! that is not allowed, is closed without a response and counted.

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::net::{config, eventually, TestServer};
use common::upstream::Upstream;
use coreloop::config::UpstreamGroup;
use coreloop::{Backend, Response, Router};

per_backend!(
    v1_and_v2_headers_name_the_forwarded_client,
    a_header_split_byte_by_byte_still_counts,
    no_header_is_closed_without_a_response,
    sources_outside_the_networks_are_refused,
);

fn server(backend: Backend, allowed: &str, upstream: std::net::SocketAddr) -> TestServer {
    let mut cfg = config(backend);
    cfg.workers = Some(1);
    cfg.proxy_protocol = Some(vec![allowed.parse().unwrap()]);
    cfg.upstreams = vec![UpstreamGroup {
        servers: vec![upstream],
        host: None,
    }];
    TestServer::start_with(cfg, |_core, info| {
        Router::builtins()
            .get(
                "/metrics",
                coreloop::handler::metrics(info.stats.clone(), info.backend),
            )
            .prefix(None, "/up", |_req: &coreloop::Request<'_>| {
                Response::forward(0)
            })
    })
}

fn connect(s: &TestServer) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Everything until the server closes.
fn read_all(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// Sends `header` and a forwarded request on a new connection; the head
/// the upstream received.
fn forwarded_head(s: &TestServer, up: &Upstream, header: &[u8]) -> String {
    let mut c = connect(s);
    c.write_all(&[header, LAST].concat()).unwrap();
    assert!(read_all(&mut c).starts_with("HTTP/1.1 200"));
    up.seen.last_head()
}

const LAST: &[u8] = b"GET /up/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn v1_and_v2_headers_name_the_forwarded_client(backend: Backend) {
    let up = Upstream::keep_alive();
    let s = server(backend, "127.0.0.0/8", up.addr);
    let mut c = connect(&s);
    // The header and two pipelined requests in one write.
    c.write_all(
        b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 80\r\nGET /up/a HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    c.write_all(LAST).unwrap();
    let text = read_all(&mut c);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let heads: Vec<String> = up
        .seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h.clone())
        .collect();
    assert_eq!(heads.len(), 2);
    for h in &heads {
        assert!(h.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{h}");
    }
    let head = forwarded_head(&s, &up, &v2_tcp4([198, 51, 100, 9], 4000));
    assert!(head.contains("X-Forwarded-For: 198.51.100.9\r\n"), "{head}");
    // LOCAL (a balancer's health check): the socket's peer is the client.
    let head = forwarded_head(&s, &up, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    assert!(head.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{head}");
    s.stop();
}

fn a_header_split_byte_by_byte_still_counts(backend: Backend) {
    let up = Upstream::keep_alive();
    let s = server(backend, "127.0.0.1", up.addr);
    let mut c = connect(&s);
    c.set_nodelay(true).unwrap();
    for b in b"PROXY TCP6 2001:db8::5 ::1 1000 80\r\n" {
        c.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    c.write_all(LAST).unwrap();
    assert!(read_all(&mut c).starts_with("HTTP/1.1 200"));
    assert!(up
        .seen
        .last_head()
        .contains("X-Forwarded-For: 2001:db8::5\r\n"));
    s.stop();
}

fn no_header_is_closed_without_a_response(backend: Backend) {
    let up = Upstream::keep_alive();
    let s = server(backend, "127.0.0.1", up.addr);
    for bad in [
        &b"GET /up/a HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 80\r\n",
    ] {
        let mut c = connect(&s);
        c.write_all(bad).unwrap();
        let text = read_all(&mut c);
        assert!(
            text.is_empty(),
            "no response before a valid header: {text:?}"
        );
    }
    assert!(eventually(Duration::from_secs(2), || {
        s.total(|st| st.proxy_bad_headers.get()) == 2
    }));
    assert_eq!(up.seen.total(), 0, "nothing reached the upstream");
    s.stop();
}

fn sources_outside_the_networks_are_refused(backend: Backend) {
    let up = Upstream::keep_alive();
    let s = server(backend, "10.0.0.0/8", up.addr);
    let mut c = connect(&s);
    let _ = c.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 80\r\n");
    let _ = c.write_all(LAST);
    assert!(read_all(&mut c).is_empty(), "closed at accept");
    assert!(eventually(Duration::from_secs(2), || {
        s.total(|st| st.proxy_refused.get()) == 1
    }));
    s.stop();
}
