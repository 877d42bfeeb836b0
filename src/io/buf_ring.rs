//! The per-core provided-buffer ring for multishot receives
//! (IORING_REGISTER_PBUF_RING, Linux 5.19; io_uring_register_buf_ring(3)).
//!
//! The kernel picks a free buffer for each receive and names it in the
//! completion; the loop hands the bytes to `Conn` and gives the buffer back
//! at once, so an idle connection holds none. Returns are published once
//! per loop turn (one release store of the tail).
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
}

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
        };
        // SAFETY: `entries` points to `count` zeroed, page-aligned entries that
        // stay allocated until `ring` is dropped, which the owner does only
        // after unregistering it or ending the io_uring instance (see the
        // module INVARIANT).
        unsafe { submitter.register_buf_ring_with_flags(entries as u64, count, group, 0)? };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
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

    /// Gives buffer `bid` back to the kernel (visible after `publish`).
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid % self.count);
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

    /// Publishes every buffer pushed since the last call (one release store).
    pub fn publish(&mut self) {
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
