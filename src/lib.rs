//! coreloop: a thread-per-core HTTP/1.1 server for Linux.
//!
//! Layers, from the wire up:
//! - [`http`]: the sans-IO engine. A [`http::Conn`] takes received bytes and
//!   the time, runs the handler, and returns bytes to send and a close
//!   decision. Both event-loop backends drive this one machine.
//! - [`handler`]: the [`Handler`] trait, the [`Router`] and the built-in
//!   endpoints.
//! - [`pool`] and [`metrics`]: per-core buffers and counters.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod handler;
pub mod http;
pub mod metrics;
pub mod pool;

pub use handler::{Handler, Router};
pub use http::{Body, Request, Response};
