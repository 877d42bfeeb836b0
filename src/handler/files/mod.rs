//! Static files: GET and HEAD for paths no route claims, served from one
//! root directory.
//!
//! - `path.rs`: request path -> relative path; every escape refused;
//! - `cache.rs`: opening beneath the root, and the per-core open-file cache;
//! - `cond.rs`: ETag / Last-Modified validators, 304, Range and If-Range;
//! - `listing.rs`: the optional HTML directory index.
//!
//! The body is a `Body::File`: the connection never reads the file; the
//! backend moves it from the page cache to the socket.

mod cache;
mod cond;
mod listing;
mod path;

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use percent_encoding::{percent_encode, AsciiSet, CONTROLS};

use super::router::KNOWN_METHODS;
use crate::http::{Body, FileBody, Request, Response};
use cache::{OpenCache, Opened};
use cond::{Part, Verdict};
use path::Refusal;

pub use cache::VALID as FILE_CACHE_VALID;

/// Bytes escaped in a redirect's path: controls, space, and what would
/// change how the Location parses (`?`, `#`, `%`, `\`, quotes, brackets).
const LOCATION: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// How the static-file handler behaves.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// The directory served; nothing outside it is ever opened.
    pub root: PathBuf,
    /// Serve dotfiles and dot-directories (`.git`, `.env`); 404 otherwise.
    pub serve_hidden: bool,
    /// Answer a directory without index.html with an HTML listing.
    pub dir_listing: bool,
    /// Open files kept per core; 0 opens on every request.
    pub cache_entries: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            root: PathBuf::from("."),
            serve_hidden: false,
            dir_listing: false,
            cache_entries: 1024,
        }
    }
}

/// The static-file handler of one core.
pub struct Files {
    root: OwnedFd,
    config: FilesConfig,
    cache: OpenCache,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl Files {
    /// Opens the root. Fails if it is not a directory or the kernel lacks
    /// `openat2` (Linux 5.6+), which safe resolution depends on.
    pub fn new(config: FilesConfig) -> io::Result<Files> {
        let root = cache::open_root(&config.root).map_err(|e| {
            io::Error::new(e.kind(), format!("--root {}: {e}", config.root.display()))
        })?;
        Ok(Files {
            root,
            cache: OpenCache::new(config.cache_entries),
            config,
        })
    }

    /// Answers one request.
    pub fn serve(&mut self, req: &Request<'_>) -> Response {
        let method = req.method();
        if !KNOWN_METHODS.contains(&method) {
            return Response::text(501, "method not implemented");
        }
        if method != "GET" && method != "HEAD" {
            return Response::text(405, "method not allowed").with_header("Allow", "GET, HEAD");
        }
        let resolved = match path::resolve(req.path(), self.config.serve_hidden) {
            Ok(r) => r,
            Err(Refusal::BadRequest(why)) => return Response::text(400, why),
            Err(Refusal::Hidden) => return not_found(),
        };
        let now = Instant::now();
        let opened = match self.cache.get(&self.root, &resolved.rel, now) {
            Ok(o) => o,
            Err(e) => return open_error(&e),
        };
        if !opened.is_dir {
            return if resolved.dir {
                not_found()
            } else {
                file_response(req, &opened)
            };
        }
        if !resolved.dir {
            return redirect_to_dir(req, &resolved.rel);
        }
        let mut index = resolved.rel.clone();
        if !index.is_empty() {
            index.push(b'/');
        }
        index.extend_from_slice(b"index.html");
        match self.cache.get(&self.root, &index, now) {
            Ok(file) if !file.is_dir => file_response(req, &file),
            Ok(_) => not_found(),
            Err(e) if e.kind() != io::ErrorKind::NotFound => open_error(&e),
            Err(_) if self.config.dir_listing => self.listing(req, &opened),
            Err(_) => not_found(),
        }
    }

    fn listing(&self, req: &Request<'_>, dir: &Opened) -> Response {
        let title = percent_encoding::percent_decode_str(req.path()).decode_utf8_lossy();
        match listing::render(&dir.file, &title, self.config.serve_hidden) {
            Ok(html) => Response::new(200)
                .with_content_type("text/html; charset=utf-8")
                .with_body(Body::Bytes(html.into_bytes())),
            Err(e) => open_error(&e),
        }
    }
}

/// 200, 206, 304 or 416 for a regular file.
fn file_response(req: &Request<'_>, file: &Opened) -> Response {
    let validators = |res: Response| {
        res.with_header("ETag", file.etag.clone())
            .with_header("Last-Modified", file.last_modified.clone())
    };
    match cond::preconditions(req, file) {
        Verdict::Serve => {}
        Verdict::NotModified => return validators(Response::new(304)),
        Verdict::Failed => return Response::text(412, "precondition failed"),
    }
    let part = if req.method() == "GET" {
        cond::part(req, file)
    } else {
        Part::Whole
    };
    let (status, start, len) = match part {
        Part::Whole => (200, 0, file.size),
        Part::Range { start, len } => (206, start, len),
        Part::Unsatisfiable => {
            return Response::text(416, "range not satisfiable")
                .with_header("Content-Range", format!("bytes */{}", file.size));
        }
    };
    let mut res = validators(Response::new(status))
        .with_content_type(file.content_type)
        .with_header("Accept-Ranges", "bytes");
    if status == 206 {
        let range = format!("bytes {start}-{}/{}", start + len - 1, file.size);
        res = res.with_header("Content-Range", range);
    }
    let body = FileBody::new(Arc::clone(&file.file), start, len);
    res.with_body(Body::File(body))
}

/// A directory named without its trailing slash: relative links in its
/// index only work from `/dir/`, so send the client there. The target is
/// rebuilt from the resolved path, never echoed: `//evil.example` or
/// `/\evil.example` as a Location would send a browser to another host.
fn redirect_to_dir(req: &Request<'_>, rel: &[u8]) -> Response {
    let mut location = format!("/{}/", percent_encode(rel, LOCATION));
    if let Some(q) = req.query() {
        location.push('?');
        location.push_str(q);
    }
    Response::text(301, "moved permanently")
        .try_header("Location", location)
        .unwrap_or_else(|_| not_found())
}

fn not_found() -> Response {
    Response::text(404, "not found")
}

fn open_error(e: &io::Error) -> Response {
    match e.raw_os_error() {
        Some(
            nix::libc::ENOENT
            | nix::libc::ENOTDIR
            | nix::libc::EXDEV
            | nix::libc::ELOOP
            | nix::libc::ENAMETOOLONG,
        ) => not_found(),
        Some(nix::libc::EACCES | nix::libc::EPERM) => Response::text(403, "forbidden"),
        Some(nix::libc::EMFILE | nix::libc::ENFILE) => {
            Response::text(503, "out of file descriptors").with_close()
        }
        _ if e.kind() == io::ErrorKind::NotFound => not_found(),
        _ => {
            log::warn!("static file: {e}");
            Response::text(500, "internal server error")
        }
    }
}
