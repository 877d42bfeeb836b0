//! Responses that complete later, at the engine level (no sockets): the
//! connection holds its place in the response order, writes the reply as
//! the backend reports it, re-frames bodies, and keeps deadlines, drain
//! and errors right while it waits.

mod common;

use std::time::Duration;

use common::Harness;
use coreloop::http::reply::{parse_reply, ReplyHead};

fn head(raw: &str) -> ReplyHead {
    let (_, head) = parse_reply(raw.as_bytes(), false, &mut Vec::new())
        .unwrap()
        .unwrap();
    head
}

fn reply(h: &mut Harness, raw_head: &str, body: &[&[u8]]) {
    let head = head(raw_head);
    {
        let (conn, mut ctx) = h.split();
        conn.handle_reply_head(&head, &mut ctx);
    }
    for part in body {
        let (now, limits) = (h.now, h.limits.clone());
        h.conn.handle_reply_body(part, now, &limits, &mut h.pool);
    }
    let (conn, mut ctx) = h.split();
    conn.handle_reply_end(&mut ctx);
}

#[test]
fn pipelined_requests_wait_behind_a_forwarded_one() {
    let mut h = Harness::new();
    h.feed(
        b"GET /fwd/a?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n\
          GET /plaintext HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert!(h.wire.is_empty(), "nothing may overtake the pending reply");
    assert!(h.conn.awaiting().is_some());
    let mut out = h.conn.take_outgoing().expect("an upstream request");
    assert!(h.conn.take_outgoing().is_none(), "taken once");
    out.finish(Some("192.0.2.7".parse().unwrap()), None);
    let text = String::from_utf8(out.bytes.clone()).unwrap();
    assert!(
        text.starts_with("GET /fwd/a?x=1 HTTP/1.1\r\nHost: h\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("X-Hop") && !text.contains("Connection"),
        "{text}"
    );
    assert!(
        text.ends_with("X-Forwarded-For: 192.0.2.7\r\n\r\n"),
        "{text}"
    );
    reply(
        &mut h,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\n",
        &[b"he", b"llo"],
    );
    h.flush();
    let r = h.responses();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].status, &r[0].body[..]), (200, &b"hello"[..]));
    assert_eq!(r[0].header("x-app"), Some("1"));
    assert_eq!(r[1].body, b"Hello, World!");
    assert!(h.conn.awaiting().is_none() && h.conn.is_idle());
}

#[test]
fn unknown_length_is_rechunked_for_http11_and_closes_for_http10() {
    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.1\r\nHost: h\r\n\r\n");
    h.conn.take_outgoing();
    reply(&mut h, "HTTP/1.1 200 OK\r\n\r\n", &[b"abc", b"", b"defgh"]);
    h.flush();
    let wire = String::from_utf8(h.wire.clone()).unwrap();
    assert!(wire.contains("Transfer-Encoding: chunked\r\n"), "{wire}");
    assert!(
        wire.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
        "{wire}"
    );
    assert!(!h.conn.is_closing());

    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.0\r\n\r\n");
    h.conn.take_outgoing();
    reply(
        &mut h,
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &[b"abc"],
    );
    h.flush();
    let wire = String::from_utf8(h.wire.clone()).unwrap();
    assert!(
        wire.contains("Connection: close\r\n") && wire.ends_with("\r\n\r\nabc"),
        "{wire}"
    );
    assert!(h.conn.is_done());
}

#[test]
fn failure_before_the_head_is_an_error_response_after_it_a_close() {
    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.1\r\nHost: h\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: h\r\n\r\n");
    h.conn.take_outgoing();
    {
        let (conn, mut ctx) = h.split();
        conn.handle_reply_error(504, "gateway timeout", &mut ctx);
    }
    h.flush();
    let r = h.responses();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [504, 200]);
    assert!(!r[0].closes(), "the client keeps its connection");

    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.1\r\nHost: h\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: h\r\n\r\n");
    h.conn.take_outgoing();
    let head = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    {
        let (conn, mut ctx) = h.split();
        conn.handle_reply_head(&head, &mut ctx);
    }
    let (now, limits) = (h.now, h.limits.clone());
    h.conn
        .handle_reply_body(b"12345", now, &limits, &mut h.pool);
    {
        let (conn, mut ctx) = h.split();
        conn.handle_reply_error(502, "bad gateway", &mut ctx);
    }
    h.flush();
    assert!(
        h.wire.ends_with(b"\r\n\r\n12345"),
        "the body is cut short, never padded"
    );
    assert!(h.conn.is_done(), "and the connection ends there");
}

#[test]
fn waiting_is_not_idle_and_a_drain_waits_for_the_reply() {
    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.1\r\nHost: h\r\n\r\n");
    h.conn.take_outgoing();
    let idle = h.limits.idle_timeout + Duration::from_secs(1);
    h.advance(idle);
    assert!(
        h.conn.awaiting().is_some(),
        "no idle timeout while a reply is pending"
    );
    assert!(h.wire.is_empty());
    h.conn.handle_shutdown();
    assert!(!h.conn.is_done(), "a drain waits for the pending reply");
    reply(&mut h, "HTTP/1.1 204 No Content\r\n\r\n", &[]);
    h.flush();
    let r = h.responses();
    assert_eq!(r[0].status, 204);
    assert!(
        r[0].closes(),
        "answered with Connection: close during a drain"
    );
    assert!(h.conn.is_done());
}

#[test]
fn client_eof_while_waiting_ends_the_connection() {
    let mut h = Harness::new();
    h.feed(b"GET /fwd HTTP/1.1\r\nHost: h\r\n\r\n");
    h.conn.take_outgoing();
    h.conn.handle_eof();
    assert!(
        h.conn.is_done(),
        "the backend closes and cancels the upstream exchange"
    );
}

#[test]
fn head_gets_the_announced_length_and_no_body() {
    let mut h = Harness::new();
    h.feed(b"HEAD /fwd HTTP/1.1\r\nHost: h\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: h\r\n\r\n");
    let out = h.conn.take_outgoing().expect("forwarded");
    assert!(out.head_only);
    let (_, head) = parse_reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
        true,
        &mut Vec::new(),
    )
    .unwrap()
    .unwrap();
    {
        let (conn, mut ctx) = h.split();
        conn.handle_reply_head(&head, &mut ctx);
        conn.handle_reply_end(&mut ctx);
    }
    h.flush();
    let wire = String::from_utf8(h.wire.clone()).unwrap();
    let (first, rest) = wire.split_once("\r\n\r\n").unwrap();
    assert!(first.contains("Content-Length: 1234"), "{first}");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "no body after a HEAD reply: {rest}"
    );
}
