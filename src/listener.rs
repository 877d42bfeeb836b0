//! Listening sockets: one per core on the same address (SO_REUSEPORT, so
//! the kernel spreads new connections across cores), and the open-files
//! limit they all draw from.

pub mod inherit;

use std::io;
use std::net::{SocketAddr, TcpListener};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking listener on `addr` with SO_REUSEADDR, SO_REUSEPORT and
/// TCP_NODELAY, listening with `backlog` (capped by net.core.somaxconn).
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux,
    // which saves a setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Fails with EADDRINUSE when any socket already listens on `addr`.
///
/// SO_REUSEPORT lets every process of the same user join a port's group,
/// and the kernel then spreads connections across both servers. A probe
/// bound without SO_REUSEPORT conflicts with any listener there, so it
/// tells a taken port from a free one; it is closed at once (SO_REUSEADDR
/// keeps TIME_WAIT leftovers from counting as taken).
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit. Returns (soft, hard)
/// as they are afterwards.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((hard.max(soft), hard))
}
