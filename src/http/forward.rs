//! A client's request rewritten for an upstream (RFC 9110 §7.6): the
//! hop-by-hop fields go, forwarding fields are added, and the framing is
//! regenerated from the parsed request. The upstream never sees bytes that
//! the engine did not parse, so what the engine rejected or normalized
//! (duplicate lengths, obsolete line folding, chunk extensions) cannot be
//! smuggled past it.

use super::request::Request;

/// Fields that describe one hop and are never forwarded (RFC 9110
/// §7.6.1), and the framing fields, which are regenerated; both ways.
/// `hop_by_hop` matches them by length (and the tests hold it to this list).
#[cfg(test)]
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Request fields this server writes itself (Expect was answered here:
/// the body is already in hand).
const REWRITTEN: [&str; 4] = ["expect", "x-forwarded-for", "x-forwarded-proto", "host"];

/// Whether `name` is one of `HOP_BY_HOP` or a Proxy-* field: the length
/// picks the candidates (every field of every request and reply passes
/// here).
pub(crate) fn hop_by_hop(name: &[u8]) -> bool {
    let is = |d: &str| name.eq_ignore_ascii_case(d.as_bytes());
    let listed = match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("content-length"),
        17 => is("transfer-encoding"),
        _ => false,
    };
    listed || name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-")
}

/// Whether a request field stays on this side of the proxy.
fn dropped(name: &[u8]) -> bool {
    hop_by_hop(name)
        || REWRITTEN
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
}

/// An upstream request ready but for the client's address: the head ends
/// in an open `X-Forwarded-For:` line, at `head_end`, whose value the
/// backend completes (`finish`), and the body follows.
#[derive(Debug, Default)]
pub struct Outgoing {
    /// The upstream group (index into `Config::upstreams`).
    pub group: usize,
    /// Head (without its final line end) and body.
    pub bytes: Vec<u8>,
    /// Where the client's address goes.
    pub head_end: usize,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// A HEAD request: the reply has no body whatever it announces.
    pub head_only: bool,
    /// Where the Host field's value is (empty: the client sent none).
    pub host: std::ops::Range<usize>,
}

impl Outgoing {
    /// Completes the head with the client's address, and sets Host to
    /// `host` when given (or when the client sent none).
    pub fn finish(&mut self, peer: Option<std::net::IpAddr>, host: Option<&str>) {
        let mut line = [0u8; 64];
        let n = address_line(peer, &mut line);
        self.bytes
            .splice(self.head_end..self.head_end, line[..n].iter().copied());
        if let Some(host) = host {
            self.bytes
                .splice(self.host.clone(), host.bytes())
                .for_each(drop);
        }
    }
}

/// Writes the X-Forwarded-For value and the head's end into `line`;
/// returns its length. IPv4 by hand: `Display` for addresses pads through
/// a formatter, a thousand instructions a request.
fn address_line(peer: Option<std::net::IpAddr>, line: &mut [u8; 64]) -> usize {
    use std::io::Write;
    let mut cursor = &mut line[..];
    let _ = match peer {
        Some(std::net::IpAddr::V4(ip)) => {
            let mut n = itoa::Buffer::new();
            let [a, b, c, d] = ip.octets();
            cursor.write_all(n.format(a).as_bytes()).and_then(|()| {
                for octet in [b, c, d] {
                    cursor.write_all(b".")?;
                    cursor.write_all(n.format(octet).as_bytes())?;
                }
                cursor.write_all(b"\r\n\r\n")
            })
        }
        Some(ip) => write!(cursor, "{ip}\r\n\r\n"),
        None => cursor.write_all(b"unknown\r\n\r\n"),
    };
    64 - cursor.len()
}

