//! The io_uring backend: one ring per core, multishot accept, multishot
//! recv into a provided-buffer ring, and every send of a loop turn
//! submitted with the one io_uring_enter that also waits. File bodies up
//! to 16 KiB, and any range not wholly in the page cache, are read
//! through the ring (page cache or io-wq, never a blocking read on the
//! loop) into a pooled buffer and sent like any other output; larger
//! cached ranges go out with sendfile(2) from the loop (`send_file`).
//!
//! Same vocabulary as `epoll.rs`: accept, receive, hand bytes to `Conn`,
//! flush, arm the timer, close. What differs is ownership: the kernel
//! holds a connection's socket and send buffer while an operation is in
//! flight, so a slot is released only when its last completion (cancels
//! included) has arrived.
//!
//! INVARIANT: a slab slot, its descriptor and its in-flight send or file
//! read buffer (`Entry::sending`) stay
//! put until `Entry::ops` is zero, i.e. until the final CQE of every SQE
//! that names them. Receive buffers belong to the per-core `BufRing`.
//!
//! `user_data` layout (one place, `UserData`):
//!
//! | bits   | field                             |
//! |--------|-----------------------------------|
//! | 56..64 | operation (`Op`)                  |
//! | 32..56 | slot generation (24 bits)         |
//! | 0..32  | slab key                          |
#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe, Submitter};
use nix::libc;
use slab::Slab;
use socket2::SockRef;

use super::buf_ring::BufRing;
use super::region::{HugePages, Region};
use super::resident::Residency;
use super::upstream::{Clients, Readiness, Upstreams};
use super::wheel::{Armed, Wheel};
use super::{send_file, Core, CoreReport, Deliver, Env, Slot, FILE_BYTES_PER_TURN};
use crate::config::Config;
use crate::handler::Handler;
use crate::http::{Conn, FileBody};
use crate::metrics::CoreStats;
use crate::numa::Policy;
use crate::shutdown::Wake;

/// How long accept stays paused after EMFILE/ENFILE before it is re-armed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Buffer group id of the core's receive buffers.
const BUF_GROUP: u16 = 0;
/// Bytes of a file body read per ring Read; fits the buffer pool's
/// largest kept buffer, so file buffers are reused, not reallocated.
const FILE_CHUNK: usize = 64 * 1024;
/// A file this small that follows a response head is read into the head's
/// buffer: one Read and one Send (one TCP segment) per response.
const SMALL_FILE: u64 = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Cancel = 4,
    Shutdown = 5,
    Wake = 6,
    Read = 7,
    Writable = 8,
    Close = 9,
    /// A multishot poll on an upstream link (key: the link's id).
    Upstream = 10,
}

/// Operation, generation and slab key packed into a CQE's user_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UserData {
    op: Op,
    gen: u32,
    key: usize,
}

/// The key of core-wide operations' cancels: no slab slot has it.
const NO_SLOT: usize = 0xffff_ffff;

impl UserData {
    /// A core-wide operation: the accept or the wake-up poll.
    fn core(op: Op) -> UserData {
        UserData { op, gen: 0, key: 0 }
    }

    fn encode(self) -> u64 {
        (self.op as u64) << 56
            | u64::from(self.gen & 0xff_ffff) << 32
            | (self.key as u64 & 0xffff_ffff)
    }

    fn decode(raw: u64) -> Option<UserData> {
        let op = match raw >> 56 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Shutdown,
            6 => Op::Wake,
            7 => Op::Read,
            8 => Op::Writable,
            9 => Op::Close,
            10 => Op::Upstream,
            _ => return None,
        };
        Some(UserData {
            op,
            gen: (raw >> 32) as u32 & 0xff_ffff,
            key: (raw & 0xffff_ffff) as usize,
        })
    }
}

/// An eventfd the shutdown signal writes to; the loop polls it.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a
        // fresh descriptor that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid descriptor we own (just created).
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn clear(&self) {
        let mut value = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte stack buffer.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), value.as_mut_ptr().cast(), 8) };
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from an 8-byte stack buffer.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// Creates a ring with the best flags the kernel accepts: SINGLE_ISSUER |
/// DEFER_TASKRUN, then COOP_TASKRUN, then none (SQPOLL rings take none of
/// those). Returns it with the name of the flags used and, after a
/// fallback, why the better flags were refused.
pub fn build_ring(config: &Config) -> io::Result<(IoUring, &'static str, Option<String>)> {
    let cq = config.ring_entries.saturating_mul(4);
    let base = || {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        b
    };
    if let Some(idle) = config.sqpoll {
        let mut b = base();
        b.setup_sqpoll(idle);
        if let Some(cpu) = config.sqpoll_cpu {
            b.setup_sqpoll_cpu(cpu);
        }
        return b
            .build(config.ring_entries)
            .map(|ring| (ring, "sqpoll", None));
    }
    let defer = match base()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(config.ring_entries)
    {
        Ok(ring) => return Ok((ring, "single_issuer|defer_taskrun", None)),
        Err(e) => e,
    };
    let coop = match base()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(config.ring_entries)
    {
        Ok(ring) => {
            return Ok((
                ring,
                "coop_taskrun",
                Some(format!("SINGLE_ISSUER|DEFER_TASKRUN refused: {defer}")),
            ))
        }
        Err(e) => e,
    };
    let ring = base().build(config.ring_entries)?;
    Ok((
        ring,
        "none",
        Some(format!(
            "DEFER_TASKRUN refused: {defer}; COOP_TASKRUN refused: {coop}"
        )),
    ))
}

/// Checks that this process may use io_uring as the backend needs it:
/// ring creation, every opcode, provided buffer rings. `Err` names the
/// reason in one line. `CORELOOP_NO_URING=<reason>` fails the probe on
/// purpose (tests, or an operator ruling io_uring out).
pub fn probe(config: &Config) -> Result<(), String> {
    if let Some(reason) = std::env::var_os("CORELOOP_NO_URING") {
        return Err(format!(
            "disabled by CORELOOP_NO_URING={}",
            reason.to_string_lossy()
        ));
    }
    let (ring, _, _) = build_ring(config).map_err(|e| setup_reason(&e))?;
    if config.ring_batch.is_some() && !ring.params().is_feature_min_timeout() {
        return Err("--ring-batch needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12+)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let needed = [
        ("accept", opcode::AcceptMulti::CODE),
        ("recv", opcode::RecvMulti::CODE),
        ("send", opcode::Send::CODE),
        ("read", opcode::Read::CODE),
        ("close", opcode::Close::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
        ("shutdown", opcode::Shutdown::CODE),
        ("poll_add", opcode::PollAdd::CODE),
    ];
    for (name, code) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks the io_uring {name} opcode"));
        }
    }
    BufRing::probe(ring)
        .map_err(|e| format!("provided buffer rings refused (Linux 5.19+ needed): {e}"))
}

