//! Handlers: what answers a request. A handler is built once per core by a
//! factory and called on that core only, so it needs no locks and no `Send`.

mod builtin;
pub mod files;
mod router;
mod site;

pub use builtin::{build_id, healthz, json, plaintext};
pub use files::{Files, FilesConfig};
pub use router::Router;
pub use site::{metrics, readiness, site, SiteConfig};

use crate::http::{Request, Response};

/// Answers one request. Runs on the core that read the request; it must not
/// block. A panic is caught by the connection, answered with 500, and only
/// that connection is closed.
pub trait Handler {
    /// Produces the response for `req`.
    fn call(&mut self, req: &Request<'_>) -> Response;
}

impl<F> Handler for F
where
    F: FnMut(&Request<'_>) -> Response,
{
    fn call(&mut self, req: &Request<'_>) -> Response {
        self(req)
    }
}
