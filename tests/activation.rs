//! systemd's side of the binary: socket activation (LISTEN_FDS), sd_notify
//! datagrams (READY, RELOADING, STOPPING, MAINPID), and an upgrade of a
//! process whose one socket systemd made (no SO_REUSEPORT, shared by every
//! worker).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_coreloop");

/// Starts the binary as systemd would: `fd` at descriptor 3, LISTEN_PID
/// set to the binary's own PID (the shell execs into it), NOTIFY_SOCKET.
fn activate(fd: RawFd, notify: &std::path::Path, extra: &str) -> Child {
    let script = format!(
        "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; exec {BIN} --no-files --workers 2 --no-pin {extra}"
    );
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec and calls only dup2(2)
    // and fcntl(2), which are async-signal-safe. dup2's target has
    // FD_CLOEXEC clear; when `fd` is 3 already, dup2 does nothing, so the
    // flag is cleared by hand.
    unsafe {
        cmd.pre_exec(move || {
            let done = if fd == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, 3)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn notify_socket(tag: &str) -> (UnixDatagram, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("coreloop-notify-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (sock, path)
}

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn healthz(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if gone {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn serves_a_socket_from_systemd_and_tells_it_so() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (notify, path) = notify_socket("serve");
    let mut child = activate(listener.as_raw_fd(), &path, "");
    // The socket is the server's now: ours closes, nothing queued is lost.
    drop(listener);
    let ready = next(&notify);
    assert_eq!(ready, format!("MAINPID={}\nREADY=1", child.id()));
    assert!(healthz(addr).starts_with("HTTP/1.1 200"));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(next(&notify), "STOPPING=1");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_upgrade_hands_the_activated_socket_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (notify, path) = notify_socket("upgrade");
    let pid_file = path.with_extension("pid");
    let extra = format!("--shutdown-timeout 2s --pid-file {}", pid_file.display());
    let mut child = activate(listener.as_raw_fd(), &path, &extra);
    drop(listener);
    assert!(next(&notify).ends_with("READY=1"));
    let old = child.id();
    let written = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(
        written(&pid_file),
        format!("{old}\n"),
        "--pid-file once ready"
    );
    kill(Pid::from_raw(old as i32), Signal::SIGUSR2).unwrap();
    let reloading = next(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let ready = next(&notify);
    let new: u32 = ready
        .strip_prefix("MAINPID=")
        .and_then(|r| r.split('\n').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{ready}"));
    assert_ne!(new, old);
    assert!(
        child.wait().unwrap().success(),
        "the old process drains and exits 0"
    );
    assert!(
        healthz(addr).starts_with("HTTP/1.1 200"),
        "the new process serves"
    );
    assert_eq!(
        written(&pid_file),
        format!("{new}\n"),
        "the new process owns the PID file; the old one left it"
    );
    kill(Pid::from_raw(new as i32), Signal::SIGTERM).unwrap();
    assert_eq!(next(&notify), "STOPPING=1");
    assert!(wait_gone(new, Duration::from_secs(10)));
    assert!(!pid_file.exists(), "removed at exit");
    let _ = std::fs::remove_file(path);
}

#[test]
fn refuses_what_is_not_a_listening_socket() {
    let file = std::fs::File::open(BIN).unwrap();
    let (_notify, path) = notify_socket("refuse");
    let child = activate(file.as_raw_fd(), &path, "");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inherited listeners: inherited socket web (fd 3): not a socket"),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
}
