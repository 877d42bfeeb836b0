//! Request heads: find where a head ends, parse it once with httparse, and
//! apply the RFC 9112 rules httparse leaves to us (Host, framing, versions).
//!
//! The result is a `Head` of byte spans relative to the request's first
//! byte, so it stays valid when the caller moves the bytes into another
//! buffer, and a `Request` can later borrow everything from that buffer.

use std::mem::MaybeUninit;

use memchr::memchr;

use super::limits::{Limits, MAX_HEADERS_CEILING};
use super::reject::Reject;

/// A byte range inside one request, from the request's first byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        // NOTE(cast): heads are capped by Limits::max_head, checked < 4 GiB.
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn sub(self, from: usize, to: usize) -> Span {
        Span {
            start: self.start + from as u32,
            end: self.start + to as u32,
        }
    }

    /// The bytes this span names in `buf` (the request's bytes).
    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Whether the span is empty.
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head; spans point into the request's bytes.
#[derive(Debug, Default)]
pub struct Head {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    /// The method token.
    pub method: Span,
    /// The request target as sent.
    pub target: Span,
    /// Path of the target: origin-form path, or the path of an absolute-form
    /// target (empty means "/"), or the whole target for `*` and CONNECT.
    pub path: Span,
    /// The query, without `?`.
    pub query: Option<Span>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Field names and values, in order.
    pub headers: Vec<(Span, Span)>,
    /// Body framing; `None` until a head has been parsed.
    pub framing: Option<Framing>,
    /// The client asked to keep the connection open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// Method is HEAD: the response carries no body.
    pub is_head: bool,
}

/// Where the search for the end of a head stopped, so the next call resumes
/// there instead of rescanning (a head split over many reads stays linear).
#[derive(Clone, Copy, Debug, Default)]
pub struct Scan {
    pos: usize,
    line_end_seen: bool,
}

impl Scan {
    /// Whether any byte of a head has been examined.
    pub fn started(&self) -> bool {
        self.pos > 0
    }
}

/// Result of looking for a complete head.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The head ends at this offset.
    Complete(usize),
    /// Need more bytes.
    Partial,
}

/// Finds the end of the head (an empty line, CRLF or bare LF) in `buf`,
/// resuming where `scan` stopped. Enforces the line and head size limits.
pub fn find_head_end(buf: &[u8], scan: &mut Scan, limits: &Limits) -> Result<Found, Reject> {
    let mut i = scan.pos;
    while let Some(off) = memchr(b'\n', &buf[i..]) {
        let nl = i + off;
        if !scan.line_end_seen {
            scan.line_end_seen = true;
            // A leading empty line is not the request line (RFC 9112 §2.2);
            // httparse skips those, the length check must too.
            if nl + 1 > limits.max_request_line && !buf[..nl].iter().all(|b| *b == b'\r') {
                return Err(Reject::RequestLineTooLong);
            }
        }
        let end = match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => Some(nl + 3),
            (None, _) | (Some(b'\r'), None) => {
                scan.pos = nl;
                return too_long(buf.len(), scan, limits);
            }
            _ => None,
        };
        if let Some(end) = end {
            if end > limits.max_head {
                return Err(Reject::HeadTooLarge);
            }
            scan.pos = nl + 1;
            return Ok(Found::Complete(end));
        }
        i = nl + 1;
    }
    scan.pos = buf.len();
    too_long(buf.len(), scan, limits)
}

fn too_long(len: usize, scan: &Scan, limits: &Limits) -> Result<Found, Reject> {
    if !scan.line_end_seen && len > limits.max_request_line {
        Err(Reject::RequestLineTooLong)
    } else if len >= limits.max_head {
        Err(Reject::HeadTooLarge)
    } else {
        Ok(Found::Partial)
    }
}

/// Parses the head in `buf[..end]` into `head`. `Ok(false)` means httparse
/// wants more bytes (only possible after leading empty lines); the caller
/// keeps scanning from where `find_head_end` stopped.
pub fn parse_head(
    buf: &[u8],
    end: usize,
    head: &mut Head,
    limits: &Limits,
) -> Result<bool, Reject> {
    match parse_request(&buf[..end], head, limits) {
        Err(rejected) => {
            // RFC 9110 §2.5: a higher minor version of HTTP/1 is processed
            // as HTTP/1.1. httparse refuses it, so parse a copy that says
            // 1.1; it has the same length, so its spans fit `buf`.
            let Some(at) = later_http1_minor(&buf[..end]) else {
                return Err(rejected);
            };
            let mut copy = buf[..end].to_vec();
            copy[at] = b'1';
            parse_request(&copy, head, limits)
        }
        parsed => parsed,
    }
}

/// Where the minor digit of an `HTTP/1.x` version with x >= 2 sits in
/// `head`'s request line, if it has one.
fn later_http1_minor(head: &[u8]) -> Option<usize> {
    let (start, line) = request_line(head);
    if !well_formed_version(line) {
        return None;
    }
    let version = &line[line.len() - 8..];
    (version.starts_with(b"HTTP/1.") && version[7] >= b'2').then_some(start + line.len() - 1)
}

