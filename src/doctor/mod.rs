//! `coreloop doctor`: a read-only report on the host's kernel and network
//! settings that matter to a thread-per-core server and its tuning
//! experiments. Each finding gives the current value, the recommended one,
//! why, and the command that changes it. Nothing is changed; what cannot
//! be read (no root, a container, a VM without cpufreq) is said, not
//! guessed.
//!
//! Everything is read through `Host`, rooted at `/` or, in tests, at a
//! fixture tree with the same layout.

mod checks;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use checks::examine;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As recommended.
    Ok,
    /// Worth knowing; no change needed for most uses.
    Info,
    /// A change that helps the named use.
    Advice,
    /// Likely to limit or break the server as configured.
    Warn,
    /// Could not be read.
    Unknown,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Advice => "advice",
            Level::Warn => "warn",
            Level::Unknown => "unknown",
        }
    }
}

/// One thing the doctor looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was read, e.g. `net.core.somaxconn`.
    pub name: String,
    /// How it stands.
    pub level: Level,
    /// The value found (or why it could not be read).
    pub current: String,
    /// The value recommended, empty when there is nothing to change.
    pub recommended: String,
    /// Why it matters.
    pub why: String,
    /// The command that changes it, empty when there is none.
    pub fix: String,
}

/// What the server will be asked to do: the findings compare against it.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// `--backlog`.
    pub backlog: u64,
    /// `--max-conns` per core.
    pub max_conns: u64,
    /// Workers (cores) that will run.
    pub workers: u64,
}

/// The file system the doctor reads: `/`, or a fixture tree in tests.
#[derive(Clone, Debug)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// The running system.
    pub fn system() -> Host {
        Host::at("/")
    }

    /// A tree laid out like `/` (with `proc/` and `sys/`).
    pub fn at(root: impl AsRef<Path>) -> Host {
        Host {
            root: root.as_ref().to_path_buf(),
        }
    }

    /// A file's contents, trimmed; the error says why it could not be read.
    fn read(&self, path: &str) -> Result<String, String> {
        let full = self.root.join(path.trim_start_matches('/'));
        std::fs::read_to_string(&full)
            .map(|s| s.trim().to_string())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("/{path}: not present"),
                std::io::ErrorKind::PermissionDenied => format!("/{path}: permission denied"),
                _ => format!("/{path}: {e}"),
            })
    }

    /// A number from a one-value file.
    fn number(&self, path: &str) -> Result<u64, String> {
        let text = self.read(path)?;
        text.parse()
            .map_err(|_| format!("/{path}: not a number: {text:?}"))
    }

    /// Names of the entries of a directory (sorted), empty if absent.
    fn list(&self, path: &str) -> Vec<String> {
        let full = self.root.join(path.trim_start_matches('/'));
        let mut names: Vec<String> = std::fs::read_dir(full)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// The report for a terminal: a summary line, then one block per finding
/// that is not `Ok` (those are listed by name at the end).
pub fn text(findings: &[Finding]) -> String {
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    let mut out = format!(
        "coreloop doctor: {} checks: {} warn, {} advice, {} info, {} unknown, {} ok \
         (read-only: nothing was changed)\n",
        findings.len(),
        count(Level::Warn),
        count(Level::Advice),
        count(Level::Info),
        count(Level::Unknown),
        count(Level::Ok)
    );
    let mut sorted: Vec<&Finding> = findings.iter().filter(|f| f.level != Level::Ok).collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.level));
    for f in sorted {
        let _ = writeln!(out, "\n{:7} {}: {}", f.level.label(), f.name, f.current);
        if !f.recommended.is_empty() {
            let _ = writeln!(out, "        recommended: {}", f.recommended);
        }
        let _ = writeln!(out, "        why: {}", f.why);
        if !f.fix.is_empty() {
            let _ = writeln!(out, "        change: {}", f.fix);
        }
    }
    let ok: Vec<&str> = findings
        .iter()
        .filter(|f| f.level == Level::Ok)
        .map(|f| f.name.as_str())
        .collect();
    if !ok.is_empty() {
        let _ = writeln!(out, "\nok: {}", ok.join(", "));
    }
    out
}

/// The report as one JSON array of findings.
pub fn json(findings: &[Finding]) -> String {
    let mut out = String::from("[");
    for (i, f) in findings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n  {");
        let fields = [
            ("name", f.name.as_str()),
            ("level", f.level.label()),
            ("current", f.current.as_str()),
            ("recommended", f.recommended.as_str()),
            ("why", f.why.as_str()),
            ("change", f.fix.as_str()),
        ];
        for (j, (k, v)) in fields.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "\"{k}\": ");
            crate::json::push_str(&mut out, v);
        }
        out.push('}');
    }
    out.push_str("\n]\n");
    out
}
