//! Binary upgrade on SIGUSR2: start the binary at the path this process
//! was started from, with the same arguments, hand it every listening
//! socket, and drain once it says every worker accepts. If it exits or
//! stays silent past `--upgrade-timeout`, stop it and keep serving.
//!
//! The new process inherits the sockets themselves (the same open files),
//! so no listener ever closes while a process serves it and nothing that
//! waits in an accept queue is lost: the old process only stops accepting
//! (`Shutdown::hand_off`) after the new one accepts.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use signal_hook::consts::{SIGHUP, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::listener::inherit::{self, Handed, LISTENERS_VAR};
use crate::notify::{Notifier, READY_FD_VAR};
use crate::shutdown::Shutdown;

/// Why an upgrade did not happen; the old process keeps serving.
#[derive(Debug)]
pub enum Error {
    /// The new binary could not be started.
    Spawn(PathBuf, io::Error),
    /// It exited before saying it was ready.
    Exited(Option<std::process::ExitStatus>),
    /// It did not say it was ready in time, and was stopped.
    Silent(Duration),
    /// A system call of the handoff failed.
    Setup(&'static str, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn(path, e) => write!(f, "cannot start {}: {e}", path.display()),
            Error::Exited(Some(status)) => {
                write!(f, "the new process exited before it was ready ({status})")
            }
            Error::Exited(None) => {
                write!(f, "the new process closed its ready pipe and was stopped")
            }
            Error::Silent(t) => write!(
                f,
                "the new process was not ready within {t:?} (--upgrade-timeout) and was stopped"
            ),
            Error::Setup(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// What an upgrade needs: the command line, and the sockets to hand over.
#[derive(Debug)]
pub struct Upgrader {
    exe: PathBuf,
    args: Vec<OsString>,
    /// One per socket (not per descriptor): the new process names them
    /// by address and index.
    sockets: Vec<Handed>,
    timeout: Duration,
    /// How long a stopped new process may drain before it is killed.
    stop_grace: Duration,
    notifier: Arc<Notifier>,
}

impl Upgrader {
    /// Reads this process's path and arguments; `sockets` stay open for as
    /// long as the cores serve (their descriptors belong to the cores).
    pub fn new(
        sockets: Vec<Handed>,
        timeout: Duration,
        stop_grace: Duration,
        notifier: Arc<Notifier>,
    ) -> io::Result<Upgrader> {
        let mut args = std::env::args_os();
        let argv0 = args.next().map(PathBuf::from);
        Ok(Upgrader {
            exe: exe_path(argv0)?,
            args: args.collect(),
            sockets,
            timeout,
            stop_grace,
            notifier,
        })
    }

    /// Starts a thread that runs an upgrade on each SIGUSR2 until one
    /// succeeds, then hands off (the cores drain). A SIGUSR2 that comes
    /// during an upgrade, or once shutdown began, is refused with a log
    /// line (the handler stays installed: SIGUSR2's default action would
    /// kill a draining process).
    /// With `hup`, SIGHUP does the same (a new configuration file is read
    /// by the new process; if it is bad, that process exits and this one
    /// keeps serving).
    pub fn handle_signal(self, shutdown: Shutdown, hup: bool) -> io::Result<()> {
        let mut signals = Signals::new(if hup {
            &[SIGUSR2, SIGHUP][..]
        } else {
            &[SIGUSR2]
        })?;
        thread::Builder::new()
            .name("coreloop-upgrade".into())
            .spawn(move || loop {
                let Some(signal) = signals.forever().next() else {
                    return;
                };
                let name = if signal == SIGHUP { "SIGHUP" } else { "SIGUSR2" };
                if !shutdown.is_ready() {
                    log::warn!("{name}: shutting down or handed over already; no upgrade");
                    continue;
                }
                log::info!("{name}: upgrading: starting {}", self.exe.display());
                self.notifier.reloading();
                let result = self.run();
                for _ in signals.pending() {
                    log::warn!("a signal to upgrade during an upgrade: ignored (one at a time)");
                }
                match result {
                    Ok(pid) => {
                        log::info!(
                            "upgrade: process {pid} accepts on every listener; draining (old process)"
                        );
                        shutdown.hand_off();
                    }
                    Err(e) => {
                        log::error!("upgrade failed, still serving: {e}");
                        self.notifier.still_serving(&e.to_string());
                    }
                }
            })?;
        Ok(())
    }

    /// One upgrade: the new process's PID once it is ready.
    pub fn run(&self) -> Result<u32, Error> {
        let (read_end, write_end) = pipe()?;
        let write_fd = write_end.as_raw_fd();
        let mut keep: Vec<RawFd> = self.sockets.iter().map(|h| h.fd).collect();
        keep.push(write_fd);
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .env(LISTENERS_VAR, inherit::describe(&self.sockets))
            .env(READY_FD_VAR, write_fd.to_string());
        // SAFETY: the closure runs in the forked child before exec and
        // calls only fcntl(2), which is async-signal-safe; `keep` was
        // allocated before the fork and is only read.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::Spawn(self.exe.clone(), e))?;
        // Only the child holds the write end now: EOF means it is gone.
        drop(write_end);
        match wait_ready(read_end, self.timeout) {
            Ok(true) => Ok(child.id()),
            Ok(false) => Err(self.stop(&mut child, None)),
            Err(e) => Err(self.stop(&mut child, Some(e))),
        }
    }

    /// Stops a new process that will not serve. SIGTERM first: if some of
    /// its workers accepted connections, it answers them; SIGKILL after
    /// `stop_grace`.
    fn stop(&self, child: &mut Child, timed_out: Option<Duration>) -> Error {
        if timed_out.is_none() {
            // The pipe closed: it is most likely exiting.
            if let Some(status) = wait_exit(child, Duration::from_millis(500)) {
                return Error::Exited(Some(status));
            }
        }
        // SAFETY: kill(2) takes no pointer; the PID is our unreaped child,
        // so it cannot name another process.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if wait_exit(child, self.stop_grace).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        match timed_out {
            Some(t) => Error::Silent(t),
            None => Error::Exited(None),
        }
    }
}

/// Waits for the ready byte: Ok(true) when it came, Ok(false) when the
/// pipe closed first, Err(timeout) when neither happened in time.
fn wait_ready(pipe: File, timeout: Duration) -> Result<bool, Duration> {
    let until = Instant::now() + timeout;
    let mut pipe = pipe;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout);
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: poll(2) reads and writes the one pollfd we pass.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            continue; // timeout (checked above) or EINTR
        }
        let mut byte = [0u8; 1];
        return match pipe.read(&mut byte) {
            Ok(1) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Ok(false),
        };
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// A pipe whose ends close on exec (the write end is opened up for the
/// child alone, in `pre_exec`).
fn pipe() -> Result<(File, File), Error> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2(2) writes two descriptors into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Setup("pipe2", io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// The binary to start: argv[0] when it is a path (made absolute against
/// the directory at start, symlinks kept, so a deploy that swaps a link
/// or renames a new file into place is what starts), else the running
/// executable.
fn exe_path(argv0: Option<PathBuf>) -> io::Result<PathBuf> {
    match argv0 {
        Some(p) if p.components().count() > 1 => {
            if p.is_absolute() {
                Ok(p)
            } else {
                Ok(std::env::current_dir()?.join(p))
            }
        }
        _ => std::env::current_exe(),
    }
}
