//! The io_uring backend of a load thread: one ring; connects as
//! IORING_OP_CONNECT; one multishot receive per connection into a
//! provided-buffer ring (the server's `BufRing`); sends from the
//! connection's own buffer, one in flight per connection. One
//! `io_uring_enter` per loop turn submits every send queued in the turn and
//! waits for completions (waits under a millisecond spin, as on epoll).
//!
//! INVARIANT: a send's buffer stays allocated and unmodified until its
//! completion: a connection closed with a send in flight moves the buffer
//! to `graveyard`, freed only after the ring has no operation left. And no
//! queued SQE outlives its descriptor: a closed socket's descriptor is
//! released only after the next submit (`closed`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::worker::{Live, Load, Plan, Tally, Wire, TICK};
use crate::io::buf_ring::BufRing;
use crate::io::region::{HugePages, Region};

const CONNECT: u64 = 1;
const RECV: u64 = 2;
const SEND: u64 = 3;
const BUF_GROUP: u16 = 0;
const BUF_COUNT: u16 = 4096;
const BUF_SIZE: usize = 4096;

fn user_data(op: u64, gen: u32, id: usize) -> u64 {
    op << 56 | (u64::from(gen) & 0xff_ffff) << 32 | (id as u64 & 0xffff_ffff)
}

#[derive(Default)]
struct Slot {
    sock: Option<Socket>,
    gen: u32,
    sending: Vec<u8>,
    sent: usize,
    busy: bool,
}

struct Sockets {
    ring: IoUring,
    target: std::net::SocketAddr,
    addr: SockAddr,
    slots: Vec<Slot>,
    /// Buffers of sends still in flight on closed connections.
    graveyard: Vec<Vec<u8>>,
    /// Operations submitted and not yet complete.
    ops: usize,
    /// Sockets shut down whose descriptors close after the next submit.
    closed: Vec<Socket>,
}

impl Sockets {
    /// Queues an SQE, submitting first when the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every pointer an entry carries (the address in `addr`, a
        // slot's `sending` buffer) stays valid until its completion (module
        // INVARIANT; `addr` lives as long as the ring).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        self.ops += 1;
        Ok(())
    }

    fn recv(&mut self, id: usize, group: u16) -> io::Result<()> {
        let slot = &self.slots[id];
        let Some(sock) = &slot.sock else {
            return Ok(());
        };
        let sqe = opcode::RecvMulti::new(types::Fd(sock.as_raw_fd()), group)
            .build()
            .user_data(user_data(RECV, slot.gen, id));
        self.push(sqe)
    }

    fn send_from(&mut self, id: usize) -> io::Result<()> {
        let slot = &self.slots[id];
        let Some(sock) = &slot.sock else {
            return Ok(());
        };
        let rest = &slot.sending[slot.sent..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(sock.as_raw_fd()), rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND, slot.gen, id));
        self.push(sqe)
    }

    /// Submits what is queued and waits up to `wait` for a completion.
    fn enter(&mut self, wait: Duration) -> io::Result<()> {
        let result = if wait.is_zero() {
            self.ring.submit()
        } else {
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        };
        self.closed.clear();
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Wire for Sockets {
    fn connect(&mut self, id: usize) -> io::Result<()> {
        if self.slots.len() <= id {
            self.slots.resize_with(id + 1, Slot::default);
        }
        let sock = Socket::new(
            Domain::for_address(self.target),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        sock.set_tcp_nodelay(true)?;
        let fd = sock.as_raw_fd();
        let slot = &mut self.slots[id];
        slot.gen = slot.gen.wrapping_add(1) & 0xff_ffff;
        slot.sock = Some(sock);
        let sqe = opcode::Connect::new(types::Fd(fd), self.addr.as_ptr().cast(), self.addr.len())
            .build()
            .user_data(user_data(CONNECT, slot.gen, id));
        self.push(sqe)
    }

    fn close(&mut self, id: usize) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if let Some(sock) = slot.sock.take() {
            // Ends the multishot receive (a 0 completion) and any send.
            let _ = sock.shutdown(std::net::Shutdown::Both);
            // SQEs name sockets by descriptor number, which the kernel
            // looks up when it consumes them: the number stays this
            // socket's until the queue is submitted, so no new socket (of
            // any slot) can be given it and get a queued receive or send.
            self.closed.push(sock);
        }
        if slot.busy {
            self.graveyard.push(std::mem::take(&mut slot.sending));
            slot.busy = false;
        }
        slot.gen = slot.gen.wrapping_add(1) & 0xff_ffff;
    }

    fn send(&mut self, id: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(id) else {
            return Ok(());
        };
        if slot.busy || slot.sock.is_none() {
            return Ok(()); // goes when the send in flight completes
        }
        slot.sending.clear();
        std::mem::swap(&mut slot.sending, out);
        slot.sent = 0;
        slot.busy = true;
        self.send_from(id)
    }
}

/// Whether this kernel runs the load on io_uring (a ring, a provided
/// buffer ring, and the opcodes); `Err` says why not.
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    BufRing::probe(ring).map_err(|e| format!("provided buffer rings refused (Linux 5.19+): {e}"))
}

