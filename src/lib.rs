//! coreloop: a thread-per-core HTTP/1.1 server for Linux.
//!
//! Layers, from the wire up:
//! - [`http`]: the sans-IO engine. A [`http::Conn`] takes received bytes and
//!   the time, runs the handler, and returns bytes to send and a close
//!   decision. Both event-loop backends drive this one machine.
//! - [`handler`]: the [`Handler`] trait, the [`Router`] and the built-in
//!   endpoints.
//! - [`pool`] and [`metrics`]: per-core buffers and counters.
//! - [`io`]: the event loops (one per core) that drive `Conn` over sockets.
//! - [`server`], [`config`], [`shutdown`], [`listener`], [`topology`],
//!   [`numa`]: starting the cores, their knobs, the drain protocol,
//!   sockets, CPUs and memory placement.
//! - [`doctor`]: `coreloop doctor`, a read-only report on host settings.
//! - [`load`] and [`ab`]: `coreloop load`, the load generator, and
//!   `coreloop ab`, A/B experiments on two server command lines.
//! - [`upgrade`] and [`notify`]: handing the sockets to a new binary
//!   (SIGUSR2), and telling systemd or the old process that we are ready.
//!
//! ```no_run
//! use coreloop::{Config, Response, Router, Server};
//!
//! let bound = Server::new(Config::default()).bind()?;
//! bound.serve(|_core| Router::builtins().get("/hi", |_req: &coreloop::Request<'_>| Response::ok("text/plain", b"hi")))?;
//! # Ok::<(), coreloop::server::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod ab;
pub mod access_log;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod handler;
pub mod http;
pub mod io;
pub mod json;
pub mod listener;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod numa;
pub mod pool;
pub mod server;
pub mod shutdown;
pub mod topology;
pub mod upgrade;

pub use config::{Backend, Config};
pub use handler::{Handler, Router};
pub use http::{Body, Request, Response};
pub use server::{Bound, Report, Server};
pub use shutdown::Shutdown;
