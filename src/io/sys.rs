//! The few raw system calls the backends need that mio, socket2 and nix
//! do not wrap.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

use nix::libc;

/// Connections waiting in a listening socket's accept queue: TCP_INFO's
/// `tcpi_unacked` holds `sk_ack_backlog` for a socket in LISTEN (see
/// `tcp_get_info` in net/ipv4/tcp.c). `None` if the call fails.
///
/// Why: accept4(2) on an empty queue still allocates and frees a socket and
/// a file before failing with EAGAIN, which profiling showed costs more
/// than this getsockopt. Asking first saves that failed accept.
pub fn accept_queue_len(listener: RawFd) -> Option<u32> {
    // SAFETY: tcp_info is plain old data; all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info`, which is a
    // live, properly aligned local of exactly that size.
    let rc = unsafe {
        libc::getsockopt(
            listener,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info.tcpi_unacked)
}

/// cachestat(2) (Linux 6.5); the same number on every architecture that
/// uses the generic syscall table, x86_64 included. Not in `libc` yet for
/// every target.
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `len` bytes of `file` from `offset` is in the page
/// cache, so sendfile(2) will not wait for the disk. False when unsure
/// (an older kernel, an error, pages larger than 4 KiB): callers then take
/// the path that cannot block.
pub fn is_cached(file: RawFd, offset: u64, len: u64) -> bool {
    const PAGE: u64 = 4096;
    if len == 0 {
        return true;
    }
    let range = CachestatRange { off: offset, len };
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads one `cachestat_range` and writes one
    // `cachestat`, both live locals with the kernel's #[repr(C)] layout
    // (five and two u64s); flags must be 0.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, file, &raw const range, &raw mut stat, 0u32) };
    let pages = (offset + len).div_ceil(PAGE) - offset / PAGE;
    rc == 0 && stat.nr_cache >= pages
}
