//! The per-core provided-buffer ring for multishot receives
//! (IORING_REGISTER_PBUF_RING, Linux 5.19; io_uring_register_buf_ring(3)).
//!
//! The kernel picks a free buffer for each receive and names it in the
//! completion; the loop hands the bytes to `Conn` and gives the buffer back
//! at once, so an idle connection holds none. Returns are published once
//! per loop turn (one release store of the tail).
//!
//! The kernel takes buffers in ring order, so a ring holding all of them
//! would cycle through every buffer (4 MiB by default) and each receive
//! would land in cold memory: a TLB miss and cache misses in the kernel's
//! copy (`_copy_to_iter` three times its cost on epoll, whose reads reuse
//! one buffer). Only a window of buffers is in the ring; the others wait
//! on a stack, and the ones given back last go in first. The window
//! doubles when a receive finds the ring empty (ENOBUFS) and is resized
//! every `EPOCH` turns to twice the most buffers a turn used.
//!
//! INVARIANT: the ring entries and the buffers stay allocated, unmoved,
//! until the ring is unregistered (`unregister`) or the io_uring instance is
//! gone; `Drop` only frees memory, so the owner must call `unregister` or
//! end the instance first. Dropping the `IoUring` ends it only if its fd is
//! not registered (IORING_REGISTER_RING_FDS holds a reference).
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use super::region::Region;

/// A registered ring of `count` buffers of `size` bytes.
#[derive(Debug)]
pub struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    buffers: Region,
    count: u16,
    size: usize,
    tail: u16,
    group: u16,
    /// Buffers given back and not in the ring, the last given on top.
    spare: Vec<u16>,
    window: Window,
}

/// The smallest window: more than a turn uses at a modest load.
const MIN_WINDOW: u16 = 32;
/// Turns between two resizings of the window.
const EPOCH: u16 = 1024;

