//! The engine's request table: raw bytes in, responses and close decision
//! out, each case also fed in every split. No network.

mod common;

use std::sync::Arc;

use common::{outcome, run_split, Harness, Lcg, Parsed};
use coreloop::http::{FileBody, Limits, Reject};
use coreloop::{Body, Request, Response, Router};

const NEXT: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n";

struct Ok_ {
    name: &'static str,
    raw: Vec<u8>,
    statuses: Vec<u16>,
    close: bool,
    check: fn(&[Parsed]),
}

fn none(_: &[Parsed]) {}

fn ok(name: &'static str, raw: &[u8], statuses: &[u16], close: bool, check: fn(&[Parsed])) -> Ok_ {
    Ok_ {
        name,
        raw: raw.to_vec(),
        statuses: statuses.to_vec(),
        close,
        check,
    }
}

fn accepted() -> Vec<Ok_> {
    vec![
        ok("plaintext", b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, |r| {
            assert_eq!(r[0].body, b"Hello, World!");
            assert_eq!(r[0].header("content-type"), Some("text/plain"));
            assert_eq!(r[0].header("server"), Some("coreloop"));
            assert_eq!(r[0].header("date"), Some("Sun, 06 Nov 1994 08:49:37 GMT"));
            assert_eq!(r[0].header("connection"), None);
        }),
        ok("json", b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, |r| {
            assert_eq!(r[0].body, br#"{"message":"Hello, World!"}"#);
            assert_eq!(r[0].header("content-type"), Some("application/json"));
        }),
        ok("healthz", b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, none),
        ok("http10 closes by default", b"GET /plaintext HTTP/1.0\r\n\r\n", &[200], true, |r| {
            assert!(r[0].closes())
        }),
        ok(
            "http10 keep-alive",
            b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            &[200],
            false,
            |r| assert_eq!(r[0].header("connection"), Some("keep-alive")),
        ),
        ok(
            "http12 served as 1.1 (RFC 9110 2.5)",
            b"GET /plaintext HTTP/1.2\r\nHost: a\r\n\r\nGET /json HTTP/1.9\r\nHost: a\r\n\r\n",
            &[200, 200],
            false,
            |r| {
                assert!(r.iter().all(|r| r.header("connection").is_none()));
                assert_eq!(r[1].body, br#"{"message":"Hello, World!"}"#);
            },
        ),
        ok("http13 after an empty line", b"\r\nGET /plaintext HTTP/1.3\r\nHost: a\r\n\r\n", &[200], false, none),
        ok("http11 close", b"GET /plaintext HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", &[200], true, |r| {
            assert!(r[0].closes())
        }),
        ok(
            "connection list with close",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n",
            &[200],
            true,
            none,
        ),
        ok(
            "pipelined answered in order",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\nGET /json HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            &[200, 200, 200],
            false,
            |r| {
                assert_eq!(r[0].body, b"Hello, World!");
                assert!(r[1].body.starts_with(b"{"));
                assert_eq!(r[2].body, b"ok\n");
            },
        ),
        ok("content-length body", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", &[200], false, |r| {
            assert_eq!(r[0].body, b"hello")
        }),
        ok("zero content-length", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", &[200], false, |r| {
            assert!(r[0].body.is_empty())
        }),
        ok(
            "identical content-length repeated",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            &[200],
            false,
            |r| assert_eq!(r[0].body, b"abc"),
        ),
        ok(
            "identical content-length list",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            &[200],
            false,
            |r| assert_eq!(r[0].body, b"abc"),
        ),
        ok(
            "chunked with extensions and trailers",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            &[200],
            false,
            |r| assert_eq!(r[0].body, b"hello world"),
        ),
        ok(
            "chunked upper hex then pipelined get",
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
            &[200, 200],
            false,
            |r| {
                assert_eq!(r[0].body, b"0123456789");
                assert_eq!(r[1].body, b"ok\n");
            },
        ),
        ok(
            "body then pipelined request",
            b"PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nGET GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
            &[201, 200],
            false,
            |r| assert_eq!(r[0].body, b"GET "),
        ),
        ok("absolute form", b"GET http://a/target?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, |r| {
            assert_eq!(r[0].body, b"/target|x=1|http://a/target?x=1")
        }),
        ok("absolute form https upper", b"GET HTTPS://a:8/target HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, |r| {
            assert_eq!(r[0].body, b"/target|-|HTTPS://a:8/target")
        }),
        ok("absolute form no path is /", b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", &[404], false, none),
        ok("origin form with query", b"GET /target?a=b&c HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, |r| {
            assert_eq!(r[0].body, b"/target|a=b&c|/target?a=b&c")
        }),
        ok("unknown path", b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", &[404], false, none),
        ok("unknown method", b"FROB /nope HTTP/1.1\r\nHost: a\r\n\r\n", &[501], false, none),
        ok("unknown method on known path", b"FROB /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[405], false, |r| {
            assert_eq!(r[0].header("allow"), Some("GET, HEAD"))
        }),
        ok("wrong known method", b"DELETE /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[405], false, none),
        ok("custom method routed", b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", &[418], false, none),
        ok("leading empty lines", b"\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[200], false, none),
        ok("bare LF line ends", b"GET /plaintext HTTP/1.1\nHost: a\n\n", &[200], false, none),
        ok("empty host", b"GET /plaintext HTTP/1.1\r\nHost:\r\n\r\n", &[200], false, none),
        ok("host with port and ipv6", b"GET /plaintext HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", &[200], false, none),
        ok("obs-text in value", b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-T: caf\xe9\r\n\r\n", &[200], false, none),
        ok("panicking handler", b"GET /panic HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[500], true, |r| {
            assert!(r[0].closes())
        }),
        ok("handler asks to close", b"GET /bye HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n", &[200], true, |r| {
            assert!(r[0].closes())
        }),
        ok("204 has no length", b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n", &[204], false, none),
        ok("expect with body present", b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", &[200], false, |r| {
            assert_eq!(r[0].body, b"hi")
        }),
    ]
}

struct Bad {
    name: &'static str,
    raw: Vec<u8>,
    kind: Reject,
}

fn bad(name: &'static str, raw: &[u8], kind: Reject) -> Bad {
    Bad {
        name,
        raw: raw.to_vec(),
        kind,
    }
}

fn head_with(extra: &str) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes()
}

