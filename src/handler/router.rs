//! Routes by method and path: exact paths first, then the longest prefix.
//!
//! When no route answers: 405 with `Allow` if the path exists under other
//! methods, 404 for a method the server knows, 501 for one it does not
//! (RFC 9110 §15.6.2). HEAD is answered by a GET route when no HEAD route
//! exists; the connection drops the body.

use super::{builtin, Handler};
use crate::http::{Request, Response};

type BoxedHandler = Box<dyn FnMut(&Request<'_>) -> Response>;

struct Route {
    /// None matches every method.
    method: Option<Box<str>>,
    path: Box<str>,
    prefix: bool,
    handler: BoxedHandler,
}

/// A table of routes; itself a `Handler`.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
    fallback: Option<BoxedHandler>,
}

/// Methods RFC 9110 defines, plus PATCH (RFC 5789): unknown to the router
/// means 404, not 501.
pub(crate) const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Router {
    /// An empty router: every request gets 404 or 501.
    pub fn new() -> Router {
        Router::default()
    }

    /// The built-in endpoints: `/plaintext`, `/json`, `/healthz`.
    pub fn builtins() -> Router {
        Router::new()
            .get("/plaintext", builtin::plaintext)
            .get("/json", builtin::json)
            .get("/healthz", builtin::healthz)
    }

    /// Answers `method` on exactly `path`.
    pub fn route<H>(mut self, method: &str, path: &str, handler: H) -> Router
    where
        H: FnMut(&Request<'_>) -> Response + 'static,
    {
        self.routes.push(Route {
            method: Some(method.into()),
            path: path.into(),
            prefix: false,
            handler: Box::new(handler),
        });
        self
    }

    /// Answers GET (and HEAD) on exactly `path`.
    pub fn get<H>(self, path: &str, handler: H) -> Router
    where
        H: FnMut(&Request<'_>) -> Response + 'static,
    {
        self.route("GET", path, handler)
    }

    /// Answers POST on exactly `path`.
    pub fn post<H>(self, path: &str, handler: H) -> Router
    where
        H: FnMut(&Request<'_>) -> Response + 'static,
    {
        self.route("POST", path, handler)
    }

    /// Answers `method` (None: any method) on every path under `prefix`.
    pub fn prefix<H>(mut self, method: Option<&str>, prefix: &str, handler: H) -> Router
    where
        H: FnMut(&Request<'_>) -> Response + 'static,
    {
        self.routes.push(Route {
            method: method.map(Into::into),
            path: prefix.into(),
            prefix: true,
            handler: Box::new(handler),
        });
        self
    }

    /// Answers whatever no route claims (the static-file handler goes here).
    pub fn fallback<H>(mut self, handler: H) -> Router
    where
        H: FnMut(&Request<'_>) -> Response + 'static,
    {
        self.fallback = Some(Box::new(handler));
        self
    }

    fn find(&self, method: &str, path: &str) -> Option<usize> {
        let matches_method = |r: &Route| match r.method.as_deref() {
            None => true,
            Some(m) => m == method || (method == "HEAD" && m == "GET" && !self.has_head(r)),
        };
        let exact = self
            .routes
            .iter()
            .position(|r| !r.prefix && &*r.path == path && matches_method(r));
        exact.or_else(|| {
            self.routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.prefix && path.starts_with(&*r.path) && matches_method(r))
                .max_by_key(|(i, r)| (r.path.len(), usize::MAX - i))
                .map(|(i, _)| i)
        })
    }

    fn has_head(&self, get: &Route) -> bool {
        self.routes.iter().any(|r| {
            r.method.as_deref() == Some("HEAD") && r.path == get.path && r.prefix == get.prefix
        })
    }

    /// The methods routes accept for `path`, for a 405's `Allow`.
    fn allowed(&self, path: &str) -> Vec<&str> {
        let mut allow: Vec<&str> = Vec::new();
        for r in &self.routes {
            let hit = if r.prefix {
                path.starts_with(&*r.path)
            } else {
                &*r.path == path
            };
            if let (true, Some(m)) = (hit, r.method.as_deref()) {
                allow.push(m);
                if m == "GET" {
                    allow.push("HEAD");
                }
            }
        }
        allow.sort_unstable();
        allow.dedup();
        allow
    }
}

impl Handler for Router {
    fn call(&mut self, req: &Request<'_>) -> Response {
        if let Some(i) = self.find(req.method(), req.path()) {
            return (self.routes[i].handler)(req);
        }
        let allow = self.allowed(req.path());
        if !allow.is_empty() {
            return Response::text(405, "method not allowed")
                .with_header("Allow", allow.join(", "));
        }
        if let Some(fallback) = &mut self.fallback {
            return fallback(req);
        }
        if KNOWN_METHODS.contains(&req.method()) {
            Response::text(404, "not found")
        } else {
            Response::text(501, "method not implemented")
        }
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<_> = self
            .routes
            .iter()
            .map(|r| (r.method.as_deref().unwrap_or("*"), &*r.path, r.prefix))
            .collect();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}
