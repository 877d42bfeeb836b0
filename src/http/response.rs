//! Responses: what a handler returns, and how it becomes bytes.
//!
//! Serialization writes straight into the connection's output buffer. Every
//! response gets `Server` and `Date`, and exactly one framing header
//! (`Content-Length`), except where RFC 9110 forbids a body (1xx, 204, 304).

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

/// A response body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Body {
    /// No body (Content-Length: 0).
    #[default]
    Empty,
    /// Bytes that live for the whole program: no copy, no allocation.
    Static(&'static [u8]),
    /// Bytes the handler built.
    Bytes(Vec<u8>),
    /// A byte range of an open file. The connection never reads it: the
    /// backend moves it from the page cache to the socket (sendfile on
    /// epoll, reads through the ring on io_uring).
    File(FileBody),
}

impl Body {
    /// The bytes of an in-memory body; empty for `File`.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty | Body::File(_) => &[],
            Body::Static(b) => b,
            Body::Bytes(b) => b,
        }
    }

    /// The body's length in bytes, as Content-Length announces it.
    pub fn len(&self) -> u64 {
        match self {
            Body::File(f) => f.len,
            // NOTE(cast): usize fits in u64 on every Linux target.
            _ => self.as_bytes().len() as u64,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `len` bytes of `file` from `offset`. The file is shared (an open-file
/// cache may hand the same one to many responses), so it is only ever read
/// at explicit offsets, never through its cursor.
#[derive(Clone, Debug)]
pub struct FileBody {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl FileBody {
    /// `len` bytes from `offset`. The caller checked the range against the
    /// file's size; if the file shrinks meanwhile, the backend closes the
    /// connection rather than send a short body.
    pub fn new(file: Arc<File>, offset: u64, len: u64) -> FileBody {
        FileBody { file, offset, len }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, shared: lets a backend remember facts about it
    /// (e.g. its page-cache residency) without keeping it open.
    pub fn shared_file(&self) -> &Arc<File> {
        &self.file
    }

    /// Where the bytes still to send start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes are still to send.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether everything was sent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that `n` more bytes went out.
    pub(crate) fn advance(&mut self, n: u64) {
        let n = n.min(self.len);
        self.offset += n;
        self.len -= n;
    }
}

impl PartialEq for FileBody {
    fn eq(&self, other: &FileBody) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset && self.len == other.len
    }
}

impl Eq for FileBody {}

/// Fields the connection writes itself; a handler may not set them, since a
/// second framing header is exactly how responses get smuggled.
const RESERVED: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "date",
    "server",
];

/// What a handler answers. Cheap to build: no allocation unless the handler
/// adds headers or an owned body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    body: Body,
    close: bool,
    forward: Option<usize>,
    fetch: Option<super::fetch::Pending>,
}

impl Response {
    /// A response with this status and no body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            content_type: None,
            headers: Vec::new(),
            body: Body::Empty,
            close: false,
            forward: None,
            fetch: None,
        }
    }

    /// A response that completes when a handler's upstream call does
    /// (`fetch::Fetch::then`).
    pub(crate) fn deferred(pending: super::fetch::Pending) -> Response {
        Response {
            fetch: Some(pending),
            ..Response::new(500)
        }
    }

    /// The upstream call of a `Fetch::then` response, taken once.
    pub(crate) fn take_fetch(&self) -> Option<super::fetch::Fetch> {
        self.fetch.as_ref()?.take()
    }

    /// Whether this response completes later (`forward` or `Fetch::then`).
    pub fn is_deferred(&self) -> bool {
        self.forward.is_some() || self.fetch.is_some()
    }

    /// A response that completes later: the request is forwarded to
    /// upstream group `group` (its index in `Config::upstreams`), and the
    /// upstream's reply is streamed back as it arrives. Requests pipelined
    /// behind it wait their turn. If the group cannot answer, the client
    /// gets 502, 503 or 504 (see `config::ProxyLimits`).
    pub fn forward(group: usize) -> Response {
        Response {
            forward: Some(group),
            ..Response::new(502)
        }
    }

    /// The upstream group a `forward` response goes to.
    pub fn forwards_to(&self) -> Option<usize> {
        self.forward
    }

    /// 200 with a static body and content type.
    pub fn ok(content_type: &'static str, body: &'static [u8]) -> Response {
        Response::new(200)
            .with_content_type(content_type)
            .with_body(Body::Static(body))
    }

    /// A `text/plain` response with a one-line body, as errors use.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut text: String = body.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Response::new(status)
            .with_content_type("text/plain; charset=utf-8")
            .with_body(Body::Bytes(text.into_bytes()))
    }

    /// Sets the body.
    pub fn with_body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }

    /// Sets `Content-Type`.
    pub fn with_content_type(mut self, content_type: &'static str) -> Response {
        self.content_type = Some(content_type);
        self
    }

    /// Adds a header field.
    ///
    /// # Panics
    /// If the name is not a token, the value holds CR, LF or NUL, or the name
    /// is one the connection owns (Content-Length, Transfer-Encoding,
    /// Connection, Date, Server). Inside a handler the panic is caught and
    /// answered with 500, so a header built from client input can never split
    /// a response. Use `try_header` to handle the error yourself.
    pub fn with_header(
        self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        match self.try_header(name, value) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Adds a header field, or says why it cannot.
    pub fn try_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> Result<Response, String> {
        let (name, value) = (name.into(), value.into());
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("invalid header name {name:?}"));
        }
        if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(format!("header {name:?} is set by the connection"));
        }
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(format!("invalid value for header {name:?}"));
        }
        self.headers.push((name, value));
        Ok(self)
    }

    /// Asks the connection to close after this response.
    pub fn with_close(mut self) -> Response {
        self.close = true;
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Whether the handler asked to close the connection.
    pub fn wants_close(&self) -> bool {
        self.close
    }

    /// The value of a header the handler set (name compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// How the response tells the peer about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 keep-alive: no Connection header needed.
    Default,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive`.
    KeepAlive,
    /// `Connection: close`.
    Close,
}

/// Appends the response to `out`. `head_only` drops the body but keeps its
/// Content-Length (a HEAD request, RFC 9110 §9.3.2). A `File` body is not
/// written: the caller queues it after the head.
pub fn write_response(
    out: &mut Vec<u8>,
    res: &Response,
    date: &[u8],
    persist: Persist,
    head_only: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(res.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(res.status).as_bytes());
    out.extend_from_slice(b"\r\nServer: coreloop\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = res.content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &res.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless(res.status) {
        out.extend_from_slice(b"Content-Length: ");
        let mut len = itoa::Buffer::new();
        out.extend_from_slice(len.format(res.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match persist {
        Persist::Default => {}
        Persist::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if sends_body(res, head_only) {
        out.extend_from_slice(res.body.as_bytes());
    }
}

/// Whether the response's body goes on the wire after its head.
pub fn sends_body(res: &Response, head_only: bool) -> bool {
    !head_only && !bodiless(res.status)
}

/// Statuses that never carry a body, nor a Content-Length (RFC 9110 §6.4.1).
fn bodiless(status: u16) -> bool {
    matches!(status, 100..=199 | 204 | 304)
}

/// The reason phrase for a status code (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_one_framing_header() {
        let mut out = Vec::new();
        let res = Response::ok("text/plain", b"hi").with_header("X-A", "1");
        write_response(&mut out, &res, b"DATE", Persist::Close, false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nServer: coreloop\r\nDate: DATE\r\nContent-Type: text/plain\r\n\
              X-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
    }

    #[test]
    fn head_keeps_length_and_drops_body() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &Response::ok("a/b", b"abc"),
            b"D",
            Persist::Default,
            true,
        );
        assert!(out.ends_with(b"Content-Length: 3\r\n\r\n"));
    }

    #[test]
    fn refuses_splitting_and_framing_headers() {
        assert!(Response::new(200).try_header("X", "a\r\nb").is_err());
        assert!(Response::new(200)
            .try_header("Content-Length", "1")
            .is_err());
        assert!(Response::new(200)
            .try_header("Transfer-Encoding", "chunked")
            .is_err());
        assert!(Response::new(200).try_header("Bad Name", "v").is_err());
    }
}