fn rejected() -> Vec<Bad> {
    use Reject::*;
    let mut v = vec![
        bad(
            "cl with te",
            &head_with("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
            LengthWithTransferEncoding,
        ),
        bad(
            "te with cl",
            &head_with("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"),
            LengthWithTransferEncoding,
        ),
        bad(
            "differing cl",
            &head_with("Content-Length: 3\r\nContent-Length: 4\r\n"),
            ConflictingContentLength,
        ),
        bad(
            "differing cl list",
            &head_with("Content-Length: 3, 4\r\n"),
            ConflictingContentLength,
        ),
        bad(
            "te gzip only",
            &head_with("Transfer-Encoding: gzip\r\n"),
            ChunkedNotFinal,
        ),
        bad(
            "te chunked then gzip",
            &head_with("Transfer-Encoding: chunked, gzip\r\n"),
            ChunkedNotFinal,
        ),
        bad(
            "te gzip then chunked",
            &head_with("Transfer-Encoding: gzip, chunked\r\n"),
            UnsupportedTransferCoding,
        ),
        bad(
            "te chunked twice",
            &head_with("Transfer-Encoding: chunked, chunked\r\n"),
            ChunkedTwice,
        ),
        bad(
            "te chunked in two fields",
            &head_with("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            ChunkedTwice,
        ),
        bad(
            "te empty",
            &head_with("Transfer-Encoding: \r\n"),
            ChunkedNotFinal,
        ),
        bad(
            "te in http10",
            b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            TransferEncodingInHttp10,
        ),
        bad(
            "missing host",
            b"GET /plaintext HTTP/1.1\r\n\r\n",
            MissingHost,
        ),
        bad(
            "duplicate host",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            DuplicateHost,
        ),
        bad(
            "host with space",
            b"GET /plaintext HTTP/1.1\r\nHost: a b\r\n\r\n",
            BadHost,
        ),
        bad(
            "host with slash",
            b"GET /plaintext HTTP/1.1\r\nHost: a/b\r\n\r\n",
            BadHost,
        ),
        bad(
            "host with userinfo",
            b"GET /plaintext HTTP/1.1\r\nHost: u@a\r\n\r\n",
            BadHost,
        ),
        bad(
            "obs-fold",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            ObsFold,
        ),
        bad(
            "obs-fold tab",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n",
            ObsFold,
        ),
        bad(
            "space before first header",
            b"GET /plaintext HTTP/1.1\r\n Host: a\r\n\r\n",
            ObsFold,
        ),
        bad(
            "space before colon",
            b"GET /plaintext HTTP/1.1\r\nHost : a\r\n\r\n",
            SpaceBeforeColon,
        ),
        bad(
            "tab before colon",
            b"GET /plaintext HTTP/1.1\r\nHost\t: a\r\n\r\n",
            SpaceBeforeColon,
        ),
        bad(
            "bare cr in value",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            BareCr,
        ),
        bad(
            "bare cr in request line",
            b"GET /plaintext\r HTTP/1.1\r\nHost: a\r\n\r\n",
            BareCr,
        ),
        bad(
            "bare cr line end",
            b"GET /plaintext HTTP/1.1\rHost: a\r\n\r\n",
            BareCr,
        ),
        bad(
            "nul in value",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            BadHeaderValue,
        ),
        bad(
            "control char in value",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            BadHeaderValue,
        ),
        bad(
            "del in value",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            BadHeaderValue,
        ),
        bad(
            "bad byte in name",
            b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n",
            BadHeaderName,
        ),
        bad(
            "nul in target",
            b"GET /plain\x00text HTTP/1.1\r\nHost: a\r\n\r\n",
            BadTarget,
        ),
        bad(
            "space in target",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            BadRequestLine,
        ),
        bad(
            "fragment in target",
            b"GET /plaintext#x HTTP/1.1\r\nHost: a\r\n\r\n",
            BadTarget,
        ),
        bad(
            "relative target",
            b"GET plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
            BadTarget,
        ),
        bad(
            "asterisk with get",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            BadTarget,
        ),
        bad(
            "non-ascii target",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            BadTarget,
        ),
        bad(
            "bad method byte",
            b"G(T /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
            BadRequestLine,
        ),
        bad(
            "http2 version",
            b"GET /plaintext HTTP/2.0\r\nHost: a\r\n\r\n",
            UnsupportedVersion,
        ),
        bad(
            "http30 version",
            b"GET /plaintext HTTP/3.0\r\nHost: a\r\n\r\n",
            UnsupportedVersion,
        ),
        bad(
            "http20 after an empty line",
            b"\r\nGET /plaintext HTTP/2.0\r\nHost: a\r\n\r\n",
            UnsupportedVersion,
        ),
        bad(
            "http12 needs host as 1.1 does",
            b"GET /plaintext HTTP/1.2\r\n\r\n",
            MissingHost,
        ),
        bad(
            "http09 version",
            b"GET /plaintext HTTP/0.9\r\nHost: a\r\n\r\n",
            UnsupportedVersion,
        ),
        bad(
            "lowercase version",
            b"GET /plaintext http/1.1\r\nHost: a\r\n\r\n",
            BadRequestLine,
        ),
        bad(
            "junk version",
            b"GET /plaintext HTTP/1.1x\r\nHost: a\r\n\r\n",
            BadRequestLine,
        ),
        bad(
            "no version",
            b"GET /plaintext\r\nHost: a\r\n\r\n",
            BadRequestLine,
        ),
        bad(
            "expect other",
            &head_with("Expect: 200-ok\r\nContent-Length: 0\r\n"),
            UnsupportedExpect,
        ),
        bad(
            "cl too large",
            &head_with("Content-Length: 2000000\r\n"),
            BodyTooLarge,
        ),
        bad(
            "chunk bad hex",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"zz\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk negative",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"-1\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk 0x prefix",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"0x5\r\nhello\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk empty size",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"\r\nhello\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk size overflow",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"10000000000000000\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk size beyond max body",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"ffffffffffffffff\r\n".to_vec(),
            ]
            .concat(),
            BodyTooLarge,
        ),
        bad(
            "chunk data overrun",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"5\r\nhelloXX\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            ChunkDataOverrun,
        ),
        bad(
            "chunk bare lf",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"5\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "chunk cr without lf",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"5\rhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            BareCr,
        ),
        bad(
            "chunk ext ctl",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"5;a\x01\r\nhello\r\n0\r\n\r\n".to_vec(),
            ]
            .concat(),
            BadChunkSize,
        ),
        bad(
            "trailer obs-fold",
            &[
                head_with("Transfer-Encoding: chunked\r\n"),
                b"0\r\nX: a\r\n b\r\n\r\n".to_vec(),
            ]
            .concat(),
            BadTrailer,
        ),
    ];
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(2000));
    v.push(bad(
        "chunk ext too long",
        &[
            head_with("Transfer-Encoding: chunked\r\n"),
            long_ext.into_bytes(),
        ]
        .concat(),
        ChunkLineTooLong,
    ));
    let chunks = "8000\r\n".to_string() + &"x".repeat(0x8000) + "\r\n";
    let many = chunks.repeat(40);
    v.push(bad(
        "chunked body too large",
        &[
            head_with("Transfer-Encoding: chunked\r\n"),
            many.into_bytes(),
        ]
        .concat(),
        BodyTooLarge,
    ));
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    v.push(bad(
        "request line too long",
        long_line.as_bytes(),
        RequestLineTooLong,
    ));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    v.push(bad(
        "header section too large",
        big_header.as_bytes(),
        HeadTooLarge,
    ));
    let many_headers: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    v.push(bad(
        "too many headers",
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n").as_bytes(),
        TooManyHeaders,
    ));
    for cl in [
        "+5",
        "-5",
        "0x5",
        "5 5",
        "",
        "5a",
        "99999999999999999999",
        "1.0",
        "٣",
    ] {
        let name: &'static str = Box::leak(format!("content-length {cl:?}").into_boxed_str());
        v.push(bad(
            name,
            &head_with(&format!("Content-Length: {cl}\r\n")),
            BadContentLength,
        ));
    }
    v
}

