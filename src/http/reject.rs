//! Why a request was refused: one variant per rule, each mapped to the status
//! RFC 9112 / RFC 9110 calls for. Every rejection closes the connection, and
//! nothing after the rejected bytes is parsed as another request.

use std::fmt;

/// A request the server will not process. Sent to the peer as an error
/// response with `Connection: close`; counted per kind in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// Request line is not `method SP target SP version` (RFC 9112 §3).
    BadRequestLine,
    /// Request target has a byte or shape RFC 9112 §3.2 does not allow.
    BadTarget,
    /// Version is well formed but not HTTP/1.0 or HTTP/1.1 (RFC 9110 §6.2).
    UnsupportedVersion,
    /// A header line starts with whitespace: obs-fold, or whitespace before
    /// the first header (RFC 9112 §5.2, §2.2).
    ObsFold,
    /// Whitespace between a field name and its colon (RFC 9112 §5.1).
    SpaceBeforeColon,
    /// A field name with a byte outside `token` (RFC 9110 §5.1).
    BadHeaderName,
    /// CR not followed by LF anywhere in the head (RFC 9112 §2.2).
    BareCr,
    /// NUL or another control character in a field value (RFC 9110 §5.5).
    BadHeaderValue,
    /// HTTP/1.1 request without Host (RFC 9112 §3.2).
    MissingHost,
    /// More than one Host field (RFC 9112 §3.2).
    DuplicateHost,
    /// Host value is not `uri-host [ ":" port ]` (RFC 9112 §3.2).
    BadHost,
    /// Content-Length that is not `1*DIGIT`, or that overflows (RFC 9112 §6.3).
    BadContentLength,
    /// Several Content-Length values that differ (RFC 9112 §6.3).
    ConflictingContentLength,
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3: smuggling).
    LengthWithTransferEncoding,
    /// Transfer-Encoding whose final coding is not chunked (RFC 9112 §6.3).
    ChunkedNotFinal,
    /// chunked applied more than once (RFC 9112 §6.1).
    ChunkedTwice,
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1).
    TransferEncodingInHttp10,
    /// A transfer coding other than chunked (RFC 9112 §6.1: 501).
    UnsupportedTransferCoding,
    /// Chunk size missing, not hex, or too large for 64 bits (RFC 9112 §7.1).
    BadChunkSize,
    /// Chunk-size line (extensions included) over the configured limit.
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF: the data overran its size (RFC 9112 §7.1).
    ChunkDataOverrun,
    /// Malformed trailer field or trailer section too large (RFC 9112 §7.1.2).
    BadTrailer,
    /// Expect with a value other than 100-continue (RFC 9110 §10.1.1).
    UnsupportedExpect,
    /// Request line longer than the configured limit (414).
    RequestLineTooLong,
    /// Request head longer than the configured limit (431).
    HeadTooLarge,
    /// More header fields than the configured limit (431).
    TooManyHeaders,
    /// Body larger than the configured limit (413).
    BodyTooLarge,
    /// No complete head before the head deadline (408).
    HeadTimeout,
    /// Body stalled past the body deadline (408).
    BodyTimeout,
}

impl Reject {
    /// Every variant, for metrics labels and exhaustive tests.
    pub const ALL: [Reject; 29] = [
        Reject::BadRequestLine,
        Reject::BadTarget,
        Reject::UnsupportedVersion,
        Reject::ObsFold,
        Reject::SpaceBeforeColon,
        Reject::BadHeaderName,
        Reject::BareCr,
        Reject::BadHeaderValue,
        Reject::MissingHost,
        Reject::DuplicateHost,
        Reject::BadHost,
        Reject::BadContentLength,
        Reject::ConflictingContentLength,
        Reject::LengthWithTransferEncoding,
        Reject::ChunkedNotFinal,
        Reject::ChunkedTwice,
        Reject::TransferEncodingInHttp10,
        Reject::UnsupportedTransferCoding,
        Reject::BadChunkSize,
        Reject::ChunkLineTooLong,
        Reject::ChunkDataOverrun,
        Reject::BadTrailer,
        Reject::UnsupportedExpect,
        Reject::RequestLineTooLong,
        Reject::HeadTooLarge,
        Reject::TooManyHeaders,
        Reject::BodyTooLarge,
        Reject::HeadTimeout,
        Reject::BodyTimeout,
    ];

