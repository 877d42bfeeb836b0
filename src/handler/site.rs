//! What the binary serves: the built-in routes, `/metrics`, and static
//! files for every other GET or HEAD. Tests build the same router, so they
//! exercise exactly what operators run.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::{Files, FilesConfig, Router};
use crate::config::Backend;
use crate::http::{Body, Request, Response};
use crate::metrics::{prometheus, CoreStats};
use crate::shutdown::Shutdown;

/// The binary's routes and what serves the rest.
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// Static files for paths no route claims; `None` answers 404.
    pub files: Option<FilesConfig>,
    /// Where the Prometheus text is served; `None` turns it off.
    pub metrics_path: Option<String>,
    /// Path prefixes forwarded to upstream groups (`--proxy`): the group
    /// is an index into `Config::upstreams`. The longest prefix wins.
    pub proxies: Vec<(String, usize)>,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            files: Some(FilesConfig::default()),
            metrics_path: Some("/metrics".into()),
            proxies: Vec::new(),
        }
    }
}

impl SiteConfig {
    /// Checks what can be checked before the cores start: the metrics
    /// path's shape and that the root opens (safely) as a directory.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(path) = &self.metrics_path {
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!(
                    "--metrics-path {path:?} must start with / and hold no spaces"
                ));
            }
        }
        if let Some(files) = &self.files {
            Files::new(files.clone()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The router one core runs. `stats` are every core's counters (for
/// `/metrics`), `backend` what the cores run.
pub fn site(
    config: &SiteConfig,
    stats: Vec<Arc<CachePadded<CoreStats>>>,
    backend: Backend,
) -> Router {
    let mut router = Router::builtins();
    if let Some(path) = &config.metrics_path {
        router = router.get(path, metrics(stats, backend));
    }
    for (prefix, group) in &config.proxies {
        let group = *group;
        router = router.prefix(None, prefix, move |_req: &Request<'_>| {
            Response::forward(group)
        });
    }
    if let Some(files) = &config.files {
        match Files::new(files.clone()) {
            Ok(mut files) => router = router.fallback(move |req: &Request<'_>| files.serve(req)),
            Err(e) => log::error!("static files off on this core: {e}"),
        }
    }
    router
}

/// `/readyz` for load balancers: 200 while the server wants traffic, 503
/// from the first shutdown signal on (through `--drain-delay` and the
/// drain). `/healthz` stays 200 while the process serves.
pub fn readiness(shutdown: Shutdown) -> impl FnMut(&Request<'_>) -> Response {
    move |_req| {
        if shutdown.is_ready() {
            Response::text(200, "ready")
        } else {
            Response::text(503, "draining")
        }
    }
}

/// A handler answering every core's counters in Prometheus text.
pub fn metrics(
    stats: Vec<Arc<CachePadded<CoreStats>>>,
    backend: Backend,
) -> impl FnMut(&Request<'_>) -> Response {
    let backend = backend.to_string();
    let mut size_hint = 4096;
    move |_req| {
        let mut text = String::with_capacity(size_hint);
        prometheus(&stats, &backend, &mut text);
        size_hint = text.len().next_power_of_two();
        Response::new(200)
            .with_content_type("text/plain; version=0.0.4; charset=utf-8")
            .with_body(Body::Bytes(text.into_bytes()))
    }
}