/// The request line (without its line end) and where it starts, after
/// any leading empty lines (RFC 9112 §2.2).
fn request_line(head: &[u8]) -> (usize, &[u8]) {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let rest = &head[start..];
    let line = &rest[..memchr(b'\n', rest).unwrap_or(rest.len())];
    (start, line.strip_suffix(b"\r").unwrap_or(line))
}

/// `parse_head` on exactly the head's bytes; spans are relative to `bytes`.
fn parse_request(bytes: &[u8], head: &mut Head, limits: &Limits) -> Result<bool, Reject> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS_CEILING];
    let max = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, &mut slots[..max]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(e) => return Err(classify(bytes, e)),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequestLine);
    };
    head.len = len;
    head.minor = minor;
    head.method = Span::of(bytes, method.as_bytes());
    head.target = Span::of(bytes, target.as_bytes());
    head.is_head = method == "HEAD";
    split_target(head, method, target)?;
    head.headers.clear();
    let mut fields = Fields::default();
    for h in req.headers.iter() {
        head.headers
            .push((Span::of(bytes, h.name.as_bytes()), Span::of(bytes, h.value)));
        fields.note(h.name.as_bytes(), h.value, limits)?;
    }
    fields.finish(head, limits)
}

/// Splits the target into path and query and checks its form
/// (RFC 9112 §3.2: origin, absolute, authority, asterisk).
fn split_target(head: &mut Head, method: &str, target: &str) -> Result<(), Reject> {
    let t = target.as_bytes();
    if t.iter().any(|b| *b == b'#' || *b >= 0x80) {
        return Err(Reject::BadTarget);
    }
    let whole = head.target;
    let path_start = if t[0] == b'/' {
        0
    } else if let Some(rest) = strip_scheme(t) {
        let authority = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?'))
            .unwrap_or(rest.len());
        if authority == 0 {
            return Err(Reject::BadTarget);
        }
        t.len() - rest.len() + authority
    } else if t == b"*" && method == "OPTIONS" || method == "CONNECT" {
        head.path = whole;
        head.query = None;
        return Ok(());
    } else {
        return Err(Reject::BadTarget);
    };
    match memchr(b'?', &t[path_start..]) {
        Some(q) => {
            head.path = whole.sub(path_start, path_start + q);
            head.query = Some(whole.sub(path_start + q + 1, t.len()));
        }
        None => {
            head.path = whole.sub(path_start, t.len());
            head.query = None;
        }
    }
    Ok(())
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&t[scheme.len()..]);
        }
    }
    None
}