/// Writes `req` for an upstream into `out` (its buffer cleared first).
pub fn write_request(req: &Request<'_>, out: &mut Outgoing) {
    let buf = &mut out.bytes;
    buf.clear();
    let method = req.method();
    put_request_line(buf, method, req.target());
    let host_at = buf.len();
    if let Some(host) = req.header("host") {
        buf.extend_from_slice(host);
    }
    out.host = host_at..buf.len();
    put(buf, &[b"\r\n"]);
    let listed = req.header("connection").unwrap_or(b"");
    let mut prior_xff: Option<&[u8]> = None;
    for (name, value) in req.fields() {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") && prior_xff.is_none() {
            prior_xff = Some(value);
        }
        if dropped(name) || lists(listed, name) {
            continue;
        }
        put(buf, &[name, b": ", value, b"\r\n"]);
    }
    let body = req.body();
    put_length(buf, method, body);
    put(
        buf,
        &[b"X-Forwarded-Proto: http\r\nVia: 1.1 coreloop\r\nX-Forwarded-For: "],
    );
    if let Some(prior) = prior_xff {
        put(buf, &[prior, b", "]);
    }
    put_body(out, method, body);
}

/// Writes a handler's own upstream call (`Fetch`) into `out`. Host is
/// left for the backend (the group's, or the server's address).
pub fn write_fetch(fetch: &super::fetch::Fetch, out: &mut Outgoing) {
    let buf = &mut out.bytes;
    buf.clear();
    let method = fetch.method.as_ref();
    put_request_line(buf, method, &fetch.target);
    out.host = buf.len()..buf.len();
    put(buf, &[b"\r\n"]);
    for (name, value) in &fetch.headers {
        if dropped(name.as_bytes()) {
            continue;
        }
        put(buf, &[name.as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
    }
    let body = &fetch.body;
    put_length(buf, method, body);
    put(buf, &[b"Via: 1.1 coreloop\r\nX-Forwarded-For: "]);
    put_body(out, method, body);
}

/// The request line and the start of the Host field, whose value the
/// caller writes.
fn put_request_line(buf: &mut Vec<u8>, method: &str, target: &str) {
    put(
        buf,
        &[
            method.as_bytes(),
            b" ",
            target.as_bytes(),
            b" HTTP/1.1\r\nHost: ",
        ],
    );
}

/// Ends the head where the client's address goes, appends the body, and
/// notes what the method allows.
fn put_body(out: &mut Outgoing, method: &str, body: &[u8]) {
    out.head_end = out.bytes.len();
    out.bytes.extend_from_slice(body);
    out.idempotent = matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    );
    out.head_only = method == "HEAD";
}

/// Content-Length for a body, or for a method that expects one.
fn put_length(buf: &mut Vec<u8>, method: &str, body: &[u8]) {
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        let mut n = itoa::Buffer::new();
        put(
            buf,
            &[
                b"Content-Length: ",
                n.format(body.len()).as_bytes(),
                b"\r\n",
            ],
        );
    }
}

fn put(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// Whether the Connection field's comma-separated list names `name`.
fn lists(connection: &[u8], name: &[u8]) -> bool {
    !connection.is_empty()
        && connection
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn line(peer: Option<IpAddr>) -> String {
        let mut buf = [0u8; 64];
        let n = address_line(peer, &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_are_found_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(hop_by_hop(name.as_bytes()), "{name}");
            assert!(hop_by_hop(name.to_ascii_uppercase().as_bytes()), "{name}");
        }
        for name in ["Proxy-Authorization", "proxy-foo"] {
            assert!(hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in [
            "",
            "t",
            "tee",
            "host",
            "trailers",
            "upgrades",
            "connectio",
            "proxy-",
            "Content-Type",
        ] {
            assert!(!hop_by_hop(name.as_bytes()), "{name}");
        }
        assert!(dropped(b"X-Forwarded-For") && dropped(b"HOST") && dropped(b"Keep-Alive"));
        assert!(!dropped(b"Accept"));
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.3.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(line(Some(ip)), format!("{ip}\r\n\r\n"));
        }
        assert_eq!(line(None), "unknown\r\n\r\n");
    }
}
