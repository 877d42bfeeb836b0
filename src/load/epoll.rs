//! The epoll backend of a load thread (mio, edge triggered, each socket
//! registered once for reading and writing).
//!
//! Per request the thread makes one `write` (all requests a connection
//! owes go in one) and one `read` (one per readable event while a read
//! does not fill the buffer), plus its share of `epoll_wait`: no
//! `epoll_ctl` after the connect, where wrk re-arms write interest twice
//! per request.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::worker::{Live, Load, Plan, Tally, Wire, TICK};

struct Sockets {
    poll: Poll,
    addr: SocketAddr,
    streams: Vec<Option<TcpStream>>,
}

impl Wire for Sockets {
    fn connect(&mut self, id: usize) -> io::Result<()> {
        let mut stream = TcpStream::connect(self.addr)?;
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if self.streams.len() <= id {
            self.streams.resize_with(id + 1, || None);
        }
        self.streams[id] = Some(stream);
        Ok(())
    }

    fn close(&mut self, id: usize) {
        if let Some(slot) = self.streams.get_mut(id) {
            *slot = None;
        }
    }

    fn send(&mut self, id: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(Some(stream)) = self.streams.get_mut(id) else {
            return Ok(());
        };
        let mut done = 0;
        let result = loop {
            if done == out.len() {
                break Ok(());
            }
            match stream.write(&out[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        out.drain(..done);
        result
    }
}

/// Runs one thread's share of the load on epoll until the plan's end.
pub fn run(plan: Plan, live: &Live) -> io::Result<Tally> {
    let mut wire = Sockets {
        poll: Poll::new()?,
        addr: plan.addr,
        streams: Vec::new(),
    };
    let mut load = Load::new(plan, live);
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    load.start(&mut wire);
    let mut next_tick = load.now() + TICK;
    let open_loop = load.open_loop();
    loop {
        let now = load.now();
        if now >= load.end() {
            break;
        }
        load.send_due(now, &mut wire);
        // epoll_wait counts in milliseconds: under one, do not block.
        let wait = Some(load.wait(now, next_tick)).filter(|w| w.as_millis() > 0);
        match wire.poll.poll(&mut events, Some(wait.unwrap_or_default())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut now = load.now();
        for ev in events.iter() {
            let id = ev.token().0;
            let readable = ev.is_readable() || ev.is_error() || ev.is_read_closed();
            event(&mut load, &mut wire, id, readable, &mut scratch, now);
            if open_loop {
                // Requests falling due while a burst of events is handled
                // go out between events, not after the burst.
                now = load.now();
                load.send_due(now, &mut wire);
            }
        }
        if now >= next_tick {
            load.tick(now, &mut wire);
            next_tick = now + TICK;
        }
    }
    load.stop(&mut wire);
    Ok(load.finish())
}

fn event(
    load: &mut Load<'_>,
    wire: &mut Sockets,
    id: usize,
    readable: bool,
    scratch: &mut [u8],
    now: u64,
) {
    let Some(Some(stream)) = wire.streams.get(id) else {
        return;
    };
    if !load.is_connected(id) {
        match stream.take_error() {
            Ok(None) => {}
            _ => return load.connect_failed(id, now, wire),
        }
        if stream.peer_addr().is_err() {
            return; // still connecting
        }
        let _ = stream.set_nodelay(true);
        load.connected(id);
    }
    if readable {
        read(load, wire, id, scratch, now);
    }
    load.writable(id);
}

fn read(load: &mut Load<'_>, wire: &mut Sockets, id: usize, scratch: &mut [u8], now: u64) {
    loop {
        let Some(Some(stream)) = wire.streams.get_mut(id) else {
            return;
        };
        let n = match stream.read(scratch) {
            Ok(0) => return load.eof(id, now, wire),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return load.read_failed(id, now, wire),
        };
        if !load.received(id, &scratch[..n], now, wire) || n < scratch.len() {
            return;
        }
    }
}
