//! Request path -> a path relative to the root, refusing every spelling of
//! an escape before the file system is asked.
//!
//! The path is percent-decoded exactly once (so `%252e%252e` names a file
//! called `%2e%2e`, never `..`). Symlinks are not this file's concern: the
//! open that follows resolves beneath the root (`cache.rs`).

use percent_encoding::percent_decode;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or an escape attempt: 400 with this message.
    BadRequest(&'static str),
    /// A dotfile or dot-directory while hidden files are not served: 404.
    Hidden,
}

/// A request path that is safe to open under the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Segments joined by `/`, no leading or trailing slash; empty for
    /// the root itself.
    pub rel: Vec<u8>,
    /// The request path ended with `/` (it names a directory).
    pub dir: bool,
}

/// Decodes and checks `path` (as sent, without the query).
pub fn resolve(path: &str, serve_hidden: bool) -> Result<Resolved, Refusal> {
    let raw = path.as_bytes();
    if !strict_escapes(raw) {
        return Err(Refusal::BadRequest("malformed percent-encoding in path"));
    }
    let decoded: Vec<u8> = percent_decode(raw).collect();
    if decoded.contains(&0) {
        return Err(Refusal::BadRequest("NUL in path"));
    }
    let Some(rest) = decoded.strip_prefix(b"/") else {
        return Err(Refusal::BadRequest("path must start with /"));
    };
    let mut rel = Vec::with_capacity(rest.len());
    for seg in rest.split(|&b| b == b'/') {
        if seg.is_empty() || seg == b"." {
            continue;
        }
        // A backslash is an ordinary byte on Linux, but `..\` is how
        // traversal is spelled for servers that treat it as a separator:
        // refuse it rather than guess what a later consumer will do.
        if seg.split(|&b| b == b'\\').any(|part| part == b"..") {
            return Err(Refusal::BadRequest("'..' in path"));
        }
        if seg[0] == b'.' && !serve_hidden {
            return Err(Refusal::Hidden);
        }
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(seg);
    }
    Ok(Resolved {
        rel,
        dir: decoded.ends_with(b"/"),
    })
}

/// Every `%` is followed by two hex digits.
fn strict_escapes(raw: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = raw[i..].iter().position(|&b| b == b'%') {
        let at = i + p;
        match raw.get(at + 1..at + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = at + 3,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(path: &str) -> Result<Vec<u8>, Refusal> {
        resolve(path, false).map(|r| r.rel)
    }

    #[test]
    fn accepts_plain_paths() {
        assert_eq!(rel("/"), Ok(b"".to_vec()));
        assert_eq!(rel("/a/b.txt"), Ok(b"a/b.txt".to_vec()));
        assert_eq!(rel("//a/./b"), Ok(b"a/b".to_vec()));
        assert_eq!(rel("/a%20b"), Ok(b"a b".to_vec()));
        assert_eq!(rel("/%252e%252e"), Ok(b"%2e%2e".to_vec()));
        assert_eq!(rel("/a..b"), Ok(b"a..b".to_vec()));
        assert!(resolve("/d/", false).is_ok_and(|r| r.dir));
    }

    #[test]
    fn refuses_traversal_in_every_spelling() {
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/x",
            "/%2E%2e%2fetc",
            "/..%2fetc",
            "/.%2e/x",
            "/..%5cetc",
            "/a\\..\\b",
            "/%00",
            "/a%00.txt",
            "/%zz",
            "/%2",
            "*",
        ] {
            assert!(
                matches!(rel(bad), Err(Refusal::BadRequest(_))),
                "{bad} was accepted"
            );
        }
    }

    proptest::proptest! {
        /// Whatever the request path, an accepted one names a place
        /// beneath the root: no `..` segment, no NUL, no leading or
        /// doubled slash, and no hidden segment unless asked.
        #[test]
        fn accepted_paths_stay_beneath_the_root(
            raw in "(/|%2[eEfF]|%5[cC]|%00|%25|\\\\|\\.|\\.\\.|[a-z]){0,24}",
            hidden: bool,
        ) {
            if let Ok(r) = resolve(&raw, hidden) {
                proptest::prop_assert!(!r.rel.contains(&0));
                proptest::prop_assert!(!r.rel.starts_with(b"/"));
                for seg in r.rel.split(|&b| b == b'/') {
                    proptest::prop_assert!(r.rel.is_empty() || !seg.is_empty());
                    proptest::prop_assert!(seg != b"..");
                    proptest::prop_assert!(seg != b".");
                    proptest::prop_assert!(!seg.split(|&b| b == b'\\').any(|p| p == b".."));
                    proptest::prop_assert!(hidden || !seg.starts_with(b"."));
                }
            }
        }
    }

    #[test]
    fn hides_dotfiles_unless_asked() {
        assert_eq!(rel("/.env"), Err(Refusal::Hidden));
        assert_eq!(rel("/.git/config"), Err(Refusal::Hidden));
        assert_eq!(rel("/a/%2egit"), Err(Refusal::Hidden));
        assert_eq!(resolve("/.env", true).map(|r| r.rel), Ok(b".env".to_vec()));
    }
}
