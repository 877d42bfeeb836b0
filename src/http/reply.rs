//! An upstream's response, read as a client reads it: the head is parsed
//! once whole, then the body is decoded incrementally. Only a reply with
//! valid framing (RFC 9112 §6.3) is passed on; anything else is an error
//! the proxy answers with 502, so a confused upstream cannot desynchronize
//! the client's connection.

use std::mem::MaybeUninit;

use super::body::Chunked;
use super::forward::hop_by_hop;

/// Longest upstream head accepted.
pub const MAX_REPLY_HEAD: usize = 16 * 1024;
const MAX_FIELDS: usize = 100;
const MAX_CHUNK_LINE: usize = 4096;

/// Besides the hop-by-hop and framing fields (`HOP_BY_HOP`), Date and
/// Server are written by the proxy itself (as nginx does), so a reply
/// always has exactly one Date (RFC 9110 §6.6.1 asks a proxy to add one
/// that is missing).
const REWRITTEN: [&str; 2] = ["date", "server"];

/// How the reply body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: the client gets it re-framed.
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A parsed reply head.
#[derive(Debug)]
pub struct ReplyHead {
    /// The status code.
    pub status: u16,
    /// End-to-end fields, as `Name: value\r\n` lines.
    pub fields: Vec<u8>,
    /// The body's framing.
    pub framing: ReplyFraming,
    /// The Content-Length announced, even where no body follows (the
    /// answer to HEAD passes it on).
    pub length: Option<u64>,
    /// The upstream will keep the connection open after this reply.
    pub keep_alive: bool,
}

/// Why a reply cannot be passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// Not HTTP/1.x, a bad status line or field, or a head too long.
    BadHead,
    /// Conflicting or invalid Content-Length / Transfer-Encoding.
    BadFraming,
    /// A 101 the proxy never asked for.
    Upgrade,
    /// Bad chunked framing in the body.
    BadChunk,
}

/// Parses a reply head at the front of `buf`. `Ok(None)`: incomplete.
/// Interim (1xx) replies other than 101 are skipped: the returned length
/// covers them too. The head's fields are written into `spare`'s memory
/// (taken from it), so a caller that gives each head's `fields` back
/// parses without allocating.
pub fn parse_reply(
    buf: &[u8],
    head_only: bool,
    spare: &mut Vec<u8>,
) -> Result<Option<(usize, ReplyHead)>, ReplyError> {
    let mut start = 0;
    loop {
        // Uninitialized slots: initializing 100 of them cost more than
        // the parse of a typical reply head.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            &buf[start..],
            &mut slots,
        );
        let used = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() - start > MAX_REPLY_HEAD => {
                return Err(ReplyError::BadHead)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ReplyError::BadHead),
        };
        let status = res.code.ok_or(ReplyError::BadHead)?;
        match status {
            101 => return Err(ReplyError::Upgrade),
            100..=199 => {
                start += used;
                continue;
            }
            _ => {}
        }
        let mut fields = std::mem::take(spare);
        fields.clear();
        let head = build(
            status,
            res.version == Some(1),
            res.headers,
            head_only,
            fields,
        )?;
        return Ok(Some((start + used, head)));
    }
}

fn build(
    status: u16,
    http11: bool,
    headers: &[httparse::Header<'_>],
    head_only: bool,
    mut fields: Vec<u8>,
) -> Result<ReplyHead, ReplyError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = !http11;
    // Connection lists fields other than Keep-Alive (itself hop-by-hop):
    // they go too.
    let mut lists_fields = false;
    for h in headers {
        let v = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(v).ok_or(ReplyError::BadFraming)?;
            if length.is_some_and(|l| l != n) {
                return Err(ReplyError::BadFraming);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = v
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                    lists_fields = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close &= http11;
                } else {
                    lists_fields = true;
                }
            }
        }
    }
    if coded && length.is_some() {
        return Err(ReplyError::BadFraming);
    }
    let framing = if head_only || matches!(status, 204 | 304) {
        ReplyFraming::None
    } else if chunked {
        ReplyFraming::Chunked
    } else if coded {
        ReplyFraming::Close
    } else {
        length.map_or(ReplyFraming::Close, ReplyFraming::Length)
    };
    for h in headers {
        let name = h.name;
        let hop = hop_by_hop(name.as_bytes())
            || REWRITTEN.iter().any(|d| name.eq_ignore_ascii_case(d))
            || lists_fields && connection_lists(headers, name.as_bytes());
        if hop || h.value.iter().any(|&b| b == b'\r' || b == b'\n') {
            continue;
        }
        fields.extend_from_slice(name.as_bytes());
        fields.extend_from_slice(b": ");
        fields.extend_from_slice(h.value);
        fields.extend_from_slice(b"\r\n");
    }
    Ok(ReplyHead {
        status,
        fields,
        framing,
        length,
        keep_alive: !close && framing != ReplyFraming::Close,
    })
}

