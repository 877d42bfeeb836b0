//! Static files over real sockets, once per backend: the path rules
//! (traversal in every spelling, symlinks out of the root, dotfiles),
//! directories, validators, ranges, large bodies and slow readers.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::net::{config, Client, TestServer};
use common::Parsed;
use coreloop::handler::{site, FilesConfig, SiteConfig};
use coreloop::Backend;
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

per_backend!(
    serves_a_file_with_validators,
    head_sends_headers_only,
    traversal_never_leaves_the_root,
    symlinks_out_of_the_root_are_not_followed,
    dotfiles_hidden_unless_asked,
    directories_redirect_index_or_list,
    conditional_requests_answer_304,
    preconditions_answer_412,
    ranges_answer_206_or_416,
    pipelined_files_and_routes_keep_order,
    large_file_arrives_whole,
    edited_file_is_seen_after_revalidation,
    methods_other_than_get_and_head,
    half_close_after_pipelining_behind_a_large_file,
);

/// A fresh directory tree under the system temp dir, removed on drop:
/// `root/` is served, `outside/` holds a secret next to it.
struct Tree {
    base: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let base = std::env::temp_dir().join(format!(
            "coreloop-files-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("root/sub")).unwrap();
        fs::create_dir_all(base.join("root/empty")).unwrap();
        fs::create_dir_all(base.join("root/.git")).unwrap();
        fs::create_dir_all(base.join("outside")).unwrap();
        fs::write(base.join("outside/secret.txt"), SECRET).unwrap();
        fs::write(base.join("root/hello.txt"), b"hello, file\n").unwrap();
        fs::write(base.join("root/page.html"), b"<p>page</p>").unwrap();
        fs::write(base.join("root/sub/index.html"), b"<h1>sub</h1>").unwrap();
        fs::write(base.join("root/.env"), b"TOKEN=1").unwrap();
        fs::write(base.join("root/.git/config"), b"[core]").unwrap();
        fs::write(base.join("root/%2e%2e"), b"literal name").unwrap();
        fs::write(base.join("root/empty/<b>&.txt"), b"x").unwrap();
        let digits: Vec<u8> = (0..10_000u32).map(|i| b'0' + (i % 10) as u8).collect();
        fs::write(base.join("root/digits.txt"), digits).unwrap();
        Tree { base }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

const SECRET: &[u8] = b"TOP-SECRET-outside-the-root";

fn files(root: &Path) -> FilesConfig {
    FilesConfig {
        root: root.to_path_buf(),
        ..FilesConfig::default()
    }
}

/// A server running the binary's site over `files`.
fn serve(backend: Backend, files: FilesConfig) -> TestServer {
    let site_config = SiteConfig {
        files: Some(files),
        ..SiteConfig::default()
    };
    TestServer::start_with(config(backend), move |_core, info| {
        site(&site_config, info.stats.clone(), info.backend)
    })
}

fn request(c: &mut Client, head: &str) -> Parsed {
    c.send(head.as_bytes());
    c.read_response().expect("response")
}

fn get_with(c: &mut Client, path: &str, headers: &str) -> Parsed {
    request(
        c,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"),
    )
}

fn serves_a_file_with_validators(backend: Backend) {
    let tree = Tree::new("basic");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let r = c.get("/hello.txt");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, file\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").expect("etag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let modified = fs::metadata(tree.root().join("hello.txt"))
        .and_then(|m| m.modified())
        .unwrap();
    assert_eq!(
        r.header("last-modified"),
        Some(httpdate::fmt_http_date(modified).as_str())
    );
    let page = c.get("/page.html");
    assert_eq!(page.header("content-type"), Some("text/html"));
    assert_ne!(page.header("etag"), Some(etag.as_str()));
    // The query string is not part of the file name.
    assert_eq!(c.get("/hello.txt?v=2").body, b"hello, file\n");
    assert_eq!(c.get("/missing.txt").status, 404);
    // Routes still win over files.
    assert_eq!(c.get("/plaintext").body, b"Hello, World!");
}

fn head_sends_headers_only(backend: Backend) {
    let tree = Tree::new("head");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    c.send(b"HEAD /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_head().expect("head");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10000"));
    // Had a body followed the head, this would parse digits as a head.
    let r = c.get("/hello.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello, file\n"[..]));
}

fn traversal_never_leaves_the_root(backend: Backend) {
    let tree = Tree::new("traversal");
    let server = serve(backend, files(&tree.root()));
    let attempts = [
        "/../outside/secret.txt",
        "/sub/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/.%2e/outside/secret.txt",
        "/..%5coutside%5csecret.txt",
        "/sub%5c..%5c..%5coutside%5csecret.txt",
        "/hello.txt%00.html",
        "/%00",
        "/%zz",
    ];
    for path in attempts {
        let mut c = server.connect();
        let r = c.get(path);
        assert_eq!(r.status, 400, "{path}");
        assert!(!contains(&r.body, SECRET), "{path} leaked the secret");
    }
    // Decoded exactly once: %252e%252e is the file literally named %2e%2e.
    let mut c = server.connect();
    let r = c.get("/%252e%252e");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"literal name"[..]));
    let r = c.get("/%252e%252e/outside/secret.txt");
    assert_eq!(r.status, 404);
}

