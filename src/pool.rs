//! A per-core pool of byte buffers and request states, so idle connections
//! hold none and busy ones reuse warm allocations instead of asking the
//! allocator per request.

use crate::http::Exchange;

/// Free lists of cleared `Vec<u8>`s and request states. Owned by one
/// core; no locks.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    /// Boxed so a connection borrows one by moving a pointer.
    #[allow(clippy::vec_box)]
    exchanges: Vec<Box<Exchange>>,
    capacity: usize,
    max_free: usize,
}

impl BufPool {
    /// A pool handing out buffers of `capacity` bytes and keeping at most
    /// `max_free` of them when they come back.
    pub fn new(capacity: usize, max_free: usize) -> BufPool {
        BufPool {
            free: Vec::with_capacity(max_free),
            exchanges: Vec::new(),
            capacity,
            max_free,
        }
    }

    /// An empty buffer with at least the pool's capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| touched(self.capacity))
    }

    /// Returns a buffer. Buffers that grew past four times the pool's size
    /// (a large response) are dropped rather than kept, so one big answer
    /// does not pin its memory forever; up to that size they are kept
    /// (io_uring reads file bodies in 64 KiB chunks into them).
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0
            || buf.capacity() > self.capacity * 4
            || self.free.len() >= self.max_free
        {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    /// A request state for a connection that is parsing a head.
    pub fn take_exchange(&mut self) -> Box<Exchange> {
        self.exchanges.pop().unwrap_or_default()
    }

    /// Returns a request state; as with buffers, at most `max_free` are
    /// kept, and a large decoded body is not.
    pub fn give_exchange(&mut self, mut exchange: Box<Exchange>) {
        if self.exchanges.len() < self.max_free {
            exchange.reset(self.capacity * 4);
            self.exchanges.push(exchange);
        }
    }

    /// Buffers waiting in the pool.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

impl Default for BufPool {
    /// 16 KiB buffers, up to 1024 kept.
    fn default() -> Self {
        BufPool::new(16 * 1024, 1024)
    }
}

/// A new empty buffer whose whole capacity has been written once. Memory
/// counts in RSS from its first write: an untouched buffer joins the
/// count bit by bit, each time a larger answer than before lands in it,
/// which made RSS creep for many minutes at constant load (scripts/
/// soak.sh). Touching it here, once per buffer the pool creates, makes
/// the pool's memory visible when it is allocated.
fn touched(capacity: usize) -> Vec<u8> {
    // Not `vec![0; n]`: that is calloc, which skips writing memory fresh
    // from the top of the heap (it is already zero) and so touches nothing.
    let mut buf = Vec::with_capacity(capacity);
    buf.resize(capacity, 0xa5);
    buf.clear();
    buf
}
