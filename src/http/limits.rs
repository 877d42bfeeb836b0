//! Per-request limits and per-connection deadlines the engine enforces.
//!
//! One `Limits` value per core, borrowed by every `Conn` call; the CLI fills
//! it from flags and `Limits::validate` checks it once at start.

use std::time::Duration;

/// Hard ceiling on `max_headers`: the parser keeps its header slots on the
/// stack, uninitialised, so this costs nothing until it is used.
pub const MAX_HEADERS_CEILING: usize = 256;

/// Everything the engine refuses to exceed, and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line in bytes, CRLF included. Beyond it: 414.
    /// Default 8 KiB (nginx's `large_client_header_buffers` size).
    pub max_request_line: usize,
    /// Longest request head (request line, header fields, final CRLF) in
    /// bytes. Beyond it: 431. Default 16 KiB.
    pub max_head: usize,
    /// Most header fields in one request. Beyond it: 431. Default 100,
    /// at most 256.
    pub max_headers: usize,
    /// Largest request body in bytes, decided from Content-Length before the
    /// body is read, or while decoding chunks. Beyond it: 413. Default 1 MiB
    /// (nginx's `client_max_body_size`).
    pub max_body: u64,
    /// Longest chunk-size line (size and extensions) in bytes. Beyond it:
    /// 400. Default 1 KiB; extensions are ignored, so this only bounds work.
    pub max_chunk_line: usize,
    /// Once this many response bytes wait to be sent, the connection stops
    /// answering pipelined requests (and the backend stops reading) until
    /// the peer drains them. Default 256 KiB.
    pub max_pending_output: usize,
    /// Time from a request's first byte (or from accept) to the end of its
    /// head. Then: 408 and close. Default 15 s. Guards against slowloris.
    /// The clock stops while unsent output keeps the connection from
    /// reading (`max_pending_output`), and restarts when it reads again.
    pub head_timeout: Duration,
    /// Longest pause between two reads of a request body. Then: 408 and
    /// close. Default 30 s.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests
    /// before it is closed silently. Default 60 s.
    pub idle_timeout: Duration,
    /// Longest time a pending response may make no progress towards the
    /// peer. Then the connection is closed. Default 30 s.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head: 16 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
            max_chunk_line: 1024,
            max_pending_output: 256 * 1024,
            head_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Checks the values against each other; the message names the knob.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_request_line < 16 {
            return Err(format!(
                "max request line {} is below the minimum 16",
                self.max_request_line
            ));
        }
        if self.max_head < self.max_request_line {
            return Err(format!(
                "max head {} is below the max request line {}",
                self.max_head, self.max_request_line
            ));
        }
        if u32::try_from(self.max_head).is_err() {
            return Err(format!("max head {} is above 4 GiB", self.max_head));
        }
        if self.max_headers == 0 || self.max_headers > MAX_HEADERS_CEILING {
            return Err(format!(
                "max headers {} is outside 1..={MAX_HEADERS_CEILING}",
                self.max_headers
            ));
        }
        if self.max_chunk_line < 3 {
            return Err(format!(
                "max chunk line {} is below the minimum 3",
                self.max_chunk_line
            ));
        }
        if self.max_pending_output == 0 {
            return Err("max pending output must be above 0".into());
        }
        for (name, d) in [
            ("head timeout", self.head_timeout),
            ("body timeout", self.body_timeout),
            ("idle timeout", self.idle_timeout),
            ("write timeout", self.write_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be above 0"));
            }
        }
        Ok(())
    }
}