fn symlinks_out_of_the_root_are_not_followed(backend: Backend) {
    let tree = Tree::new("symlink");
    symlink(
        tree.path("outside/secret.txt"),
        tree.root().join("abs-link"),
    )
    .unwrap();
    symlink("../outside/secret.txt", tree.root().join("rel-link")).unwrap();
    symlink("../outside", tree.root().join("dir-link")).unwrap();
    symlink("hello.txt", tree.root().join("inside-link")).unwrap();
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    for path in ["/abs-link", "/rel-link", "/dir-link/secret.txt"] {
        let r = c.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(!contains(&r.body, SECRET), "{path} leaked the secret");
    }
    assert_eq!(c.get("/inside-link").body, b"hello, file\n");
}

fn dotfiles_hidden_unless_asked(backend: Backend) {
    let tree = Tree::new("hidden");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    for path in ["/.env", "/.git/config", "/%2eenv", "/sub/../.env"] {
        let r = c.get(path);
        assert!(r.status == 404 || r.status == 400, "{path}: {}", r.status);
        assert!(!contains(&r.body, b"TOKEN"), "{path}");
    }
    drop(server);
    let shown = FilesConfig {
        serve_hidden: true,
        ..files(&tree.root())
    };
    let server = serve(backend, shown);
    let mut c = server.connect();
    assert_eq!(c.get("/.env").body, b"TOKEN=1");
    assert_eq!(c.get("/.git/config").body, b"[core]");
}

