//! Per-core counters. Each core writes only its own `CoreStats` (plain
//! load + store, no locked instruction); anyone may read them with Relaxed
//! loads and sum across cores.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::http::Reject;

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning core may call this: the load and the store
    /// are separate, which is what makes it cheap.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Lowers the value by `n` (gauges such as active connections).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Deadline kinds, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// No complete head in time.
    Head = 0,
    /// Body stalled.
    Body = 1,
    /// Keep-alive idle.
    Idle = 2,
    /// Response made no progress.
    Write = 3,
}

impl Deadline {
    /// Every kind, in index order.
    pub const ALL: [Deadline; 4] = [
        Deadline::Head,
        Deadline::Body,
        Deadline::Idle,
        Deadline::Write,
    ];

    /// Metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Deadline::Head => "head",
            Deadline::Body => "body",
            Deadline::Idle => "idle",
            Deadline::Write => "write",
        }
    }
}

/// The counters of one core.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Requests answered by a handler.
    pub requests: Counter,
    /// Bytes received from peers.
    pub bytes_in: Counter,
    /// Bytes sent to peers.
    pub bytes_out: Counter,
    /// Connections accepted.
    pub accepted: Counter,
    /// Connections closed.
    pub closed: Counter,
    /// Connections open now.
    pub active: Counter,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub responses: [Counter; 5],
    /// Rejected requests by kind, indexed by `Reject::index`.
    pub rejects: [Counter; Reject::ALL.len()],
    /// Deadline expiries by kind, indexed by `Deadline as usize`.
    pub deadlines: [Counter; 4],
    /// Handlers that panicked.
    pub panics: Counter,
    /// epoll: returns from epoll_wait.
    pub poll_wakeups: Counter,
    /// io_uring: io_uring_enter calls (submit and wait).
    pub ring_enters: Counter,
    /// io_uring: completions reaped.
    pub ring_completions: Counter,
    /// io_uring: receives that found the buffer ring empty.
    pub ring_no_buffers: Counter,
}

impl CoreStats {
    /// Counts one response of `status`.
    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }
}
