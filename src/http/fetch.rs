//! A handler's own call to an upstream: the reply comes back to a closure
//! that builds the client's response, on the same core, later.
//!
//! ```no_run
//! use coreloop::http::fetch::Fetch;
//! use coreloop::{Body, Response};
//!
//! // In a handler: ask group 0 for /users/7, answer with its length.
//! let res: Response = Fetch::get(0, "/users/7").then(|reply| match reply {
//!     Ok(r) => Response::text(200, format!("{} bytes from upstream", r.body.len())),
//!     Err(e) => Response::text(e.status, e.message),
//! });
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use super::response::Response;

pub(crate) type Then = Box<dyn FnOnce(Result<Reply, FetchError>) -> Response>;

/// A request a handler sends to an upstream group.
pub struct Fetch {
    pub(crate) group: usize,
    pub(crate) method: Cow<'static, str>,
    pub(crate) target: String,
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) then: Option<Then>,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetch")
            .field("group", &self.group)
            .field("method", &self.method)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// The upstream's reply, whole (bodies up to the server's `max_body`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// End-to-end fields, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The first field with this name (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why no reply came: the status the proxy would answer (502, 503, 504)
/// and a one-line reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    /// 502, 503 or 504.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl Fetch {
    /// A request with this method and target (origin form: `/path?query`).
    pub fn new(group: usize, method: &'static str, target: impl Into<String>) -> Fetch {
        Fetch {
            group,
            method: Cow::Borrowed(method),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            then: None,
        }
    }

    /// A GET of `target`.
    pub fn get(group: usize, target: impl Into<String>) -> Fetch {
        Fetch::new(group, "GET", target)
    }

    /// Adds a header field.
    ///
    /// # Panics
    /// If the name is not a token or the value holds CR, LF or NUL (inside
    /// a handler the panic is answered 500, as for `Response::with_header`).
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Fetch {
        let (name, value) = (name.into(), value.into());
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        assert!(token, "invalid header name {name:?}");
        assert!(
            !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "invalid value for header {name:?}"
        );
        self.headers.push((name, value));
        self
    }

    /// Sets the body (sent with Content-Length).
    pub fn body(mut self, body: Vec<u8>) -> Fetch {
        self.body = body;
        self
    }

    /// The response that completes later: once the reply (or the failure)
    /// is in, `then` runs on this core and its response goes to the client.
    /// A `then` that panics is answered 500; one that returns a response
    /// that completes later again is answered 500 too (one call per
    /// request).
    pub fn then(
        mut self,
        then: impl FnOnce(Result<Reply, FetchError>) -> Response + 'static,
    ) -> Response {
        self.then = Some(Box::new(then));
        Response::deferred(Pending(Rc::new(RefCell::new(Some(self)))))
    }
}

/// A `Fetch` inside a `Response`, which stays `Clone` and `Eq`: clones share
/// it (the first to be dispatched takes it), equality is identity.
#[derive(Clone)]
pub struct Pending(Rc<RefCell<Option<Fetch>>>);

impl Pending {
    pub(crate) fn take(&self) -> Option<Fetch> {
        self.0.borrow_mut().take()
    }
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Pending {}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}