/// The optional io_uring features coreloop's knobs use, as this kernel
/// offers them (for `coreloop doctor`): `offers: ...; lacks: ...`.
pub fn features() -> Result<String, String> {
    let ring = IoUring::new(8).map_err(|e| setup_reason(&e))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let p = ring.params();
    let list = [
        ("ext_arg (wait with a timeout)", p.is_feature_ext_arg()),
        ("fast_poll", p.is_feature_fast_poll()),
        (
            "min_timeout (--ring-batch, 6.12)",
            p.is_feature_min_timeout(),
        ),
        ("recv/send bundles (6.10)", p.is_feature_recvsend_bundle()),
        ("no_iowait (6.15)", p.is_feature_no_iowait()),
        ("send_zc (6.0)", probe.is_supported(opcode::SendZc::CODE)),
        (
            "read_multishot (6.7)",
            probe.is_supported(opcode::ReadMulti::CODE),
        ),
        (
            "futex_wait (6.7)",
            probe.is_supported(opcode::FutexWait::CODE),
        ),
    ];
    let pick = |want: bool| -> Vec<&str> {
        list.iter()
            .filter(|(_, on)| *on == want)
            .map(|(n, _)| *n)
            .collect()
    };
    let (offers, lacks) = (pick(true), pick(false));
    Ok(format!(
        "offers: {}; lacks: {}",
        if offers.is_empty() {
            "none".into()
        } else {
            offers.join(", ")
        },
        if lacks.is_empty() {
            "none".into()
        } else {
            lacks.join(", ")
        }
    ))
}

fn setup_reason(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "io_uring_setup: operation not permitted (EPERM; kernel.io_uring_disabled={}, or a seccomp filter)",
            disabled.as_deref().map_or("?", str::trim)
        ),
        Some(libc::ENOSYS) => "io_uring_setup: not implemented by this kernel (ENOSYS)".into(),
        Some(libc::ENOMEM) => "io_uring_setup: out of memory (ENOMEM; check RLIMIT_MEMLOCK)".into(),
        _ => format!("io_uring_setup: {e}"),
    }
}

/// One connection slot.
struct Entry {
    fd: OwnedFd,
    conn: Conn,
    gen: u32,
    /// SQEs naming this slot whose final completion has not arrived.
    ops: u32,
    recv_armed: bool,
    recv_cancelled: bool,
    /// No receive was armed yet (the first one is single-shot).
    fresh: bool,
    /// The buffer being sent and how much of it went out; it stays here
    /// until fully sent (short sends continue from `sent`). While a file
    /// Read is in flight (`out_op`), the buffer it fills; the read bytes
    /// are then sent from it.
    sending: Option<Vec<u8>>,
    sent: usize,
    /// The output operation in flight, if any: a Send, a file Read, or a
    /// wait for the socket to take more (after sendfile met EAGAIN).
    out_op: Option<Op>,
    /// The file that Read reads from, held here so its descriptor stays
    /// open until the Read completes (the connection may drop its copy).
    reading_from: Option<FileBody>,
    eof: bool,
    closing: bool,
    /// The peer's IPv4 address once a request was forwarded; 0: not
    /// known (an IPv6 peer is looked up per forwarded request).
    peer_v4: u32,
    linger_until: Option<Instant>,
    /// Where its deadline is armed in the wheel (at most one entry per
    /// connection), or `Armed::NONE`.
    armed: Armed,
    dirty: bool,
}

struct Loop<'r, H> {
    id: usize,
    /// Queues are taken from a shared reference (`submission_shared`,
    /// `completion_shared`) so the registered `submitter` can live beside
    /// it; the loop never holds two views of a queue at once.
    ring: &'r IoUring,
    submitter: Submitter<'r>,
    bufs: &'r mut BufRing,
    /// Usually one; more when inherited sockets outnumber the workers.
    listeners: Vec<TcpListener>,
    /// Per listener: its multishot accept is in the ring.
    accepting: Vec<bool>,
    /// The accepts were cancelled (connection limit) and not re-armed yet.
    accept_cancelled: bool,
    accept_retry: Option<Instant>,
    /// Out of descriptors since the last successful accept (logged once).
    nofile: bool,
    wake: Arc<EventFd>,
    conns: Slab<Entry>,
    wheel: Wheel,
    dirty: Vec<usize>,
    due: Vec<(usize, u32)>,
    cqes: Vec<(u64, i32, u32)>,
    env: Env<H>,
    up: Upstreams,
    /// The core's counters again, for pushes made beside a borrowed `env`.
    stats: Arc<crossbeam_utils::CachePadded<CoreStats>>,
    /// Which file ranges were lately found in the page cache.
    resident: Residency,
    now: Instant,
    next_gen: u32,
    max_conns: usize,
    /// `Config::ring_batch`: completions per wait, and for how long.
    batch: Option<(u32, Duration)>,
    linger: Duration,
    shutdown: crate::shutdown::Shutdown,
    shutdown_timeout: Duration,
    drain_deadline: Option<Instant>,
    drain_sweep: bool,
    draining_from: usize,
    /// A handoff drain: idle connections wait this long for one more
    /// request (`Conn::handle_handoff`).
    handoff_until: Option<Instant>,
}

