//! The few raw system calls the epoll backend needs that mio and socket2
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