    /// The status code sent for this rejection.
    pub fn status(self) -> u16 {
        use Reject::*;
        match self {
            UnsupportedVersion => 505,
            UnsupportedTransferCoding => 501,
            UnsupportedExpect => 417,
            RequestLineTooLong => 414,
            HeadTooLarge | TooManyHeaders => 431,
            BodyTooLarge => 413,
            HeadTimeout | BodyTimeout => 408,
            _ => 400,
        }
    }

    /// Index into `ALL`, for per-kind counters (`ALL` lists the variants
    /// in declaration order; a unit test holds it to that).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case name, used as a metrics label.
    pub fn name(self) -> &'static str {
        use Reject::*;
        match self {
            BadRequestLine => "bad_request_line",
            BadTarget => "bad_target",
            UnsupportedVersion => "unsupported_version",
            ObsFold => "obs_fold",
            SpaceBeforeColon => "space_before_colon",
            BadHeaderName => "bad_header_name",
            BareCr => "bare_cr",
            BadHeaderValue => "bad_header_value",
            MissingHost => "missing_host",
            DuplicateHost => "duplicate_host",
            BadHost => "bad_host",
            BadContentLength => "bad_content_length",
            ConflictingContentLength => "conflicting_content_length",
            LengthWithTransferEncoding => "length_with_transfer_encoding",
            ChunkedNotFinal => "chunked_not_final",
            ChunkedTwice => "chunked_twice",
            TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            UnsupportedTransferCoding => "unsupported_transfer_coding",
            BadChunkSize => "bad_chunk_size",
            ChunkLineTooLong => "chunk_line_too_long",
            ChunkDataOverrun => "chunk_data_overrun",
            BadTrailer => "bad_trailer",
            UnsupportedExpect => "unsupported_expect",
            RequestLineTooLong => "request_line_too_long",
            HeadTooLarge => "head_too_large",
            TooManyHeaders => "too_many_headers",
            BodyTooLarge => "body_too_large",
            HeadTimeout => "head_timeout",
            BodyTimeout => "body_timeout",
        }
    }

    /// One line for the peer, sent as the error response body.
    pub fn message(self) -> &'static str {
        use Reject::*;
        match self {
            BadRequestLine => "malformed request line",
            BadTarget => "malformed request target",
            UnsupportedVersion => "only HTTP/1.0 and HTTP/1.1 are supported",
            ObsFold => "header line starts with whitespace (obs-fold)",
            SpaceBeforeColon => "whitespace between header name and colon",
            BadHeaderName => "invalid byte in header name",
            BareCr => "CR not followed by LF",
            BadHeaderValue => "invalid byte in header value",
            MissingHost => "HTTP/1.1 request without Host",
            DuplicateHost => "more than one Host header",
            BadHost => "invalid Host header",
            BadContentLength => "invalid Content-Length",
            ConflictingContentLength => "conflicting Content-Length values",
            LengthWithTransferEncoding => "Content-Length together with Transfer-Encoding",
            ChunkedNotFinal => "final transfer coding is not chunked",
            ChunkedTwice => "chunked applied more than once",
            TransferEncodingInHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            UnsupportedTransferCoding => "transfer coding not implemented",
            BadChunkSize => "invalid chunk size",
            ChunkLineTooLong => "chunk size line too long",
            ChunkDataOverrun => "chunk data not followed by CRLF",
            BadTrailer => "invalid trailer section",
            UnsupportedExpect => "only Expect: 100-continue is supported",
            RequestLineTooLong => "request line too long",
            HeadTooLarge => "request header section too large",
            TooManyHeaders => "too many header fields",
            BodyTooLarge => "request body too large",
            HeadTimeout => "request head not received in time",
            BodyTimeout => "request body not received in time",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for Reject {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_complete_and_indexed() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.name().is_empty());
        }
        let names: std::collections::HashSet<_> = Reject::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reject::ALL.len());
    }
}
