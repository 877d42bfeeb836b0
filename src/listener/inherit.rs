//! Listening sockets handed to this process at start: by the coreloop it
//! replaces (a binary upgrade, `CORELOOP_LISTENERS`) or by systemd socket
//! activation (`LISTEN_FDS`). Each descriptor is checked before it is
//! used, and the variables are removed so no later child sees them.
//!
//! The handed sockets are the very sockets the parent accepts from (one
//! open file description, two descriptors), so nothing queued in them is
//! lost when the parent closes its copies.

#![allow(unsafe_code)]

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;
use socket2::{Protocol, Socket, Type};

/// `fd=address/index;...`: the sockets an upgrading parent hands over.
/// Flags may follow the index: `:shared`, a socket without SO_REUSEPORT
/// (shared by every worker); `:activated`, a socket systemd made (its
/// address, not the flags', is the one served).
pub const LISTENERS_VAR: &str = "CORELOOP_LISTENERS";

/// Who handed the sockets over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The coreloop process this one replaces.
    Upgrade,
    /// systemd (or anything speaking its socket-activation protocol).
    Systemd,
}

/// One inherited listening socket, checked and made non-blocking.
#[derive(Debug)]
pub struct Inherited {
    /// The socket.
    pub listener: TcpListener,
    /// Its local address.
    pub addr: SocketAddr,
    /// Its name: `address/worker` from an upgrade, LISTEN_FDNAMES' entry
    /// from systemd.
    pub name: String,
}

/// Why inherited sockets cannot be used; the process must not start.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The sockets this process was started with, if any. Removes the
/// variables that named them.
pub fn take() -> Result<Option<(Source, Vec<Inherited>)>, Error> {
    if let Some(list) = take_var(LISTENERS_VAR) {
        return upgrade(&list).map(Some);
    }
    let fds = take_var("LISTEN_FDS");
    let pid = take_var("LISTEN_PID");
    let names = take_var("LISTEN_FDNAMES");
    match (fds, pid) {
        (Some(fds), Some(pid)) if pid.trim() == std::process::id().to_string() => {
            systemd(&fds, names.as_deref()).map(|l| Some((Source::Systemd, l)))
        }
        // Meant for another process (LISTEN_PID differs): not ours to take.
        _ => Ok(None),
    }
}

fn take_var(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    // Only when set (a process started to take sockets, before its worker
    // threads exist): removing touches the environment other threads read.
    std::env::remove_var(name);
    Some(value)
}

/// Parses `3=127.0.0.1:8080/0;4=127.0.0.1:8080/1` and checks each socket:
/// listening TCP on the address its name says, with SO_REUSEPORT unless
/// the name says `:shared`. Sockets systemd made stay `Source::Systemd`.
fn upgrade(list: &str) -> Result<(Source, Vec<Inherited>), Error> {
    let mut out = Vec::new();
    let mut source = Source::Upgrade;
    for item in list.split(';').filter(|s| !s.is_empty()) {
        let bad = || Error(format!("{LISTENERS_VAR}: bad entry {item:?}"));
        let (fd, name) = item.split_once('=').ok_or_else(bad)?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        let (addr, index) = name.rsplit_once('/').ok_or_else(bad)?;
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        let mut flags = index.split(':');
        flags
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .ok_or_else(bad)?;
        let mut shared = false;
        for flag in flags {
            match flag {
                "shared" => shared = true,
                "activated" => source = Source::Systemd,
                _ => return Err(bad()),
            }
        }
        let socket = adopt(fd, name)?;
        if !shared && !socket.reuse_port().unwrap_or(false) {
            return Err(Error(format!(
                "inherited socket {name} (fd {fd}) lacks SO_REUSEPORT"
            )));
        }
        out.push(finish(socket, name, Some(addr))?);
    }
    if out.is_empty() {
        return Err(Error(format!("{LISTENERS_VAR} names no socket")));
    }
    Ok((source, out))
}

/// systemd passes LISTEN_FDS descriptors from 3 on, named by
/// LISTEN_FDNAMES (colon-separated).
fn systemd(count: &str, names: Option<&str>) -> Result<Vec<Inherited>, Error> {
    let count: RawFd = count
        .trim()
        .parse()
        .map_err(|_| Error(format!("LISTEN_FDS: not a number: {count:?}")))?;
    if !(1..=1024).contains(&count) {
        return Err(Error(format!("LISTEN_FDS: {count} sockets (1 to 1024)")));
    }
    let names: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    (0..count)
        .map(|i| {
            let fd = 3 + i;
            let name = names.get(i as usize).copied().unwrap_or("unknown");
            let socket = adopt(fd, name)?;
            finish(socket, name, None)
        })
        .collect()
}

