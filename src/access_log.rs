//! The access log (`--access-log PATH|-`): one line per response, in the
//! `combined` format (plus the duration and the core) or as JSON.
//!
//! Each core formats lines into its own buffer (no lock, no syscall per
//! request) and hands a full buffer, or one older than `FLUSH_EVERY`, to
//! one writer thread through a bounded channel. The core never waits: when
//! the writer is behind (a slow or full disk), the batch is dropped and
//! its lines counted, so requests are never held up by the log. SIGUSR1
//! makes the writer reopen the file (after logrotate moved it).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// A batch goes to the writer at this size...
const BATCH_BYTES: usize = 32 * 1024;
/// ...or when its oldest line is this old.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Batches waiting for the writer; beyond this, new ones are dropped.
const QUEUE: usize = 64;

/// The line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// nginx/Apache `combined`, then the duration in seconds and the core.
    Combined,
    /// One JSON object per line.
    Json,
}

/// Where the log goes and how it looks (`Config::access_log`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// A file (appended to, created 0644), or `None` for standard output.
    pub path: Option<PathBuf>,
    /// The line format.
    pub format: Format,
}

/// Lines dropped because the writer failed (a full disk) or was behind;
/// process-wide, shown in `/metrics`.
pub static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);
/// Set by SIGUSR1: the writer reopens the file before its next write.
static REOPEN: AtomicBool = AtomicBool::new(false);

struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

/// Makes the writer reopen the file before its next write (what SIGUSR1
/// does; an embedder that handles signals itself calls this).
pub fn reopen() {
    REOPEN.store(true, Ordering::Release);
}

/// The process's writer: cores get a `Sink` each.
#[derive(Debug)]
pub struct Writer {
    tx: SyncSender<Batch>,
    format: Format,
    thread: thread::JoinHandle<()>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("lines", &self.lines).finish()
    }
}

impl Writer {
    /// Opens the file (an error names it) and starts the writer thread,
    /// and with `usr1` a SIGUSR1 handler that reopens the file.
    pub fn start(settings: &Settings, usr1: bool) -> io::Result<Writer> {
        let out = Output::open(settings.path.clone())?;
        let (tx, rx) = sync_channel(QUEUE);
        let thread = thread::Builder::new()
            .name("coreloop-log".into())
            .spawn(move || write_batches(out, rx))?;
        if usr1 {
            let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])?;
            thread::Builder::new()
                .name("coreloop-usr1".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        log::info!("SIGUSR1: reopening the access log");
                        reopen();
                    }
                })?;
        }
        Ok(Writer {
            tx,
            format: settings.format,
            thread,
        })
    }

    /// Waits until every batch is written; call once the cores (and with
    /// them their sinks, which hand over their last lines) are gone.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }

    /// A core's own buffer.
    pub fn sink(&self, core: usize) -> Sink {
        Sink {
            core,
            format: self.format,
            tx: self.tx.clone(),
            buf: Vec::new(),
            lines: 0,
            oldest: None,
            clock: Clock {
                now: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                ..Clock::default()
            },
        }
    }
}

/// The log file or standard output.
struct Output {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl Output {
    fn open(path: Option<PathBuf>) -> io::Result<Output> {
        let file = match &path {
            Some(p) => Some(open_append(p).map_err(|e| {
                io::Error::new(e.kind(), format!("--access-log {}: {e}", p.display()))
            })?),
            None => None,
        };
        Ok(Output { path, file })
    }

