//! Request bodies in chunked coding (RFC 9112 §7.1), decoded incrementally.
//!
//! The decoder is fed whatever bytes have arrived and keeps its place, so a
//! body split across any number of reads is decoded in one pass. Framing
//! bytes are checked one at a time; chunk data is copied in bulk. Only CRLF
//! ends a line here: a lenient line ending inside chunked framing is a
//! smuggling vector, and no real client needs it.

use super::reject::Reject;

/// Longest trailer section accepted, in bytes. Trailers are read and dropped.
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of the chunk size.
    #[default]
    Size,
    /// After the size: BWS, `;` and chunk extensions, up to CR.
    Ext,
    /// The LF that ends the size line.
    SizeLf,
    /// Chunk data; `left` bytes to go.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    FinalLf,
    /// The whole body has been read.
    Done,
}

/// Incremental chunked decoder. `Default` is ready for a new body.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    state: State,
    /// Chunk bytes still to copy, or the size being accumulated.
    left: u64,
    digits: u8,
    line: usize,
    trailers: usize,
    total: u64,
}

impl Chunked {
    /// Decodes from `input`, appending data to `out`. Returns how many input
    /// bytes were used; `is_done` tells whether the body ended. Stops right
    /// after the final CRLF: later bytes belong to the next request.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_body: u64,
        max_line: usize,
    ) -> Result<usize, Reject> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = (input.len() - i).min(usize::try_from(self.left).unwrap_or(usize::MAX));
                out.extend_from_slice(&input[i..i + n]);
                i += n;
                self.left -= n as u64;
                if self.left == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(input[i], max_body, max_line)?;
            i += 1;
        }
        Ok(i)
    }

    /// Whether the final CRLF has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, b: u8, max_body: u64, max_line: usize) -> Result<(), Reject> {
        use State::*;
        match self.state {
            Size | Ext => {
                self.line += 1;
                if self.line > max_line {
                    return Err(Reject::ChunkLineTooLong);
                }
            }
            Trailer | TrailerStart => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(Reject::BadTrailer);
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (Size, b) if b.is_ascii_hexdigit() => {
                // 16 hex digits fill 64 bits; a 17th would overflow.
                if self.digits == 16 {
                    return Err(Reject::BadChunkSize);
                }
                self.digits += 1;
                self.left = self.left << 4 | u64::from(hex(b));
                Size
            }
            (Size, b';' | b' ' | b'\t') if self.digits > 0 => Ext,
            (Size, b'\r') if self.digits > 0 => SizeLf,
            (Size, _) => return Err(Reject::BadChunkSize),
            (Ext, b'\r') => SizeLf,
            (Ext, b) if b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80 => Ext,
            (Ext, _) => return Err(Reject::BadChunkSize),
            (SizeLf, b'\n') => self.end_size_line(max_body)?,
            (SizeLf, _) => return Err(Reject::BareCr),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err(Reject::ChunkDataOverrun),
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, b) if is_tchar(b) => Trailer,
            (TrailerStart, _) => return Err(Reject::BadTrailer),
            (Trailer, b'\r') => TrailerLf,
            (Trailer, b) if b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80 => Trailer,
            (Trailer, _) => return Err(Reject::BadTrailer),
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (TrailerLf | FinalLf, _) => return Err(Reject::BadTrailer),
            // decode() copies data itself and stops at Done.
            (s @ (Data | Done), _) => s,
        };
        Ok(())
    }

    fn end_size_line(&mut self, max_body: u64) -> Result<State, Reject> {
        self.line = 0;
        self.digits = 0;
        if self.left == 0 {
            return Ok(State::TrailerStart);
        }
        self.total = self.total.saturating_add(self.left);
        if self.total > max_body {
            return Err(Reject::BodyTooLarge);
        }
        Ok(State::Data)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
