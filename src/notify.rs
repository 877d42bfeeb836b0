//! Telling others how the server is doing: the process that started an
//! upgrade (a byte on an inherited pipe, `CORELOOP_READY_FD`), systemd
//! (`sd_notify` datagrams to `NOTIFY_SOCKET`) and `--pid-file`. All are
//! optional; nothing here blocks or fails the server.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::libc;

use crate::listener::inherit::is_open;

/// Names the pipe on which a new process says it is ready.
pub const READY_FD_VAR: &str = "CORELOOP_READY_FD";

/// Where readiness goes, taken from the environment once at start.
#[derive(Debug, Default)]
pub struct Notifier {
    ready_pipe: Mutex<Option<File>>,
    socket: Option<String>,
    pid_file: Option<PathBuf>,
}

impl Notifier {
    /// Reads (and removes) `CORELOOP_READY_FD` and reads `NOTIFY_SOCKET`;
    /// `pid_file` gets our PID once we are ready.
    pub fn from_env(pid_file: Option<PathBuf>) -> Notifier {
        let ready_pipe = std::env::var(READY_FD_VAR)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
            .filter(|&fd| fd > 2 && is_open(fd))
            .map(|fd| {
                // SAFETY: the parent opened this pipe end for us alone and
                // named it in the variable, which is removed below; nothing
                // else in this process owns the descriptor.
                let file = unsafe { File::from_raw_fd(fd) };
                set_cloexec(fd);
                file
            });
        // Read once at start, before any worker thread exists; removed only
        // when set (removing touches the environment other threads read).
        if std::env::var_os(READY_FD_VAR).is_some() {
            std::env::remove_var(READY_FD_VAR);
        }
        Notifier {
            ready_pipe: Mutex::new(ready_pipe),
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
            pid_file,
        }
    }

    /// Every worker accepts: tells the upgrading parent (which then stops
    /// accepting and drains) and systemd (with our PID, which differs from
    /// the one systemd started after an upgrade).
    pub fn ready(&self) {
        // The PID file first: once told, the old process may exit and
        // removes the file if it still names it.
        if let Some(path) = &self.pid_file {
            if let Err(e) = write_pid(path) {
                log::warn!("--pid-file {}: {e}", path.display());
            }
        }
        let pipe = self
            .ready_pipe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut pipe) = pipe {
            if let Err(e) = pipe.write_all(b"R") {
                log::warn!("cannot tell the old process we are ready: {e}");
            }
        }
        self.send(&format!("MAINPID={}\nREADY=1", std::process::id()));
    }

    /// The process ends: removes the PID file if it still names us (after
    /// an upgrade it names the new process).
    pub fn exiting(&self) {
        let Some(path) = &self.pid_file else { return };
        let ours =
            std::fs::read_to_string(path).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }

    /// An upgrade began (systemd shows "reloading" until a READY=1).
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// The upgrade failed and this process keeps serving.
    pub fn still_serving(&self, why: &str) {
        let why = why.replace('\n', " ");
        self.send(&format!("READY=1\nSTATUS=upgrade failed: {why}"));
    }

    /// The process drains and exits (not sent when handing over).
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A datagram to systemd; failures are logged at debug level (outside
    /// systemd the variable is simply unset).
    fn send(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send_to(path, state) {
            log::debug!("sd_notify {path}: {e}");
        }
    }
}

/// Written whole under another name, then renamed: a reader never sees
/// half a PID.
fn write_pid(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

fn send_to(path: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD on a descriptor this process owns; no pointer.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_gets_datagrams() {
        let dir = std::env::temp_dir().join(format!("coreloop-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let server = UnixDatagram::bind(&dir).unwrap();
        let n = Notifier {
            ready_pipe: Mutex::new(None),
            socket: Some(dir.to_string_lossy().into_owned()),
            pid_file: None,
        };
        n.ready();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(text, format!("MAINPID={}\nREADY=1", std::process::id()));
        n.reloading();
        let len = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..len])
            .unwrap()
            .starts_with("RELOADING=1\nMONOTONIC_USEC="));
        let _ = std::fs::remove_file(&dir);
    }
}