/// Takes ownership of `fd` once it is known to be an open listening TCP
/// socket; closes it on exec from now on.
fn adopt(fd: RawFd, name: &str) -> Result<Socket, Error> {
    let fail = |why: &str| Error(format!("inherited socket {name} (fd {fd}): {why}"));
    if fd < 3 {
        return Err(fail("not a socket descriptor (below 3)"));
    }
    if !is_open(fd) {
        return Err(fail("not open"));
    }
    // SAFETY: the descriptor is open and was handed to this process for
    // this use alone; nothing else in the process owns it (this runs once,
    // at start, and the variable naming it is removed).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(owned);
    match socket.r#type() {
        Ok(t) if t == Type::STREAM => {}
        Ok(_) => return Err(fail("not a stream socket")),
        Err(e) => return Err(fail(&format!("not a socket ({e})"))),
    }
    if socket.protocol().ok().flatten() != Some(Protocol::TCP) {
        return Err(fail("not TCP"));
    }
    if !socket.is_listener().unwrap_or(false) {
        return Err(fail("not listening"));
    }
    socket
        .set_cloexec(true)
        .map_err(|e| fail(&format!("FD_CLOEXEC: {e}")))?;
    Ok(socket)
}

/// Whether `fd` names an open descriptor of this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer; a closed number fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn finish(socket: Socket, name: &str, expect: Option<SocketAddr>) -> Result<Inherited, Error> {
    let fd = socket.as_raw_fd();
    let fail = |why: String| Error(format!("inherited socket {name} (fd {fd}): {why}"));
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| fail("no IP address".into()))?;
    if let Some(expect) = expect {
        if expect != addr {
            return Err(fail(format!("listens on {addr}, not {expect}")));
        }
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| fail(format!("O_NONBLOCK: {e}")))?;
    // Accepted sockets inherit TCP_NODELAY from the listener (see `bind`).
    socket
        .set_tcp_nodelay(true)
        .map_err(|e| fail(format!("TCP_NODELAY: {e}")))?;
    Ok(Inherited {
        listener: socket.into(),
        addr,
        name: name.to_string(),
    })
}

/// One socket to hand over: its descriptor, address, and whether it has
/// SO_REUSEPORT (the child checks that it still does).
#[derive(Clone, Copy, Debug)]
pub struct Handed {
    /// The descriptor (kept open by the cores while they serve).
    pub fd: RawFd,
    /// Its local address.
    pub addr: SocketAddr,
    /// SO_REUSEPORT is set (always, for sockets coreloop bound).
    pub reuse_port: bool,
    /// systemd made it (this process or one before it was activated).
    pub activated: bool,
}

/// The value of `CORELOOP_LISTENERS` that hands `sockets` to a child,
/// each named by address and index.
pub fn describe(sockets: &[Handed]) -> String {
    let mut out = String::new();
    for (index, h) in sockets.iter().enumerate() {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(&format!("{}={}/{index}", h.fd, h.addr));
        if !h.reuse_port {
            out.push_str(":shared");
        }
        if h.activated {
            out.push_str(":activated");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        let handed = [
            Handed {
                fd: 3,
                addr: a,
                reuse_port: true,
                activated: false,
            },
            Handed {
                fd: 9,
                addr: b,
                reuse_port: false,
                activated: true,
            },
        ];
        assert_eq!(
            describe(&handed),
            "3=127.0.0.1:8080/0;9=[::1]:80/1:shared:activated"
        );
    }

    #[test]
    fn refuses_what_is_not_a_listener() {
        // Standard input is not a socket (and below 3).
        assert!(adopt(0, "stdin").is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(s);
        let err = adopt(fd, "conn").unwrap_err().to_string();
        assert!(err.contains("not listening"), "{err}");
        for bad in [
            "x=1",
            "3=127.0.0.1:80/x",
            "3=127.0.0.1:80/0:odd",
            "3=nowhere/0",
        ] {
            let err = upgrade(bad).unwrap_err().to_string();
            assert!(err.contains("bad entry"), "{bad}: {err}");
        }
    }
}