/// Runs one thread's share of the load on io_uring until the plan's end.
pub fn run(plan: Plan, live: &Live) -> io::Result<Tally> {
    // Declared before the sockets (and their ring), so dropped after them.
    let mut bufs: BufRing;
    let ring = IoUring::builder()
        .setup_cqsize(4 * 1024)
        .setup_coop_taskrun()
        .build(1024)
        .or_else(|_| IoUring::new(1024))?;
    let region = Region::map(usize::from(BUF_COUNT) * BUF_SIZE, HugePages::Off)?;
    bufs = BufRing::new(&ring.submitter(), region, BUF_COUNT, BUF_SIZE, BUF_GROUP)?;
    let mut wire = Sockets {
        ring,
        target: plan.addr,
        addr: SockAddr::from(plan.addr),
        slots: Vec::new(),
        graveyard: Vec::new(),
        ops: 0,
        closed: Vec::new(),
    };
    let mut load = Load::new(plan, live);
    let result = drive(&mut load, &mut wire, &mut bufs);
    load.stop(&mut wire);
    for id in 0..wire.slots.len() {
        wire.close(id);
    }
    settle(&mut wire, &mut bufs);
    let _ = bufs.unregister(&wire.ring.submitter());
    result.map(|()| load.finish())
}

fn drive(load: &mut Load<'_>, wire: &mut Sockets, bufs: &mut BufRing) -> io::Result<()> {
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    load.start(wire);
    let mut next_tick = load.now() + TICK;
    let open_loop = load.open_loop();
    loop {
        let now = load.now();
        if now >= load.end() {
            return Ok(());
        }
        load.send_due(now, wire);
        bufs.publish();
        // As on epoll, waits under a millisecond spin instead of sleeping:
        // a timed sleep and its wake-up add tens of microseconds to the
        // latency of the responses that arrive meanwhile.
        let wait = Some(load.wait(now, next_tick)).filter(|w| w.as_millis() > 0);
        wire.enter(wait.unwrap_or_default())?;
        cqes.extend(
            wire.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut now = load.now();
        for (ud, res, flags) in cqes.drain(..) {
            complete(load, wire, bufs, ud, res, flags, now)?;
            if open_loop {
                now = load.now();
                load.send_due(now, wire);
            }
        }
        if now >= next_tick {
            load.tick(now, wire);
            next_tick = now + TICK;
        }
    }
}

fn complete(
    load: &mut Load<'_>,
    wire: &mut Sockets,
    bufs: &mut BufRing,
    ud: u64,
    res: i32,
    flags: u32,
    now: u64,
) -> io::Result<()> {
    let (op, gen, id) = (
        ud >> 56,
        (ud >> 32) as u32 & 0xff_ffff,
        (ud & 0xffff_ffff) as usize,
    );
    let bid = cqueue::buffer_select(flags);
    let ends = op != RECV || !cqueue::more(flags);
    if ends {
        wire.ops = wire.ops.saturating_sub(1);
    }
    let live = wire
        .slots
        .get(id)
        .is_some_and(|s| s.gen == gen && s.sock.is_some());
    if !live {
        if let Some(bid) = bid {
            bufs.recycle(bid);
        }
        return Ok(());
    }
    if let Some(bid) = bid.filter(|_| res <= 0) {
        bufs.recycle(bid);
    }
    match op {
        CONNECT if res < 0 => load.connect_failed(id, now, wire),
        CONNECT => {
            wire.recv(id, bufs.group())?;
            load.connected(id);
        }
        RECV if res > 0 => {
            let alive = match bid {
                Some(bid) => {
                    // NOTE(cast): res > 0 was checked.
                    let alive = load.received(id, bufs.get(bid, res as usize), now, wire);
                    bufs.recycle(bid);
                    alive
                }
                None => true,
            };
            if alive && ends {
                wire.recv(id, bufs.group())?;
            }
        }
        RECV if res == 0 => load.eof(id, now, wire),
        RECV if -res == libc::ENOBUFS => {
            bufs.starved();
            wire.recv(id, bufs.group())?;
        }
        RECV => load.read_failed(id, now, wire),
        SEND if res < 0 => load.write_failed(id, now, wire),
        SEND => {
            let slot = &mut wire.slots[id];
            // NOTE(cast): res >= 0 was checked.
            slot.sent += res as usize;
            if slot.sent < slot.sending.len() {
                wire.send_from(id)?;
            } else {
                slot.busy = false;
                load.writable(id);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Waits (up to a second) for every operation on the closed sockets to
/// complete, so no buffer is freed under the kernel.
fn settle(wire: &mut Sockets, bufs: &mut BufRing) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while wire.ops > 0 && Instant::now() < deadline {
        bufs.publish();
        if wire.enter(Duration::from_millis(10)).is_err() {
            break;
        }
        let done: Vec<(u64, u32)> = wire
            .ring
            .completion()
            .map(|c| (c.user_data(), c.flags()))
            .collect();
        for (ud, flags) in done {
            if ud >> 56 != RECV || !cqueue::more(flags) {
                wire.ops = wire.ops.saturating_sub(1);
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                bufs.recycle(bid);
            }
        }
    }
    if wire.ops == 0 {
        wire.graveyard.clear();
    } else {
        // Operations still pending: leak their buffers rather than free
        // memory the kernel may still read.
        std::mem::forget(std::mem::take(&mut wire.graveyard));
    }
}
