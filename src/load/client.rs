//! One load connection's bookkeeping, without I/O: the requests in flight
//! with their times, and the responses read back with the engine's own
//! reply parser (`http::reply`: status line, framing, end of head; bodies
//! skipped by length or chunk). A reply the parser refuses is a framing
//! error, never a guess.

use std::collections::VecDeque;

use crate::http::reply::{parse_reply, ReplyBody, ReplyError, ReplyFraming, ReplyHead};

/// A request on the wire: when it was meant to go and when it went
/// (nanoseconds from the run's start; equal in a closed loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// When the schedule wanted it sent.
    pub intended: u64,
    /// When it was written.
    pub actual: u64,
}

/// A response read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// Its request's times.
    pub sent: Sent,
    /// Its status code.
    pub status: u16,
}

/// Why reading stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Bad status line, head or body framing.
    Framing,
    /// A response with no request waiting for it.
    Unasked,
}

/// The reading side of a connection.
#[derive(Debug)]
pub struct Reader {
    in_flight: VecDeque<Sent>,
    body: Option<(ReplyBody, u16)>,
    /// A partial head (or chunk line) carried to the next read.
    partial: Vec<u8>,
    spare: Vec<u8>,
    sink: Vec<u8>,
    head_only: bool,
    /// The server said it will close after the last response read.
    closing: bool,
}

impl Reader {
    /// A reader for responses to `HEAD` (`head_only`) or other requests.
    pub fn new(head_only: bool) -> Reader {
        Reader {
            in_flight: VecDeque::new(),
            body: None,
            partial: Vec::new(),
            spare: Vec::new(),
            sink: Vec::new(),
            head_only,
            closing: false,
        }
    }

    /// A request was written.
    pub fn sent(&mut self, sent: Sent) {
        self.in_flight.push_back(sent);
    }

    /// Requests written and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The oldest request still waiting.
    pub fn oldest(&self) -> Option<Sent> {
        self.in_flight.front().copied()
    }

    /// Whether the server announced it closes after its last response.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Forgets everything (the connection is gone); returns the requests
    /// that were in flight.
    pub fn reset(&mut self) -> usize {
        let n = self.in_flight.len();
        self.in_flight.clear();
        self.body = None;
        self.partial.clear();
        self.closing = false;
        n
    }

    /// Takes received bytes and calls `done` for each response completed.
    pub fn feed(&mut self, bytes: &[u8], done: impl FnMut(Done)) -> Result<(), ReadError> {
        if self.partial.is_empty() {
            let used = self.consume(bytes, done)?;
            self.partial.extend_from_slice(&bytes[used..]);
            return Ok(());
        }
        let mut joined = std::mem::take(&mut self.partial);
        joined.extend_from_slice(bytes);
        let used = self.consume(&joined, done)?;
        joined.drain(..used);
        self.partial = joined;
        Ok(())
    }

    /// The peer closed: completes a body framed by the close.
    pub fn eof(&mut self, mut done: impl FnMut(Done)) {
        if let Some((body, status)) = self.body.take() {
            if body.framing() == ReplyFraming::Close {
                if let Some(sent) = self.in_flight.pop_front() {
                    done(Done { sent, status });
                }
            }
        }
    }

    fn consume(&mut self, mut buf: &[u8], mut done: impl FnMut(Done)) -> Result<usize, ReadError> {
        let total = buf.len();
        loop {
            if let Some((body, status)) = &mut self.body {
                let n = body
                    .decode(buf, &mut self.sink)
                    .map_err(|_| ReadError::Framing)?;
                self.sink.clear();
                buf = &buf[n..];
                if !body.is_done() {
                    return Ok(total - buf.len());
                }
                let status = *status;
                self.body = None;
                self.complete(status, &mut done)?;
                continue;
            }
            if buf.is_empty() {
                return Ok(total);
            }
            let head = match parse_reply(buf, self.head_only, &mut self.spare) {
                Ok(Some((n, head))) => {
                    buf = &buf[n..];
                    head
                }
                Ok(None) => return Ok(total - buf.len()),
                Err(ReplyError::BadHead | ReplyError::BadFraming | ReplyError::Upgrade)
                | Err(ReplyError::BadChunk) => return Err(ReadError::Framing),
            };
            let ReplyHead {
                status,
                fields,
                framing,
                keep_alive,
                ..
            } = head;
            self.spare = fields;
            self.spare.clear();
            self.closing |= !keep_alive;
            if framing == ReplyFraming::None {
                self.complete(status, &mut done)?;
            } else {
                self.body = Some((ReplyBody::new(framing), status));
            }
        }
    }

    fn complete(&mut self, status: u16, done: &mut impl FnMut(Done)) -> Result<(), ReadError> {
        let sent = self.in_flight.pop_front().ok_or(ReadError::Unasked)?;
        done(Done { sent, status });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(t: u64) -> Sent {
        Sent {
            intended: t,
            actual: t,
        }
    }

    fn feed_all(r: &mut Reader, parts: &[&[u8]]) -> Result<Vec<(u64, u16)>, ReadError> {
        let mut out = Vec::new();
        for p in parts {
            r.feed(p, |d| out.push((d.sent.actual, d.status)))?;
        }
        Ok(out)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn pipelined_responses_match_their_requests_in_order() {
        let mut r = Reader::new(false);
        for t in 1..=3 {
            r.sent(sent(t));
        }
        let wire = [
            OK,
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            feed_all(&mut r, &[&wire]),
            Ok(vec![(1, 200), (2, 404), (3, 204)])
        );
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn every_split_of_the_bytes_gives_the_same_responses() {
        let wire = [
            OK,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        ]
        .concat();
        for cut in 0..wire.len() {
            let mut r = Reader::new(false);
            r.sent(sent(1));
            r.sent(sent(2));
            let got = feed_all(&mut r, &[&wire[..cut], &wire[cut..]]).unwrap();
            assert_eq!(got, vec![(1, 200), (2, 200)], "cut at {cut}");
        }
    }

    #[test]
    fn garbage_and_unasked_responses_are_errors() {
        let mut r = Reader::new(false);
        r.sent(sent(1));
        assert_eq!(
            feed_all(&mut r, &[b"SSH-2.0-OpenSSH\r\n\r\n"]),
            Err(ReadError::Framing)
        );
        let mut r = Reader::new(false);
        r.sent(sent(1));
        let two = [OK, OK].concat();
        let mut n = 0;
        assert_eq!(r.feed(&two, |_| n += 1), Err(ReadError::Unasked));
        assert_eq!(n, 1);
        let mut r = Reader::new(false);
        r.sent(sent(1));
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(feed_all(&mut r, &[bad]), Err(ReadError::Framing));
    }

    #[test]
    fn close_framed_body_ends_at_eof_and_close_is_noted() {
        let mut r = Reader::new(false);
        r.sent(sent(7));
        let got = feed_all(
            &mut r,
            &[b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody..."],
        )
        .unwrap();
        assert!(got.is_empty());
        assert!(r.closing());
        let mut out = Vec::new();
        r.eof(|d| out.push(d.sent.actual));
        assert_eq!(out, vec![7]);
        assert_eq!(r.reset(), 0);
    }

    #[test]
    fn head_responses_have_no_body() {
        let mut r = Reader::new(true);
        r.sent(sent(1));
        r.sent(sent(2));
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(feed_all(&mut r, &[wire]), Ok(vec![(1, 200), (2, 200)]));
    }
}