/// Feeds `raw` whole, byte by byte, at every single cut (short inputs) and
/// in random chunks; every run must end the same way as the whole feed.
fn assert_split_invariant(name: &str, raw: &[u8], limits: &Limits) -> Harness {
    let whole = run_split(raw, &[], limits);
    let expected = outcome(&whole);
    let bytewise = run_split(raw, &vec![1; raw.len()], limits);
    assert_eq!(outcome(&bytewise), expected, "{name}: byte by byte");
    if raw.len() <= 600 {
        for cut in 1..raw.len() {
            let h = run_split(raw, &[cut], limits);
            assert_eq!(outcome(&h), expected, "{name}: cut at {cut}");
        }
    }
    let mut rng = Lcg(raw.len() as u64);
    for _ in 0..20 {
        let mut cuts = Vec::new();
        let mut left = raw.len();
        while left > 0 {
            let n = 1 + rng.next(left.min(64));
            cuts.push(n);
            left -= n;
        }
        let h = run_split(raw, &cuts, limits);
        assert_eq!(outcome(&h), expected, "{name}: chunks {cuts:?}");
    }
    whole
}

#[test]
fn accepted_requests() {
    for case in accepted() {
        let h = assert_split_invariant(case.name, &case.raw, &Limits::default());
        let responses = h.responses();
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, case.statuses, "{}", case.name);
        assert_eq!(
            h.conn.is_closing(),
            case.close,
            "{}: close decision",
            case.name
        );
        (case.check)(&responses);
        if !case.close {
            assert!(h.conn.is_idle(), "{}: idle after answering", case.name);
        }
    }
}