/// Runs one core's loop until shutdown completes.
pub fn run<H: Handler>(mut core: Core, handler: H) -> io::Result<CoreReport> {
    let started = core.started.take();
    let config = core.config.clone();
    // Declared before the ring, so dropped after it. With the ring fd
    // unregistered (teardown), closing `ring` ends the io_uring instance,
    // so the buffers outlive every operation it could still hold.
    let mut bufs: BufRing;
    let (ring, flags, fallback) = build_ring(&config)?;
    if let Some(why) = fallback {
        log::info!("core {}: io_uring ring with flags {flags} ({why})", core.id);
    }
    let mut submitter = ring.submitter();
    // IORING_REGISTER_RING_FDS (Linux 5.18): every io_uring_enter names the
    // ring by its index in this thread's table, skipping the descriptor
    // lookup and reference count of each call.
    if let Err(e) = submitter.register_ring_fd() {
        log::info!(
            "core {}: ring fd not registered ({e}); entering by descriptor",
            core.id
        );
    }
    let region = Region::map(
        usize::from(config.buf_count) * config.buf_size,
        config.huge_pages,
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--huge-pages {}: {e}", config.huge_pages.name()),
        )
    })?;
    if config.numa != Policy::Off || config.huge_pages != HugePages::Off {
        region.touch();
    }
    super::record_placement(
        core.id,
        &config,
        &core.stats,
        region.as_ptr(),
        Some(&region),
    );
    bufs = BufRing::new(
        &submitter,
        region,
        config.buf_count,
        config.buf_size,
        BUF_GROUP,
    )?;
    if let Some(bp) = &config.busy_poll {
        super::busy_poll_listeners(&core.listeners, bp)?;
        let back = register_napi(&submitter, bp)?;
        log::info!(
            "core {}: busy polling {back} us, prefer {} (read back from the ring's NAPI settings)",
            core.id,
            bp.prefer
        );
        core.stats
            .busy_poll_usecs
            .store(back, std::sync::atomic::Ordering::Relaxed);
    }
    let wake = Arc::new(EventFd::new()?);
    core.shutdown.add_waker(wake.clone());
    log::debug!("core {}: io_uring ring flags {flags}", core.id);
    let now = Instant::now();
    let mut lp = Loop {
        id: core.id,
        ring: &ring,
        submitter,
        bufs: &mut bufs,
        accepting: vec![false; core.listeners.len()],
        listeners: core.listeners,
        accept_cancelled: false,
        accept_retry: None,
        nofile: false,
        wake,
        conns: Slab::with_capacity(config.max_conns.min(4096)),
        wheel: Wheel::new(now),
        dirty: Vec::new(),
        due: Vec::new(),
        cqes: touched_cqes(config.ring_entries as usize * 4),
        up: Upstreams::new(&config.upstreams, &config.proxy, core.stats.clone(), now),
        stats: core.stats.clone(),
        env: Env::new(
            &config,
            core.stats,
            handler,
            core.access_log.take(),
            core.cpu,
        ),
        resident: Residency::default(),
        now,
        next_gen: 0,
        max_conns: config.max_conns,
        batch: config.ring_batch,
        linger: config.linger_timeout,
        shutdown: core.shutdown,
        shutdown_timeout: config.shutdown_timeout,
        drain_deadline: None,
        drain_sweep: false,
        draining_from: 0,
        handoff_until: None,
    };
    lp.arm_accept();
    lp.arm_wake();
    if let Some(started) = started {
        let _ = started.send(lp.id);
    }
    let report = lp.run();
    let bufs_in_use = lp.teardown();
    drop(lp);
    if bufs_in_use {
        // The kernel may still write into them: leak rather than free.
        std::mem::forget(bufs);
    }
    report
}

/// The user data of listener `key`'s multishot accept.
fn accept_op(key: usize) -> UserData {
    UserData {
        op: Op::Accept,
        gen: 0,
        key,
    }
}

/// IORING_REGISTER_NAPI (Linux 6.9): the ring busy-polls the NAPI
/// instances of its sockets. Returns the timeout read back: the kernel
/// writes the previous settings into the argument, so registering the same
/// settings twice reads them.
fn register_napi(submitter: &Submitter<'_>, bp: &crate::config::BusyPoll) -> io::Result<u32> {
    let napi = types::Napi::new()
        .set_busy_poll_timeout(bp.usecs)
        .set_prefer_busy_poll(bp.prefer);
    let refused = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("--busy-poll: the ring's busy polling (IORING_REGISTER_NAPI, Linux 6.9): {e}"),
        )
    };
    submitter
        .register_napi(&mut napi.clone())
        .map_err(refused)?;
    let mut again = napi;
    submitter.register_napi(&mut again).map_err(refused)?;
    Ok(again.busy_poll_timeout())
}

/// Room for a full completion queue, written once now: a batch larger
/// than any before would otherwise touch new pages of it (64 KiB at the
/// default size), one by one over a long run, as a slow RSS creep.
fn touched_cqes(len: usize) -> Vec<(u64, i32, u32)> {
    let mut cqes = vec![(u64::MAX, 0, 0); len];
    cqes.clear();
    cqes
}