/// What the framing-relevant fields said, gathered over all header lines.
#[derive(Default)]
struct Fields {
    hosts: u8,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_count: u8,
    last_chunked: bool,
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    fn note(&mut self, name: &[u8], value: &[u8], limits: &Limits) -> Result<(), Reject> {
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                self.hosts = self.hosts.saturating_add(1);
                if self.hosts > 1 {
                    return Err(Reject::DuplicateHost);
                }
                if !valid_host(trim(value)) {
                    return Err(Reject::BadHost);
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if !trim(value).eq_ignore_ascii_case(b"100-continue") {
                    return Err(Reject::UnsupportedExpect);
                }
                self.expect_continue = true;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                for v in value.split(|b| *b == b',') {
                    let n = parse_length(trim(v))?;
                    match self.content_length {
                        Some(prev) if prev != n => return Err(Reject::ConflictingContentLength),
                        _ => self.content_length = Some(n),
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                for coding in list(value) {
                    // Parameters (";q=...") never belong to chunked.
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        self.chunked_count = self.chunked_count.saturating_add(1);
                        self.last_chunked = true;
                    } else {
                        self.other_coding = true;
                        self.last_chunked = false;
                    }
                }
                let _ = limits;
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self, head: &mut Head, limits: &Limits) -> Result<bool, Reject> {
        if head.minor == 1 && self.hosts == 0 {
            return Err(Reject::MissingHost);
        }
        head.framing = Some(if self.transfer_encoding {
            if head.minor == 0 {
                return Err(Reject::TransferEncodingInHttp10);
            }
            if self.content_length.is_some() {
                return Err(Reject::LengthWithTransferEncoding);
            }
            if self.chunked_count > 1 {
                return Err(Reject::ChunkedTwice);
            }
            if !self.last_chunked {
                return Err(Reject::ChunkedNotFinal);
            }
            if self.other_coding {
                return Err(Reject::UnsupportedTransferCoding);
            }
            Framing::Chunked
        } else {
            match self.content_length {
                Some(n) if n > limits.max_body => return Err(Reject::BodyTooLarge),
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        });
        head.keep_alive = if head.minor == 1 {
            !self.close
        } else {
            self.keep_alive && !self.close
        };
        head.expect_continue = self.expect_continue && head.minor == 1;
        Ok(true)
    }
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6); no sign, no spaces inside,
/// at most 19 digits so the value fits in 63 bits.
fn parse_length(v: &[u8]) -> Result<u64, Reject> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Reject::BadContentLength);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `Host = uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2).
/// An empty value is allowed: RFC 9112 §3.2 lets clients send one.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(close) = memchr(b']', v) else {
            return false;
        };
        let literal = &v[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &v[close + 1..] {
            [] => (&[][..], None),
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match memchr(b':', v) {
            Some(c) => (&v[..c], Some(&v[c + 1..])),
            None => (v, None),
        }
    };
    let reg_name = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\''
            )
            || matches!(b, b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
    });
    reg_name && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Elements of a comma-separated field value, trimmed, empty ones skipped.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Turns httparse's coarse error into the rule that was broken. Runs only on
/// the error path, so it may rescan the head.
fn classify(head: &[u8], err: httparse::Error) -> Reject {
    let (start, request_line) = request_line(head);
    let line_end = start + memchr(b'\n', &head[start..]).unwrap_or(head.len() - start);
    if has_bare_cr(head) {
        return Reject::BareCr;
    }
    match err {
        httparse::Error::TooManyHeaders => Reject::TooManyHeaders,
        httparse::Error::Version => {
            if well_formed_version(request_line) {
                Reject::UnsupportedVersion
            } else {
                Reject::BadRequestLine
            }
        }
        httparse::Error::HeaderName => {
            let fields = head.get(line_end + 1..).unwrap_or_default();
            if fields.starts_with(b" ") || fields.starts_with(b"\t") || contains_fold(fields) {
                Reject::ObsFold
            } else if space_before_colon(fields) {
                Reject::SpaceBeforeColon
            } else {
                Reject::BadHeaderName
            }
        }
        httparse::Error::HeaderValue => Reject::BadHeaderValue,
        httparse::Error::Token => {
            // A bad method byte and a bad target byte both land here.
            let line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
            let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let method_ok = !parts[0].is_empty() && parts[0].iter().all(|b| is_tchar(*b));
            if method_ok && parts.len() == 3 {
                Reject::BadTarget
            } else {
                Reject::BadRequestLine
            }
        }
        _ => Reject::BadRequestLine,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn has_bare_cr(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, b)| *b == b'\r' && head.get(i + 1) != Some(&b'\n'))
}

fn contains_fold(fields: &[u8]) -> bool {
    fields
        .windows(2)
        .any(|w| w[0] == b'\n' && matches!(w[1], b' ' | b'\t'))
}

fn space_before_colon(fields: &[u8]) -> bool {
    fields.split(|b| *b == b'\n').any(|line| {
        let name_end = line.iter().position(|b| *b == b':').unwrap_or(0);
        name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t')
    })
}

/// `HTTP-version = "HTTP/" DIGIT "." DIGIT` (RFC 9112 §2.3) at the end of
/// the request line.
fn well_formed_version(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(_), Some(_), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Head, Reject> {
        let limits = Limits::default();
        let mut scan = Scan::default();
        let Found::Complete(end) = find_head_end(raw, &mut scan, &limits)? else {
            panic!("incomplete head");
        };
        let mut head = Head::default();
        assert!(parse_head(raw, end, &mut head, &limits)?);
        Ok(head)
    }

    #[test]
    fn spans_name_the_parts() {
        let raw = b"GET http://example.com/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let head = parse(raw).unwrap();
        assert_eq!(head.method.get(raw), b"GET");
        assert_eq!(head.path.get(raw), b"/a/b");
        assert_eq!(head.query.unwrap().get(raw), b"x=1");
        assert_eq!(head.len, raw.len());
        assert_eq!(head.headers.len(), 1);
    }

    #[test]
    fn content_length_forms() {
        assert_eq!(parse_length(b"0"), Ok(0));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Ok(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"0x10",
            b"1 2",
            b"12345678901234567890",
            b" ",
        ] {
            assert_eq!(parse_length(bad), Err(Reject::BadContentLength), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            &b""[..],
            b"a",
            b"a.b:80",
            b"[::1]:8080",
            b"127.0.0.1",
            b"xn--d1a.ru",
        ] {
            assert!(valid_host(ok), "{ok:?}");
        }
        for bad in [
            &b"a b"[..],
            b"a/b",
            b"a@b",
            b"a:80x",
            b"[::1",
            b"[]",
            b"a:123456",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn scan_resumes_without_rescanning() {
        let limits = Limits::default();
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut scan = Scan::default();
        for cut in 1..raw.len() {
            assert_eq!(
                find_head_end(&raw[..cut], &mut scan, &limits),
                Ok(Found::Partial)
            );
            assert!(scan.pos <= cut);
        }
        assert_eq!(
            find_head_end(raw, &mut scan, &limits),
            Ok(Found::Complete(raw.len()))
        );
    }
}