    fn reopen(&mut self) {
        if let Some(p) = &self.path {
            match open_append(p) {
                Ok(f) => self.file = Some(f),
                Err(e) => log::error!("access log {}: reopen: {e}", p.display()),
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => io::stdout().lock().write_all(bytes),
        }
    }
}

fn open_append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_batches(mut out: Output, rx: Receiver<Batch>) {
    let mut failing = false;
    loop {
        let batch = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(b) => Some(b),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if REOPEN.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        let Some(batch) = batch else { continue };
        match out.write(&batch.bytes) {
            Ok(()) => failing = false,
            Err(e) => {
                DROPPED_LINES.fetch_add(batch.lines, Ordering::Relaxed);
                if !failing {
                    log::error!("access log: {e}: dropping lines until writes succeed");
                    failing = true;
                }
            }
        }
    }
}

/// One response, as the log sees it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The client (a PROXY header's, else the socket's peer), if known.
    pub client: Option<IpAddr>,
    /// Request method, `-` when the request could not be parsed.
    pub method: &'a str,
    /// Request target as sent.
    pub target: &'a [u8],
    /// HTTP/1.x minor version.
    pub minor: u8,
    /// Response status.
    pub status: u16,
    /// Body bytes, when known at the head (Content-Length).
    pub bytes: Option<u64>,
    /// From the request's arrival (its loop turn) to the response.
    pub duration: Duration,
    /// Referer field.
    pub referer: Option<&'a [u8]>,
    /// User-Agent field.
    pub user_agent: Option<&'a [u8]>,
}

impl<'a> Entry<'a> {
    /// A response to `request`.
    pub fn of(
        request: &crate::http::Request<'a>,
        client: Option<IpAddr>,
        status: u16,
        bytes: Option<u64>,
        duration: Duration,
    ) -> Entry<'a> {
        Entry {
            client,
            method: request.method(),
            target: request.target().as_bytes(),
            minor: request.minor_version(),
            status,
            bytes,
            duration,
            referer: request.header("referer"),
            user_agent: request.header("user-agent"),
        }
    }

    /// A rejection of a request that could not be read: `-`, as nginx
    /// logs it.
    pub fn unread(client: Option<IpAddr>, status: u16, bytes: u64) -> Entry<'static> {
        Entry {
            client,
            method: "-",
            target: b"",
            minor: 1,
            status,
            bytes: Some(bytes),
            duration: Duration::ZERO,
            referer: None,
            user_agent: None,
        }
    }
}

/// A core's log buffer.
#[derive(Debug)]
pub struct Sink {
    core: usize,
    format: Format,
    tx: SyncSender<Batch>,
    buf: Vec<u8>,
    lines: u64,
    oldest: Option<Instant>,
    clock: Clock,
}

impl Sink {
    /// Appends one line; hands the buffer over when it is full.
    pub fn record(&mut self, e: &Entry<'_>, now: Instant) {
        let time = self.clock.get(self.format);
        match self.format {
            Format::Combined => combined(&mut self.buf, e, time, self.core),
            Format::Json => json(&mut self.buf, e, time, self.core),
        }
        self.lines += 1;
        self.oldest.get_or_insert(now);
        if self.buf.len() >= BATCH_BYTES {
            self.hand_over();
        }
    }