impl<H: Handler> Loop<'_, H> {
    fn run(&mut self) -> io::Result<CoreReport> {
        loop {
            self.submit_and_wait()?;
            self.now = Instant::now();
            self.env.date.update(SystemTime::now());
            self.env.tick(self.now);
            if self.drain_deadline.is_none() && self.shutdown.is_triggered() {
                self.begin_drain();
            } else if self.drain_sweep {
                self.drain_sweep = false;
                self.sweep_idle();
            }
            self.reap();
            self.expire();
            if self.accept_retry.is_some_and(|at| self.now >= at) {
                self.accept_retry = None;
                self.arm_accept();
            }
            self.flush_dirty();
            self.bufs.publish();
            let window = u32::from(self.bufs.window());
            self.env
                .stats
                .ring_window
                .store(window, std::sync::atomic::Ordering::Relaxed);
            if let Some(report) = self.drain_done() {
                return Ok(report);
            }
        }
    }

    /// One io_uring_enter: submits everything queued this turn and waits
    /// for a completion or the next deadline.
    fn submit_and_wait(&mut self) -> io::Result<()> {
        let timeout = self.wait_timeout();
        self.env.stats.ring_enters.inc();
        let (want, min_wait) = match self.batch {
            Some((n, wait)) => (n, u32::try_from(wait.as_micros()).unwrap_or(u32::MAX)),
            None => (1, 0),
        };
        // min_wait without an overall timeout returns ETIME at once on an
        // idle ring: batch only waits that have a deadline past min_wait.
        let result = match timeout {
            Some(d) if want > 1 && d.as_micros() > u128::from(min_wait) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new()
                    .timespec(&ts)
                    .min_wait_usec(min_wait);
                self.submitter.submit_with_args(want as usize, &args)
            }
            Some(d) if d.is_zero() && !self.ring.params().is_setup_sqpoll() => self.enter_nowait(),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.submitter.submit_with_args(1, &args)
            }
            None => self.submitter.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Submits, runs deferred task work and returns without waiting. A
    /// zero timespec would do the same but arm an hrtimer whose interrupt
    /// then wakes the loop: under a 1 MiB-file load that was one timer
    /// interrupt for every two or three responses (perf: sched_waking from
    /// `io_cqring_timer_wakeup`).
    fn enter_nowait(&self) -> io::Result<usize> {
        // SAFETY: a temporary, the only view of the submission queue.
        let queued = unsafe { self.ring.submission_shared() }.len();
        let queued = u32::try_from(queued).unwrap_or(u32::MAX);
        let flags = EnterFlags::GETEVENTS.bits();
        // SAFETY: no argument is passed; GETEVENTS with min_complete 0
        // waits for nothing.
        unsafe {
            self.submitter
                .enter::<libc::sigset_t>(queued, 0, flags, None)
        }
    }

    fn wait_timeout(&self) -> Option<Duration> {
        if self.drain_sweep || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut timeout = self.wheel.next_timeout(self.now);
        if let Some(d) = self.up.next_timeout(self.now) {
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        for at in [self.accept_retry, self.drain_deadline, self.env.log_due()]
            .into_iter()
            .flatten()
        {
            let d = at.saturating_duration_since(self.now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        timeout
    }

    /// Queues an SQE; when the queue is full, submits first to make room.
    fn push(&mut self, entry: squeue::Entry, ud: UserData) -> io::Result<()> {
        push_entry(self.ring, &self.submitter, &self.env.stats, entry, ud)
    }

    /// Cancels a core-wide operation (an accept, the wake-up poll).
    fn cancel_core(&mut self, target: UserData) {
        let op = target.op;
        let cancel = opcode::AsyncCancel::new(target.encode()).build();
        let ud = UserData {
            op: Op::Cancel,
            gen: 0,
            key: NO_SLOT,
        };
        if let Err(e) = self.push(cancel, ud) {
            log::error!("core {}: cancelling {op:?}: {e}", self.id);
        }
    }

    /// Cancels slot `key`'s operation `op` (counted against the slot).
    fn cancel_slot(&mut self, key: usize, op: Op) {
        let Some(e) = self.conns.get(key) else { return };
        let target = UserData {
            op,
            gen: e.gen,
            key,
        }
        .encode();
        self.push_for(key, Op::Cancel, opcode::AsyncCancel::new(target).build());
    }

    /// Queues an SQE that names slot `key`, counting it against the slot.
    fn push_for(&mut self, key: usize, op: Op, entry: squeue::Entry) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        e.ops += 1;
        let gen = e.gen;
        if let Err(err) = self.push(entry, UserData { op, gen, key }) {
            log::error!("core {}: io_uring submit failed: {err}", self.id);
            if let Some(e) = self.conns.get_mut(key) {
                e.ops -= 1;
            }
        }
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        // SAFETY: the only view of the completion queue; it is dropped
        // (publishing the new head) before anything else touches the ring.
        let cq = unsafe { self.ring.completion_shared() };
        cqes.extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
        self.env.stats.ring_completions.add(cqes.len() as u64);
        for &(raw, res, flags) in &cqes {
            let Some(ud) = UserData::decode(raw) else {
                continue;
            };
            match ud.op {
                Op::Accept => self.on_accept(ud.key, res, flags),
                Op::Recv => self.on_recv(ud, res, flags),
                Op::Send => self.on_send(ud, res),
                Op::Read => self.on_read(ud, res),
                Op::Writable => self.on_writable(ud, res),
                Op::Close => {}
                Op::Cancel | Op::Shutdown => self.op_done(ud),
                Op::Wake => self.on_wake(flags),
                Op::Upstream => self.on_upstream(ud, res, flags),
            }
        }
        self.cqes = cqes;
    }

    /// The shutdown eventfd fired. A multishot poll the kernel ended (CQ
    /// overflow) is armed again, or an idle core could miss the signal.
    fn on_wake(&mut self, flags: u32) {
        self.wake.clear();
        if !cqueue::more(flags) && self.drain_deadline.is_none() {
            self.arm_wake();
        }
    }

    fn arm_wake(&mut self) {
        let poll = opcode::PollAdd::new(types::Fd(self.wake.0.as_raw_fd()), libc::POLLIN as u32)
            .multi(true);
        if let Err(e) = self.push(poll.build(), UserData::core(Op::Wake)) {
            log::error!("core {}: arming the shutdown wake-up: {e}", self.id);
        }
    }

    /// Arms a multishot accept on every listener that has none.
    fn arm_accept(&mut self) {
        if self.drain_deadline.is_some() || self.conns.len() >= self.max_conns {
            return;
        }
        self.accept_cancelled = false;
        for key in 0..self.listeners.len() {
            if self.accepting[key] {
                continue;
            }
            // Non-blocking, for the one call the loop makes itself
            // (sendfile); the ring's own socket operations wait by polling.
            let fd = self.listeners[key].as_raw_fd();
            let sqe = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build();
            if self.push(sqe, accept_op(key)).is_ok() {
                self.accepting[key] = true;
            }
        }
    }

    fn accept_armed(&self) -> bool {
        self.accepting.iter().any(|&a| a)
    }

    fn cancel_accepts(&mut self) {
        self.accept_cancelled = true;
        for key in 0..self.accepting.len() {
            if self.accepting[key] {
                self.cancel_core(accept_op(key));
            }
        }
    }

    fn on_accept(&mut self, key: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            if let Some(armed) = self.accepting.get_mut(key) {
                *armed = false;
            }
            if self.drain_deadline.is_some() && !self.accept_armed() {
                // Every cancelled accept is reaped: our descriptors can
                // close (after a handoff, the sockets live on in the new
                // process, which holds the same ones).
                self.listeners.clear();
            }
        }
        if res >= 0 {
            // SAFETY: a successful accept completion carries a new
            // descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            self.nofile = false;
            self.add(fd);
        } else if matches!(
            -res,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            if !self.nofile {
                self.nofile = true;
                log::warn!(
                    "core {}: out of file descriptors: accept paused, retrying every {} ms",
                    self.id,
                    ACCEPT_RETRY.as_millis()
                );
            }
            self.accept_retry = Some(self.now + ACCEPT_RETRY);
            return;
        } else if -res != libc::ECANCELED {
            log::debug!(
                "core {}: accept: {}",
                self.id,
                io::Error::from_raw_os_error(-res)
            );
        }
        if self.conns.len() >= self.max_conns {
            if self.accept_armed() && !self.accept_cancelled {
                log::warn!(
                    "core {}: {} connections open (--max-conns): not accepting until one closes",
                    self.id,
                    self.conns.len()
                );
                self.cancel_accepts();
            }
        } else if self.accept_retry.is_none() {
            self.arm_accept();
        }
    }

    /// Takes an accepted connection. One that completes after the drain
    /// began (its accept raced the cancel) is served like the others,
    /// never dropped: closing it would reset a client the kernel already
    /// told it was connected.
    fn add(&mut self, fd: OwnedFd) {
        let peer = || {
            let addr = socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()?;
            Some(addr.ip())
        };
        let Some(conn) = self.env.new_conn(self.now, peer) else {
            return;
        };
        self.env.count_incoming(fd.as_raw_fd());
        self.next_gen = self.next_gen.wrapping_add(1) & 0xff_ffff;
        let key = self.conns.insert(Entry {
            fd,
            conn,
            gen: self.next_gen,
            ops: 0,
            recv_armed: false,
            recv_cancelled: false,
            fresh: true,
            sending: None,
            sent: 0,
            out_op: None,
            reading_from: None,
            eof: false,
            peer_v4: 0,
            closing: false,
            linger_until: None,
            armed: Armed::NONE,
            dirty: false,
        });
        self.env.stats.accepted.inc();
        self.env.stats.active.inc();
        if let Some(e) = self.conns.get_mut(key) {
            if self.drain_deadline.is_some() {
                super::drain_one(&mut e.conn, self.handoff_until);
            }
        }
        self.arm_recv(key);
        self.arm(key);
    }

    fn arm_recv(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if e.recv_armed || e.eof || e.closing {
            return;
        }
        e.recv_armed = true;
        e.recv_cancelled = false;
        let fd = types::Fd(e.fd.as_raw_fd());
        // A new connection's first receive is single-shot: a client that
        // sends one request and closes (Connection: close) then leaves no
        // receive to cancel before the close. Multishot from the second.
        let sqe = if std::mem::take(&mut e.fresh) {
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(self.bufs.group())
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(fd, self.bufs.group()).build()
        };
        self.push_for(key, Op::Recv, sqe);
    }

    fn live(&mut self, ud: UserData) -> Option<&mut Entry> {
        self.conns.get_mut(ud.key).filter(|e| e.gen == ud.gen)
    }

    fn on_recv(&mut self, ud: UserData, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let now = self.now;
        let Some(e) = self.conns.get_mut(ud.key).filter(|e| e.gen == ud.gen) else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            e.recv_armed = false;
            e.ops -= 1;
        }
        if res > 0 {
            if let Some(bid) = bid {
                // NOTE(cast): res > 0 was checked.
                let data = self.bufs.get(bid, res as usize);
                if e.linger_until.is_none() && !e.closing {
                    e.conn.handle_input(data, &mut self.env.ctx(now));
                }
            }
        } else if res == 0 {
            e.eof = true;
            e.conn.handle_eof();
        } else if -res == libc::ENOBUFS {
            self.env.stats.ring_no_buffers.inc();
            self.bufs.starved();
        } else if -res != libc::ECANCELED {
            e.eof = true;
            e.linger_until = None;
            e.conn.handle_abort();
        }
        if let Some(bid) = bid {
            self.bufs.recycle(bid);
        }
        self.mark(ud.key);
    }

    fn on_send(&mut self, ud: UserData, res: i32) {
        let now = self.now;
        let Some(e) = self.conns.get_mut(ud.key).filter(|e| e.gen == ud.gen) else {
            return;
        };
        e.ops -= 1;
        e.out_op = None;
        if res < 0 {
            if let Some(buf) = e.sending.take() {
                self.env.pool.give(buf);
            }
            e.sent = 0;
            e.conn.handle_abort();
            e.eof = true;
            self.mark(ud.key);
            return;
        }
        // NOTE(cast): res >= 0 was checked.
        let n = res as usize;
        e.sent += n;
        self.env.stats.bytes_out.add(n as u64);
        let env = &mut self.env;
        let resume = e.conn.on_sent(n, now, &env.limits, &mut env.pool);
        if e.sending.as_ref().is_some_and(|buf| e.sent >= buf.len()) {
            if let Some(buf) = e.sending.take() {
                env.pool.give(buf);
            }
            e.sent = 0;
        }
        if resume {
            e.conn.handle_input(&[], &mut env.ctx(now));
        }
        self.mark(ud.key);
    }

    /// A file Read completed: what it read is sent next. Zero bytes means
    /// the file shrank under a response that promised its length.
    fn on_read(&mut self, ud: UserData, res: i32) {
        let Some(e) = self.conns.get_mut(ud.key).filter(|e| e.gen == ud.gen) else {
            return;
        };
        e.ops -= 1;
        e.out_op = None;
        e.reading_from = None;
        let Some(mut buf) = e.sending.take() else {
            return;
        };
        let len = buf.len();
        match usize::try_from(res) {
            Ok(n) if n > 0 && n <= buf.capacity() - len => {
                // SAFETY: the kernel wrote `n` bytes at the start of `buf`'s
                // spare capacity (the Read named that memory, at `len`, and
                // at most the spare length), so `len + n` bytes are
                // initialised and within the capacity.
                unsafe { buf.set_len(len + n) };
                e.sending = Some(buf);
                e.sent = 0;
            }
            _ => {
                self.env.pool.give(buf);
                e.conn.handle_abort();
                e.eof = true;
            }
        }
        self.mark(ud.key);
    }

    /// The socket can take more after sendfile met a full buffer.
    fn on_writable(&mut self, ud: UserData, res: i32) {
        let Some(e) = self.live(ud) else {
            return;
        };
        e.ops -= 1;
        e.out_op = None;
        if res < 0 && -res != libc::ECANCELED {
            e.conn.handle_abort();
            e.eof = true;
        }
        self.mark(ud.key);
    }

    /// A cancel or shutdown for this slot completed.
    fn op_done(&mut self, ud: UserData) {
        if let Some(e) = self.live(ud) {
            e.ops -= 1;
            self.mark(ud.key);
        }
    }

    fn mark(&mut self, key: usize) {
        if let Some(e) = self.conns.get_mut(key) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// For every connection touched this turn: send what it produced (one
    /// send in flight at most), close or linger when it is done, keep its
    /// receive armed or paused, and arm its deadline.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(e) = self.conns.get_mut(key) {
                e.dirty = false;
                self.settle(key);
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
            self.dirty.clear();
        }
    }

    fn settle(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if e.closing {
            self.try_release(key);
            return;
        }
        self.forward(key);
        self.start_output(key);
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if e.linger_until.is_some() {
            if e.eof {
                self.begin_close(key);
            } else {
                self.arm_recv(key);
                self.arm(key);
            }
            return;
        }
        if e.conn.is_done() {
            if e.conn.is_idle() && self.input_may_wait(key) {
                return;
            }
            let Some(e) = self.conns.get_mut(key) else {
                return;
            };
            if e.conn.lingers() && !e.eof {
                e.linger_until = Some(self.now + self.linger);
                let sqe = opcode::Shutdown::new(types::Fd(e.fd.as_raw_fd()), libc::SHUT_WR).build();
                self.push_for(key, Op::Shutdown, sqe);
                self.arm_recv(key);
                self.arm(key);
            } else {
                self.begin_close(key);
            }
            return;
        }
        if e.conn.wants_read() {
            self.arm_recv(key);
        } else if e.recv_armed && !e.recv_cancelled {
            // Too much unsent output: stop receiving until the peer reads.
            e.recv_cancelled = true;
            self.cancel_slot(key, Op::Recv);
        }
        self.arm(key);
    }

    /// Sends a request the connection forwards, or reads more of its
    /// reply once the connection has room for it.
    fn forward(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(step) = super::upstream_step(e, key, &mut self.up, self.now) {
            self.with_upstreams(|up, r, c, now| up.advance(step, now, r, c));
        }
    }

    /// Runs `f` on the upstreams with this loop's ring and clients.
    fn with_upstreams(
        &mut self,
        f: impl FnOnce(&mut Upstreams, &mut dyn Readiness, &mut dyn Clients, Instant),
    ) {
        let mut r = RingWatch {
            ring: self.ring,
            submitter: &self.submitter,
            stats: &self.stats,
        };
        let mut c = Deliver {
            conns: &mut self.conns,
            env: &mut self.env,
            now: self.now,
            marks: &mut self.dirty,
        };
        f(&mut self.up, &mut r, &mut c, self.now);
    }

    fn on_upstream(&mut self, ud: UserData, res: i32, flags: u32) {
        let (uid, gen) = (ud.key, ud.gen);
        if res < 0 {
            if res != -libc::ECANCELED {
                self.with_upstreams(|up, r, _, _| up.rewatch(uid, gen, r));
            }
            return;
        }
        // NOTE(cast): a poll's result is its event mask.
        let mask = res as u32 as libc::c_short;
        let readable = mask & libc::POLLIN != 0;
        let writable = mask & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0;
        let hung_up = mask & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
        self.with_upstreams(|up, r, c, now| {
            up.on_ready(uid, gen, readable, writable, hung_up, now, r, c);
            if !cqueue::more(flags) {
                up.rewatch(uid, gen, r);
            }
        });
    }

    /// Whether an idle connection that a drain would close may still have
    /// a request in the kernel; if so it stays open, waiting for it.
    ///
    /// Deferred task work reaches the completion queue a bounded number of
    /// items per enter, so "no completion yet" does not mean "no request".
    /// The receive is cancelled first; once its final completion is in (any
    /// bytes it took are handled), nothing but this loop can take bytes
    /// from the socket, so a peek then answers exactly. Bytes found re-arm
    /// a receive; the request is answered with `Connection: close`.
    fn input_may_wait(&mut self, key: usize) -> bool {
        let Some(e) = self.conns.get_mut(key) else {
            return false;
        };
        if e.eof {
            return false;
        }
        if e.recv_armed {
            if !e.recv_cancelled {
                e.recv_cancelled = true;
                self.cancel_slot(key, Op::Recv);
            }
            self.arm(key);
            return true;
        }
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
        match SockRef::from(&e.fd).recv_with_flags(&mut byte, flags) {
            Ok(n) if n > 0 => {
                self.arm_recv(key);
                self.arm(key);
                true
            }
            _ => false,
        }
    }

    /// Starts the connection's next output operation unless one is in
    /// flight: a Send of its pending bytes (with a small file read into
    /// the same buffer first), or the next piece of a file body.
    fn start_output(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if e.out_op.is_some() {
            return;
        }
        if e.sending.is_none() {
            e.sending = e.conn.take_transmit();
            e.sent = 0;
            let head = e.sending.as_ref().map_or(0, Vec::len) as u64;
            match e.conn.file_behind() {
                // Small: read it into the head's buffer, one Send for both.
                Some(file)
                    if file.len() <= SMALL_FILE && head + file.len() <= FILE_CHUNK as u64 =>
                {
                    let (file, len) = (file.clone(), file.len());
                    let buf = e.sending.take();
                    // NOTE(cast): len <= SMALL_FILE.
                    self.read_file(key, buf, file, len as usize);
                    return;
                }
                Some(file) if file.len() > SMALL_FILE => self.send_head_now(key),
                _ => {}
            }
        }
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(buf) = &e.sending {
            // Sends continue from `sent` after a short send. A buffer over
            // 4 GiB goes out in several sends.
            let rest = &buf[e.sent..];
            let len = rest.len().min(u32::MAX as usize) as u32;
            let sqe = opcode::Send::new(types::Fd(e.fd.as_raw_fd()), rest.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            e.out_op = Some(Op::Send);
            self.push_for(key, Op::Send, sqe);
            return;
        }
        let Some(file) = e.conn.poll_file() else {
            return;
        };
        let (offset, left) = (file.offset(), file.len());
        let span = left.min(FILE_BYTES_PER_TURN as u64);
        let now = self.now;
        if left > SMALL_FILE
            && self
                .resident
                .is_cached(file.shared_file(), offset, span, now)
        {
            self.send_file(key);
        } else {
            let file = file.clone();
            // NOTE(cast): bounded by FILE_CHUNK.
            self.read_file(key, None, file, left.min(FILE_CHUNK as u64) as usize);
        }
    }

    /// Sends a head that a large file body follows with one send(2) from
    /// the loop, so sendfile can follow at once (as on epoll). Through the
    /// ring the head left a turn before the body; on loopback a 1 MiB
    /// response then cost 148-162 us of server CPU against 113-126 us this
    /// way (wrk -c64, three 6 s runs each). What the socket does not take
    /// goes through the ring as usual.
    fn send_head_now(&mut self, key: usize) {
        let now = self.now;
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        let Some(buf) = &e.sending else { return };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let Ok(n) = SockRef::from(&e.fd).send_with_flags(&buf[e.sent..], flags) else {
            return;
        };
        e.sent += n;
        let done = e.sent == buf.len();
        self.env.stats.bytes_out.add(n as u64);
        let env = &mut self.env;
        let resume = e.conn.on_sent(n, now, &env.limits, &mut env.pool);
        if done {
            if let Some(buf) = e.sending.take() {
                env.pool.give(buf);
            }
            e.sent = 0;
        }
        if resume {
            e.conn.handle_input(&[], &mut env.ctx(now));
        }
    }

    /// Queues a ring Read of `len` file bytes appended to `buf` (a fresh
    /// pooled buffer if `None`); the buffer is sent when it completes. The
    /// kernel serves it from the page cache, or from io-wq on a miss: the
    /// loop never waits for the disk.
    fn read_file(&mut self, key: usize, buf: Option<Vec<u8>>, file: FileBody, len: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        let (fd, offset) = (file.file().as_raw_fd(), file.offset());
        let mut buf = buf.unwrap_or_else(|| self.env.pool.take());
        buf.reserve_exact(len);
        // NOTE(cast): len <= FILE_CHUNK.
        let sqe = opcode::Read::new(
            types::Fd(fd),
            buf.spare_capacity_mut().as_mut_ptr().cast::<u8>(),
            len as u32,
        )
        .offset(offset)
        .build();
        e.sending = Some(buf);
        e.reading_from = Some(file);
        e.out_op = Some(Op::Read);
        self.push_for(key, Op::Read, sqe);
    }

    /// sendfile(2) straight from the loop, for file ranges the page cache
    /// holds (checked with cachestat), so it copies nothing and never
    /// waits for the disk. On a full socket it waits for POLLOUT through
    /// the ring; after `FILE_BYTES_PER_TURN` it yields to other connections.
    fn send_file(&mut self, key: usize) {
        let now = self.now;
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        let mut budget = FILE_BYTES_PER_TURN;
        let mut again = false;
        while let Some(file) = e.conn.poll_file() {
            let len = usize::try_from(file.len()).map_or(budget, |l| l.min(budget));
            match send_file(&e.fd, file, len) {
                Ok(n) => {
                    self.env.stats.bytes_out.add(n as u64);
                    let env = &mut self.env;
                    if e.conn.on_sent(n, now, &env.limits, &mut env.pool) {
                        e.conn.handle_input(&[], &mut env.ctx(now));
                    }
                    budget -= n;
                    if budget == 0 {
                        // Yield to the others, unless the body just ended.
                        again = e.conn.poll_file().is_some();
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let poll =
                        opcode::PollAdd::new(types::Fd(e.fd.as_raw_fd()), libc::POLLOUT as u32);
                    e.out_op = Some(Op::Writable);
                    self.push_for(key, Op::Writable, poll.build());
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    e.conn.handle_abort();
                    e.eof = true;
                    again = true;
                    break;
                }
            }
        }
        // Our caller, `settle`, deals with a finished body; another turn
        // is needed only after a yield or for output queued behind it.
        if again || !e.conn.poll_transmit().is_empty() {
            self.mark(key);
        }
    }

    /// Starts closing a slot: cancels what is in flight; the slot is
    /// released when the last completion arrives.
    fn begin_close(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        if !e.closing {
            e.closing = true;
            if let Some(token) = e.conn.awaiting() {
                self.with_upstreams(|up, r, c, now| up.cancel(token, now, r, c));
            }
            let Some(e) = self.conns.get_mut(key) else {
                return;
            };
            let recv = e.recv_armed && !e.recv_cancelled;
            let send = e.out_op;
            if recv {
                e.recv_cancelled = true;
                self.cancel_slot(key, Op::Recv);
            }
            if let Some(op) = send {
                self.cancel_slot(key, op);
            }
        }
        self.try_release(key);
    }

    fn try_release(&mut self, key: usize) {
        let Some(e) = self.conns.get(key) else { return };
        if e.ops > 0 {
            return;
        }
        let e = self.conns.remove(key);
        self.wheel.remove(e.armed, key, e.gen);
        if let Some(buf) = e.sending {
            self.env.pool.give(buf);
        }
        // Closed by the ring with the next enter, not by a close(2) of its
        // own; the number stays allocated until then, so it is not reused
        // early. If the ring refuses the SQE, the descriptor is closed here.
        let close = opcode::Close::new(types::Fd(e.fd.as_raw_fd())).build();
        if self.push(close, UserData::core(Op::Close)).is_ok() {
            let _ = e.fd.into_raw_fd();
        }
        self.env.stats.closed.inc();
        self.env.stats.active.sub(1);
        if self.accept_retry.is_none() {
            self.arm_accept();
        }
    }

    /// Puts the slot in the wheel if its deadline is earlier than what is
    /// armed (later deadlines are found when the armed tick fires).
    fn arm(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = e.linger_until.or_else(|| e.conn.poll_timeout());
        let Some(at) = deadline else { return };
        let tick = self.wheel.tick_of(at);
        if tick < e.armed.tick() {
            self.wheel.remove(e.armed, key, e.gen);
            e.armed = self.wheel.insert(at, key, e.gen);
        }
    }

    fn expire(&mut self) {
        self.with_upstreams(|up, r, c, now| up.expire(now, r, c));
        self.wheel.expire(self.now, &mut self.due);
        let due = std::mem::take(&mut self.due);
        for &(key, gen) in &due {
            let now = self.now;
            let Some(e) = self.conns.get_mut(key).filter(|e| e.gen == gen) else {
                continue;
            };
            if !self.wheel.holds(e.armed, key, gen) {
                e.armed = Armed::NONE;
            }
            if e.closing {
                continue;
            }
            match e.linger_until {
                Some(at) if now >= at => self.begin_close(key),
                Some(_) => self.arm(key),
                None => {
                    e.conn.handle_timeout(&mut self.env.ctx(now));
                    self.mark(key);
                }
            }
        }
        self.due = due;
        self.due.clear();
    }

    /// Shutdown began: stop accepting, tell every connection, and after
    /// one more pass through the kernel (which delivers any request that
    /// raced the signal) close the idle ones.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(self.now + self.shutdown_timeout);
        self.drain_sweep = true;
        self.with_upstreams(|up, r, _, _| up.drain(r));
        self.cancel_accepts();
        if self.accepting.is_empty() {
            self.listeners.clear();
        }
        self.draining_from = self.conns.len();
        self.handoff_until = self
            .shutdown
            .is_handoff()
            .then(|| self.now + super::HANDOFF_IDLE);
        for (_, e) in self.conns.iter_mut() {
            super::drain_one(&mut e.conn, self.handoff_until);
        }
    }

    fn sweep_idle(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.mark(key);
        }
        // The listeners close once their accepts are cancelled (or now, if
        // the cancels already completed).
        if !self.accept_armed() {
            self.listeners.clear();
        }
    }

    fn drain_done(&mut self) -> Option<CoreReport> {
        let deadline = self.drain_deadline?;
        if self.drain_sweep || (!self.conns.is_empty() && self.now < deadline) {
            return None;
        }
        let forced = self.conns.iter().filter(|(_, e)| !e.closing).count();
        Some(CoreReport {
            id: self.id,
            drained: self.draining_from.saturating_sub(forced),
            forced,
        })
    }

    /// Cancels everything still in flight and reaps it, so no buffer is
    /// freed under the kernel; then unregisters the buffer ring and the
    /// ring fd (a registered fd keeps the instance alive past its close).
    /// Returns whether the buffer ring may still be in the kernel's hands.
    fn teardown(&mut self) -> bool {
        self.with_upstreams(|up, r, _, _| up.close_all(r));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.begin_close(key);
        }
        self.cancel_accepts();
        self.cancel_core(UserData::core(Op::Wake));
        let give_up = Instant::now() + Duration::from_secs(2);
        while (!self.conns.is_empty() || self.accept_armed()) && Instant::now() < give_up {
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.submitter.submit_with_args(1, &args);
            self.reap();
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.begin_close(key);
            }
        }
        // Closes queued by the last releases run inside this enter.
        let _ = self.submitter.submit();
        self.listeners.clear();
        let mut bufs_in_use = false;
        if let Err(e) = self.bufs.unregister(&self.submitter) {
            log::debug!("core {}: unregister buffer ring: {e}", self.id);
            bufs_in_use = true;
        }
        // EINVAL when registration was refused at start: nothing to undo.
        let _ = self.submitter.unregister_ring_fd();
        if !self.conns.is_empty() {
            // Completions never came: keep the memory rather than free it
            // under the kernel (the process is exiting anyway).
            log::warn!(
                "core {}: {} connections still had operations in flight at exit",
                self.id,
                self.conns.len()
            );
            std::mem::forget(std::mem::take(&mut self.conns));
        }
        bufs_in_use
    }
}