#[test]
fn rejected_requests_close_and_ignore_what_follows() {
    for case in rejected() {
        let raw = [case.raw.clone(), NEXT.to_vec()].concat();
        let h = assert_split_invariant(case.name, &raw, &Limits::default());
        let responses = h.responses();
        assert_eq!(
            responses.len(),
            1,
            "{}: exactly one response, got {responses:?}",
            case.name
        );
        let r = &responses[0];
        assert_eq!(
            r.status,
            case.kind.status(),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.closes(), "{}: says Connection: close", case.name);
        assert!(!r.body.is_empty(), "{}: has a text body", case.name);
        assert!(h.conn.is_done(), "{}: done once flushed", case.name);
        assert_eq!(
            h.stats.rejects[case.kind.index()].get(),
            1,
            "{}: counted as {:?}",
            case.name,
            case.kind
        );
        assert_eq!(h.stats.requests.get(), 0, "{}: no handler ran", case.name);
    }
}

#[test]
fn head_gets_length_without_body() {
    let mut h = Harness::new();
    h.feed(b"HEAD /plaintext HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = String::from_utf8(h.wire.clone()).unwrap();
    let (first, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200 OK"));
    assert!(first.contains("Content-Length: 13"));
    assert!(
        rest.starts_with("HTTP/1.1 200 OK"),
        "no body after HEAD: {rest:?}"
    );
    assert!(rest.ends_with("\r\n\r\nok\n"));
}

#[test]
fn expect_continue_is_sent_before_the_body() {
    let mut h = Harness::new();
    h.feed(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.wire, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.feed(b"hello");
    let r = h.responses();
    assert_eq!((r[0].status, r[0].body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(
        h.wire.windows(12).filter(|w| w == b"100 Continue").count(),
        1
    );
}

#[test]
fn expect_continue_never_to_http10() {
    let mut h = Harness::new();
    h.feed(b"POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert!(h.wire.is_empty());
    h.feed(b"hi");
    assert_eq!(h.responses()[0].status, 200);
}

#[test]
fn expect_continue_not_sent_when_body_is_refused() {
    let mut h = Harness::new();
    h.feed(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n");
    let r = h.responses();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 413);
    assert!(!h.wire.starts_with(b"HTTP/1.1 100"));
}

#[test]
fn thousand_pipelined_requests_in_one_read() {
    let mut h = Harness::new();
    h.feed(&NEXT.repeat(1000));
    let r = h.responses();
    assert_eq!(r.len(), 1000);
    assert!(r
        .iter()
        .all(|r| r.status == 200 && r.body == b"Hello, World!"));
    assert!(h.conn.is_idle());
}

#[test]
fn output_backpressure_stops_processing_until_drained() {
    let limits = Limits {
        max_pending_output: 300,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    h.input(&NEXT.repeat(50));
    let pending = h.conn.poll_transmit().len();
    assert!(
        (300..600).contains(&pending),
        "stopped near the limit: {pending}"
    );
    assert!(!h.conn.wants_read());
    h.flush();
    assert_eq!(h.responses().len(), 50);
    assert!(h.conn.wants_read());
    assert!(h.conn.is_idle());
}

#[test]
fn buffers_go_back_to_the_pool_when_idle() {
    let mut h = Harness::new();
    h.feed(b"GET /plaintext HTTP/1.1\r\nHo");
    assert!(!h.conn.is_idle());
    h.feed(b"st: a\r\n\r\n");
    assert!(h.conn.is_idle());
    let free = h.pool.free_count();
    assert!(
        free >= 2,
        "input and output buffers returned, pool has {free}"
    );
}

#[test]
fn head_deadline_answers_408_when_bytes_arrived() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.feed(b"GET /plaintext HTTP/1.1\r\nHost");
    assert!(h.conn.poll_timeout().is_some());
    h.advance(limits.head_timeout / 2);
    assert!(h.wire.is_empty(), "early call is a no-op");
    h.advance(limits.head_timeout);
    let r = h.responses();
    assert_eq!(r[0].status, 408);
    assert!(h.conn.is_done());
    assert_eq!(h.stats.deadlines[0].get(), 1);
}

#[test]
fn silent_connection_is_closed_at_head_deadline_without_response() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.advance(limits.head_timeout + std::time::Duration::from_millis(1));
    assert!(h.wire.is_empty());
    assert!(h.conn.is_done());
}

#[test]
fn idle_deadline_closes_keep_alive_silently() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.feed(NEXT);
    let after_response = h.wire.len();
    h.advance(limits.idle_timeout - std::time::Duration::from_millis(1));
    assert!(!h.conn.is_done());
    h.advance(std::time::Duration::from_millis(2));
    assert!(h.conn.is_done());
    assert_eq!(h.wire.len(), after_response);
    assert_eq!(h.stats.deadlines[2].get(), 1);
}

#[test]
fn body_deadline_is_progress_based() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.feed(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\na");
    h.advance(limits.body_timeout - std::time::Duration::from_millis(1));
    h.feed(b"b");
    h.advance(limits.body_timeout - std::time::Duration::from_millis(1));
    assert!(h.wire.is_empty(), "progress pushed the deadline");
    h.advance(std::time::Duration::from_millis(2));
    assert_eq!(h.responses()[0].status, 408);
    assert!(h.conn.is_done());
}

#[test]
fn write_deadline_closes_a_peer_that_never_reads() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.input(NEXT);
    assert!(!h.conn.poll_transmit().is_empty());
    h.expire(limits.write_timeout);
    assert!(h.conn.is_done(), "closed with output still pending");
}

#[test]
fn shutdown_closes_idle_and_answers_in_flight_with_close() {
    let mut idle = Harness::new();
    idle.feed(NEXT);
    idle.conn.handle_shutdown();
    assert!(idle.conn.is_done());

    let mut busy = Harness::new();
    busy.feed(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n");
    busy.conn.handle_shutdown();
    assert!(!busy.conn.is_done());
    busy.feed(b"\r\n");
    let r = busy.responses();
    assert_eq!(r.len(), 1);
    assert!(r[0].closes());
    assert!(busy.conn.is_done());
}

#[test]
fn eof_mid_request_closes_without_answer() {
    let mut h = Harness::new();
    h.feed(b"GET /plaintext HTTP/1.1\r\n");
    h.conn.handle_eof();
    assert!(h.conn.is_done());
    assert!(h.wire.is_empty());
}

/// Found by the conn fuzz target (docs/TESTING.md): EOF with a partial
/// request buffered closes without answering it, but its head or body
/// deadline stayed armed and answered 408 after the close decision. With
/// nothing pending that turned a done connection back into a sending one;
/// behind an unsent response it added a 408 the peer never asked for.
#[test]
fn eof_mid_request_leaves_no_deadline_to_answer_it() {
    let limits = Limits::default();
    let later = limits.head_timeout.max(limits.body_timeout);
    // Nothing pending: done at EOF, and stays done.
    let mut h = Harness::with_limits(limits.clone());
    h.feed(b"GET /pl");
    h.conn.handle_eof();
    assert!(h.conn.is_done());
    h.expire(later);
    assert!(h.conn.is_done(), "a deadline reopened a done connection");
    assert!(h.conn.poll_transmit().is_empty(), "408 after EOF");
    // A partial head or body behind an unsent response: only that
    // response goes out.
    for partial in [
        &b"GET /pl"[..],
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe",
    ] {
        let mut h = Harness::with_limits(limits.clone());
        h.input(&[NEXT, partial].concat());
        h.conn.handle_eof();
        assert!(!h.conn.is_done(), "the first response is still owed");
        h.expire(later);
        h.flush();
        let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [200],
            "for {:?}",
            String::from_utf8_lossy(partial)
        );
        assert!(h.conn.is_done());
    }
}

/// Found while writing the conn fuzz target: a request that arrived whole
/// but waits behind unsent output (backpressure) had its head deadline
/// running, so a peer that reads a large response steadily but for longer
/// than `head_timeout` got "408 request head not received in time" for a
/// head it had sent long before. While the connection does not read, the
/// head clock stops; the write deadline guards a peer that stops reading.
#[test]
fn head_deadline_does_not_run_while_output_blocks_reading() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.input(&[&b"GET /big?300000 HTTP/1.1\r\nHost: a\r\n\r\n"[..], NEXT].concat());
    assert!(!h.conn.wants_read(), "the second request waits");
    // The peer reads a little every `write_timeout / 2`, for longer than
    // the head timeout.
    let step = limits.write_timeout / 2;
    let mut waited = std::time::Duration::ZERO;
    while waited <= limits.head_timeout * 2 {
        h.expire(step);
        waited += step;
        let out = h.conn.poll_transmit();
        let n = out.len().min(1000);
        let out = out[..n].to_vec();
        h.wire.extend_from_slice(&out);
        h.ack(n);
    }
    h.flush();
    let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200]);
    assert!(!h.conn.is_closing());
}

