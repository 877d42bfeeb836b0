//! Once buffers are warm, answering a pipelined batch of plaintext requests
//! allocates nothing, and an idle keep-alive connection holds no heap
//! memory. A counting global allocator proves both.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::Harness;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn live_add(bytes: usize, sign: i64) {
    // NOTE(cast): allocation sizes fit in i64.
    LIVE.with(|c| c.set(c.get() + sign * bytes as i64));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local Cell, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        live_add(layout.size(), 1);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live_add(layout.size(), -1);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        live_add(layout.size(), -1);
        live_add(new_size, 1);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

const REQUEST: &[u8] =
    b"GET /plaintext HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";

#[test]
fn pipelined_plaintext_allocates_nothing_once_warm() {
    let mut h = Harness::new();
    let batch = REQUEST.repeat(16);
    // A batch cut mid-request exercises the kept-tail path too.
    let (first, second) = batch.split_at(batch.len() - 30);
    for _ in 0..10 {
        h.feed(first);
        h.feed(second);
    }
    h.wire.clear();
    h.wire.reserve(8 << 20);
    let before = allocations();
    for _ in 0..1000 {
        h.feed(first);
        h.feed(second);
    }
    let during = allocations() - before;
    assert_eq!(
        during, 0,
        "allocations while answering 16,000 pipelined requests"
    );
    assert_eq!(h.stats.requests.get(), 16 * 1010);
    // The counter is live: a response with an owned body does allocate.
    let before = allocations();
    h.feed(b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(allocations() > before);
}

/// Issue 10 item 4: a connection between requests keeps its slab entry
/// and nothing else. The head's field list, the body decoder and every
/// buffer go back to the core's pool when a request is answered.
#[test]
fn idle_connections_hold_no_heap_memory() {
    const IDLE: usize = 100;
    let mut h = Harness::new();
    h.feed(REQUEST);
    h.wire = Vec::with_capacity(1 << 20);
    let mut idle = Vec::with_capacity(IDLE);
    let before = LIVE.with(Cell::get);
    for _ in 0..IDLE {
        let fresh = coreloop::http::Conn::new(h.now, &h.limits);
        idle.push(std::mem::replace(&mut h.conn, fresh));
        h.feed(REQUEST);
        assert!(h.conn.is_idle());
    }
    let held = LIVE.with(Cell::get) - before;
    assert_eq!(h.stats.requests.get(), IDLE as u64 + 1);
    assert!(
        held <= 0,
        "{IDLE} idle connections hold {held} heap bytes ({} per connection)",
        held / IDLE as i64
    );
    drop(idle);
}
