//! The HTTP/1.1 engine: parsing, body framing, responses and the sans-IO
//! connection state machine. Nothing here names a socket, an fd or a clock.

mod body;
mod conn;
mod date;
pub mod fetch;
pub mod forward;
mod limits;
mod parse;
pub mod proxy_header;
mod reject;
pub mod reply;
mod request;
mod response;

pub use body::Chunked;
pub use conn::{Conn, Ctx, Exchange};
pub use date::{DateCache, DATE_LEN};
pub use limits::{Limits, MAX_HEADERS_CEILING};
pub use parse::{find_head_end, parse_head, Found, Framing, Head, Scan, Span};
pub use reject::Reject;
pub use request::Request;
pub use response::{reason, sends_body, write_response, Body, FileBody, Persist, Response};
