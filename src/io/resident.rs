//! Which file ranges were found in the page cache a moment ago.
//!
//! io_uring sends a file range with sendfile(2) from the loop only when
//! cachestat(2) says every page of it is cached, so the loop never waits
//! for the disk. cachestat walks every page of the range: for a 1 MiB
//! file served 1700 times a second it took 5% of the server's samples
//! (perf), and about 9% of its CPU per response in an A/B run. A range
//! found cached is trusted for `TRUST`, so a hot file costs one
//! cachestat per `TRUST` instead of one per response.
//!
//! Keyed by the open file, so it needs the open-file cache: with
//! `--file-cache 0` every response opens its own file and is checked.
//!
//! The risk is bounded: pages evicted within `TRUST` of a check make one
//! sendfile wait for the disk, as every sendfile on the epoll backend may.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::sys;

/// How long a range found cached is believed to stay cached.
const TRUST: Duration = Duration::from_millis(100);

/// Files remembered per core; when full, entries are replaced in turn.
const SLOTS: usize = 32;

struct Seen {
    /// Weak, so the memo never keeps a descriptor open; it does keep the
    /// allocation, so the address cannot be reused by another file.
    file: Weak<File>,
    start: u64,
    end: u64,
    at: Instant,
}

/// A small per-core memo of cached ranges, keyed by open file.
#[derive(Default)]
pub struct Residency {
    seen: Vec<Seen>,
    next: usize,
}

impl Residency {
    /// Whether `len` bytes of `file` from `offset` are in the page cache:
    /// from the memo if a range covering them was checked within `TRUST`
    /// of `now`, else from cachestat (remembered when true).
    pub fn is_cached(&mut self, file: &Arc<File>, offset: u64, len: u64, now: Instant) -> bool {
        let end = offset.saturating_add(len);
        let hit = self
            .seen
            .iter()
            .position(|s| Weak::as_ptr(&s.file) == Arc::as_ptr(file));
        if let Some(s) = hit.map(|i| &self.seen[i]) {
            if s.start <= offset && end <= s.end && now.saturating_duration_since(s.at) < TRUST {
                return true;
            }
        }
        if !sys::is_cached(file.as_raw_fd(), offset, len) {
            return false;
        }
        let mut seen = Seen {
            file: Arc::downgrade(file),
            start: offset,
            end,
            at: now,
        };
        // A resumed send checks a window shifted from the last one: grow
        // the remembered range (trusted from its older check) rather than
        // replace it, so the next response from the start still hits.
        if let Some(old) = hit.map(|i| &self.seen[i]) {
            let fresh = now.saturating_duration_since(old.at) < TRUST;
            if fresh && offset <= old.end && old.start <= end {
                seen.start = old.start.min(offset);
                seen.end = old.end.max(end);
                seen.at = old.at;
            }
        }
        match hit {
            Some(i) => self.seen[i] = seen,
            None if self.seen.len() < SLOTS => self.seen.push(seen),
            None => {
                self.seen[self.next] = seen;
                self.next = (self.next + 1) % SLOTS;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file of `len` bytes just written, so its pages are cached; its
    /// name is unlinked at once.
    fn cached_file(len: usize) -> Arc<File> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("coreloop-resident-{}-{n}", std::process::id()));
        std::fs::write(&path, vec![7u8; len]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Arc::new(file)
    }

    /// A cached file of `len` bytes, or `None` on a kernel without
    /// cachestat (nothing would be remembered there).
    fn checkable_file(len: usize) -> Option<Arc<File>> {
        let file = cached_file(len);
        sys::is_cached(file.as_raw_fd(), 0, len as u64).then_some(file)
    }

    #[test]
    fn remembers_a_cached_range_for_a_while() {
        let Some(file) = checkable_file(64 << 10) else {
            return;
        };
        let mut memo = Residency::default();
        let t0 = Instant::now();
        assert!(memo.is_cached(&file, 0, 64 << 10, t0));
        assert_eq!(memo.seen.len(), 1);
        // Inside the remembered range and time: no new entry, still true.
        assert!(memo.is_cached(&file, 4096, 4096, t0 + TRUST / 2));
        assert_eq!(memo.seen[0].at, t0);
        // After TRUST the range is checked again and the entry refreshed.
        let later = t0 + TRUST * 2;
        assert!(memo.is_cached(&file, 0, 64 << 10, later));
        assert_eq!(memo.seen.len(), 1);
        assert_eq!(memo.seen[0].at, later);
    }

    #[test]
    fn overlapping_checks_grow_the_remembered_range() {
        let Some(file) = checkable_file(128 << 10) else {
            return;
        };
        let mut memo = Residency::default();
        let t0 = Instant::now();
        assert!(memo.is_cached(&file, 0, 64 << 10, t0));
        // A resumed send from 32 KiB checks up to 96 KiB.
        assert!(memo.is_cached(&file, 32 << 10, 64 << 10, t0 + TRUST / 4));
        assert_eq!((memo.seen[0].start, memo.seen[0].end), (0, 96 << 10));
        assert_eq!(memo.seen[0].at, t0, "trusted from the older check");
        // The next response from the start is answered from the memo.
        assert!(memo.is_cached(&file, 0, 96 << 10, t0 + TRUST / 2));
        assert_eq!(memo.seen.len(), 1);
    }

    #[test]
    fn a_range_past_the_end_of_the_file_is_not_cached() {
        let file = cached_file(4096);
        let mut memo = Residency::default();
        assert!(!memo.is_cached(&file, 0, 1 << 20, Instant::now()));
        assert!(memo.seen.is_empty());
    }

    #[test]
    fn holds_at_most_slots_entries_and_no_descriptor() {
        let mut memo = Residency::default();
        let now = Instant::now();
        let mut weak = Vec::new();
        for _ in 0..SLOTS + 5 {
            let file = cached_file(4096);
            memo.is_cached(&file, 0, 4096, now);
            weak.push(Arc::downgrade(&file));
        }
        assert!(memo.seen.len() <= SLOTS);
        // Every file was dropped after its check: the memo kept none open.
        assert!(weak.iter().all(|w| w.upgrade().is_none()));
    }
}
