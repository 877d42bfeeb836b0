//! The built-in endpoints. `/plaintext` and `/json` follow the TechEmpower
//! benchmark rules (test types 6 and 1): fixed bodies, `Server` and `Date`
//! headers, the JSON object built and serialized for every request.

use crate::http::{Body, Request, Response};

/// `GET /plaintext`: `Hello, World!` as `text/plain`.
pub fn plaintext(_: &Request<'_>) -> Response {
    Response::ok("text/plain", b"Hello, World!")
}

/// `GET /json`: `{"message":"Hello, World!"}` as `application/json`.
pub fn json(_: &Request<'_>) -> Response {
    let message = Message {
        message: "Hello, World!",
    };
    let mut body = Vec::with_capacity(32);
    message.write_json(&mut body);
    Response::new(200)
        .with_content_type("application/json")
        .with_body(Body::Bytes(body))
}

/// `GET /healthz`: `ok` while the core is serving, with the build that
/// answers in `X-Build` (which binary serves, during and after an upgrade).
pub fn healthz(_: &Request<'_>) -> Response {
    Response::ok("text/plain", b"ok\n").with_header("X-Build", build_id())
}

/// `coreloop/VERSION+HASH`: the package version and a hash of the running
/// executable's bytes, so two builds of one version differ. Read once
/// (a few milliseconds for a release binary); call it at start to keep
/// that off the first `/healthz`.
pub fn build_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        // /proc/self/exe is the running file even after a new one has
        // been renamed over its path.
        let hash = std::fs::read("/proc/self/exe")
            .map(|bytes| format!("{:016x}", fnv1a(&bytes)))
            .unwrap_or_else(|_| "unknown".into());
        format!("coreloop/{}+{hash}", env!("CARGO_PKG_VERSION"))
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The TechEmpower JSON test's object. Serialized by hand: one string field
/// does not justify a JSON crate in the server.
struct Message<'a> {
    message: &'a str,
}

impl Message<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"message\":");
        write_json_string(out, self.message);
        out.push(b'}');
    }
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let escaped = format!("\\u{:04x}", c as u32);
                out.extend_from_slice(escaped.as_bytes());
            }
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, b"\"a\\\"b\\\\c\\u000a\"");
    }
}
