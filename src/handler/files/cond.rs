//! Conditional and range requests for static files (RFC 9110 §13, §14).

use std::time::{Duration, SystemTime};

use super::cache::Opened;
use crate::http::Request;

/// The part of the file a GET asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole file: no Range, one we ignore, or several ranges.
    Whole,
    /// One satisfiable range: `len` bytes from `start`.
    Range { start: u64, len: u64 },
    /// A single range that starts past the end: 416.
    Unsatisfiable,
}

/// What the preconditions of a GET or HEAD decide (RFC 9110 §13.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the file (or the range asked for).
    Serve,
    /// The client's copy is current: 304.
    NotModified,
    /// If-Match or If-Unmodified-Since failed: 412.
    Failed,
}

/// Evaluates the preconditions in the order §13.2.2 gives: If-Match,
/// else If-Unmodified-Since; then If-None-Match, else If-Modified-Since.
/// A list field may come as several lines; they count as one list. An
/// unparsable date is ignored.
pub fn preconditions(req: &Request<'_>, file: &Opened) -> Verdict {
    let etag = file.etag.as_bytes();
    let modified = whole_seconds(file.mtime);
    if req.header("if-match").is_some() {
        if !tags(req, "if-match").any(|t| t == b"*" || t == etag) {
            return Verdict::Failed;
        }
    } else if let Some(since) = date(req, "if-unmodified-since") {
        if modified > since {
            return Verdict::Failed;
        }
    }
    if req.header("if-none-match").is_some() {
        let weak = |t: &[u8]| t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == etag;
        if tags(req, "if-none-match").any(weak) {
            return Verdict::NotModified;
        }
    } else if let Some(since) = date(req, "if-modified-since") {
        if modified <= since {
            return Verdict::NotModified;
        }
    }
    Verdict::Serve
}

/// A date field, ignored when invalid or sent more than once (§13.1.3:
/// a list of dates is invalid).
fn date(req: &Request<'_>, name: &str) -> Option<SystemTime> {
    let mut lines = req.headers().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let (_, value) = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    http_date(value)
}

/// Every member of a comma-separated list field, across all its lines.
fn tags<'a>(req: &Request<'a>, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    req.headers()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The range a GET asked for, after If-Range. Anything malformed is
/// ignored (the whole file is sent), as §14.2 allows.
pub fn part(req: &Request<'_>, file: &Opened) -> Part {
    let Some(range) = req.header("range") else {
        return Part::Whole;
    };
    if let Some(cond) = req.header("if-range") {
        if !if_range_holds(cond, file) {
            return Part::Whole;
        }
    }
    parse_range(range, file.size)
}

/// One `bytes=` range against a file of `size` bytes.
pub fn parse_range(value: &[u8], size: u64) -> Part {
    let Ok(value) = std::str::from_utf8(value) else {
        return Part::Whole;
    };
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return Part::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Part::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Part::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Part::Unsatisfiable
            } else {
                let len = n.min(size);
                Part::Range {
                    start: size - len,
                    len,
                }
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return Part::Whole;
            }
            if start >= size {
                return Part::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            Part::Range {
                start,
                len: end - start + 1,
            }
        }
        _ => Part::Whole,
    }
}

/// If-Range: an entity tag must match strongly; a date must equal the
/// Last-Modified exactly.
fn if_range_holds(cond: &[u8], file: &Opened) -> bool {
    let cond = cond.trim_ascii();
    if cond.starts_with(b"\"") {
        return cond == file.etag.as_bytes();
    }
    if cond.starts_with(b"W/") {
        return false;
    }
    http_date(cond).is_some_and(|d| d == whole_seconds(file.mtime))
}

fn http_date(value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

/// HTTP dates have whole seconds; so must the comparison.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, len: u64) -> Part {
        Part::Range { start, len }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range(b"bytes=0-0", 10), range(0, 1));
        assert_eq!(parse_range(b"bytes=2-5", 10), range(2, 4));
        assert_eq!(parse_range(b"bytes=2-", 10), range(2, 8));
        assert_eq!(parse_range(b"bytes=5-100", 10), range(5, 5));
        assert_eq!(parse_range(b"bytes=-3", 10), range(7, 3));
        assert_eq!(parse_range(b"bytes=-30", 10), range(0, 10));
        assert_eq!(parse_range(b"BYTES = 1-2", 10), range(1, 2));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(parse_range(b"bytes=10-", 10), Part::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 10), Part::Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-", 0), Part::Unsatisfiable);
        for ignored in [
            &b"bytes=5-2"[..],
            b"bytes=0-1,3-4",
            b"items=0-1",
            b"bytes=a-b",
            b"bytes=-",
            b"bytes=+1-2",
            b"bytes=1",
            b"\xff",
        ] {
            assert_eq!(parse_range(ignored, 10), Part::Whole, "{ignored:?}");
        }
    }

    proptest::proptest! {
        /// A range answer always lies inside the file and is never empty.
        #[test]
        fn ranges_stay_inside_the_file(
            first in proptest::option::of(0u64..2000),
            last in proptest::option::of(0u64..2000),
            size in 0u64..1500,
        ) {
            let spec = format!(
                "bytes={}-{}",
                first.map(|f| f.to_string()).unwrap_or_default(),
                last.map(|l| l.to_string()).unwrap_or_default()
            );
            if let Part::Range { start, len } = parse_range(spec.as_bytes(), size) {
                proptest::prop_assert!(len >= 1, "{spec}");
                proptest::prop_assert!(start + len <= size, "{spec} of {size}");
            }
        }
    }
}