fn directories_redirect_index_or_list(backend: Backend) {
    let tree = Tree::new("dirs");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let r = c.get("/sub?x=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/sub/?x=1"));
    let r = c.get("/sub/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"<h1>sub</h1>"[..]));
    // Never an echo a browser would read as another host.
    for sneaky in ["//sub", "/.//sub", "///sub"] {
        let r = c.get(sneaky);
        assert_eq!(r.status, 301, "{sneaky}");
        assert_eq!(r.header("location"), Some("/sub/"), "{sneaky}");
    }
    assert_eq!(c.get("/empty/").status, 404);
    assert_eq!(c.get("/hello.txt/").status, 404);
    drop(server);
    let listing = FilesConfig {
        dir_listing: true,
        ..files(&tree.root())
    };
    let server = serve(backend, listing);
    let mut c = server.connect();
    let r = c.get("/empty/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("&lt;b&gt;&amp;.txt"), "{html}");
    assert!(html.contains("href=\"%3Cb%3E%26.txt\""), "{html}");
    assert!(!html.contains("<b>&"), "unescaped name: {html}");
    let root = String::from_utf8(c.get("/").body).unwrap();
    assert!(
        root.contains("hello.txt") && root.contains("sub/"),
        "{root}"
    );
    assert!(!root.contains(".env") && !root.contains(".git"), "{root}");
}

/// The ETag and Last-Modified a plain GET of `path` answers with.
fn validators(c: &mut Client, path: &str) -> (String, String) {
    let r = c.get(path);
    let field = |name| r.header(name).unwrap().to_string();
    (field("etag"), field("last-modified"))
}

fn conditional_requests_answer_304(backend: Backend) {
    let tree = Tree::new("cond");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let (etag, modified) = validators(&mut c, "/hello.txt");
    let not_modified = [
        format!("If-None-Match: {etag}\r\n"),
        format!("If-None-Match: \"nope\", W/{etag}\r\n"),
        // A list may be split over several field lines.
        format!("If-None-Match: \"nope\"\r\nIf-None-Match: {etag}\r\n"),
        "If-None-Match: *\r\n".to_string(),
        format!("If-Modified-Since: {modified}\r\n"),
        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n".to_string(),
    ];
    for headers in &not_modified {
        let r = get_with(&mut c, "/hello.txt", headers);
        assert_eq!(r.status, 304, "{headers}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("content-length"), None);
    }
    let modified_since = [
        "If-None-Match: \"other\"\r\n".to_string(),
        "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n".to_string(),
        // If-None-Match takes precedence over a matching date.
        format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {modified}\r\n"),
        "If-Modified-Since: not a date\r\n".to_string(),
    ];
    for headers in &modified_since {
        let r = get_with(&mut c, "/hello.txt", headers);
        assert_eq!(r.status, 200, "{headers}");
        assert_eq!(r.body, b"hello, file\n");
    }
}

/// If-Match and If-Unmodified-Since (RFC 9110 §13.2.2): a failed one
/// answers 412 without the file; a passing one serves it, and the 304
/// rules still apply after it.
fn preconditions_answer_412(backend: Backend) {
    let tree = Tree::new("precond");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let (etag, modified) = validators(&mut c, "/hello.txt");
    let failed = [
        "If-Match: \"nope\"\r\n".to_string(),
        // If-Match compares strongly: a weak tag never matches.
        format!("If-Match: W/{etag}\r\n"),
        "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n".to_string(),
        // If-Match decides alone: a passing date does not save it.
        "If-Match: \"nope\"\r\nIf-Unmodified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n".to_string(),
    ];
    for headers in &failed {
        let r = get_with(&mut c, "/hello.txt", headers);
        assert_eq!(r.status, 412, "{headers}");
        assert!(!contains(&r.body, b"hello, file"), "{headers}");
    }
    let served = [
        format!("If-Match: {etag}\r\n"),
        format!("If-Match: \"nope\"\r\nIf-Match: \"other\", {etag}\r\n"),
        "If-Match: *\r\n".to_string(),
        format!("If-Unmodified-Since: {modified}\r\n"),
        "If-Unmodified-Since: not a date\r\n".to_string(),
        // Sent twice, a date field is a list of dates: ignored (§13.1.4).
        "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\nIf-Unmodified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n".to_string(),
        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\nIf-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n".to_string(),
        // If-Match passing makes the (failing) date irrelevant.
        format!("If-Match: {etag}\r\nIf-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"),
    ];
    for headers in &served {
        let r = get_with(&mut c, "/hello.txt", headers);
        assert_eq!(r.status, 200, "{headers}");
        assert_eq!(r.body, b"hello, file\n");
    }
    let r = get_with(
        &mut c,
        "/hello.txt",
        &format!("If-Match: {etag}\r\nIf-None-Match: {etag}\r\n"),
    );
    assert_eq!(r.status, 304);
    // A range behind a passing precondition is still a range.
    let r = get_with(
        &mut c,
        "/hello.txt",
        &format!("If-Match: {etag}\r\nRange: bytes=0-4\r\n"),
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b"hello"[..]));
}

fn ranges_answer_206_or_416(backend: Backend) {
    let tree = Tree::new("range");
    let server = serve(backend, files(&tree.root()));
    let digits = fs::read(tree.root().join("digits.txt")).unwrap();
    let mut c = server.connect();
    let etag = c.get("/digits.txt").header("etag").unwrap().to_string();
    let cases: [(&str, usize, usize); 4] = [
        ("bytes=10-19", 10, 19),
        ("bytes=9990-", 9990, 9999),
        ("bytes=-5", 9995, 9999),
        ("bytes=9000-20000", 9000, 9999),
    ];
    for (range, first, last) in cases {
        let r = get_with(&mut c, "/digits.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {first}-{last}/10000").as_str())
        );
        assert_eq!(r.body, &digits[first..=last], "{range}");
    }
    let r = get_with(&mut c, "/digits.txt", "Range: bytes=10000-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10000"));
    // Several ranges, or one we cannot parse: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=5-2", "lines=1-2"] {
        let r = get_with(&mut c, "/digits.txt", &format!("Range: {range}\r\n"));
        assert_eq!((r.status, r.body.len()), (200, 10_000), "{range}");
    }
    let r = get_with(
        &mut c,
        "/digits.txt",
        &format!("Range: bytes=0-3\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b"0123"[..]));
    let r = get_with(
        &mut c,
        "/digits.txt",
        "Range: bytes=0-3\r\nIf-Range: \"stale\"\r\n",
    );
    assert_eq!((r.status, r.body.len()), (200, 10_000));
    // HEAD ignores Range.
    c.send(b"HEAD /digits.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\n\r\n");
    let r = c.read_head().expect("head");
    assert_eq!((r.status, r.header("content-length")), (200, Some("10000")));
}

fn pipelined_files_and_routes_keep_order(backend: Backend) {
    let tree = Tree::new("pipeline");
    let server = serve(backend, files(&tree.root()));
    let digits = fs::read(tree.root().join("digits.txt")).unwrap();
    let mut c = server.connect();
    let mut batch = Vec::new();
    for _ in 0..20 {
        batch.extend_from_slice(b"GET /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        batch.extend_from_slice(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
        batch.extend_from_slice(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        batch.extend_from_slice(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    c.send(&batch);
    for i in 0..20 {
        let r = c.read_response().expect("file");
        assert_eq!(r.body, digits, "round {i}");
        let r = c.read_response().expect("plaintext");
        assert_eq!(r.body, b"Hello, World!", "round {i}");
        let r = c.read_head().expect("head");
        assert_eq!(r.header("content-length"), Some("12"), "round {i}");
        let r = c.read_response().expect("hello");
        assert_eq!(r.body, b"hello, file\n", "round {i}");
    }
}

fn large_file_arrives_whole(backend: Backend) {
    let tree = Tree::new("large");
    let mut data = Vec::with_capacity(9 << 20);
    let mut x = 0x1234_5678u32;
    while data.len() < (9 << 20) + 123 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(tree.root().join("large.bin"), &data).unwrap();
    // Out of the page cache: the first GET takes the path that reads from
    // disk (io_uring: ring reads), the second the cached one (sendfile).
    let file = fs::File::open(tree.root().join("large.bin")).unwrap();
    file.sync_all().unwrap();
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    drop(file);
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    for _ in 0..2 {
        let r = c.get("/large.bin");
        assert_eq!(r.status, 200);
        assert!(r.body == data, "body differs ({} bytes)", r.body.len());
    }
    let sent = server.total(|s| s.bytes_out.get());
    assert!(sent >= 2 * data.len() as u64, "bytes_out {sent}");
}

fn edited_file_is_seen_after_revalidation(backend: Backend) {
    let tree = Tree::new("edit");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let before = c.get("/hello.txt");
    // Replace (new inode), as editors and deploys do.
    let tmp = tree.root().join("hello.tmp");
    fs::write(&tmp, b"changed contents\n").unwrap();
    fs::rename(&tmp, tree.root().join("hello.txt")).unwrap();
    std::thread::sleep(coreloop::handler::files::FILE_CACHE_VALID + Duration::from_millis(100));
    let after = c.get("/hello.txt");
    assert_eq!(after.body, b"changed contents\n");
    assert_ne!(after.header("etag"), before.header("etag"));
    fs::remove_file(tree.root().join("hello.txt")).unwrap();
    std::thread::sleep(coreloop::handler::files::FILE_CACHE_VALID + Duration::from_millis(100));
    assert_eq!(c.get("/hello.txt").status, 404);
}

fn methods_other_than_get_and_head(backend: Backend) {
    let tree = Tree::new("methods");
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    let r = request(
        &mut c,
        "POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = request(&mut c, "BREW /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 501);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Requests pipelined behind a body larger than the output limit, then a
/// half-close: every request is still answered before the server closes.
fn half_close_after_pipelining_behind_a_large_file(backend: Backend) {
    let tree = Tree::new("halfclose");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(tree.root().join("big.bin"), &big).unwrap();
    let server = serve(backend, files(&tree.root()));
    let mut c = server.connect();
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let r = c.read_response().expect("the large file");
    assert!(r.body == big, "large body differs");
    let r = c.read_response().expect("the request behind it");
    assert_eq!(r.body, b"hello, file\n");
    assert!(c.closed_within(Duration::from_secs(5)));
}