/// Queues an SQE; when the queue is full, submits first to make room.
fn push_entry(
    ring: &IoUring,
    submitter: &Submitter<'_>,
    stats: &CoreStats,
    entry: squeue::Entry,
    ud: UserData,
) -> io::Result<()> {
    let entry = entry.user_data(ud.encode());
    loop {
        // SAFETY: every buffer an SQE names (send and file read buffers,
        // in `Entry::sending`; receive buffers, in `BufRing`) stays
        // allocated and unmoved until the SQE's final completion (module
        // INVARIANT); polls and cancels name none. No other view of the
        // submission queue exists while this one does.
        if unsafe { ring.submission_shared().push(&entry) }.is_ok() {
            stats.ring_submissions.inc();
            return Ok(());
        }
        stats.ring_enters.inc();
        submitter.submit()?;
    }
}

/// Upstream sockets watched by multishot polls on the ring: each
/// readiness edge is a completion.
struct RingWatch<'a> {
    ring: &'a IoUring,
    submitter: &'a Submitter<'a>,
    stats: &'a CoreStats,
}

impl Readiness for RingWatch<'_> {
    fn watch(&mut self, fd: std::os::fd::RawFd, uid: usize, gen: u32) -> io::Result<()> {
        let mask = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP;
        // NOTE(cast): poll masks are small positive bits.
        let poll = opcode::PollAdd::new(types::Fd(fd), mask as u32).multi(true);
        let ud = UserData {
            op: Op::Upstream,
            gen,
            key: uid,
        };
        push_entry(self.ring, self.submitter, self.stats, poll.build(), ud)
    }

    fn unwatch(&mut self, _fd: std::os::fd::RawFd, uid: usize, gen: u32) {
        let target = UserData {
            op: Op::Upstream,
            gen,
            key: uid,
        };
        let cancel = opcode::AsyncCancel::new(target.encode()).build();
        let ud = UserData {
            op: Op::Cancel,
            gen: 0,
            key: NO_SLOT,
        };
        let _ = push_entry(self.ring, self.submitter, self.stats, cancel, ud);
    }
}

impl Slot for Entry {
    type Mark = usize;

    fn gen(&self) -> u32 {
        self.gen
    }

    fn conn(&self) -> &Conn {
        &self.conn
    }

    fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    fn mark(&mut self, key: usize) -> Option<usize> {
        (!std::mem::replace(&mut self.dirty, true)).then_some(key)
    }

    fn peer(&mut self) -> Option<std::net::IpAddr> {
        super::peer_ip(&mut self.peer_v4, &self.fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Shutdown,
            Op::Wake,
            Op::Read,
            Op::Writable,
            Op::Close,
        ] {
            let ud = UserData {
                op,
                gen: 0xab_cdef,
                key: 123_456,
            };
            assert_eq!(UserData::decode(ud.encode()), Some(ud));
        }
        assert_eq!(UserData::decode(0), None, "zero never names an operation");
    }
}
