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

/// `struct epoll_params` (Linux 6.9): busy polling of one epoll instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollParams {
    /// Microseconds to busy-poll before sleeping.
    pub busy_poll_usecs: u32,
    /// Packets per poll (0: the kernel's default).
    pub busy_poll_budget: u16,
    /// Prefer busy polling over interrupts (1) or not (0).
    pub prefer_busy_poll: u8,
    pad: u8,
}

/// _IOW(0x8A, 0x01, struct epoll_params) and _IOR(0x8A, 0x02, ...).
const EPIOCSPARAMS: libc::c_ulong = 0x4008_8A01;
const EPIOCGPARAMS: libc::c_ulong = 0x8008_8A02;

/// Sets an epoll instance's busy-poll parameters (EPIOCSPARAMS) and reads
/// them back (EPIOCGPARAMS). ENOTTY: a kernel before 6.9.
pub fn set_epoll_busy_poll(
    epfd: RawFd,
    usecs: u32,
    budget: u16,
    prefer: bool,
) -> std::io::Result<EpollParams> {
    let mut params = EpollParams {
        busy_poll_usecs: usecs,
        busy_poll_budget: budget,
        prefer_busy_poll: u8::from(prefer),
        pad: 0,
    };
    // SAFETY: the ioctl reads one `epoll_params` (8 bytes, `repr(C)`, the
    // kernel's layout) from a live local.
    if unsafe { libc::ioctl(epfd, EPIOCSPARAMS as _, &raw mut params) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut back = EpollParams::default();
    // SAFETY: the ioctl writes one `epoll_params` into a live local.
    if unsafe { libc::ioctl(epfd, EPIOCGPARAMS as _, &raw mut back) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(back)
}

/// SO_PREFER_BUSY_POLL and SO_BUSY_POLL_BUDGET (Linux 5.11); not in every
/// `libc` release, the same numbers on every architecture but a few.
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// Sets SO_BUSY_POLL (and, when asked, SO_PREFER_BUSY_POLL and
/// SO_BUSY_POLL_BUDGET) on a listening socket; accepted sockets inherit
/// them. Returns SO_BUSY_POLL as read back. EPERM: raising it needs
/// CAP_NET_ADMIN.
pub fn set_socket_busy_poll(
    fd: RawFd,
    usecs: u32,
    budget: u16,
    prefer: bool,
) -> std::io::Result<u32> {
    let set = |opt: libc::c_int, value: libc::c_int| -> std::io::Result<()> {
        // SAFETY: setsockopt reads one c_int from a live local.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    set(libc::SO_BUSY_POLL, i32::try_from(usecs).unwrap_or(i32::MAX))?;
    if prefer {
        set(SO_PREFER_BUSY_POLL, 1)?;
    }
    if budget > 0 {
        set(SO_BUSY_POLL_BUDGET, libc::c_int::from(budget))?;
    }
    let mut back: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BUSY_POLL,
            (&raw mut back).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u32::try_from(back).unwrap_or(0))
}

/// Steers each new connection of a SO_REUSEPORT group to the socket of
/// the CPU that processed its packets: a classic BPF program
/// (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5) that maps the current CPU to a
/// socket index (`cpus[i]` to socket `i`, in the order the group's
/// sockets were bound); a CPU not in the list falls back to the hash.
pub fn attach_cpu_steering(fd: RawFd, cpus: &[usize]) -> std::io::Result<()> {
    const SKF_AD_OFF: u32 = 0xffff_f000; // -0x1000
    const SKF_AD_CPU: u32 = 36;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = vec![op(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_CPU)];
    for (i, &cpu) in cpus.iter().enumerate() {
        let cpu = u32::try_from(cpu).map_err(|_| std::io::Error::other("CPU number too large"))?;
        let index = u32::try_from(i).map_err(|_| std::io::Error::other("too many sockets"))?;
        prog.push(op(JEQ_K, 0, 1, cpu));
        prog.push(op(RET_K, 0, 0, index));
    }
    // Out of range: the kernel picks by hash, as without a program.
    prog.push(op(RET_K, 0, 0, u32::MAX));
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::Error::other("too many CPUs"))?,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: setsockopt reads one `sock_fprog` whose `filter` points at
    // `prog`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SO_INCOMING_CPU of a socket: the CPU that last processed its packets.
pub fn incoming_cpu(fd: RawFd) -> Option<usize> {
    let mut cpu: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&raw mut cpu).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return None;
    }
    usize::try_from(cpu).ok()
}
