//! The memory behind a core's receive buffers: one anonymous mapping
//! (mmap(2)), on small pages, on transparent huge pages (madvise(2)
//! MADV_HUGEPAGE) or on reserved huge pages (MAP_HUGETLB), optionally
//! touched once by the core that owns it so its pages are placed by that
//! core's memory policy before the kernel writes into them.
//!
//! INVARIANT: `ptr..ptr+len` is mapped, readable and writable, from `map`
//! until `Drop` unmaps it.
#![allow(unsafe_code)]

use std::io;

/// `--huge-pages`: which pages hold the buffer ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HugePages {
    /// Small pages (4 KiB).
    #[default]
    Off,
    /// Transparent huge pages, asked for with MADV_HUGEPAGE (used when
    /// `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or
    /// `always`; the kernel may still give small pages when memory is
    /// fragmented).
    Thp,
    /// Huge pages reserved with `vm.nr_hugepages` (MAP_HUGETLB); refused
    /// when too few are free.
    Hugetlb,
}

impl HugePages {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            HugePages::Off => "off",
            HugePages::Thp => "thp",
            HugePages::Hugetlb => "hugetlb",
        }
    }
}

/// The usual huge page size on x86-64 and arm64 (4 KiB base pages).
const THP_SIZE: usize = 2 << 20;

/// One anonymous private mapping.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
    /// A PROT_NONE page after THP regions, so two cores' regions never
    /// merge into one mapping (and one smaps entry).
    guard: usize,
}

impl Region {
    /// Maps at least `len` zeroed bytes on `pages`.
    pub fn map(len: usize, pages: HugePages) -> io::Result<Region> {
        match pages {
            HugePages::Off => map_anon(len, 0),
            HugePages::Thp => map_thp(len),
            HugePages::Hugetlb => {
                let huge = hugetlb_page_size();
                map_anon(len.div_ceil(huge) * huge, libc::MAP_HUGETLB).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot map {} huge pages of {} KiB ({e}); each core needs that \
                             many: reserve them with sysctl vm.nr_hugepages",
                            len.div_ceil(huge),
                            huge / 1024
                        ),
                    )
                })
            }
        }
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Its length in bytes.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Writes one byte per 4 KiB page, so every page is allocated now, by
    /// the calling thread, under its memory policy.
    pub fn touch(&self) {
        for offset in (0..self.len).step_by(4096) {
            // SAFETY: offset < len, inside the mapping (module INVARIANT);
            // the pages are zero, and writing zero keeps them so.
            unsafe { self.ptr.add(offset).write_volatile(0) };
        }
    }

    /// Bytes of this mapping on huge pages, from /proc/self/smaps
    /// (AnonHugePages for THP, Private_Hugetlb for MAP_HUGETLB). The file
    /// is read in pieces, and another thread changing its mappings
    /// meanwhile can make a reading miss an entry: then it reads again.
    pub fn huge_bytes(&self) -> io::Result<u64> {
        for _ in 0..8 {
            let smaps = std::fs::read_to_string("/proc/self/smaps")?;
            if let Some(kib) = huge_kib_of(&smaps, self.ptr as usize) {
                return Ok(kib * 1024);
            }
        }
        Err(io::Error::other(
            "the mapping is missing from /proc/self/smaps",
        ))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping `map` made, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len + self.guard) };
    }
}

fn map_anon(len: usize, extra: libc::c_int) -> io::Result<Region> {
    // SAFETY: a new private anonymous mapping at an address the kernel
    // picks; it aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Region {
        ptr: ptr.cast(),
        len,
        guard: 0,
    })
}

/// A 2 MiB-aligned mapping of whole huge pages, advised huge, and a guard
/// page: THP only covers aligned 2 MiB ranges, so the mapping is made one
/// huge page larger and trimmed to the aligned part.
fn map_thp(len: usize) -> io::Result<Region> {
    let len = len.div_ceil(THP_SIZE) * THP_SIZE;
    let wide = map_anon(len + THP_SIZE, 0)?;
    let start = wide.ptr as usize;
    let aligned = start.next_multiple_of(THP_SIZE);
    // Both page multiples; the tail is at least one page.
    let (head, tail) = (aligned - start, THP_SIZE - (aligned - start));
    let guard = 4096;
    std::mem::forget(wide);
    // SAFETY: head, the guard page and the rest of the tail lie in the
    // mapping just made, outside the aligned `len` bytes kept; nothing
    // refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(start as *mut libc::c_void, head);
        }
        libc::mprotect((aligned + len) as *mut libc::c_void, guard, libc::PROT_NONE);
        if tail > guard {
            libc::munmap((aligned + len + guard) as *mut libc::c_void, tail - guard);
        }
    }
    let region = Region {
        ptr: aligned as *mut u8,
        len,
        guard,
    };
    // SAFETY: the range is the mapping `region` owns; advice changes only
    // how the kernel backs it.
    if unsafe { libc::madvise(region.ptr.cast(), len, libc::MADV_HUGEPAGE) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("madvise(MADV_HUGEPAGE): {e} (a kernel without transparent huge pages)"),
        ));
    }
    Ok(region)
}

/// The default huge page size (`Hugepagesize:` in /proc/meminfo).
fn hugetlb_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Hugepagesize:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(THP_SIZE)
}

/// The huge-page KiB of the smaps entry whose range holds `addr`; `None`
/// when no entry does.
fn huge_kib_of(smaps: &str, addr: usize) -> Option<u64> {
    let mut inside = false;
    let mut found = false;
    let mut kib = 0;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    found |= inside;
                    continue;
                }
            }
        }
        if !inside {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some("AnonHugePages:" | "Private_Hugetlb:" | "Shared_Hugetlb:"), Some(n)) =
            (words.next(), words.next())
        {
            kib += n.parse::<u64>().unwrap_or(0);
        }
    }
    found.then_some(kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_entry_is_found_by_address() {
        let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      4096 kB
Private_Hugetlb:       0 kB
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
AnonHugePages:         0 kB
Private_Hugetlb:    2048 kB
";
        assert_eq!(huge_kib_of(smaps, 0x7f00_0000_0000), Some(4096));
        assert_eq!(huge_kib_of(smaps, 0x7f00_003f_ffff), Some(4096));
        assert_eq!(huge_kib_of(smaps, 0x7f00_0040_0000), Some(2048));
        assert_eq!(huge_kib_of(smaps, 0x1000), None);
    }

    #[test]
    fn small_pages_map_and_touch() {
        let region = Region::map(3 * 4096, HugePages::Off).unwrap();
        region.touch();
        assert_eq!(region.huge_bytes().unwrap(), 0);
    }

    #[test]
    fn thp_region_is_aligned_and_whole() {
        let region = Region::map(3 << 20, HugePages::Thp).unwrap();
        assert_eq!(region.as_ptr() as usize % THP_SIZE, 0);
        assert_eq!(region.len, 4 << 20);
        region.touch();
    }
}