    /// Once per loop turn, with the turn's wall-clock second (the core's
    /// `DateCache` has it): hands over lines older than `FLUSH_EVERY`.
    pub fn tick(&mut self, now: Instant, unix_secs: u64) {
        self.clock.now = unix_secs;
        if self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= FLUSH_EVERY)
        {
            self.hand_over();
        }
    }

    /// When `tick` has lines to hand over, for the loop's wait.
    pub fn due(&self) -> Option<Instant> {
        self.oldest.map(|t| t + FLUSH_EVERY)
    }

    /// Hands everything over (the core is ending).
    pub fn flush(&mut self) {
        if self.lines > 0 {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH_BYTES + 1024));
        let batch = Batch {
            bytes,
            lines: std::mem::take(&mut self.lines),
        };
        self.oldest = None;
        if let Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) = self.tx.try_send(batch)
        {
            DROPPED_LINES.fetch_add(b.lines, Ordering::Relaxed);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The wall-clock time as each format writes it, formatted once a second.
#[derive(Debug, Default)]
struct Clock {
    /// The loop turn's second (`Sink::tick`), since the Unix epoch.
    now: u64,
    /// The second `text` shows.
    shown: Option<u64>,
    text: String,
}

impl Clock {
    fn get(&mut self, format: Format) -> &str {
        if self.shown != Some(self.now) {
            self.shown = Some(self.now);
            self.text = format_time(self.now, format);
        }
        &self.text
    }
}

/// `01/Dec/2026:15:36:00 +0000` (combined) or `2026-12-01T15:36:00Z`.
fn format_time(secs: u64, format: Format) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    match format {
        Format::Combined => format!(
            "{d:02}/{}/{y}:{h:02}:{m:02}:{s:02} +0000",
            MONTHS[(mo - 1) as usize]
        ),
        Format::Json => format!("{y}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn combined(out: &mut Vec<u8>, e: &Entry<'_>, time: &str, core: usize) {
    match e.client {
        // Written in place: no String per line.
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - - [");
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"] \"");
    if e.method == "-" {
        out.push(b'-');
    } else {
        out.extend_from_slice(e.method.as_bytes());
        out.push(b' ');
        quoted(out, e.target);
        out.extend_from_slice(b" HTTP/1.");
        out.push(b'0' + e.minor.min(9));
    }
    out.extend_from_slice(b"\" ");
    out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    out.push(b' ');
    match e.bytes {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.push(b'-'),
    }
    for field in [e.referer, e.user_agent] {
        out.extend_from_slice(b" \"");
        match field {
            Some(v) => quoted(out, v),
            None => out.push(b'-'),
        }
        out.push(b'"');
    }
    out.push(b' ');
    seconds(out, e.duration);
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(core).as_bytes());
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, e: &Entry<'_>, time: &str, core: usize) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"\",\"client\":");
    match e.client {
        Some(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_string(out, e.method.as_bytes());
    out.extend_from_slice(b",\"target\":");
    json_string(out, e.target);
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    out.extend_from_slice(b",\"bytes\":");
    match e.bytes {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"duration\":");
    seconds(out, e.duration);
    for (name, field) in [("referer", e.referer), ("user_agent", e.user_agent)] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match field {
            Some(v) => json_string(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"core\":");
    out.extend_from_slice(itoa::Buffer::new().format(core).as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Seconds with microseconds: `0.000123`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1_000_000).as_bytes());
    out.push(b'.');
    let frac = micros % 1_000_000;
    let digits = itoa::Buffer::new().format(frac).len();
    out.extend(std::iter::repeat_n(b'0', 6 - digits));
    out.extend_from_slice(itoa::Buffer::new().format(frac).as_bytes());
}

/// Inside the quotes of a combined line: `"`, `\` and bytes outside
/// printable ASCII as `\xHH` (as nginx does), so a line is always one line.
fn quoted(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

fn json_string(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            // Control bytes and non-ASCII (field values are bytes, not
            // always UTF-8): escaped, so the line is valid JSON.
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: Some("192.0.2.7".parse().unwrap()),
            method: "GET",
            target: b"/a \"b\"",
            minor: 1,
            status: 200,
            bytes: Some(13),
            duration: Duration::from_micros(1234),
            referer: None,
            user_agent: Some(b"curl/8.0 \xff"),
        }
    }

    #[test]
    fn formats() {
        let mut out = Vec::new();
        combined(&mut out, &entry(), "01/Dec/2026:15:36:00 +0000", 3);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [01/Dec/2026:15:36:00 +0000] \"GET /a \\x22b\\x22 HTTP/1.1\" 200 13 \"-\" \"curl/8.0 \\xFF\" 0.001234 3\n"
        );
        let mut out = Vec::new();
        json(&mut out, &entry(), "2026-12-01T15:36:00Z", 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"2026-12-01T15:36:00Z\",\"client\":\"192.0.2.7\",\"method\":\"GET\",\"target\":\"/a \\\"b\\\"\",\"status\":200,\"bytes\":13,\"duration\":0.001234,\"referer\":null,\"user_agent\":\"curl/8.0 \\u00ff\",\"core\":0}\n"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_time(0, Format::Json), "1970-01-01T00:00:00Z");
        // 2026-12-01 15:36:00 UTC
        assert_eq!(
            format_time(1_796_139_360, Format::Combined),
            "01/Dec/2026:15:36:00 +0000"
        );
        assert_eq!(
            format_time(951_782_400, Format::Json),
            "2000-02-29T00:00:00Z"
        );
    }
}