#[test]
fn limits_are_configurable() {
    let limits = Limits {
        max_body: 4,
        max_headers: 2,
        ..Limits::default()
    };
    let h = run_split(&head_with("Content-Length: 5\r\n"), &[], &limits);
    assert_eq!(h.responses()[0].status, 413);
    let h = run_split(
        b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
        &[],
        &limits,
    );
    assert_eq!(h.responses()[0].status, 431);
    assert!(limits.validate().is_ok());
    assert!(Limits {
        max_headers: 0,
        ..Limits::default()
    }
    .validate()
    .is_err());
}

#[test]
fn taken_output_stays_pending_until_acknowledged() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.input(NEXT);
    let first = h.conn.take_transmit().expect("output to send");
    assert!(
        h.conn.take_transmit().is_none(),
        "one buffer in flight at a time"
    );
    assert!(!h.conn.is_idle(), "taken bytes are still pending");
    h.input(NEXT);
    h.ack(first.len());
    let second = h.conn.take_transmit().expect("the pipelined response");
    let wire = [first, second.clone()].concat();
    let parsed = common::parse_responses(&wire).unwrap();
    assert_eq!(parsed.len(), 2);
    h.ack(second.len());
    assert!(h.conn.is_idle());
}

#[test]
fn abort_drops_output_and_closes_without_lingering() {
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    h.input(b"GET /nope HTTP/1.1\r\n\r\nmore");
    assert!(h.conn.lingers(), "a rejection with bytes behind it lingers");
    h.conn.handle_abort();
    assert!(h.conn.is_done());
    assert!(!h.conn.lingers());
    assert!(h.conn.poll_transmit().is_empty());
}

