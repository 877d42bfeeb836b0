//! The request a handler sees: a borrowed view over the connection's bytes.

use super::parse::{Head, Span};

/// One parsed request. Everything is borrowed from the connection's input
/// (or, for chunked bodies, its decode buffer): no copies, no allocation.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    bytes: &'a [u8],
    head: &'a Head,
    body: &'a [u8],
}

impl<'a> Request<'a> {
    /// A view over `bytes` (starting at the request's first byte).
    pub(crate) fn new(bytes: &'a [u8], head: &'a Head, body: &'a [u8]) -> Request<'a> {
        Request { bytes, head, body }
    }

    fn text(&self, span: Span) -> &'a str {
        // httparse accepted these bytes as ASCII tokens and targets (parse.rs
        // refuses bytes >= 0x80 in the target), so they are UTF-8.
        std::str::from_utf8(span.get(self.bytes)).unwrap_or("")
    }

    /// The method, e.g. `GET`. Case-sensitive (RFC 9110 §9.1).
    pub fn method(&self) -> &'a str {
        self.text(self.head.method)
    }

    /// The request target exactly as sent.
    pub fn target(&self) -> &'a str {
        self.text(self.head.target)
    }

    /// The path, still percent-encoded; `/` for an absolute-form target with
    /// no path.
    pub fn path(&self) -> &'a str {
        if self.head.path.is_empty() {
            "/"
        } else {
            self.text(self.head.path)
        }
    }

    /// The query string without `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.head.query.map(|q| self.text(q))
    }

    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn minor_version(&self) -> u8 {
        self.head.minor
    }

    /// The first header field with this name (compared without case).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// All header fields in order, as bytes.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let bytes = self.bytes;
        self.head
            .headers
            .iter()
            .map(move |(n, v)| (n.get(bytes), v.get(bytes)))
    }

    /// All header fields in order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.fields()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap_or(""), v))
    }

    /// The decoded body (empty when there is none).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Whether the client asked to keep the connection open.
    pub fn keep_alive(&self) -> bool {
        self.head.keep_alive
    }
}