/// Whether a Connection field of `headers` names `name`.
fn connection_lists(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 19 digits: no overflow.
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Decodes a reply body as bytes arrive.
#[derive(Debug)]
pub struct ReplyBody {
    framing: ReplyFraming,
    left: u64,
    chunked: Chunked,
}

impl ReplyBody {
    /// A decoder for a body with this framing.
    pub fn new(framing: ReplyFraming) -> ReplyBody {
        let left = match framing {
            ReplyFraming::Length(n) => n,
            _ => 0,
        };
        ReplyBody {
            framing,
            left,
            chunked: Chunked::default(),
        }
    }

    /// Takes body bytes from `input`, appending the payload to `out`.
    /// Returns the input bytes used; bytes after the body's end are left.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ReplyError> {
        match self.framing {
            ReplyFraming::None => Ok(0),
            ReplyFraming::Close => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            ReplyFraming::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[..n]);
                self.left -= n as u64;
                Ok(n)
            }
            ReplyFraming::Chunked => self
                .chunked
                .decode(input, out, u64::MAX, MAX_CHUNK_LINE)
                .map_err(|_| ReplyError::BadChunk),
        }
    }

    /// The framing this decoder follows.
    pub fn framing(&self) -> ReplyFraming {
        self.framing
    }

    /// Whether the whole body has been read (never, for `Close`: the
    /// upstream's EOF ends it).
    pub fn is_done(&self) -> bool {
        match self.framing {
            ReplyFraming::None => true,
            ReplyFraming::Length(_) => self.left == 0,
            ReplyFraming::Chunked => self.chunked.is_done(),
            ReplyFraming::Close => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<(usize, ReplyHead)>, ReplyError> {
        parse_reply(raw.as_bytes(), false, &mut Vec::new())
    }

    #[test]
    fn framing_rules() {
        let ok = |raw: &str| head(raw).unwrap().unwrap().1.framing;
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            ReplyFraming::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            ReplyFraming::Chunked
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), ReplyFraming::Close);
        assert_eq!(
            ok("HTTP/1.1 304 OK\r\nContent-Length: 5\r\n\r\n"),
            ReplyFraming::None
        );
        assert_eq!(
            ok("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"),
            ReplyFraming::Length(1)
        );
        let bad = |raw: &str| head(raw).unwrap_err();
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            ReplyError::BadFraming
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ReplyError::BadFraming
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            ReplyError::BadFraming
        );
        assert_eq!(bad("HTTP/1.1 101 Switching\r\n\r\n"), ReplyError::Upgrade);
        assert_eq!(bad("SSH-2.0-OpenSSH\r\n\r\n"), ReplyError::BadHead);
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"  ",
            b"-1",
            b"+1",
            b"1 2",
            b"0x10",
            b"10000000000000000000",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hop_by_hop_fields_are_dropped() {
        let (_, h) = head(
            "HTTP/1.1 200 OK\r\nConnection: x-secret, keep-alive\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nContent-Length: 0\r\nX-App: yes\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.fields, b"X-App: yes\r\n");
        assert!(h.keep_alive);
        // Two Connection fields; one names a field that came before it.
        let (_, h) = head(
            "HTTP/1.1 200 OK\r\nX-Early: 1\r\nConnection: close\r\nContent-Length: 0\r\n\
             X-App: yes\r\nCONNECTION: x-early\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.fields, b"X-App: yes\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_body_decodes_and_stops_at_its_end() {
        let mut body = ReplyBody::new(ReplyFraming::Chunked);
        let mut out = Vec::new();
        let used = body.decode(b"3\r\nabc\r\n0\r\n\r\nHTTP", &mut out).unwrap();
        assert_eq!(used, 13);
        assert_eq!(out, b"abc");
        assert!(body.is_done());
    }
}