/// A 2,500-byte file of a known pattern; `/file` answers bytes 100..2100.
fn file_router() -> (Router, Vec<u8>, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "coreloop-engine-file-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let data: Vec<u8> = (0..2500u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    let router = common::test_router().get("/file", move |_: &Request<'_>| {
        Response::new(200).with_body(Body::File(FileBody::new(file.clone(), 100, 2000)))
    });
    (router, data[100..2100].to_vec(), path)
}

#[test]
fn file_bodies_keep_their_place_among_pipelined_responses() {
    let (router, expected, path) = file_router();
    let mut h = Harness::new();
    h.router = router;
    h.feed(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\nGET /file HTTP/1.1\r\nHost: a\r\n\r\n");
    let rs = h.responses();
    assert_eq!(rs.len(), 3);
    assert_eq!(rs[0].header("content-length"), Some("2000"));
    assert_eq!(rs[0].body, expected);
    assert_eq!(rs[1].body, b"Hello, World!");
    assert_eq!(rs[2].body, expected);
    assert!(h.conn.is_idle(), "everything sent and acknowledged");
    // HEAD announces the file's length and sends none of it.
    let mut h = Harness::new();
    h.router = file_router().0;
    h.feed(b"HEAD /file HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(h.wire.ends_with(b"Content-Length: 2000\r\n\r\n"));
    assert!(h.conn.poll_file().is_none());
    let _ = std::fs::remove_file(path);
}

/// The io_uring way: take the bytes before the file, acknowledge them,
/// then send the file range in steps; new responses queue behind it.
#[test]
fn file_bodies_through_take_transmit() {
    let (router, expected, path) = file_router();
    let mut h = Harness::new();
    h.router = router;
    h.input(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = h.conn.take_transmit().expect("the head");
    assert!(
        h.conn.poll_file().is_none(),
        "file waits for the head's ack"
    );
    h.input(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n");
    h.ack(head.len());
    assert!(h.conn.take_transmit().is_none(), "the file comes first");
    let mut wire = head;
    while let Some(file) = h.conn.poll_file() {
        let n = common::read_file_step(file, &mut wire);
        h.ack(n);
    }
    let tail = h.conn.take_transmit().expect("the plaintext response");
    wire.extend_from_slice(&tail);
    h.ack(tail.len());
    let rs = common::parse_responses(&wire).unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[0].body, expected);
    assert_eq!(rs[1].body, b"Hello, World!");
    assert!(h.conn.is_idle());
    let _ = std::fs::remove_file(path);
}

/// Unsent file bytes count as pending output: a huge body stops request
/// processing (backpressure) until it drains, and an abort drops it.
#[test]
fn file_body_counts_as_pending_output() {
    let (router, _, path) = file_router();
    let limits = Limits {
        max_pending_output: 1000,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    h.router = router;
    h.input(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(!h.conn.wants_read(), "2000 file bytes pending > 1000");
    assert_eq!(h.stats.requests.get(), 1, "the second request waits");
    h.flush();
    assert_eq!(h.stats.requests.get(), 2, "resumed once the file drained");
    h.input(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n");
    h.conn.handle_abort();
    assert!(h.conn.poll_file().is_none());
    assert!(h.conn.is_done());
    let _ = std::fs::remove_file(path);
}

/// EOF while complete requests wait behind unsent output (backpressure):
/// they are still answered, then the connection closes.
#[test]
fn eof_answers_requests_waiting_behind_output() {
    let mut h = Harness::new();
    h.input(
        b"GET /big?300000 HTTP/1.1\r\nHost: a\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(
        !h.conn.wants_read(),
        "300 kB pending blocks the second request"
    );
    h.conn.handle_eof();
    assert!(!h.conn.is_done());
    h.flush();
    let rs = h.responses();
    assert_eq!(rs.len(), 2, "both requests answered");
    assert_eq!(rs[1].body, b"Hello, World!");
    assert!(h.conn.is_done(), "closes once everything is sent");
}

/// A short write of a head that a file body follows keeps the byte
/// accounting right (pending output never underflows).
#[test]
fn short_write_of_a_file_head() {
    let (router, expected, path) = file_router();
    let mut h = Harness::new();
    h.router = router;
    h.input(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = h.conn.poll_transmit().to_vec();
    h.wire.extend_from_slice(&head[..10]);
    h.ack(10);
    assert!(h.conn.wants_read());
    h.flush();
    let rs = h.responses();
    assert_eq!(rs[0].body, expected);
    assert!(h.conn.is_idle());
    let _ = std::fs::remove_file(path);
}