impl BufRing {
    /// Registers `count` (a power of two, at most 32768) buffers of `size`
    /// bytes, carved from `buffers`, as buffer group `group`, and fills the
    /// ring.
    pub fn new(
        submitter: &Submitter<'_>,
        buffers: Region,
        count: u16,
        size: usize,
        group: u16,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 || u32::try_from(size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two <= 32768",
            ));
        }
        let n = usize::from(count);
        if buffers.size() < n * size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer region smaller than count x size",
            ));
        }
        // The kernel requires the ring to be page aligned.
        let entries_layout = Layout::from_size_align(n * std::mem::size_of::<BufRingEntry>(), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "cannot allocate the buffer ring",
            ));
        }
        let mut ring = BufRing {
            entries,
            entries_layout,
            buffers,
            count,
            size,
            tail: 0,
            group,
            spare: Vec::with_capacity(n),
            window: Window::new(count),
        };
        // SAFETY: `entries` points to `count` zeroed, page-aligned entries that
        // stay allocated until `ring` is dropped, which the owner does only
        // after unregistering it or ending the io_uring instance (see the
        // module INVARIANT).
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, group, 0)? };
        ring.spare.extend((0..count).rev());
        ring.publish();
        Ok(ring)
    }

    /// Whether the kernel behind `ring` takes a provided buffer ring:
    /// registers a tiny one, then ends the ring and the buffers, in that
    /// order (module INVARIANT). Linux 5.19+.
    pub fn probe(ring: io_uring::IoUring) -> io::Result<()> {
        let region = Region::map(2 * 512, super::region::HugePages::Off)?;
        let bufs = BufRing::new(&ring.submitter(), region, 2, 512, 7)?;
        let _ = bufs.unregister(&ring.submitter());
        drop(ring);
        drop(bufs);
        Ok(())
    }

    /// The memory the buffers live in.
    pub fn region(&self) -> &Region {
        &self.buffers
    }

    /// The buffer group id to name in receive SQEs.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, as a completion reported them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid % self.count);
        let len = len.min(self.size);
        // SAFETY: bid < count, so the range lies inside the buffers'
        // region (at least count x size bytes, checked in `new`); the
        // kernel finished writing before posting the completion that named
        // this buffer, and it will not write to it again until `recycle`
        // hands it back.
        unsafe { std::slice::from_raw_parts(self.buffers.as_ptr().add(bid * self.size), len) }
    }

    /// Gives buffer `bid` back (to the kernel at the next `publish`).
    pub fn recycle(&mut self, bid: u16) {
        self.spare.push(bid % self.count);
        self.window.gave();
    }

    /// A receive found the ring empty (ENOBUFS): hold more buffers in it.
    pub fn starved(&mut self) {
        self.window.starved();
    }

    /// How many buffers the ring holds after `publish`.
    pub fn window(&self) -> u16 {
        self.window.size
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: slot < count, inside the entries allocation. The kernel
        // reads only entries between its head and the published tail, and
        // this slot lies beyond the published tail until `publish`.
        let entry = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: bid < count: the address is inside the buffers' region.
        entry.set_addr(unsafe { self.buffers.as_ptr().add(usize::from(bid) * self.size) } as u64);
        // NOTE(cast): size was checked to fit in u32 in `new`.
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Tops the ring up to the window from the spare stack, hottest first,
    /// and publishes the new tail (one release store). Call once per turn,
    /// after every completion of the turn gave its buffer back.
    pub fn publish(&mut self) {
        let window = usize::from(self.window.turn());
        // Buffers not on the stack are in the ring, or held by completions
        // not yet given back (then the ring holds fewer than it seems, and
        // a receive may find it empty: `starved` widens the window).
        let mut in_ring = usize::from(self.count) - self.spare.len();
        while in_ring < window {
            let Some(bid) = self.spare.pop() else { break };
            self.push(bid);
            in_ring += 1;
        }
        // SAFETY: the tail field lives inside the first entry, which is
        // allocated, aligned for u16, and shared with the kernel only through
        // atomic accesses to this field.
        let tail = unsafe { &*BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the ring; afterwards the kernel no longer touches it.
    pub fn unregister(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        submitter.unregister_buf_ring(self.group)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the pointer came from alloc_zeroed with this layout, and
        // (module INVARIANT) the kernel no longer uses it. The buffers'
        // region unmaps itself after this.
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}

/// How many buffers to keep in the ring.
#[derive(Debug)]
struct Window {
    size: u16,
    /// Every buffer there is.
    max: u16,
    /// Buffers given back this turn, and the most in one turn this epoch.
    given: u16,
    peak: u16,
    turns: u16,
}

impl Window {
    fn new(max: u16) -> Window {
        Window {
            size: max.min(MIN_WINDOW),
            max,
            given: 0,
            peak: 0,
            turns: 0,
        }
    }

    fn gave(&mut self) {
        self.given = self.given.saturating_add(1);
    }

    fn starved(&mut self) {
        self.size = self.size.saturating_mul(2).min(self.max);
    }

    /// Ends a turn; returns the size for the next one.
    fn turn(&mut self) -> u16 {
        self.peak = self.peak.max(self.given);
        self.given = 0;
        self.turns += 1;
        if self.turns == EPOCH {
            let want = self.peak.saturating_mul(2).max(MIN_WINDOW);
            self.size = want.min(self.max);
            self.peak = 0;
            self.turns = 0;
        }
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(w: &mut Window, n: u16, per_turn: u16) {
        for _ in 0..n {
            for _ in 0..per_turn {
                w.gave();
            }
            w.turn();
        }
    }

    #[test]
    fn window_starts_small_and_doubles_when_starved() {
        let mut w = Window::new(1024);
        assert_eq!(w.turn(), MIN_WINDOW);
        w.starved();
        assert_eq!(w.turn(), 2 * MIN_WINDOW);
        for _ in 0..10 {
            w.starved();
        }
        assert_eq!(w.turn(), 1024, "never more than every buffer");
        assert_eq!(Window::new(8).turn(), 8, "never more than every buffer");
    }

    #[test]
    fn window_follows_the_busiest_turn_of_each_epoch() {
        let mut w = Window::new(1024);
        for _ in 0..5 {
            w.starved();
        }
        // A burst widened it to 1024; an epoch of turns using at most 100
        // buffers brings it down to 200.
        turns(&mut w, EPOCH - 2, 3);
        turns(&mut w, 1, 100);
        assert_eq!(w.size, 1024, "resized only at the end of an epoch");
        turns(&mut w, 1, 3);
        assert_eq!(w.size, 200);
        // A quiet epoch: back to the smallest window.
        turns(&mut w, EPOCH, 1);
        assert_eq!(w.size, MIN_WINDOW);
        // A busy one: up to every buffer.
        turns(&mut w, EPOCH, 900);
        assert_eq!(w.size, 1024);
    }
}
